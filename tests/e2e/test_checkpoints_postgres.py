"""Checkpoints on PostgreSQL with a daemon frozen past its lease (CONTRACT section 16,
DESIGN 16): what its run asks to store after the freeze is never stored, and the
daemon that rescues the job hands its next attempt the last checkpoint committed
before the freeze (tests/checkpoint_handlers.py: checkpoint_forever)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, alive, wait_until

from procpool import Client

LEASE = 3.0


def noted(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.timeout(180)
def test_a_daemon_frozen_past_its_lease_stores_no_late_checkpoint(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    def start(name: str) -> Daemon:
        return make_daemon(
            1,
            home=tmp_path / name,
            env={"PROCPOOL_DATABASE_URL": pg_url, "PROCPOOL_DAEMON_LEASE": str(LEASE)},
            args=("--handlers", "checkpoint_handlers"),
        )

    marks = tmp_path / "marks"
    marks.mkdir()
    a = start("a")
    with Client(a.home, database_url=pg_url) as jobs:
        job_id = jobs.submit("checkpoint_forever", {"dir": str(marks)}, max_attempts=3)
        [started] = a.wait_events("job.started", job_id=job_id, timeout=30)
        wait_until(lambda: len(noted(marks / "returned")) >= 3, 30, what="a's checkpoints")
        b = start("b")
        b.wait_events("daemon.started", timeout=30)
        a.signal(signal.SIGSTOP)
        try:
            # The fence ends a's run before its lease runs out (test_postgres_fence.py);
            # its worker was most likely blocked in a checkpoint a never answered.
            wait_until(lambda: not alive(started["worker_pid"]), 30, what="a's run to end")
            asked, returned = noted(marks / "asked"), noted(marks / "returned")
            before = jobs.get(job_id)
            assert before is not None and before.status == "running"
            committed = jobs.checkpoint(job_id)
            # Stored before the freeze: the last returned, or the one asked for if a
            # committed it and was stopped before its answer left.
            assert committed in ({"i": returned[-1]}, {"i": asked[-1]}), committed
            wait_until((marks / "seen-2").exists, 60, what="b to run the job again")
        finally:
            a.signal(signal.SIGCONT)
        [done] = jobs.wait([job_id], timeout=60)
        assert done.status == "completed", done
        assert done.result == {"resumed_from": committed}
        assert b.events("job.started", job_id=job_id, attempt=2)
        assert not (marks / "seen-3").exists(), "the job ran once after the rescue"
        # a comes back, learns it lost its lease and replaces its worker (reaped: all it
        # sent was read); whatever its run asked stays unstored.
        a.wait_events("daemon.lease_lost", timeout=30)
        a.wait_events("worker.started", count=2, timeout=30)
        more = jobs.submit("echo", 1)
        assert jobs.wait([more], timeout=30)[0].status == "completed"
        assert jobs.checkpoint(job_id) == committed
        after = jobs.get(job_id)
        assert after is not None and after.checkpoint_at == before.checkpoint_at
        assert noted(marks / "asked") == asked, "a's run asked nothing after it was ended"
        # The request a's worker left unanswered, if a read it after the freeze (its
        # dead worker is not always read first), was refused, not stored.
        for refused in a.events("checkpoint.refused", job_id=job_id):
            assert refused["attempt"] == 1
        stale = marks / "stale"
        assert not stale.exists() or stale.read_text().startswith("StaleAttempt: attempt 1")
    assert a.stop() == 0 and b.stop() == 0
