"""Dependencies (CONTRACT section 15) through real daemons: `after` holds a job until its
parents complete; a parent that fails or is canceled cancels its "cancel" dependents in
the same transaction, down the graph; "run" dependents start once every parent is
terminal; bad `after` values and graphs are refused naming the id, with nothing stored."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, wait_until
from http_helpers import Server

from procpool import Client, InvalidJobFile

FAST = {"PROCPOOL_BACKOFF_BASE": "0.05", "PROCPOOL_BACKOFF_MAX": "0.1"}
HANDLERS = ("--handlers", "dependency_handlers")


def runs(directory: Path) -> Counter[str]:
    """How many times each job's handler ran (the `mark` handler's lines)."""
    path = directory / "runs"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split()[0] for line in lines)


def lines(jobs: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(job) + "\n" for job in jobs)


@pytest.mark.timeout(90)
def test_a_failed_parent_cancels_its_dependents_down_the_graph(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A diamond a -> (b, c) -> d, then e after d: b fails after its retries, so d is
    canceled by b and e by d, in the turn that fails b; c completes untouched."""
    daemon = make_daemon(2, env={**FAST, "PROCPOOL_METRICS_INTERVAL": "0.5"})
    daemon.drop(
        "diamond.jsonl",
        lines([
            {"id": "e", "type": "echo", "payload": "e", "after": ["d"]},  # before its parent
            {"id": "d", "type": "echo", "payload": "d", "after": ["b", "c"]},
            {"id": "b", "type": "fail", "payload": {"message": "b broke"}, "max_attempts": 2,
             "after": ["a"]},
            {"id": "c", "type": "echo", "payload": "c", "after": ["a"]},
            {"id": "a", "type": "echo", "payload": "a"},
        ]),
    )  # fmt: skip
    d = daemon.wait_status("d", "canceled", timeout=60)
    assert (d.canceled_by, d.last_error) == ("b", "canceled: its parent b was failed")
    assert d.attempts == 0 and d.after == ["b", "c"] and d.after_failure == "cancel"
    e = daemon.wait_status("e", "canceled")
    assert (e.canceled_by, e.last_error) == ("d", "canceled: its parent d was canceled")
    b = daemon.wait_status("b", "failed")
    assert b.attempts == 2
    assert daemon.wait_status("c", "completed").result == "c"
    assert daemon.job("a").status == "completed"
    # No job started before its parents had completed.
    started = [e["job_id"] for e in daemon.events("job.started")]
    assert "d" not in started and "e" not in started
    assert started.index("c") > started.index("a") and started.index("b") > started.index("a")
    canceled = {e["job_id"]: e for e in daemon.events("job.canceled")}
    assert canceled["d"]["canceled_by"] == "b" and canceled["e"]["canceled_by"] == "d"
    stats = json.loads(daemon.cli("stats", "--json").stdout)
    assert (stats["waiting_for_parents"], stats["canceled_by_parent"]) == (0, 2)
    metrics = daemon.home / "metrics.prom"
    wait_until(
        lambda: (
            metrics.exists() and "procpool_jobs_canceled_by_parent_total 2" in metrics.read_text()
        ),
        30,
        what="the canceled dependents in metrics.prom",
    )
    # A failed job's dependents end in the same transaction as the failure: the store
    # never shows b failed while d still waits (both change in b's last turn).
    assert d.updated_at == b.updated_at


