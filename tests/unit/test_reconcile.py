"""membership.reconcile: after a connection lost inside a turn, the fleet and the store
agree again, keeping every run that is still this daemon's (CONTRACT 11). One case per
row: what the lost turn did to job J of worker W, what the store holds after the
reconnection, and what becomes of J and of W."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application.supervisor.fleet import Deliver, Fleet, Limits, RunEnded, Send
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.membership import reconcile
from procpool.application.wire.messages import (
    CheckpointStored,
    Finished,
    Ready,
    RunJob,
    Started,
)
from procpool.domain import job as jobs
from procpool.domain.job import Job, Status
from procpool.domain.retry import RetryPolicy

WALL = 1_700_000_000.0
W = 11
LEASE = 7


def setup() -> tuple[MemoryJobStore, Ledger, Fleet, list[tuple[Any, ...]]]:
    store = MemoryJobStore()
    logged: list[tuple[Any, ...]] = []
    ledger = Ledger(store, RetryPolicy(base=1.0, cap=1.0), lambda *a, **f: logged.append(a))
    fleet = Fleet(Limits())
    fleet.spawned(W, 0.0)
    fleet.received(W, Ready(W), 0.0)
    pending = Job(id="J", type="t", run_at=WALL, created_at=WALL, updated_at=WALL, max_attempts=3)
    store.insert([pending])
    return store, ledger, fleet, logged


def claimed(store: MemoryJobStore, ledger: Ledger) -> Job:
    pending = store.get("J")
    assert pending is not None
    return ledger.start(pending, lease=LEASE, worker_pid=W, now=WALL)


@pytest.mark.parametrize(
    ("case", "status", "worker_holds", "sent", "killed"),
    [
        # Handed out in the lost turn, which did not commit: dropped, never sent.
        ("handed-out-unsent", Status.PENDING, False, False, False),
        # Handed out in the lost turn, whose commit did happen: sent now.
        ("handed-out-committed", Status.RUNNING, True, True, False),
        # Running since an earlier turn, still this daemon's: kept as it is.
        ("running", Status.RUNNING, True, False, False),
        # Its result came in the lost turn: recorded again, same result, no attempt.
        ("finished-in-lost-turn", Status.COMPLETED, False, False, False),
        # Another daemon took it over meanwhile (the lease was lost): its worker dies.
        ("taken-over", Status.PENDING, True, False, True),
    ],
)
def test_reconcile_keeps_what_is_still_this_daemons(
    case: str, status: Status, worker_holds: bool, sent: bool, killed: bool
) -> None:
    store, ledger, fleet, _ = setup()
    worker = fleet.get(W)
    assert worker is not None
    ends = []
    unsent: dict[int, list[Any]] = {}
    if case in ("handed-out-unsent", "handed-out-committed"):
        running = claimed(store, ledger)
        send = fleet.hand_out(worker, running, 0.0)
        unsent = {W: [send.message]}
        if case == "handed-out-unsent":  # the rollback: J is pending in the store again
            back_out(store, running)
    else:
        running = claimed(store, ledger)
        fleet.hand_out(worker, running, 0.0)
        for decision in fleet.received(W, Started("J", LEASE), 0.0):
            fleet.update(W, ledger.began(decision.job, WALL))  # type: ignore[attr-defined]
        if case == "finished-in-lost-turn":
            said = fleet.received(W, Finished("J", LEASE, 0.01, result=b"1"), 0.0)
            ends = [decision for decision in said if isinstance(decision, RunEnded)]
        if case == "taken-over":  # rescued elsewhere: no longer running here
            begun = store.get("J")
            assert begun is not None
            back_out(store, begun)
    owned = store.with_status(Status.RUNNING)
    decisions = reconcile(owned, ends, unsent, fleet, ledger, lambda *a, **f: None, WALL)
    final = store.get("J")
    assert final is not None and final.status is status
    assert final.attempts == 0  # nothing charged in any case
    assert ("J" in worker.assigned) is worker_holds
    assert any(isinstance(d, Send) and isinstance(d.message, RunJob) for d in decisions) is sent
    assert (Deliver(W, signal.SIGKILL) in decisions) is killed


def back_out(store: MemoryJobStore, running: Job) -> None:
    changed = jobs.interrupt(running, now=WALL)
    assert store.save(changed, expected=Status.RUNNING, expected_lease=LEASE)


def test_a_checkpoint_answered_in_the_lost_turn_is_asked_for_again() -> None:
    """The lost turn's rollback took its checkpoint from the store: the worker is told to
    send it again, never that it was stored."""
    store, ledger, fleet, _ = setup()
    worker = fleet.get(W)
    assert worker is not None
    running = claimed(store, ledger)
    fleet.hand_out(worker, running, 0.0)
    for decision in fleet.received(W, Started("J", LEASE), 0.0):
        fleet.update(W, ledger.began(decision.job, WALL))  # type: ignore[attr-defined]
    unsent: dict[int, list[Any]] = {W: [CheckpointStored("J", LEASE, True)]}
    owned = store.with_status(Status.RUNNING)
    decisions = reconcile(owned, [], unsent, fleet, ledger, lambda *a, **f: None, WALL)
    answers = [d.message for d in decisions if isinstance(d, Send)]
    assert answers == [CheckpointStored("J", LEASE, False, again=True)]
    assert "J" in worker.assigned
