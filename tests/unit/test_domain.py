"""The job's statuses, its transition table and the retry backoff: pure unit tests."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import msgspec
import pytest

from procpool.domain import job as jobs
from procpool.domain.errors import InvalidTransition, ProcpoolError
from procpool.domain.job import TERMINAL, TRANSITIONS, Job, Status, check_transition
from procpool.domain.retry import RetryPolicy

NOW = 1_800_000_000.0
ALLOWED = {
    (Status.PENDING, Status.RUNNING),
    (Status.PENDING, Status.CANCELED),
    (Status.RUNNING, Status.PENDING),
    (Status.RUNNING, Status.COMPLETED),
    (Status.RUNNING, Status.FAILED),
    (Status.RUNNING, Status.CANCELED),
}
PAIRS = list(itertools.product(Status, Status))


def a_job(status: Status = Status.PENDING, **changes: object) -> Job:
    job = Job(id="j1", type="echo", status=status, run_at=NOW, created_at=NOW, updated_at=NOW)
    if status is Status.RUNNING:
        job = msgspec.structs.replace(job, lease=7, worker_pid=4242, started_at=NOW)
    return msgspec.structs.replace(job, **changes)


def test_the_table_is_exactly_the_contracts() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert {(old, new) for old, targets in TRANSITIONS.items() for new in targets} == ALLOWED
    assert frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED}) == TERMINAL


@pytest.mark.parametrize(("current", "new"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_check_transition(current: Status, new: Status) -> None:
    if (current, new) in ALLOWED:
        check_transition(current, new)
    else:
        with pytest.raises(InvalidTransition, match=f"{current}.*{new}"):
            check_transition(current, new)


def test_invalid_transition_is_a_procpool_error() -> None:
    assert issubclass(InvalidTransition, ProcpoolError)


# Each transition function, and the status it moves a job to.
MOVES: dict[str, tuple[Callable[[Job], Job], Status]] = {
    "start": (lambda j: jobs.start(j, lease=8, worker_pid=99, now=NOW + 1), Status.RUNNING),
    "complete": (lambda j: jobs.complete(j, result=b"1", now=NOW + 1), Status.COMPLETED),
    "retry": (
        lambda j: jobs.fail_attempt(j, error="boom", now=NOW + 1, retry_at=NOW + 5),
        Status.PENDING,
    ),
    "fail": (
        lambda j: jobs.fail_attempt(j, error="boom", now=NOW + 1, retry_at=None),
        Status.FAILED,
    ),
    "cancel": (lambda j: jobs.cancel(j, now=NOW + 1), Status.CANCELED),
    "interrupt": (lambda j: jobs.interrupt(j, now=NOW + 1), Status.PENDING),
}
MOVE_CASES = list(itertools.product(MOVES, Status))


@pytest.mark.parametrize(
    ("move", "current"), MOVE_CASES, ids=[f"{m}-from-{s}" for m, s in MOVE_CASES]
)
def test_transition_functions_follow_the_table(move: str, current: Status) -> None:
    function, target = MOVES[move]
    job = a_job(current)
    if (current, target) in ALLOWED:
        moved = function(job)
        assert moved.status is target
        assert moved.updated_at == NOW + 1
        assert job.status is current, "jobs are immutable values"
    else:
        with pytest.raises(InvalidTransition):
            function(job)


@pytest.mark.parametrize("status", sorted(TERMINAL))
def test_terminal_statuses_are_immutable(status: Status) -> None:
    assert status.is_terminal
    job = a_job(status)
    for function, _ in MOVES.values():
        with pytest.raises(InvalidTransition):
            function(job)
    with pytest.raises(InvalidTransition):
        jobs.request_cancel(job, now=NOW)


def test_non_terminal_statuses() -> None:
    assert not Status.PENDING.is_terminal
    assert not Status.RUNNING.is_terminal


def test_start_records_the_run_and_begin_its_start() -> None:
    running = jobs.start(a_job(progress=jobs.Progress(0.5)), lease=3, worker_pid=77, now=NOW + 2)
    assert (running.lease, running.worker_pid, running.started_at) == (3, 77, None)
    assert running.progress is None
    assert running.attempts == 0
    assert running.attempt == 1
    begun = jobs.begin(running, now=NOW + 3)
    assert (begun.started_at, begun.lease, begun.status) == (NOW + 3, 3, Status.RUNNING)
    with pytest.raises(InvalidTransition):
        jobs.begin(a_job(), now=NOW)


def test_complete_keeps_attempts_and_clears_the_pid() -> None:
    done = jobs.complete(a_job(Status.RUNNING, attempts=1), result=b'{"ok":1}', now=NOW + 1)
    assert (done.result, done.attempts, done.worker_pid) == (b'{"ok":1}', 1, None)


def test_a_failed_attempt_with_attempts_left_is_retried() -> None:
    job = a_job(Status.RUNNING, attempts=0, max_attempts=3)
    retried = jobs.fail_attempt(job, error="boom", now=NOW + 1, retry_at=NOW + 9)
    assert retried.status is Status.PENDING
    assert (retried.attempts, retried.last_error, retried.run_at) == (1, "boom", NOW + 9)
    assert retried.worker_pid is None
    assert retried.attempt == 2


def test_the_last_allowed_attempt_fails_for_good() -> None:
    job = a_job(Status.RUNNING, attempts=2, max_attempts=3)
    failed = jobs.fail_attempt(job, error="third", now=NOW + 1, retry_at=NOW + 9)
    assert failed.status is Status.FAILED
    assert (failed.attempts, failed.last_error, failed.run_at) == (3, "third", NOW)


def test_no_retry_at_fails_at_once_whatever_attempts_are_left() -> None:
    job = a_job(Status.RUNNING, attempts=0, max_attempts=5)
    failed = jobs.fail_attempt(job, error="permanent", now=NOW + 1, retry_at=None)
    assert (failed.status, failed.attempts) == (Status.FAILED, 1)


def test_interrupt_leaves_attempts_unchanged() -> None:
    job = a_job(Status.RUNNING, attempts=2, max_attempts=5)
    back = jobs.interrupt(job, now=NOW + 3)
    assert (back.status, back.attempts, back.worker_pid, back.run_at) == (
        Status.PENDING, 2, None, NOW + 3,
    )  # fmt: skip


def test_request_cancel_marks_a_running_job_only() -> None:
    marked = jobs.request_cancel(a_job(Status.RUNNING), now=NOW + 1)
    assert (marked.status, marked.cancel_requested) == (Status.RUNNING, True)
    with pytest.raises(InvalidTransition):
        jobs.request_cancel(a_job(Status.PENDING), now=NOW + 1)


def test_run_of_names_the_outcome() -> None:
    running = a_job(Status.RUNNING)
    retried = jobs.fail_attempt(running, error="x", now=NOW + 1, retry_at=NOW + 2)
    assert jobs.run_of(running, retried, now=NOW + 1).outcome == "retry"
    assert jobs.run_of(running, retried, now=NOW + 1).error == "x"
    interrupted = jobs.interrupt(running, now=NOW + 1)
    assert jobs.run_of(running, interrupted, now=NOW + 1).outcome == "interrupted"
    done = jobs.complete(running, result=b"1", now=NOW + 1)
    run = jobs.run_of(running, done, now=NOW + 1)
    assert (run.outcome, run.attempt, run.lease, run.error) == ("completed", 1, 7, None)


# ------------------------------------------------------------------ retry policy


@pytest.mark.parametrize(
    ("attempts", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0)]
)
def test_backoff_is_exponential_and_capped(attempts: int, expected: float) -> None:
    policy = RetryPolicy(base=1.0, cap=10.0, jitter=0.0)
    assert policy.backoff(attempts) == expected


def test_backoff_of_a_huge_attempt_count_stays_at_the_cap() -> None:
    assert RetryPolicy(base=0.5, cap=300.0, jitter=0.0).backoff(10_000) == 300.0


def test_backoff_defaults_match_the_contract() -> None:
    policy = RetryPolicy()
    assert (policy.base, policy.cap) == (1.0, 300.0)


@pytest.mark.parametrize("attempts", [1, 2, 3, 9, 12])
def test_jitter_only_shortens_the_wait(attempts: int) -> None:
    policy = RetryPolicy(base=1.0, cap=300.0, jitter=0.25, rng=random.Random(attempts))
    full = min(300.0, 2.0 ** (attempts - 1))
    waits = [policy.backoff(attempts) for _ in range(500)]
    assert all(0.75 * full <= wait <= full for wait in waits)
    assert len(set(waits)) > 1, "jitter must spread retries out"


def test_a_seeded_rng_gives_the_same_waits() -> None:
    first = RetryPolicy(rng=random.Random(42))
    second = RetryPolicy(rng=random.Random(42))
    assert [first.backoff(n) for n in range(1, 10)] == [second.backoff(n) for n in range(1, 10)]