@pytest.mark.timeout(90)
def test_bad_after_is_refused_naming_the_id_and_nothing_is_stored(
    make_daemon: Callable[..., Daemon], home: Path
) -> None:
    daemon = make_daemon(1)
    client = Client(home)
    daemon.drop(
        "cycle.jsonl",
        lines([
            {"id": "ok", "type": "echo"},
            {"id": "x", "type": "echo", "after": ["z"]},
            {"id": "y", "type": "echo", "after": ["x"]},
            {"id": "z", "type": "echo", "after": ["y"]},
        ]),
    )  # fmt: skip
    daemon.drop("unknown.json", {"type": "echo", "after": ["nobody"]})
    daemon.drop("many.json", {"type": "echo", "after": [f"p{n}" for n in range(257)]})
    daemon.drop("shape.json", {"type": "echo", "after": ["-no"]})
    daemon.drop("self.json", {"type": "echo", "id": "me", "after": ["me"]})
    rejected = daemon.home / "rejected"
    reports = {
        name: wait_until(
            lambda name=name: (
                (rejected / f"{name}.error.json").exists()
                and json.loads((rejected / f"{name}.error.json").read_text())
            ),
            30,
            what=f"{name} rejected",
        )
        for name in ("cycle.jsonl", "unknown.json", "many.json", "shape.json", "self.json")
    }
    assert "after makes a cycle: x -> z -> y -> x" in reports["cycle.jsonl"]["error"]
    assert "none of the file's jobs was stored" in reports["cycle.jsonl"]["error"]
    assert "after names nobody, which is no job" in reports["unknown.json"]["error"]
    assert "after must list 1-256 job ids, got 257" in reports["many.json"]["error"]
    assert "each id in after must be" in reports["shape.json"]["error"]
    assert '"-no"' in reports["shape.json"]["error"]
    assert "after names the job itself (me)" in reports["self.json"]["error"]
    for job_id in ("ok", "x", "y", "z", "me"):
        assert daemon.job(job_id) is None
    # The client and the socket door: the batch is refused whole, naming the job and id.
    with pytest.raises(InvalidJobFile, match="after names ghost, which is no job"):
        client.submit_many([{"id": "m1", "type": "echo"},
                            {"id": "m2", "type": "echo", "after": ["m1", "ghost"]}])  # fmt: skip
    assert daemon.job("m1") is None
    with pytest.raises(InvalidJobFile, match="after_failure must be one of"):
        client.submit("echo", after=["m1"], after_failure="sometimes")
    # In any order within one submission.
    assert client.submit_many([{"id": "n2", "type": "echo", "after": ["n1"]},
                               {"id": "n1", "type": "echo"}]) == ["n2", "n1"]  # fmt: skip
    assert [j.status for j in client.wait(["n2", "n1"], timeout=30)] == ["completed"] * 2
    client.close()


