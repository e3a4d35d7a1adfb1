"""Issue 14 through real processes: nothing a job or its surroundings do takes the
daemon down, and a handler's whole process tree ends with its run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import msgspec
import pytest
from conftest import Daemon, wait_until

HANDLERS = ("--handlers", "containment_handlers")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pids(record: Path) -> list[int]:
    return [int(line) for line in record.read_text().split()] if record.exists() else []


def serves(daemon: Daemon, job_id: str) -> None:
    """The daemon is alive and its pool still works."""
    assert daemon.process.poll() is None
    daemon.client.submit("echo", job_id, id=job_id)
    daemon.wait_status(job_id, "completed")


def test_a_handler_that_forks_and_logs_from_its_children(make_daemon) -> None:
    daemon = make_daemon(workers=2, args=HANDLERS)
    daemon.client.submit("fork_and_log", None, id="forker", max_attempts=1)
    job = daemon.wait_status("forker", "completed", "failed", timeout=60)
    assert (job.status, job.result) == ("completed", [0, 1, 2, 3, 4, 5]), job.last_error
    lines = daemon.wait_events("job.log", 2, job_id="forker")
    assert [e["msg"] for e in lines] == ["before the pool", "after the pool"]
    # The children's lines come through their standard error (cut to the line limit).
    wait_until(
        lambda: (
            sum(
                "INFO: from a forked child" in e["msg"]
                for e in daemon.events("job.output", job_id="forker", stream="stderr")
            )
            == 120
        )
    )
    serves(daemon, "after")


def test_a_child_terminated_as_soon_as_it_is_forked_dies(make_daemon) -> None:
    """multiprocessing's `terminate()` at once after `start()` (as `Pool.__exit__` does
    to a worker the pool just replaced): with the worker's SIGTERM handler reset only
    after the fork, the signal was lost and the job waited forever."""
    daemon = make_daemon(workers=1, args=HANDLERS)
    daemon.client.submit("terminate_at_once", {"times": 20}, id="early", max_attempts=1)
    job = daemon.wait_status("early", "completed", "failed", timeout=60)
    assert (job.status, job.result) == ("completed", 20), job.last_error
    serves(daemon, "after-early")


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_child_in_its_own_session_ends_with_the_run(make_daemon, tmp_path, how: str) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    record, overlap = tmp_path / "children", tmp_path / "overlap"
    payload = {"record": str(record), "overlap": str(overlap)}
    if how == "cancel":
        daemon.client.submit("session_child", payload, id="parent")
        wait_until(lambda: pids(record))
        assert daemon.cli("cancel", "parent", "--timeout", "30").returncode == 0
    else:  # two attempts, each timed out: their children must never overlap
        daemon.client.submit("session_child", payload, id="parent", timeout=1, max_attempts=2)
        daemon.wait_status("parent", "failed", timeout=60)
        assert len(pids(record)) == 2
    wait_until(lambda: not any(alive(pid) for pid in pids(record)), timeout=10,
               what="the handler's children to be gone")  # fmt: skip
    assert not overlap.exists(), overlap.read_text()
    serves(daemon, "after")


def test_a_daemonized_grandchild_ends_with_the_run(make_daemon, tmp_path) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    record = tmp_path / "grandchild"
    daemon.client.submit("daemonized_grandchild", {"record": str(record)}, id="parent")
    wait_until(lambda: record.exists() and record.read_text().strip())
    grandchild = int(record.read_text())
    assert alive(grandchild)
    assert daemon.cli("cancel", "parent", "--timeout", "30").returncode == 0
    wait_until(lambda: not alive(grandchild), timeout=10)


def test_what_a_finished_job_left_running_is_ended(make_daemon, tmp_path) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    record = tmp_path / "children"
    payload = {"record": str(record), "overlap": str(tmp_path / "o"), "return": True}
    daemon.client.submit("session_child", payload, id="leaver")
    daemon.wait_status("leaver", "completed")
    wait_until(lambda: not alive(pids(record)[0]), timeout=10)


def test_a_child_left_by_a_daemon_killed_with_9_is_ended_at_the_next_start(
    make_daemon, tmp_path
) -> None:
    first = make_daemon(workers=1, args=HANDLERS)
    record = tmp_path / "children"
    payload = {"record": str(record), "overlap": str(tmp_path / "o")}
    first.client.submit("session_child", payload, id="orphaned")
    wait_until(lambda: pids(record))
    first.kill()
    [child] = pids(record)
    assert alive(child)  # in a session of its own, re-parented to init: still there
    second = make_daemon(workers=1, args=HANDLERS)
    wait_until(lambda: not alive(child), timeout=10)
    assert second.wait_events("process.killed_stale", pid=child)


BAD_FRAMES = {
    # name: (frame body, or raw bytes with "raw", what the error must say)
    "not msgpack": ({"hex": "c1c1c1c1"}, "not valid"),
    "unknown tag": ({"hex": msgspec.msgpack.encode(["Bogus", 1]).hex()}, "not valid"),
    "wrong types": ({"hex": msgspec.msgpack.encode(["Heartbeat", 5, "x"]).hex()}, "not valid"),
    "not UTF-8": ({"hex": "92a948656172746265617482a1c3"}, "not valid"),
    "over the limit": ({"hex": struct.pack("!I", 2**31).hex(), "raw": True}, "over the limit"),
    "negative progress": (
        {"hex": msgspec.msgpack.encode(["ProgressReport", "x", 1, -0.5, None]).hex()},
        "not valid",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_worker_messages_end_the_worker_not_the_daemon(make_daemon, case: str) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    payload, says = BAD_FRAMES[case]
    daemon.client.submit("send_raw", payload, id="bad", max_attempts=1)
    job = daemon.wait_status("bad", "failed", timeout=30)
    assert says in job.last_error, job.last_error
    assert "worker sent" in job.last_error
    serves(daemon, "after")


def test_handler_log_fields_named_like_the_daemons_are_kept_apart(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    line = ["LogLine", "INFO", "clash", "c", 1, {"event": "x", "level": "y", "job_id": "z"}]
    hex_line = msgspec.msgpack.encode(line).hex()
    daemon.client.submit("send_raw", {"hex": hex_line, "seconds": 0}, id="c")
    daemon.wait_status("c", "completed")
    [event] = daemon.wait_events("job.log", job_id="c")
    assert event["fields"] == {"event": "x", "level": "y", "job_id": "z"}
    assert json.dumps(event)
    serves(daemon, "after")
