"""The rules of job dependencies (procpool/domain/dependencies.py), table by table."""

from __future__ import annotations

import pytest

from procpool.domain import spec
from procpool.domain.dependencies import Decision, Problem, problems, verdict, waiting
from procpool.domain.errors import InvalidJobFile
from procpool.domain.job import Status

P, R, C, F, X = Status.PENDING, Status.RUNNING, Status.COMPLETED, Status.FAILED, Status.CANCELED


@pytest.mark.parametrize(
    ("graph", "known", "expected"),
    [
        ({"a": ["s"]}, {"s"}, []),
        ({"b": ["a"], "a": []}, set(), []),  # a parent later in the same submission
        ({"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}, set(), []),  # a diamond
        ({"a": ["a"]}, set(), [Problem("a", "after names the job itself (a)")]),
        ({"a": ["nope"]}, {"s"}, [Problem("a", "after names nope, which is no job")]),
        (
            {"a": ["c"], "b": ["a"], "c": ["b"]},
            set(),
            [Problem("a", "after makes a cycle: a -> c -> b -> a")],
        ),
        ({"a": ["b"], "b": ["a"]}, set(), [Problem("a", "after makes a cycle: a -> b -> a")]),
        # a cycle below a job that is not in it is reported at its own first job
        (
            {"x": ["a"], "a": ["b"], "b": ["a"]},
            set(),
            [Problem("a", "after makes a cycle: a -> b -> a")],
        ),
        ({"a": ["s"], "b": ["a", "s"], "c": ["b", "a"]}, {"s"}, []),
    ],
)
def test_problems(graph: dict[str, list[str]], known: set[str], expected: list[Problem]) -> None:
    assert problems(graph, known) == expected


def test_a_long_chain_is_checked_without_recursion() -> None:
    chain = {f"j{n}": [f"j{n - 1}"] for n in range(1, 20_000)} | {"j0": []}
    assert problems(chain, set()) == []
    chain["j0"] = ["j19999"]
    (problem,) = problems(chain, set())
    assert "cycle" in problem.message and problem.message.count("->") == 20_000


@pytest.mark.parametrize(
    ("after_failure", "statuses", "decision", "parent"),
    [
        ("cancel", {"a": P}, Decision.WAIT, None),
        ("cancel", {"a": R, "b": C}, Decision.WAIT, None),
        ("cancel", {"a": C, "b": C}, Decision.READY, None),
        ("cancel", {"a": C, "b": F}, Decision.CANCEL, "b"),
        ("cancel", {"a": X, "b": F}, Decision.CANCEL, "a"),
        ("cancel", {"a": P, "b": X}, Decision.CANCEL, "b"),  # no waiting for a pending one
        ("cancel", {"a": C}, Decision.CANCEL, "b"),  # b is gone: counted as canceled
        ("run", {"a": C, "b": F}, Decision.READY, None),
        ("run", {"a": X, "b": R}, Decision.WAIT, None),
        ("run", {"a": P, "b": C}, Decision.WAIT, None),
        ("run", {"a": X, "b": F}, Decision.READY, None),
    ],
)
def test_verdict(
    after_failure: str, statuses: dict[str, Status], decision: Decision, parent: str | None
) -> None:
    after = ["a", "b"] if len(statuses) == 2 or parent == "b" else ["a"]
    got = verdict(after_failure, after, statuses)
    assert (got.decision, got.parent) == (decision, parent)


def test_waiting_lists_each_parent_status() -> None:
    assert waiting({"a": R, "b": C}) == {
        "reason": "after",
        "parents": {"a": "running", "b": "completed"},
    }


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"after": []}, "after must list 1-256 job ids, got 0"),
        ({"after": [f"p{n}" for n in range(257)]}, "after must list 1-256 job ids, got 257"),
        ({"after": ["-bad"]}, "each id in after must be 1-128 characters"),
        ({"after": ["a", "a"]}, 'after names "a" twice'),
        ({"after": "a"}, "after must be a list of job ids"),
        ({"after": [1]}, "after must be a list of job ids"),
        ({"after_failure": "skip"}, 'after_failure must be one of "cancel", "run", got "skip"'),
    ],
)
def test_bad_after_fields_are_named(fields: dict[str, object], error: str) -> None:
    data = spec.encode_json({"type": "echo", **fields})
    with pytest.raises(InvalidJobFile, match=None) as raised:
        spec.decode(data)
    assert error in str(raised.value)


def test_after_and_after_failure_reach_the_job_and_the_digest() -> None:
    plain = spec.decode(b'{"type": "echo"}')
    assert isinstance(plain, spec.JobSpec)
    waits = spec.decode(b'{"type": "echo", "after": ["a"], "after_failure": "run"}')
    assert isinstance(waits, spec.JobSpec)
    job = spec.to_job(waits, job_id="j", defaults=spec.JobDefaults(), now=1.0)
    assert (job.after, job.after_failure) == (("a",), "run")
    default = spec.to_job(plain, job_id="j", defaults=spec.JobDefaults(), now=1.0)
    assert (default.after, default.after_failure) == ((), "cancel")
    assert spec.digest(plain) != spec.digest(waits)