@pytest.mark.timeout(90)
def test_a_child_runs_once_after_a_kill_between_its_parent_and_its_start(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """The parent's completion and its child's release are one commit: a kill -9 after
    it leaves the child due (not waiting forever), and it runs exactly once."""
    daemon = make_daemon(2, args=HANDLERS)
    client = Client(home)
    # The child is due a few seconds after its parent completes: the daemon dies between.
    client.submit_many([
        {"id": "parent", "type": "mark", "payload": {"dir": str(tmp_path), "value": 1}},
        {"id": "child", "type": "mark", "payload": {"dir": str(tmp_path)}, "after": ["parent"],
         "delay": 6},
    ])  # fmt: skip
    daemon.wait_status("parent", "completed")
    assert client.get("child").status == "pending"
    daemon.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    daemon.wait_exit()
    assert not daemon.events("job.started", job_id="child")
    again = make_daemon(2, args=HANDLERS)
    again.wait_status("child", "completed", timeout=60)
    assert runs(tmp_path) == Counter({"parent": 1, "child": 1})
    client.close()


@pytest.mark.timeout(90)
def test_a_run_fan_in_starts_after_mixed_outcomes_and_sees_them(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """after_failure "run": the callback waits for every parent to be terminal (a retry
    is not the end), then runs, and ctx.parents holds each parent's status, result and
    last_error; its dependents with "cancel" wait for it as for any parent."""
    daemon = make_daemon(2, env=FAST, args=HANDLERS)
    client = Client(home)
    client.submit_many([
        {"id": "ok", "type": "echo", "payload": {"n": 1}},
        {"id": "flaky", "type": "fail", "payload": {"times": 1, "message": "once"}},
        {"id": "broken", "type": "fail", "payload": {"message": "never"}, "max_attempts": 2},
        {"id": "gated", "type": "mark", "payload": {"dir": str(tmp_path), "gate": "open"}},
        {"id": "callback", "type": "parents", "after": ["ok", "flaky", "broken", "gated"],
         "after_failure": "run"},
        {"id": "after-callback", "type": "echo", "after": ["callback"]},
    ])  # fmt: skip
    daemon.wait_status("broken", "failed", timeout=60)
    daemon.wait_status("flaky", "completed", timeout=60)
    waiting = client.get("callback")
    assert waiting.status == "pending" and waiting.waiting == {
        "reason": "after",
        "parents": {"ok": "completed", "flaky": "completed", "broken": "failed",
                    "gated": "running"},
    }  # fmt: skip
    (tmp_path / "open").write_text("")
    callback = daemon.wait_status("callback", "completed", timeout=60)
    assert callback.result == {
        "ok": {"status": "completed", "result": {"n": 1}, "last_error": None},
        "flaky": {"status": "completed", "result": {"succeeded_on_attempt": 2},
                  "last_error": "RuntimeError: once (attempt 1)"},
        "broken": {"status": "failed", "result": None,
                   "last_error": "RuntimeError: never (attempt 2)"},
        "gated": {"status": "completed", "result": None, "last_error": None},
    }  # fmt: skip
    assert daemon.wait_status("after-callback", "completed").after == ["callback"]
    client.close()


@pytest.mark.timeout(120)
def test_on_postgresql_a_parent_on_one_daemon_releases_a_child_on_another(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Two daemons on one database, each with a handler the other lacks: the parent runs
    on the first, its child on the second; a client's cancel of a pending parent and a
    parent's failure cancel their dependents in the same transaction; a bad `after`
    is refused by the client naming the id, nothing stored."""
    env = {**FAST, "PROCPOOL_DATABASE_URL": pg_url}
    first = make_daemon(2, env=env, home=tmp_path / "first", args=HANDLERS)
    second = make_daemon(
        2, env=env, home=tmp_path / "second", args=("--handlers", "dependency_child_handlers")
    )
    client = Client(first.home, database_url=pg_url)
    try:
        client.submit_many([
            {"id": "child", "type": "collect", "after": ["parent"]},
            {"id": "parent", "type": "mark", "payload": {"dir": str(tmp_path), "value": 7}},
            {"id": "doomed", "type": "fail", "payload": {"message": "no"}, "max_attempts": 1},
            {"id": "orphan", "type": "collect", "after": ["doomed"]},
            {"id": "later", "type": "mark", "payload": {"dir": str(tmp_path)}, "delay": 3600},
            {"id": "never", "type": "collect", "after": ["later"]},
        ])  # fmt: skip
        [child] = client.wait(["child"], timeout=60)
        assert child.status == "completed"
        assert child.result == {"parent": {"status": "completed", "result": 7, "last_error": None}}
        assert first.events("job.started", job_id="parent")
        assert second.wait_events("job.started", timeout=30, job_id="child")
        orphan = wait_until(
            lambda: (j := client.get("orphan")).status == "canceled" and j, 60, what="orphan"
        )
        assert orphan.canceled_by == "doomed"
        assert client.get("never").waiting == {"reason": "after", "parents": {"later": "pending"}}
        client.cancel("later")
        never = client.get("never")
        assert (never.status, never.canceled_by) == ("canceled", "later")
        with pytest.raises(InvalidJobFile, match="after names ghost, which is no job"):
            client.submit("collect", id="haunted", after=["ghost"])
        assert client.get("haunted") is None
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_the_commands_submit_list_retry_a_chain_and_retention_keeps_parents(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """`submit --after`, `list --after`, `status --json`, `retry --cascade` (the canceled
    chain re-created on the new ids, the old jobs unchanged), and `prune`, which keeps a
    finished parent while a job waits for it."""
    daemon = make_daemon(2, env=FAST, args=HANDLERS)
    work = json.dumps({"dir": str(tmp_path)})

    def cli(*args: str) -> str:
        done = daemon.cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("submit", "flip", work, "--id", "root", "--max-attempts", "1")
    cli("submit", "echo", "--id", "kid", "--after", "root")
    cli("submit", "echo", "--id", "grandkid", "--after", "kid")
    cli("submit", "echo", "--id", "runner", "--after", "root", "--after-failure", "run")
    daemon.wait_status("grandkid", "canceled")
    daemon.wait_status("runner", "completed")
    listed = [json.loads(line) for line in cli("list", "--after", "root", "--json").splitlines()]
    assert sorted(job["id"] for job in listed) == ["kid", "runner"]
    kid = json.loads(cli("status", "kid", "--json"))
    assert (kid["status"], kid["canceled_by"], kid["after"], kid["after_failure"]) == (
        "canceled", "root", ["root"], "cancel",
    )  # fmt: skip
    (tmp_path / "ok").write_text("")
    printed = cli("retry", "root", "--cascade").splitlines()
    assert printed == ["root root.retry-1", "kid kid.retry-1", "grandkid grandkid.retry-1"]
    for new in ("root.retry-1", "kid.retry-1", "grandkid.retry-1"):
        assert daemon.wait_status(new, "completed").retry_of == new.removesuffix(".retry-1")
    assert daemon.job("grandkid.retry-1").after == ["kid.retry-1"]
    assert [daemon.job(old).status for old in ("root", "kid", "grandkid")] == [
        "failed", "canceled", "canceled",
    ]  # fmt: skip
    # A job waits for a finished parent and a running one: prune keeps the finished one.
    gated = json.dumps({"dir": str(tmp_path), "gate": "release"})
    cli("submit", "mark", gated, "--id", "blocker")
    cli("submit", "echo", "--id", "keeper", "--after", "kid.retry-1", "--after", "blocker")
    assert "after kid.retry-1 (completed), blocker (" in cli("status", "keeper")
    assert json.loads(cli("stats", "--json"))["waiting_for_parents"] == 1
    cli("prune", "--older-than", "0", "--timeout", "60")
    assert daemon.job("runner") is None and daemon.job("root") is None
    assert daemon.job("kid.retry-1").status == "completed"
    (tmp_path / "release").write_text("")
    daemon.wait_status("keeper", "completed")
    cli("prune", "--older-than", "0", "--timeout", "60")
    assert daemon.job("kid.retry-1") is None


@pytest.mark.timeout(120)
def test_a_fan_out_and_fan_in_of_a_thousand_jobs_merges_once(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """split -> 1,000 chunks -> four merges of 250 (a job names at most 256 parents) ->
    one final merge, all in one .jsonl written children first: every job runs once,
    each merge after all of its parents, the final merge once."""
    daemon = make_daemon(2, args=HANDLERS)
    chunks = [f"chunk-{n}" for n in range(1000)]
    merges = [f"merge-{part}" for part in range(4)]
    mark = {"dir": str(tmp_path)}
    jobs = [
        {"id": "final", "type": "mark", "payload": mark, "after": merges},
        *({"id": merge, "type": "mark", "payload": mark,
           "after": chunks[part * 250 : (part + 1) * 250]} for part, merge in enumerate(merges)),
        *({"id": chunk, "type": "mark", "payload": mark, "after": ["split"]}
          for chunk in chunks),
        {"id": "split", "type": "mark", "payload": mark},
    ]  # fmt: skip
    daemon.drop("pipeline.jsonl", lines(jobs))
    daemon.wait_status("final", "completed", timeout=90)
    assert runs(tmp_path) == Counter({job["id"]: 1 for job in jobs})
    order = [line.split()[0] for line in (tmp_path / "runs").read_text().splitlines()]
    assert order[0] == "split" and order[-1] == "final"
    position = {job_id: n for n, job_id in enumerate(order)}
    for part, merge in enumerate(merges):
        assert max(position[c] for c in chunks[part * 250 : (part + 1) * 250]) < position[merge]


@pytest.mark.timeout(90)
def test_the_http_api_takes_after_and_refuses_a_bad_one_naming_it(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    make_daemon(2, env=FAST, args=HANDLERS)
    server = Server(home, "--bind", "127.0.0.1:0")
    try:
        gated = {"dir": str(tmp_path), "gate": "go"}
        created = server.post("/jobs/batch", [
            {"id": "h-child", "type": "echo", "after": ["h-parent"]},
            {"id": "h-parent", "type": "mark", "payload": gated},
        ])  # fmt: skip
        assert created.status_code == 201, created.text
        one = server.post("/jobs", {"id": "h-one", "type": "echo", "after": ["h-child"]})
        assert one.status_code == 201, one.text
        waiting = server.get("/jobs/h-one").json()
        assert (waiting["after"], waiting["after_failure"]) == (["h-child"], "cancel")
        assert waiting["waiting"] == {"reason": "after", "parents": {"h-child": "pending"}}
        bad = server.post("/jobs", {"id": "h-bad", "type": "echo", "after": ["ghost"]})
        assert bad.status_code == 422 and "after names ghost, which is no job" in bad.text
        cycle = server.post("/jobs/batch", [
            {"id": "h-x", "type": "echo", "after": ["h-y"]},
            {"id": "h-y", "type": "echo", "after": ["h-x"]},
        ])  # fmt: skip
        assert cycle.status_code == 422 and "after makes a cycle" in cycle.text
        assert server.get("/jobs/h-x").status_code == 404
        page = server.get("/jobs", params={"after": "h-parent"}).json()
        assert [job["id"] for job in page["jobs"]] == ["h-child"]
        (tmp_path / "go").write_text("")
        assert server.get("/jobs/h-one/wait").json()["status"] == "completed"
        # A chain canceled by its root's failure, retried whole.
        flip = {"dir": str(tmp_path / "flip")}
        (tmp_path / "flip").mkdir()
        server.post("/jobs/batch", [
            {"id": "r-root", "type": "flip", "payload": flip, "max_attempts": 1},
            {"id": "r-kid", "type": "echo", "after": ["r-root"]},
        ])  # fmt: skip
        assert server.get("/jobs/r-kid/wait").json()["canceled_by"] == "r-root"
        (tmp_path / "flip" / "ok").write_text("")
        retried = server.post("/jobs/r-root/retry?cascade=true", None)
        assert retried.status_code == 201, retried.text
        assert retried.json() == {
            "id": "r-root.retry-1",
            "renamed": {"r-root": "r-root.retry-1", "r-kid": "r-kid.retry-1"},
        }
        assert server.get("/jobs/r-kid.retry-1/wait").json()["status"] == "completed"
    finally:
        server.kill()


@pytest.mark.timeout(120)
def test_a_keyed_dependent_waits_for_its_parent_and_frees_its_key_when_it_ends(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """`after` and `unique_key` on one job (CONTRACT sections 15 and 16), by the daemon's
    inbox on SQLite and by the client's own writes on PostgreSQL: the keyed dependent
    holds its key while it waits, runs once after its parent completes, and frees the
    key when it ends, by completion or by its parent's failure."""
    daemon = make_daemon(2, env={**FAST, **store_env}, args=HANDLERS)
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    mark = {"dir": str(tmp_path)}
    try:
        parent = client.submit("mark", {**mark, "gate": "open"})
        child = client.submit("mark", mark, after=[parent], unique_key="merge")
        daemon.wait_events("job.started", job_id=parent, timeout=30)
        held = client.get(child)
        assert held is not None and held.status == "pending"
        assert held.waiting == {"reason": "after", "parents": {parent: "running"}}
        # A waiting dependent holds its key, against a duplicate with or without `after`.
        assert client.submit("mark", mark, after=[parent], unique_key="merge") == child
        assert client.submit("mark", mark, unique_key="merge") == child
        (tmp_path / "open").touch()
        done = client.wait([parent, child], timeout=60)
        assert [job.status for job in done] == ["completed", "completed"], done
        assert (tmp_path / "runs").read_text().split()[::2] == [parent, child]
        # The key is free once the dependent ended: a new keyed dependent is a new job.
        again = client.submit("mark", mark, after=[parent], unique_key="merge")
        assert again != child
        assert client.wait([again], timeout=60)[0].status == "completed"
        # A dependent canceled by its parent's failure frees its key too.
        doomed = client.submit("flip", mark, max_attempts=1)
        orphan = client.submit("mark", mark, after=[doomed], unique_key="orphan")
        [canceled] = client.wait([orphan], timeout=60)
        assert (canceled.status, canceled.canceled_by) == ("canceled", doomed), canceled
        free = client.submit("mark", mark, unique_key="orphan")
        assert free != orphan
        assert client.wait([free], timeout=60)[0].status == "completed"
        assert runs(tmp_path) == {parent: 1, child: 1, again: 1, free: 1}
    finally:
        client.close()
