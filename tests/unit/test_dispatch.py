"""Dispatch decisions: batches, prefetch for busy workers, and taking queued jobs back."""

from __future__ import annotations

from procpool.application.supervisor.dispatch import BatchSizer, Holder, Plan, plan, share
from procpool.domain.job import Job, Status

PATIENCE = 0.002
HORIZON = 0.25
NOW = 100.0


def _job(job_id: str, priority: int = 0, run_at: float = 0.0) -> Job:
    return Job(id=job_id, type="echo", status=Status.PENDING, run_at=run_at, priority=priority,
               created_at=0.0, updated_at=0.0)  # fmt: skip


def _jobs(*ids: str) -> list[Job]:
    return [_job(job_id, run_at=index) for index, job_id in enumerate(ids)]


def _plan(
    due: list[Job],
    *,
    idle: tuple[str, ...] = (),
    busy: tuple[tuple[str, float], ...] = (),
    holders: tuple[Holder[str], ...] = (),
    size: int = 1,
    expected: float | None = 0.025,
) -> Plan[str]:
    return plan(
        due, idle=idle, busy=busy, holders=holders, size=size, expected=expected,
        now=NOW, patience=PATIENCE, horizon=HORIZON,
    )  # fmt: skip


def _ids(plan_: Plan[str]) -> dict[str, list[str]]:
    return {worker: [job.id for job in batch] for worker, batch in plan_.handouts}


def test_the_batch_size_follows_the_mean_run_time() -> None:
    sizer = BatchSizer(window=0.002, largest=64)
    assert sizer.size() == 1  # nothing known yet: one at a time
    sizer.observe(0.025)
    assert sizer.size() == 1
    fast = BatchSizer(window=0.002, largest=64)
    fast.observe(0.00001)
    assert fast.size() == 64


def test_share_deals_the_most_urgent_to_different_workers() -> None:
    assert share([1, 2, 3, 4, 5], ["a", "b"]) == [("a", [1, 3, 5]), ("b", [2, 4])]
    assert share([1], ["a", "b"]) == [("a", [1])]
    assert share([1], []) == []


def test_idle_workers_are_served_before_any_busy_one_gets_more() -> None:
    due = _jobs("j1", "j2", "j3")
    decided = _plan(due, idle=("idle",), busy=(("busy", NOW - 0.01),))
    assert _ids(decided) == {"idle": ["j1"], "busy": ["j2"]}
    assert decided.take_back == []


def test_a_busy_worker_gets_its_next_job_only_if_its_current_one_should_end_soon() -> None:
    due = _jobs("j1", "j2")
    assert _ids(_plan(due, busy=(("w", NOW - 0.01),))) == {"w": ["j1"]}
    # The current job has already run longer than the horizon: nothing is queued behind it.
    assert _ids(_plan(due, busy=(("w", NOW - 0.3),))) == {}
    # Jobs that typically take longer than the horizon wait in the store.
    assert _ids(_plan(due, busy=(("w", NOW),), expected=1.0)) == {}
    # Nothing known of run times yet: no prefetch.
    assert _ids(_plan(due, busy=(("w", NOW),), expected=None)) == {}


def test_the_busy_worker_that_should_finish_first_is_served_first() -> None:
    decided = _plan(_jobs("j1", "j2"), busy=(("late", NOW - 0.001), ("early", NOW - 0.02)))
    assert _ids(decided) == {"early": ["j1"], "late": ["j2"]}


def test_a_queued_job_comes_back_when_a_worker_idles_with_nothing_due() -> None:
    held = _job("held")
    holder = Holder("w", [held], running_since=NOW - 0.01)
    decided = _plan([], idle=("idle",), holders=(holder,))
    assert decided.take_back == [("w", held)]


def test_a_queued_job_stays_behind_a_job_that_is_about_to_end() -> None:
    held = _job("held")
    holder = Holder("w", [held], running_since=NOW - 0.001)  # started within the window
    decided = _plan([], idle=("idle",), holders=(holder,))
    assert decided.take_back == []
    assert decided.look_again_at == NOW - 0.001 + PATIENCE


def test_a_queued_job_comes_back_when_a_more_urgent_one_waits() -> None:
    held = _job("held", priority=0, run_at=1.0)
    holder = Holder("w", [held], running_since=NOW - 0.01)
    urgent = _job("urgent", priority=5, run_at=2.0)
    assert _plan([urgent], holders=(holder,)).take_back == [("w", held)]
    # An equal or lower one does not move it.
    same = _job("same", priority=0, run_at=1.0)
    later = _job("later", priority=0, run_at=3.0)
    assert _plan([same], holders=(holder,)).take_back == []
    assert _plan([later], holders=(holder,)).take_back == []


def test_what_orders_after_an_urgent_job_comes_back_wherever_it_is_queued() -> None:
    """A top-up queues jobs behind others queued earlier, which may order after
    them: the less urgent come back, not the queue's tail."""
    low = [_job(f"low-{n}", priority=0, run_at=n) for n in range(2)]
    high = [_job(f"high-{n}", priority=9, run_at=10 + n) for n in range(3)]
    holder = Holder("w", [*low, *high], running_since=NOW - 0.01)
    waiting = _job("high-9", priority=9, run_at=19)
    decided = _plan([waiting], holders=(holder,))
    assert [job.id for _, job in decided.take_back] == ["low-0", "low-1"]


def test_only_the_tail_a_starved_worker_needs_comes_back() -> None:
    queued = _jobs("q1", "q2", "q3")
    holder = Holder("w", queued, running_since=NOW - 0.01)
    decided = _plan([], idle=("idle",), holders=(holder,))
    assert [job.id for _, job in decided.take_back] == ["q3"]


def test_everything_queued_comes_back_once_the_current_job_passes_the_horizon() -> None:
    queued = _jobs("q1", "q2")
    holder = Holder("w", queued, running_since=NOW - HORIZON)
    assert [job.id for _, job in _plan([], holders=(holder,)).take_back] == ["q1", "q2"]
    young = Holder("w", queued, running_since=NOW - 0.01)
    decided = _plan([], holders=(young,))
    assert decided.take_back == []
    assert decided.look_again_at == NOW - 0.01 + HORIZON


def test_a_worker_that_has_not_acknowledged_its_job_keeps_its_queue() -> None:
    holder = Holder("w", [_job("held")], running_since=None)
    assert _plan([], idle=("idle",), holders=(holder,)).take_back == []
