"""Several real daemons on one PostgreSQL store (CONTRACT section 11), end to end.

Each daemon has a home of its own (inbox, logs, pid file) and the same
`database_url`; the lease is 3 s, so a dead daemon's jobs are rescued about 4-5 s
after its last renewal. Jobs are `span` runs (tests/pg_handlers.py): each holds a
lock on a file of its job while it runs, so two runs of one job at once leave
OVERLAP behind, whatever killed whom.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Daemon, alive, run_cli, wait_until

from procpool import Client

LEASE = 3.0


@pytest.fixture
def spans(tmp_path: Path) -> Path:
    directory = tmp_path / "spans"
    directory.mkdir()
    return directory


@pytest.fixture
def start(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> Callable[[str], Daemon]:
    """Daemons on the test's database (asked for first: the daemons stop before it goes)."""

    def start_one(name: str, workers: int = 2, lease: float = LEASE) -> Daemon:
        return make_daemon(
            workers,
            home=tmp_path / name,
            env={"PROCPOOL_DATABASE_URL": pg_url, "PROCPOOL_DAEMON_LEASE": str(lease)},
            args=("--handlers", "pg_handlers"),
        )

    return start_one


@pytest.fixture
def client(pg_url: str) -> Iterator[Callable[[Daemon], Client]]:
    """A client of a daemon's home on the shared store; closed after the test."""
    made: list[Client] = []

    def make(daemon: Daemon) -> Client:
        made.append(Client(daemon.home, database_url=pg_url))
        return made[-1]

    yield make
    for one in made:
        one.close()


def ran_by(daemon: Daemon) -> set[str]:
    return {event["job_id"] for event in daemon.events("job.started")}


def spans_of(directory: Path) -> list[list[str]]:
    path = directory / "spans"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def comebacks(daemon: Daemon) -> int:
    """How often the daemon came back after its connection broke: between two turns (it
    waited for the store), or inside one (it started again in the same process)."""
    return len(daemon.events("store.available")) + len(daemon.events("daemon.restarting"))


def running_now(directory: Path) -> set[str]:
    started, ended = set(), set()
    for job_id, attempt, _pid, what, _at in spans_of(directory):
        (started if what == "start" else ended).add((job_id, attempt))
    return {job_id for job_id, _ in started - ended}


def test_jobs_spread_over_the_daemons_and_every_client_sees_them(
    start: Callable[..., Daemon], client: Callable[[Daemon], Client], pg_url: str, spans: Path
) -> None:
    daemons = [start(name) for name in ("a", "b", "c")]
    producer = client(daemons[0])
    ids = [
        producer.submit("span", {"dir": str(spans), "seconds": 0.3}, id=f"j{n}") for n in range(18)
    ]
    # The very same submission again is the same job; another host's client sees it.
    assert producer.submit("span", {"dir": str(spans), "seconds": 0.3}, id="j0") == "j0"
    done = client(daemons[2]).wait(ids, timeout=60)
    assert {job.status for job in done} == {"completed"}
    shares = [ran_by(d) for d in daemons]
    assert all(shares), f"a daemon ran nothing: {[len(s) for s in shares]}"
    assert set().union(*shares) == set(ids)
    assert sum(len(s) for s in shares) == len(ids), "a job started twice"
    assert not (spans / "OVERLAP").exists()
    # The inbox of any host still works, and the CLI reads the shared store.
    daemons[1].drop("from-inbox.json", {"type": "span", "payload": {"dir": str(spans)}})
    [job] = client(daemons[1]).wait(["from-inbox"], timeout=30)
    assert job.status == "completed"
    listed = run_cli(daemons[2].home, "status", "from-inbox", env={"PROCPOOL_DATABASE_URL": pg_url})
    assert listed.returncode == 0, listed.stderr
    assert "completed" in listed.stdout
    # stats: every daemon on the database, with its lease, and the database's health.
    shown = run_cli(daemons[1].home, "stats", "--json", env={"PROCPOOL_DATABASE_URL": pg_url})
    assert shown.returncode == 0, shown.stderr
    database = json.loads(shown.stdout)["database"]
    assert sorted(d["pid"] for d in database["daemons"]) == sorted(d.pid for d in daemons)
    assert {d["state"] for d in database["daemons"]} == {"alive"}
    assert all(0 <= d["lease_age"] < LEASE < d["expires_in"] + LEASE for d in database["daemons"])
    assert database["jobs_live_tuples"] + database["jobs_dead_tuples"] >= 0
    text = run_cli(daemons[1].home, "stats", env={"PROCPOOL_DATABASE_URL": pg_url}).stdout
    assert "DAEMON" in text and "database: oldest snapshot" in text, text


