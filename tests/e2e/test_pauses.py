"""Pauses (CONTRACT section 13) through real daemons, on SQLite and on PostgreSQL: a
paused type starts no job while running ones go on, its pending jobs say why, cancel
works, resume starts them, `--until` ends a pause by itself, a pause survives a restart
(kill -9 too) and is honoured by every daemon of one database; bad input is refused
naming the field."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, wait_until
from http_helpers import Server
from limit_marks import spans

from procpool import Client, InvalidJobFile
from procpool.domain.timefmt import rfc3339

PAUSED = {"reason": "paused"}


@pytest.fixture
def pausing(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path
) -> Iterator[tuple[Daemon, Client]]:
    daemon = make_daemon(2, env=store_env, args=("--handlers", "limit_handlers"))
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    yield daemon, client
    client.close()


def started(directory: Path) -> set[str]:
    return {span.job_id for span in spans(directory)}


@pytest.mark.timeout(180)
def test_a_paused_type_starts_nothing_until_resumed(
    pausing: tuple[Daemon, Client], store_env: dict[str, str], tmp_path: Path
) -> None:
    daemon, client = pausing
    gated = {"dir": str(tmp_path), "seconds": 60, "gate": "open"}
    client.submit("capped", gated, id="ran-before")
    wait_until(lambda: started(tmp_path) == {"ran-before"}, 30, what="the first job running")

    shown = daemon.cli("pause", "capped", env=store_env)
    assert (shown.returncode, shown.stdout) == (0, "paused capped until resumed\n"), shown.stderr
    quick = {"dir": str(tmp_path), "seconds": 0.1}
    for n in range(3):
        client.submit("capped", quick, id=f"held-{n}")
    client.submit_many([{"type": "echo", "payload": n, "id": f"echo-{n}"} for n in range(6)])
    # Another type runs as if nothing were paused, on the worker left free.
    done = client.wait([f"echo-{n}" for n in range(6)], timeout=60)
    assert {job.status for job in done} == {"completed"}

    assert started(tmp_path) == {"ran-before"}  # none of the paused type's jobs started
    assert client.get("ran-before").status == "running"  # the running one goes on
    assert client.get("held-0").waiting == PAUSED
    assert (
        json.loads(daemon.cli("status", "held-1", "--json", env=store_env).stdout)["waiting"]
        == PAUSED
    )
    assert "paused" in daemon.cli("status", "held-1", env=store_env).stdout
    assert [job.id for job in client.list(waiting="paused")] == ["held-2", "held-1", "held-0"]

    listed = daemon.cli("pause", env=store_env)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == [
        "capped", "resumed"]  # fmt: skip
    assert [p.type for p in client.pauses()] == ["capped"]
    stats = json.loads(daemon.cli("stats", "--json", env=store_env).stdout)
    assert [(p["type"], p["until"], p["waiting"]) for p in stats["pauses"]] == [("capped", None, 3)]
    assert "PAUSED" in daemon.cli("stats", env=store_env).stdout
    metrics = daemon.home / "metrics.prom"
    wait_until(
        lambda: (
            metrics.exists() and 'procpool_paused_waiting{type="capped"} 3' in metrics.read_text()
        ),
        30,
        what="the pause in metrics.prom",
    )
    assert 'procpool_paused{type="capped"} 1' in metrics.read_text()

    canceled = daemon.cli("cancel", "held-2", env=store_env)  # cancel still works
    assert canceled.returncode == 0, canceled.stderr
    assert client.get("held-2").status == "canceled"

    resumed = daemon.cli("resume", "capped", env=store_env)
    assert (resumed.returncode, resumed.stdout) == (0, "resumed capped\n"), resumed.stderr
    done = client.wait(["held-0", "held-1"], timeout=60)
    assert {(job.status, job.attempts) for job in done} == {("completed", 0)}  # none lost
    assert client.pauses() == []
    (tmp_path / "open").write_text("")
    assert client.wait(["ran-before"], timeout=60)[0].status == "completed"
    assert "held-2" not in started(tmp_path)
    if not store_env:  # on SQLite the daemon takes the requests, and logs them
        daemon.wait_events("pause.set", type="capped", until=None)
        daemon.wait_events("pause.lifted", type="capped")


@pytest.mark.timeout(120)
def test_until_ends_the_pause_by_itself(
    pausing: tuple[Daemon, Client], store_env: dict[str, str], tmp_path: Path
) -> None:
    daemon, client = pausing
    # Room for the pause command, the submit and the read on a loaded machine before
    # the pause ends: each is a CLI start-up or a store round trip, a second or two.
    end = time.time() + 10
    until = rfc3339(end)
    shown = daemon.cli("pause", "capped", "--until", until, env=store_env)
    assert shown.stdout == f"paused capped until {until}\n", shown.stderr
    client.submit("capped", {"dir": str(tmp_path), "seconds": 0.1}, id="later")
    assert client.get("later").waiting == {"reason": "paused", "until": until}
    [job] = client.wait(["later"], timeout=60)
    assert job.status == "completed"
    [span] = spans(tmp_path)
    assert span.start >= end - 0.001  # not before the until (one clock: this host's)
    assert client.pauses() == []
    # The first claim after the until removes the pause, and says so.
    daemon.wait_events("pause.ended", type="capped", until=until)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("how", ["stop", "kill -9"])
def test_a_pause_survives_a_restart(
    how: str, store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    first = make_daemon(2, env=store_env, args=("--handlers", "limit_handlers"))
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    assert client.pause(["capped"])
    if how == "stop":
        assert first.stop() == 0
    else:
        first.kill()
    second = make_daemon(2, env=store_env, args=("--handlers", "limit_handlers"))
    client.submit("capped", {"dir": str(tmp_path), "seconds": 0.1}, id="held")
    client.submit("echo", 1, id="after")
    assert client.wait(["after"], timeout=60)[0].status == "completed"
    assert client.get("held").waiting == PAUSED and started(tmp_path) == set()
    assert client.resume("capped")
    assert client.wait(["held"], timeout=60)[0].status == "completed"
    assert second.stop() == 0
    client.close()


@pytest.mark.timeout(120)
def test_a_pause_asked_while_no_daemon_runs_holds_from_its_start(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """On SQLite the request waits in the inbox; the daemon's first turn takes it before
    its first claim."""
    client = Client(home)
    client.submit("capped", {"dir": str(tmp_path), "seconds": 0.1}, id="held")
    assert client.pause("capped") is False  # waits in the inbox
    shown = make_daemon(2, args=("--handlers", "limit_handlers"), start=False)
    assert "takes effect when the daemon starts" in shown.cli("resume", "nothing").stdout
    shown.start()
    client.submit("echo", 1, id="after")
    assert client.wait(["after"], timeout=60)[0].status == "completed"
    assert client.get("held").waiting == PAUSED and started(tmp_path) == set()
    client.close()


@pytest.mark.timeout(120)
def test_bad_pauses_are_refused_naming_the_field(
    pausing: tuple[Daemon, Client], store_env: dict[str, str]
) -> None:
    daemon, client = pausing
    past = rfc3339(time.time() - 60)
    for args, words in [
        (("pause", ""), "type must be a non-empty string"),
        (("pause", "capped", "--until", past), f"until {past} has passed"),
        (("pause", "capped", "--until", "tomorrow"), "until must be an RFC 3339 time"),
        (("pause", "capped", "--until", past, "--for", "5"), "--until and --for cannot"),
        (("pause", "capped", "--for", "0"), "'--for'"),  # click's words vary by release
        (("pause", "--until", past), "need a TYPE"),
        (("resume", ""), "type must be a non-empty string"),
    ]:
        refused = daemon.cli(*args, env=store_env)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert words in refused.stderr, (args, refused.stderr)
    assert daemon.cli("resume", env=store_env).returncode == 2  # TYPE... is required
    with pytest.raises(InvalidJobFile, match="type: name at least one job type"):
        client.pause([])
    assert client.pauses() == []  # nothing was stored
    # A type no daemon registers may be paused (another daemon may come with it).
    unknown = daemon.cli("pause", "no-such-type", env=store_env)
    assert unknown.returncode == 0 and "paused no-such-type" in unknown.stdout
    assert [p.type for p in client.pauses()] == ["no-such-type"]
    if not store_env:
        [event] = daemon.wait_events("pause.set", type="no-such-type")
        assert event["registered"] is False and "no live daemon" in event["msg"]
    assert daemon.cli("resume", "no-such-type", "never-paused", env=store_env).returncode == 0
    assert client.pauses() == []


@pytest.mark.timeout(180)
def test_two_daemons_of_one_database_honour_one_pause(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    env = {"PROCPOOL_DATABASE_URL": pg_url}
    daemons = [
        make_daemon(2, env=env, args=("--handlers", "limit_handlers"), home=tmp_path / name)
        for name in ("a", "b")
    ]
    client = Client(tmp_path / "a", database_url=pg_url)
    assert client.pause("capped")
    quick = {"dir": str(tmp_path), "seconds": 0.05}
    held = [f"held-{n}" for n in range(10)]
    client.submit_many([{"type": "capped", "payload": quick, "id": i} for i in held])
    # Jobs of 50 ms, claimed one a worker at a time: instant ones, claimed 64 a worker,
    # could all go to the first daemon to look, and the other would have run none.
    free = [f"free-{n}" for n in range(40)]
    client.submit_many([{"type": "sleep", "payload": {"seconds": 0.05}, "id": i} for i in free])
    assert {job.status for job in client.wait(free, timeout=60)} == {"completed"}
    # Both daemons claimed meanwhile (each ran free jobs), and neither took a paused one.
    for daemon in daemons:
        wait_until(lambda d=daemon: d.events("job.completed"), 30, what="both daemons working")
    assert started(tmp_path) == set()
    assert all(job.waiting == PAUSED for job in client.list(status="pending"))
    assert client.resume("capped")
    assert {job.status for job in client.wait(held, timeout=60)} == {"completed"}
    client.close()


@pytest.mark.timeout(180)
def test_pauses_over_http(
    pausing: tuple[Daemon, Client], store_env: dict[str, str], tmp_path: Path
) -> None:
    daemon, client = pausing
    server = Server(daemon.home, "--bind", "127.0.0.1:0", env=store_env)
    try:
        assert server.get("/pauses").json() == {"pauses": []}
        until = rfc3339(time.time() + 3600)
        made = server.post("/pauses", {"types": ["capped", "render"], "until": until})
        assert made.status_code == 200, made.text
        assert [(p["type"], p["until"]) for p in made.json()["pauses"]] == [
            ("capped", until), ("render", until)]  # fmt: skip
        client.submit("capped", {"dir": str(tmp_path), "seconds": 0.1}, id="held")
        client.submit("echo", 1, id="after")
        assert client.wait(["after"], timeout=60)[0].status == "completed"
        held = server.get("/jobs/held").json()
        assert held["status"] == "pending"
        assert held["waiting"] == {"reason": "paused", "until": until}
        stats = server.get("/stats").json()
        assert [(p["type"], p["waiting"]) for p in stats["pauses"]] == [
            ("capped", 1),
            ("render", 0),
        ]
        assert {"key_limits", "expired"} <= set(stats)

        gone = server.client.delete("/pauses/capped")
        assert gone.status_code == 200, gone.text
        assert [p["type"] for p in gone.json()["pauses"]] == ["render"]
        assert client.wait(["held"], timeout=60)[0].status == "completed"
        missing = server.client.delete("/pauses/capped")
        assert missing.status_code == 404 and "not paused" in missing.json()["error"]

        past = rfc3339(time.time() - 5)
        for body, words in [
            ({"types": []}, "type: name at least one job type"),
            ({"types": [""]}, "type must be a non-empty string"),
            ({"types": "capped"}, "types: expected `array`"),
            ({"types": ["capped"], "until": "soon"}, "until must be an RFC 3339 time"),
            ({"types": ["capped"], "until": past}, "has passed"),
            ({"types": ["capped"], "duration": -1}, "duration must be"),
            ({"types": ["capped"], "for": 5}, "unknown field `for`"),
        ]:
            refused = server.post("/pauses", body)
            assert refused.status_code == 422, (body, refused.text)
            assert words in refused.json()["error"], (body, refused.text)
        assert server.post("/pauses", content=b"{").status_code == 400
        assert [p["type"] for p in server.get("/pauses").json()["pauses"]] == ["render"]
        schema = server.get("/openapi.json").json()
        assert {"get", "post"} <= set(schema["paths"]["/pauses"])
        assert "delete" in schema["paths"]["/pauses/{job_type}"]
        assert "PauseRequest" in schema["components"]["schemas"]
        assert "pauses" in json.dumps(schema["components"]["schemas"]["Stats"])
    finally:
        server.stop()


@pytest.mark.timeout(240)
def test_once_pause_returns_no_job_of_the_type_is_claimed(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The promise of `pause` under load: every claim that missed the pause has
    committed when it returns (PostgreSQL: two daemons claiming all along), so the jobs
    out of `pending` then are all that ever leave it until the resume."""
    homes = [tmp_path / "a", tmp_path / "b"][: 2 if store_env else 1]
    daemons = [
        make_daemon(2, env=store_env, args=("--handlers", "limit_handlers"), home=home)
        for home in homes
    ]
    client = Client(homes[0], database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    quick = {"dir": str(tmp_path), "seconds": 0.02}
    ids = [f"q{n:03d}" for n in range(300)]
    client.submit_many([{"type": "capped", "payload": quick, "id": i} for i in ids])
    wait_until(lambda: len(started(tmp_path)) >= 10, 60, what="jobs to start")

    assert client.pause("capped")
    claimed = {j.id for j in client.reader.get_many(ids).values() if j.status != "pending"}
    assert 0 < len(claimed) < len(ids)
    # Every daemon takes turns meanwhile (it runs an echo job), and the running ones end.
    echoes = [f"echo-{n}" for n in range(8)]
    client.submit_many([{"type": "echo", "payload": n, "id": i} for n, i in enumerate(echoes)])
    assert {job.status for job in client.wait(echoes, timeout=60)} == {"completed"}
    # Each end is recorded in a turn that also claims (a worker is free then), and is
    # seen only once that turn committed: the claims after the pause are all in `after`.
    client.wait(sorted(claimed), timeout=60)
    after = {j.id for j in client.reader.get_many(ids).values() if j.status != "pending"}
    assert after == claimed
    assert started(tmp_path) <= claimed

    assert client.resume("capped")
    assert {job.status for job in client.wait(ids, timeout=120)} == {"completed"}
    assert all(d.process is not None and d.process.poll() is None for d in daemons)
    client.close()
