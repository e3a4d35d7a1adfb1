"""A daemon among others on a shared store: what a turn does with what it learned.

With PostgreSQL several daemons share the jobs (DESIGN decision 14). Each turn the
store renews this daemon's lease and reports (ports.Tick): that the others declared
it dead (its workers' runs are no longer its own: they are killed at once), the
running jobs of dead daemons (they take the fates of recovery: one more attempt if
they had started), and the cancels asked for from other hosts of jobs it runs.

The self-fence: once `fence_in()` runs out (no renewal for `lease - margin` seconds),
every worker group is killed, before any other daemon may take the jobs over, by the
watchdog (fence.py) and by the supervisor.

A connection lost inside a turn (StoreLost) rolls the turn back, but not what the
fleet and the ledger took in during it. The workers are kept; the first turn after
the reconnection matches the fleet to the store (`reconcile`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable

from procpool.application.ports import SharedStore, Tick
from procpool.application.supervisor import checkpoints
from procpool.application.supervisor.fleet import Decision, Deliver, Fleet, RunEnded, Send
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.recovery import rescue
from procpool.application.wire.messages import CheckpointStored, RunJob, ToWorker
from procpool.domain.job import Job, Status
from procpool.domain.wording import plural

Log = Callable[..., None]  # (level, event, message, **fields)


def kill_all(fleet: Fleet) -> list[Decision]:
    """SIGKILL to every worker's process group: the runs end now, without a grace, as a
    crash would end them; the reaped exits then take their fates (or are stale), worded
    as the fence's (`Worker.fenced`), not as the kernel's out-of-memory killer's."""
    for worker in fleet:
        worker.fenced = True
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
    if tick.buried:
        ledger.dependents.sweep()
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


def reconcile(
    owned: list[Job],
    ends: list[RunEnded],
    unsent: dict[int, list[ToWorker]],
    fleet: Fleet,
    ledger: Ledger,
    log: Log,
    wall: float,
) -> list[Decision]:
    """In the first turn after a connection lost inside a turn (StoreLost): make the
    store and the fleet agree again, keeping every worker whose runs are still this
    daemon's. Returns the fleet decisions (sends, kills).

    `owned`: the running jobs the store says this daemon owns now; `ends`: the runs the
    lost turn ended (their results, which its rollback took from the store); `unsent`:
    what the lost turn would have sent to each worker pid.

    - A run the lost turn handed out was never sent: dropped from its worker, unless
      the lost commit did happen (the store owns it under that lease): then sent now.
    - A run the store no longer gives this daemon (its lease was lost, or another host
      took it over) has its worker killed: its end is then stale.
    - A run still this daemon's keeps its worker; its start, if the lost turn recorded
      it, is recorded again. Other messages the lost turn meant to send are sent.
    - A run the lost turn ended is ended again with the same result, once the store
      shows it still running under its lease (no attempt is charged that a crash
      would not have).
    - A running job of this daemon that no worker holds and no end names (none should
      be) takes the fate of a dead daemon's job.
    """
    mine = {job.id: job for job in owned}
    decisions: list[Decision] = []
    kept: set[str] = set()
    killed = dropped = 0
    for worker in fleet:
        sending: list[ToWorker] = []
        for message in unsent.get(worker.pid, []):
            if not isinstance(message, RunJob):
                # A checkpoint's answer: what the lost turn wrote is gone; sent again.
                again = checkpoints.lost(message) if isinstance(message, CheckpointStored) else None
                sending.append(again or message)
                continue
            stored = mine.get(message.job_id)
            if stored is None or stored.lease != message.lease:
                worker.assigned.pop(message.job_id, None)
                dropped += 1
            else:
                sending.append(message)
        decisions += [Send(worker.pid, message) for message in sending]
        lost = False
        for job_id, job in list(worker.assigned.items()):
            stored = mine.get(job_id)
            if stored is None or stored.lease != job.lease:
                lost = True
                continue
            kept.add(job_id)
            begun = job.started_at is not None and stored.started_at is None
            if worker.current == job_id and begun:
                fleet.update(worker.pid, ledger.began(stored, wall))
        if lost:
            decisions.append(Deliver(worker.pid, signal.SIGKILL))
            killed += 1
    replayed = 0
    for end in ends:
        stored = mine.get(end.job.id)
        if stored is not None and stored.lease == end.job.lease and end.job.id not in kept:
            ledger.end_run(end, wall)
            kept.add(end.job.id)
            replayed += 1
    orphans = [job for job_id, job in mine.items() if job_id not in kept]
    if orphans:
        rescue(orphans, ledger, wall)
    log(
        "INFO", "store.reconciled",
        f"back on the store after a connection lost inside a turn: kept"
        f" {plural(len(kept) - replayed, 'running job')}, recorded again"
        f" {plural(replayed, 'end')} of runs, dropped {plural(dropped, 'unsent hand-out')},"
        f" killed {plural(killed, 'worker')} whose runs were no longer this daemon's",
        kept=len(kept) - replayed, replayed=replayed, dropped=dropped, killed=killed,
        orphans=[job.id for job in orphans],
    )  # fmt: skip
    return decisions
