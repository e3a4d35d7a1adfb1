"""The claim filter of concurrency limits (CONTRACT section 13), table-driven, on the
memory store and on the SQLite store: which due jobs `due` returns given what runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec
import pytest
from claim_fill import fill

from procpool.application.ports import JobStore, Serving
from procpool.domain import job as jobs
from procpool.domain.job import Job
from procpool.domain.limits import ClaimLimits, Running, admit, waiting

NOW = 1_000_000.0  # the fake clock: every job below is due at NOW
SERVED = ("render", "echo", "sync")


def pending(job_id: str, job_type: str = "echo", key: str | None = None, *,
            priority: int = 0, age: float = 0.0) -> Job:  # fmt: skip
    return Job(id=job_id, type=job_type, concurrency_key=key, priority=priority,
               run_at=NOW - 1000 + age, created_at=NOW - 1000, updated_at=NOW - 1000)  # fmt: skip


@dataclass
class Case:
    name: str
    running: list[Job]
    waiting: list[Job]
    limits: ClaimLimits
    want: int
    expected: list[str]
    served: tuple[str, ...] = field(default=SERVED)


CASES = [
    Case("no limits: dispatch order", [], [pending("b", age=2), pending("a", age=1)],
         ClaimLimits(), 5, ["a", "b"]),
    Case("a full type is skipped, others go", [pending("r1", "render")],
         [pending(f"r{n}", "render", age=n) for n in range(2, 6)] + [pending("e", age=9)],
         ClaimLimits({"render": 1}), 5, ["e"]),
    Case("a type's free slots only", [pending("r1", "render")],
         [pending(f"r{n}", "render", age=n) for n in range(2, 6)],
         ClaimLimits({"render": 3}), 5, ["r2", "r3"]),
    Case("priority before age within the slots", [],
         [pending("old", "render", age=1), pending("urgent", "render", priority=5, age=2)],
         ClaimLimits({"render": 1}), 5, ["urgent"]),
    Case("a key without a key limit is a mutex", [],
         [pending(f"a{n}", "sync", "a", age=n) for n in range(5)]
         + [pending("b", "sync", "b", age=9)],
         ClaimLimits(), 5, ["a0", "b"]),
    Case("a running key is full", [pending("a0", "sync", "a")],
         [pending(f"a{n}", "sync", "a", age=n) for n in range(1, 5)]
         + [pending("b", "sync", "b", age=9)],
         ClaimLimits(), 5, ["b"]),
    Case("a key limit of 2", [pending("a0", "sync", "a")],
         [pending(f"a{n}", "sync", "a", age=n) for n in range(1, 5)],
         ClaimLimits(keys={"sync": 2}), 5, ["a1"]),
    Case("keys are per type", [pending("a0", "sync", "a")],
         [pending("a1", "render", "a"), pending("a2", "sync", "a", age=1)],
         ClaimLimits(), 5, ["a1"]),
    Case("type and key limits together", [pending("x", "render", "k")],
         [pending("k1", "render", "k", age=1), pending("j1", "render", "j", age=2),
          pending("j2", "render", "j", age=3), pending("n", "render", age=4)],
         ClaimLimits({"render": 3}), 5, ["j1", "n"]),
    Case("keyless jobs of a keyed type are not held", [pending("a0", "sync", "a")],
         [pending("a1", "sync", "a"), pending("free", "sync", age=1)],
         ClaimLimits(), 5, ["free"]),
    Case("want bounds the claim", [], [pending(f"e{n}", age=n) for n in range(5)],
         ClaimLimits({"render": 1}), 2, ["e0", "e1"]),
    Case("a full type ahead of many", [pending("r0", "render")],
         [pending(f"r{n}", "render", priority=9, age=n) for n in range(1, 200)]
         + [pending("e", age=500)], ClaimLimits({"render": 1}), 3, ["e"]),
    Case("a full key ahead of many", [pending("a0", "sync", "a")],
         [pending(f"a{n}", "sync", "a", priority=9, age=n) for n in range(1, 200)]
         + [pending("b", "sync", "b", age=500)], ClaimLimits(), 3, ["b"]),
    Case("many of one key ahead, within one claim", [],
         [pending(f"a{n}", "sync", "a", age=n) for n in range(10)]
         + [pending("b", "sync", "b", age=20), pending("c", "sync", "c", age=21)],
         ClaimLimits(), 3, ["a0", "b", "c"]),
    Case("a limit lowered below what runs starts nothing",
         [pending("r0", "render"), pending("r1", "render")],
         [pending("r2", "render")], ClaimLimits({"render": 1}), 5, []),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_due_obeys_the_limits(claim_store: JobStore, case: Case) -> None:
    fill(claim_store, case.running, case.waiting, started_at=NOW - 50)
    claim_store.serve(Serving(case.limits, case.served))
    with claim_store.transaction():
        got = [job.id for job in claim_store.due(NOW, case.want)]
    assert got == case.expected


def test_unserved_types_wait_only_on_the_limited_claim(claim_store: JobStore) -> None:
    """The limited claim looks at the daemon's types; the plain one at the queue's head."""
    case = Case("", [], [pending("r", "render"), pending("x", "other", age=1)],
                ClaimLimits({"render": 1}), 5, [])  # fmt: skip
    fill(claim_store, case.running, case.waiting, started_at=NOW - 50)
    claim_store.serve(Serving(case.limits, ("render",)))
    with claim_store.transaction():
        assert [job.id for job in claim_store.due(NOW, 5)] == ["r"]
    claim_store.serve(Serving(ClaimLimits(), ("render",)))
    with claim_store.transaction():
        assert [job.id for job in claim_store.due(NOW, 5)] == ["r", "x"]


def test_a_slot_freed_by_an_ended_run_is_seen_at_the_next_claim(claim_store: JobStore) -> None:
    """No counter beside the rows: the write that takes a job out of `running` frees it."""
    case = Case("", [pending("r0", "render")], [pending("r1", "render")],
                ClaimLimits({"render": 1}), 5, [])  # fmt: skip
    fill(claim_store, case.running, case.waiting, started_at=NOW - 50)
    claim_store.serve(Serving(case.limits, SERVED))
    with claim_store.transaction():
        assert claim_store.due(NOW, 5) == []
        running = claim_store.get("r0")
        assert running is not None
        done = jobs.complete(running, result=b"null", now=NOW)
        assert claim_store.save(done, expected=running.status, expected_lease=running.lease)
        assert [job.id for job in claim_store.due(NOW, 5)] == ["r1"]


@pytest.mark.parametrize(
    ("counts", "due", "limits", "want", "expected"),
    [
        ([], ["e:", "e:", "e:"], ClaimLimits(), 2, [0, 1]),
        ([("r", None, 1)], ["r:", "r:", "e:"], ClaimLimits({"r": 2}), 5, [0, 2]),
        ([("s", "a", 1)], ["s:a", "s:b", "s:b"], ClaimLimits(), 5, [1]),
        ([("s", "a", 1)], ["s:a", "s:b", "s:b"], ClaimLimits(keys={"s": 2}), 5, [0, 1, 2]),
        ([], ["s:a", "s:a", "s:a"], ClaimLimits(keys={"s": 2}), 5, [0, 1]),
    ],
)
def test_admit(
    counts: list[tuple[str, str | None, int]],
    due: list[str],
    limits: ClaimLimits,
    want: int,
    expected: list[int],
) -> None:
    """Pure: `type:key` items (empty key: none), admitted in order while slots last."""
    candidates = []
    for n, item in enumerate(due):
        job_type, _, key = item.partition(":")
        candidates.append(pending(str(n), job_type, key or None))
    admitted = admit(candidates, Running.of(counts), limits, want)
    assert [int(job.id) for job in admitted] == expected


@pytest.mark.parametrize(
    ("job", "counts", "limits", "expected"),
    [
        (pending("r", "render"), [("render", None, 2)], ClaimLimits({"render": 2}),
         {"reason": "limit", "limit": "render", "running": 2, "max": 2}),
        (pending("r", "render"), [("render", None, 1)], ClaimLimits({"render": 2}), None),
        (pending("s", "sync", "a"), [("sync", "a", 1)], ClaimLimits(),
         {"reason": "key_limit", "limit": "sync", "key": "a", "running": 1, "max": 1}),
        (pending("s", "sync", "a"), [("sync", "a", 1)], ClaimLimits(keys={"sync": 2}), None),
        (pending("s", "sync", "b"), [("sync", "a", 1)], ClaimLimits(), None),
        # A lowered limit: more run than it allows.
        (pending("r", "render"), [("render", None, 3)], ClaimLimits({"render": 1}),
         {"reason": "limit", "limit": "render", "running": 3, "max": 1}),
        # Not due yet: it waits for its time, not for a slot.
        (msgspec.structs.replace(pending("r", "render"), run_at=NOW + 1),
         [("render", None, 2)], ClaimLimits({"render": 2}), None),
        (jobs.start(pending("r", "render"), lease=1, worker_pid=1, now=NOW),
         [("render", None, 2)], ClaimLimits({"render": 2}), None),
    ],
)  # fmt: skip
def test_waiting(
    job: Job,
    counts: list[tuple[str, str | None, int]],
    limits: ClaimLimits,
    expected: dict[str, object] | None,
) -> None:
    """Pure, with a fake clock: why a job is held back, from what runs."""
    assert waiting(job, limits, Running.of(counts), NOW) == expected