def test_a_killed_daemons_running_jobs_are_rescued_by_the_others(
    start: Callable[..., Daemon], client: Callable[[Daemon], Client], pg_url: str, spans: Path
) -> None:
    a, b, c = (start(name) for name in ("a", "b", "c"))
    jobs = client(a)
    ids = [jobs.submit("span", {"dir": str(spans), "seconds": 6}, id=f"long{n}") for n in range(6)]
    wait_until(lambda: len(running_now(spans)) == 6, 30, what="six runs at once")
    # Six runs on six workers: two on each daemon (its log says so just after).
    on_a = wait_until(lambda: len(ran_by(a)) == 2 and ran_by(a), 10, what="a's two runs")
    killed_at = time.monotonic()
    a.process.kill()  # type: ignore[union-attr]
    a.process.wait(10)  # type: ignore[union-attr]
    done = jobs.wait(ids, timeout=60)
    assert {job.status for job in done} == {"completed"}
    attempts = {job.id: job.attempts for job in done}
    assert attempts == {job_id: 1 if job_id in on_a else 0 for job_id in ids}
    for job_id in on_a:
        history = jobs.attempts(job_id)
        assert [h.outcome for h in history] == ["retry", "completed"]
        assert history[0].error == "the daemon died while it ran"
    rescues = b.events("daemon.rescue") + c.events("daemon.rescue")
    assert {job_id for event in rescues for job_id in event["jobs"]} == on_a
    assert not (spans / "OVERLAP").exists()
    # Each run of a rescued job began after the one before had died with its daemon.
    starts = [s for s in spans_of(spans) if s[3] == "start" and s[0] in on_a]
    assert sorted(s[1] for s in starts) == ["1", "1", "2", "2"]
    assert time.monotonic() - killed_at >= LEASE  # not rescued before the lease ran out


def test_cancel_from_one_host_reaches_the_job_running_on_another(
    start: Callable[..., Daemon], client: Callable[[Daemon], Client], pg_url: str, spans: Path
) -> None:
    a = start("a", workers=1)
    b = start("b", workers=1)
    jobs = client(a)
    jobs.submit("span", {"dir": str(spans), "seconds": 60}, id="long")
    wait_until(lambda: "long" in running_now(spans), 30, what="the job to run")
    # The log says who runs it just after the commit.
    wait_until(lambda: "long" in ran_by(a) | ran_by(b), 10, what="the job.started line")
    owner, other = (a, b) if "long" in ran_by(a) else (b, a)
    started = time.monotonic()
    result = run_cli(
        other.home, "cancel", "long", "--timeout", "20", env={"PROCPOOL_DATABASE_URL": pg_url}
    )
    [job] = jobs.wait(["long"], timeout=20)
    assert job.status == "canceled", result.stdout + result.stderr
    assert time.monotonic() - started < LEASE  # the poll, not the lease, carried it
    owner.wait_events("job.canceled", job_id="long")


