"""Recovery on start: end what an earlier run of the daemon left behind (DESIGN decision 5).

It runs before any worker is forked. Workers of the earlier run that still
live (pid and start time from the store, so a reused pid is never hit) are
killed with their process groups first; only then do that run's `running`
jobs take their fates, so that a job is never run twice at once: one that had
started is charged a failed attempt (a job that keeps taking the daemon down
exhausts its attempts), one only handed over goes back to pending unchanged,
and one whose cancel was asked for is canceled.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from procpool.application.events import emit
from procpool.application.ports import JobStore
from procpool.application.supervisor.fleet import RunEnded
from procpool.application.supervisor.ledger import Ledger
from procpool.application.worker import pool
from procpool.domain.fate import Cause, Phase, Report, fate
from procpool.domain.job import Job

DAEMON_DIED = "the daemon died while it ran"


def recover(store: JobStore, ledger: Ledger, now: float, begun: set[int]) -> None:
    """`begun`: the leases of runs that workers began (from the start register), for
    starts the earlier daemon did not live to store."""
    for record in store.workers():
        if pool.kill_stale_group(record.pid, record.create_time):
            emit(
                "WARNING",
                "worker.killed_stale",
                f"killed worker {record.pid} left by an earlier run",
                worker_pid=record.pid,
            )
        store.remove_worker(record.pid)
    rescue(store.left_running(), ledger, now, begun)


def rescue(left: Iterable[Job], ledger: Ledger, now: float, begun: Container[int] = ()) -> None:
    """The fates of running jobs whose daemon died (its workers are dead too): one that
    had started is charged a failed attempt, one only handed over goes back to pending
    unchanged, one whose cancel was asked for is canceled. Also how a daemon takes over
    the jobs of a dead one on a shared store (`begun` then empty: `started_at` tells)."""
    for job in left:
        started = job.started_at is not None or job.lease in begun
        phase = Phase.STARTED if started else Phase.QUEUED
        cause = Cause.CANCEL if job.cancel_requested else Cause.NONE
        ended = fate(phase, Report.NONE, cause)
        why = DAEMON_DIED if phase is Phase.STARTED else "it had not started"
        ledger.end_run(
            RunEnded(job, ended, phase, cause, error=why, label="daemon_died",
                     worker_pid=job.worker_pid or 0),
            now,
        )  # fmt: skip
