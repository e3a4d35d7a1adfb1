"""Fencing (DESIGN decision 8): a message counts only if it names the run a worker holds."""

from __future__ import annotations

import socket

from procpool.application.channel import SupervisorEnd
from procpool.application.pool import WorkerProcess
from procpool.domain.job import Job, Status


def _worker() -> WorkerProcess:
    ours, theirs = socket.socketpair()
    theirs.close()
    return WorkerProcess(pid=123, channel=SupervisorEnd(ours), spawned_at=0.0, create_time=0.0)


def _job(job_id: str, lease: int) -> Job:
    return Job(id=job_id, type="echo", status=Status.RUNNING, lease=lease, run_at=0.0,
               created_at=0.0, updated_at=0.0, worker_pid=123)  # fmt: skip


def test_only_the_current_lease_of_a_held_job_is_accepted() -> None:
    worker = _worker()
    worker.assigned = {"a": _job("a", 7), "b": _job("b", 8)}
    worker.current = "a"
    assert worker.run_named("a", 7, started=True) is worker.assigned["a"]
    assert worker.run_named("a", 6, started=True) is None  # an earlier run of the same job
    assert worker.run_named("c", 7, started=True) is None  # a job this worker does not hold
    # A queued job may be acknowledged (Started) or skipped, but not report results yet.
    assert worker.run_named("b", 8, started=True) is None
    assert worker.run_named("b", 8, started=False) is worker.assigned["b"]
    worker.channel.close()


def test_a_worker_that_holds_nothing_accepts_nothing() -> None:
    worker = _worker()
    assert worker.run_named("a", 1, started=False) is None
    assert worker.run_named("a", 1, started=True) is None
    worker.channel.close()
