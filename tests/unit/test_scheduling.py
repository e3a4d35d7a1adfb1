"""The schedules' phase of a turn (application/supervisor/scheduling.py) over the
in-memory store, with a fake clock: what it writes and logs at each instant, that a
turn with nothing due reads nothing, that a rolled-back turn reads the schedules
again, and that a daemon without the type's handler skips as no_handler."""

from __future__ import annotations

from typing import Any

import pytest

from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.scheduling import Scheduler
from procpool.domain import schedules
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults

T0 = 1_800_000_000.0  # a multiple of 10: every = 10 fires at T0 + 10, T0 + 20, ...
DEFAULTS = JobDefaults()


class Counting(MemoryJobStore):
    """Counts the reads of every schedule (what an idle turn must not do)."""

    reads = 0

    def schedules(self) -> list[schedules.Stored]:
        self.reads += 1
        return super().schedules()


def setup(
    registered: tuple[str, ...] = ("echo",), **fields: Any
) -> tuple[Counting, Scheduler, list[tuple[Any, ...]]]:
    store = Counting()
    logged: list[tuple[Any, ...]] = []

    def log(*args: Any, **found: Any) -> None:
        logged.append((args[1], found.get("occurrence"), found.get("reason")))

    definition = schedules.check({"name": "t", "every": 10, "job": {"type": "echo"}, **fields})
    with store.transaction():
        store.write_schedules(schedules.Changes([definition], [], []), T0)
    scheduler = Scheduler(store, Ledger(store, RetryPolicy(), log), log, lambda: registered)
    return store, scheduler, logged


def turn(store: MemoryJobStore, scheduler: Scheduler, wall: float) -> None:
    with store.transaction():
        scheduler.run(wall, DEFAULTS)


def test_each_occurrence_is_made_at_its_instant_and_the_wait_is_set_to_the_next() -> None:
    store, scheduler, logged = setup(overlap="allow")
    turn(store, scheduler, T0 + 1)
    assert scheduler.next_at == T0 + 10 and logged == []
    turn(store, scheduler, T0 + 10.002)
    job = store.get("t.20270115T080010Z")
    assert job is not None and job.schedule == "t" and job.run_at == T0 + 10
    assert job.scheduled_for == "2027-01-15T08:00:10+00:00"
    assert [event for event, *_ in logged] == ["schedule.fired"]
    assert scheduler.next_at == T0 + 20


def test_a_turn_with_nothing_due_reads_no_schedule() -> None:
    store, scheduler, _ = setup()
    turn(store, scheduler, T0 + 1)
    reads = store.reads
    for n in range(100):
        turn(store, scheduler, T0 + 1 + n * 0.01)
    assert store.reads == reads


def test_a_rolled_back_turn_reads_the_schedules_again() -> None:
    store, scheduler, _ = setup()
    turn(store, scheduler, T0 + 1)
    with pytest.raises(RuntimeError), store.transaction():
        scheduler.run(T0 + 10.5, DEFAULTS)  # makes the occurrence's job...
        raise RuntimeError("...in a turn that fails")
    scheduler.rolled_back()
    assert store.get("t.20270115T080010Z") is None
    turn(store, scheduler, T0 + 11)
    assert store.get("t.20270115T080010Z") is not None, "made by the next turn"


def test_a_daemon_without_the_handler_skips_as_no_handler() -> None:
    store, scheduler, logged = setup(registered=("other",))
    turn(store, scheduler, T0 + 10.5)
    assert logged == [("schedule.skipped", "2027-01-15T08:00:10.000000Z", "no_handler")]
    assert store.schedule_skips() == {"no_handler": 1}
    assert store.get("t.20270115T080010Z") is None
