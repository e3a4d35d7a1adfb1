"""A daemon among others on a shared store: what a turn does with what it learned.

With PostgreSQL several daemons share the jobs (DESIGN decision 14). Each turn the
store renews this daemon's lease and reports (ports.Tick): that the others declared
it dead (its workers' runs are no longer its own: they are killed at once), the
running jobs of dead daemons (they take the fates of recovery: one more attempt if
they had started), and the cancels asked for from other hosts of jobs it runs.

The self-fence is the supervisor's: once `fence_in()` runs out (no renewal for
`lease - margin` seconds), every worker group is killed, before any other daemon may
take the jobs over.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from procpool.application.fleet import Decision, Deliver, Fleet
from procpool.application.ledger import Ledger
from procpool.application.ports import SharedStore, Tick
from procpool.application.recovery import rescue
from procpool.domain.job import Status
from procpool.domain.wording import plural

Log = Callable[..., None]  # (level, event, message, **fields)


def kill_all(fleet: Fleet) -> list[Decision]:
    """SIGKILL to every worker's process group: the runs end now, without a grace, as a
    crash would end them; the reaped exits then take their fates (or are stale)."""
    return [Deliver(worker.pid, signal.SIGKILL) for worker in fleet]


def apply_tick(
    tick: Tick, store: SharedStore, fleet: Fleet, ledger: Ledger, log: Log, now: float, wall: float
) -> list[Decision]:
    """Act on a tick inside the turn's transaction; returns the fleet decisions."""
    decisions: list[Decision] = []
    if tick.lost:
        log(
            "ERROR", "daemon.lease_lost",
            "the other daemons declared this one dead (its lease ran out): its running"
            f" jobs are theirs now; killing its workers, going on as daemon {tick.daemon_id}",
            daemon_id=tick.daemon_id, workers=len(fleet),
        )  # fmt: skip
        decisions += kill_all(fleet)
    if tick.orphans:
        owners = sorted({job.worker_pid or 0 for job in tick.orphans})
        log(
            "WARNING", "daemon.rescue",
            f"took over {plural(len(tick.orphans), 'running job')} of dead daemons",
            jobs=[job.id for job in tick.orphans], worker_pids=owners,
        )  # fmt: skip
        rescue(tick.orphans, ledger, wall)
    for job_id in tick.cancels:
        job = store.get(job_id)
        if job is None or job.status is not Status.RUNNING:
            continue
        worker = fleet.holder(job)
        held = None if worker is None else worker.assigned.get(job.id)
        if worker is None or held is None or held.cancel_requested:
            continue  # not this daemon's run, or its cancel is under way
        log(
            "INFO", "cancel.requested", f"cancel of job {job_id} asked for by another host",
            job_id=job_id, worker_pid=worker.pid,
        )  # fmt: skip
        decisions += fleet.cancel(worker, job, now)
    return decisions
