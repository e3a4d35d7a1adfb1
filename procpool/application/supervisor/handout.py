"""The dispatch step of a turn: due jobs out of the store, to workers, and back.

    fleet.candidates (idle, busy, holding queued jobs) ─┐
    store.due (priority DESC, run_at) ──────────────────┴▶ dispatch.plan (pure)
        ─▶ ledger.start (running, a new lease) ─▶ fleet.hand_out ─▶ Send(RunJob) after commit
        ─▶ fleet.take_back ─▶ Send(Skip)

This is the per-job path: each job leaves the store here, once, in the turn's
transaction. What to hand to whom is `dispatch.plan`'s; this step gathers its
inputs and carries out its decisions, and remembers what sets the loop's next
wake-up: the earliest future job, the time a queued job may come back.
"""

from __future__ import annotations

from collections.abc import Callable

from procpool.application.ports import JobStore
from procpool.application.supervisor import checkpoints
from procpool.application.supervisor.dependents import parents_of
from procpool.application.supervisor.dispatch import HORIZON, PATIENCE, plan
from procpool.application.supervisor.effects import Effects
from procpool.application.supervisor.fleet import Fleet
from procpool.application.supervisor.ledger import Ledger


class Dispatcher:
    """Hands due jobs to workers. `new_lease()` gives each attempt its fencing token."""

    def __init__(
        self, store: JobStore, fleet: Fleet, ledger: Ledger, effects: Effects,
        new_lease: Callable[[], int],
    ) -> None:  # fmt: skip
        self._store = store
        self._fleet = fleet
        self._ledger = ledger
        self._effects = effects
        self._new_lease = new_lease
        self.next_due: float | None = None  # wall time of the earliest future pending job
        self.look_again_at: float | None = None  # monotonic: a queued job may come back then
        self.jobs_waiting = True  # due jobs waited for a worker after the last dispatch

    def dispatch(self, now: float, wall: float, deaf: set[int], closed: bool) -> None:
        """Cancel the pending jobs past their expires_at, before the claim could start
        them (CONTRACT 13), settle the dependents earlier turns left (CONTRACT 15),
        then hand out due jobs and take back queued ones, unless
        `closed` (stopping or fenced). `deaf`: the workers that have not read what was
        sent to them. The loop wakes up for the next expiry as for the next due job."""
        expiry = self._ledger.expire_due(wall)
        dependents = self._ledger.dependents
        dependents.settle(wall)  # what earlier turns left of a large fan-out
        self._hand_out(now, wall, deaf, closed)
        if expiry is not None:
            self.next_due = expiry if self.next_due is None else min(expiry, self.next_due)
        if dependents.backlog:
            self.next_due = wall

    def _hand_out(self, now: float, wall: float, deaf: set[int], closed: bool) -> None:
        fleet = self._fleet
        self.look_again_at = None
        idle, busy, holders = fleet.candidates(now, deaf)
        self.jobs_waiting = True  # until this turn's plan says otherwise
        if closed or not (idle or busy or holders):
            self.next_due = None  # a worker freed later makes a turn of its own
            return
        size = fleet.batch.size()
        limit = (len(idle) + len(busy)) * size + 1
        due = self._store.due(wall, limit)
        if not due and not holders:  # nothing to hand out or take back: no plan to make
            self.next_due = self._store.next_run_at(wall)
            self.jobs_waiting = False
            return
        decided = plan(
            due, idle=idle, busy=busy, holders=holders, size=size, expected=fleet.batch.mean,
            now=now, patience=PATIENCE, horizon=HORIZON,
        )  # fmt: skip
        handed = 0
        with self._ledger.held():  # the starts written together, by one statement
            for worker, jobs in decided.handouts:
                for job in jobs[: fleet.room(worker, len(jobs))]:
                    running = self._ledger.start(
                        job, lease=self._new_lease(), worker_pid=worker.pid, now=wall
                    )
                    parents = parents_of(self._store, job) if job.after else None
                    send = fleet.hand_out(worker, running, now, parents)
                    send = checkpoints.with_last(send, running, self._store)
                    # Into the turn's effects at once, not after the loop: a shared store
                    # writes each start at once, and should a later one lose the
                    # connection, membership's reconcile learns from the turn's sends which
                    # hand-outs were never sent (else it ends their worker as a stranger's).
                    self._effects.apply([send], wall)
                    handed += 1
        # A job taken back goes to the worker it was taken back for at the next turn.
        self.jobs_waiting = handed < len(due) or bool(decided.take_back)
        self._effects.apply([fleet.take_back(w, job) for w, job in decided.take_back], wall)
        self.look_again_at = decided.look_again_at
        self.next_due = self._store.next_run_at(wall) if len(due) < limit else None
