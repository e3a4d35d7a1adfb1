"""Recovery on start: end what an earlier run of the daemon left behind (DESIGN decision 5).

It runs before any worker is forked. Workers of the earlier run that still
live (pid and start time from the store, so a reused pid is never hit) are
killed with their process groups first; only then are that run's `running`
jobs counted as failed attempts, so that a job is never run twice at once.
A job that keeps taking the daemon down exhausts its attempts.
"""

from __future__ import annotations

from procpool.application import pool
from procpool.application.events import emit
from procpool.application.ledger import Ledger
from procpool.application.ports import JobStore
from procpool.domain.job import Status

DAEMON_DIED = "the daemon died while it ran"


def recover(store: JobStore, ledger: Ledger, now: float) -> None:
    for record in store.workers():
        if pool.kill_stale_group(record.pid, record.create_time):
            emit(
                "WARNING",
                "worker.killed_stale",
                f"killed worker {record.pid} left by an earlier run",
                worker_pid=record.pid,
            )
        store.remove_worker(record.pid)
    for job in store.with_status(Status.RUNNING):
        ledger.fail(job, DAEMON_DIED, now, reason="daemon_died")