def test_a_cancel_is_heard_at_once_and_heard_again_after_the_database_restarted(
    start: Callable[..., Daemon],
    client: Callable[[Daemon], Client],
    pg_url: str,
    pg_cluster: Any,
    spans: Path,
) -> None:
    """With a 120 s lease the cancels are polled every 16 s: a cancel that arrives in a
    fraction of that was carried by the notification, before and after a restart of
    the database ended every session (the listening ones too)."""
    a, b = (start(name, workers=1, lease=120) for name in ("a", "b"))
    jobs = client(a)

    def cancel_from_the_other_host(job_id: str) -> None:
        jobs.submit("span", {"dir": str(spans), "seconds": 60}, id=job_id)
        wait_until(lambda: job_id in ran_by(a) | ran_by(b), 30, what=f"{job_id} to start")
        owner, other = (a, b) if job_id in ran_by(a) else (b, a)
        asked = time.monotonic()
        done = run_cli(
            other.home, "cancel", job_id, "--timeout", "30", env={"PROCPOOL_DATABASE_URL": pg_url}
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert time.monotonic() - asked < 6, f"{job_id}: the poll, not the notification, carried it"
        owner.wait_events("job.canceled", job_id=job_id)

    cancel_from_the_other_host("before")
    pg_cluster.pg_ctl("restart")
    for daemon in (a, b):
        wait_until(lambda d=daemon: comebacks(d), 30, what="the daemon to be back on the database")
    cancel_from_the_other_host("after")


def test_a_daemon_stopped_past_its_lease_fences_itself_and_comes_back_anew(
    start: Callable[..., Daemon], client: Callable[[Daemon], Client], pg_url: str, spans: Path
) -> None:
    a = start("a")
    jobs = client(a)
    # Both start on a alone; then b joins.
    jobs.submit("span", {"dir": str(spans), "seconds": 1.0}, id="short")
    jobs.submit("span", {"dir": str(spans), "seconds": 30}, id="long")
    wait_until(lambda: running_now(spans) == {"short", "long"}, 30, what="both on a")
    b = start("b")
    [runner] = [int(s[2]) for s in spans_of(spans) if s[0] == "long" and s[3] == "start"]
    a.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # The worker running `long` fences itself before the lease may run out (the
        # worker of `short`, idle by then, has no run to end); b rescues both jobs.
        wait_until(lambda: not alive(runner), 10, what="the worker of long to fence itself")
        assert time.monotonic() - stopped_at < LEASE
        wait_until(
            lambda: {"short", "long"} <= {j for e in b.events("daemon.rescue") for j in e["jobs"]},
            20,
            what="b's rescue",
        )
    finally:
        a.signal(signal.SIGCONT)
    # Back, a learns it was declared dead, drops what its runs said, and rejoins.
    a.wait_events("daemon.lease_lost", timeout=20)
    a.wait_events("job.stale_result", job_id="short")  # its result came too late
    assert not a.events("job.completed", job_id="short")
    [short] = jobs.wait(["short"], timeout=30)
    assert (short.status, short.attempts) == ("completed", 1)
    assert not (spans / "OVERLAP").exists()
    with psycopg.connect(pg_url) as db:
        rows = db.execute(
            "SELECT state FROM procpool_daemons WHERE pid = %s ORDER BY id", (a.pid,)
        ).fetchall()
    assert [r[0] for r in rows] == ["dead", "alive"]
    jobs.cancel("long")
    jobs.wait(["long"], timeout=20)


def test_the_database_restarted_under_running_daemons_loses_nothing(
    start: Callable[..., Daemon],
    client: Callable[[Daemon], Client],
    spans: Path,
    pg_cluster: Any,
) -> None:
    a, b = start("a"), start("b")
    jobs = client(a)
    ids = [jobs.submit("span", {"dir": str(spans), "seconds": 1.5}, id=f"r{n}") for n in range(8)]
    wait_until(lambda: len(running_now(spans)) == 4, 30, what="four runs at once")
    pg_cluster.pg_ctl("restart")  # fast: every session is ended under the daemons
    done = client(b).wait(ids, timeout=60)
    assert {job.status for job in done} == {"completed"}
    for daemon in (a, b):
        assert daemon.process is not None and daemon.process.poll() is None, daemon.stderr()
        wait_until(lambda d=daemon: comebacks(d), 30, what="the daemon to be back on the database")
    assert not (spans / "OVERLAP").exists()
    # Still serving, both of them, after the restart.
    more = [jobs.submit("span", {"dir": str(spans), "seconds": 0.1}, id=f"s{n}") for n in range(8)]
    assert {job.status for job in jobs.wait(more, timeout=30)} == {"completed"}
    assert a.stop() == 0 and b.stop() == 0


def test_the_same_jobs_dropped_on_two_hosts_at_once_are_one_job_each(
    start: Callable[..., Daemon], client: Callable[[Daemon], Client], spans: Path
) -> None:
    """Two inboxes (and a client) offer the same ids in the same moment: each id is one
    job, every offer of it is accepted as that job, and no daemon fails on the race."""
    a, b = start("a"), start("b")
    producer = client(a)
    for round_ in range(4):
        lines = "".join(
            json.dumps(
                {
                    "id": f"same{round_}-{n}",
                    "type": "span",
                    "payload": {"dir": str(spans), "seconds": 0},
                }
            )
            + "\n"
            for n in range(150)
        )
        for daemon in (a, b):  # both inboxes first, so that their turns overlap
            (daemon.home / "inbox" / f".batch{round_}.tmp").write_text(lines)
        for daemon in (a, b):
            (daemon.home / "inbox" / f".batch{round_}.tmp").rename(
                daemon.home / "inbox" / f"batch{round_}.jsonl"
            )
        ids = [f"same{round_}-{n}" for n in range(150)]
        producer.submit_many(
            [
                {"id": i, "type": "span", "payload": {"dir": str(spans), "seconds": 0}}
                for i in ids[::-1]
            ]
        )
        for daemon in (a, b):  # each file judged whole: its jobs new, or already there
            wait_until(
                lambda d=daemon, r=round_: (
                    {e["event"] for e in d.log() if e.get("file") == f"batch{r}.jsonl"}
                    & {"file.accepted", "file.duplicate"}
                ),
                30,
                what=f"batch{round_}.jsonl to be judged",
            )
            assert not [e for e in daemon.log() if e["event"] == "file.rejected"]
        assert {job.status for job in producer.wait(ids, timeout=60)} == {"completed"}
    for daemon in (a, b):
        assert daemon.process is not None and daemon.process.poll() is None, daemon.stderr()
    assert len(producer.list(limit=10_000)) == 600
    assert not (spans / "OVERLAP").exists()


def test_connections_cut_in_the_middle_of_turns_keep_the_workers_and_their_runs(
    start: Callable[..., Daemon], client: Callable[[Daemon], Client], pg_url: str, spans: Path
) -> None:
    """The database ends the daemon's sessions again and again while it works through a
    backlog, until cuts landed between a turn's BEGIN and its COMMIT: the turn is rolled
    back, but the daemon keeps its workers, their runs and their results (CONTRACT 11):
    every job runs once, in the same two workers, and none is charged an attempt."""
    a = start("a")
    jobs = client(a)
    pid = a.pid
    payload = {"dir": str(spans), "seconds": 0.01}
    ids = jobs.submit_many(
        [{"id": f"c{n}", "type": "span", "payload": payload, "max_attempts": 100}
         for n in range(600)]
    )  # fmt: skip
    # About a third of the cuts land inside a turn: cut until two did (or 40 cuts).
    cuts = 0
    # (On a daemon that restarts in place instead, the cut says daemon.restarting.)
    while len(a.events("store.lost") + a.events("daemon.restarting")) < 2 and cuts < 40:
        cuts += 1
        # After each cut the daemon makes progress again before the next one.
        ended = sum(1 for s in spans_of(spans) if s[3] == "end")
        wait_until(
            lambda e=ended: sum(1 for s in spans_of(spans) if s[3] == "end") >= e + 10,
            30,
            what="ten more runs to end",
        )
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'procpool' AND datname = current_database()"
            )
    try:
        # Well inside the test's own timeout, so that a stall shows the daemon's state.
        done = jobs.wait(ids, timeout=60)
    except TimeoutError:
        events = [f"{e['ts']} {e['event']} {e['msg']}" for e in a.log()[-40:]]
        pytest.fail("jobs not finished 60 s after the cuts; the daemon's last events:\n"
                    + "\n".join(events) + f"\nstderr:\n{a.stderr()[-3000:]}")  # fmt: skip
    assert {job.status for job in done} == {"completed"}
    assert {job.attempts for job in done} == {0}  # nothing charged
    starts = [s for s in spans_of(spans) if s[3] == "start"]
    assert sorted(s[0] for s in starts) == sorted(ids)  # each job ran once
    assert len({s[2] for s in starts}) == 2  # in the same two workers throughout
    assert len(a.events("store.lost")) >= 2, "fewer than two cuts landed inside a turn"
    assert len(a.events("store.reconciled")) >= 2
    assert not a.events("daemon.restarting")
    assert a.process is not None and a.process.poll() is None, a.stderr()
    assert a.pid == pid
    assert not (spans / "OVERLAP").exists()
    more = jobs.submit("span", payload, id="after")
    assert jobs.wait([more], timeout=30)[0].status == "completed"
    assert a.stop() == 0
