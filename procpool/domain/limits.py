"""Concurrency limits: which due jobs may start, given what runs (CONTRACT section 13).

Pure decision code, shared by every store's claim. A store counts its `running` rows
by type and by (type, concurrency_key) inside the transaction that claims, reads the
due jobs that are not blocked already, and passes them through `admit` in dispatch
order: a job is admitted while its type and its key have a slot left, counting the
jobs admitted before it in the same claim. Nothing is kept between claims, so a crash,
a rescue, a cancel or a timeout frees a slot by the same write that takes its job out
of `running` (DESIGN decision 15).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from procpool.domain.job import Job, Status

KEY_MAX_CHARS = 128
# A key without a key limit of its type is a mutex.
DEFAULT_KEY_LIMIT = 1


@dataclass(frozen=True)
class ClaimLimits:
    """The limits a claim obeys.

    `types`: the most jobs of a type that run at once, by type (types not named:
    unlimited). `keys`: the most jobs of a type that run at once with the same
    concurrency_key, by type (types not named: DEFAULT_KEY_LIMIT). Every value >= 1.
    """

    types: Mapping[str, int] = field(default_factory=dict)
    keys: Mapping[str, int] = field(default_factory=dict)

    def key_limit(self, job_type: str) -> int:
        return self.keys.get(job_type, DEFAULT_KEY_LIMIT)


NO_LIMITS = ClaimLimits()


@dataclass
class Running:
    """What runs now, as the claim's transaction counts it: jobs by type, and by
    (type, concurrency_key) for jobs that carry a key."""

    types: dict[str, int] = field(default_factory=dict)
    keys: dict[tuple[str, str], int] = field(default_factory=dict)

    @classmethod
    def of(cls, counts: Sequence[tuple[str, str | None, int]]) -> Running:
        """From rows of (type, concurrency_key, running jobs)."""
        running = cls()
        for job_type, key, count in counts:
            running.types[job_type] = running.types.get(job_type, 0) + count
            if key is not None:
                running.keys[job_type, key] = running.keys.get((job_type, key), 0) + count
        return running

    def full_types(self, limits: ClaimLimits) -> set[str]:
        """The limited types with no slot left."""
        return {t for t, most in limits.types.items() if self.types.get(t, 0) >= most}

    def full_keys(self, limits: ClaimLimits) -> set[tuple[str, str]]:
        """The (type, key) pairs with no slot left."""
        return {pair for pair, n in self.keys.items() if n >= limits.key_limit(pair[0])}


def limited(job: Job, limits: ClaimLimits) -> bool:
    """Whether a claim of this job must count what runs."""
    return job.concurrency_key is not None or job.type in limits.types


def admit(due: Sequence[Job], running: Running, limits: ClaimLimits, want: int) -> list[Job]:
    """Up to `want` of `due` (in dispatch order) that may start now, in that order.
    `running` is updated with the jobs admitted."""
    admitted: list[Job] = []
    for job in due:
        if len(admitted) >= want:
            break
        most = limits.types.get(job.type)
        if most is not None and running.types.get(job.type, 0) >= most:
            continue
        key = job.concurrency_key
        if key is not None:
            pair = (job.type, key)
            if running.keys.get(pair, 0) >= limits.key_limit(job.type):
                continue
            running.keys[pair] = running.keys.get(pair, 0) + 1
        running.types[job.type] = running.types.get(job.type, 0) + 1
        admitted.append(job)
    return admitted


def waiting(
    job: Job, limits: ClaimLimits, running: Running, now: float
) -> dict[str, object] | None:
    """Why a due pending job is held back by a limit, from what runs now; None for a job
    that is not pending, not due yet, or under its limits (it waits for a worker).

    Shapes: {"reason": "limit", "limit": TYPE, "running": N, "max": M} for a full type;
    {"reason": "key_limit", "limit": TYPE, "key": KEY, "running": N, "max": M} for a
    full key."""
    if job.status is not Status.PENDING or job.run_at > now:
        return None
    most = limits.types.get(job.type)
    count = running.types.get(job.type, 0)
    if most is not None and count >= most:
        return {"reason": "limit", "limit": job.type, "running": count, "max": most}
    key = job.concurrency_key
    if key is not None:
        most, count = limits.key_limit(job.type), running.keys.get((job.type, key), 0)
        if count >= most:
            return {"reason": "key_limit", "limit": job.type, "key": key, "running": count,
                    "max": most}  # fmt: skip
    return None


def as_rows(limits: ClaimLimits) -> list[tuple[str, int | None, int | None]]:
    """The limits as the stores publish them for readers: (type, limit, key limit)."""
    return [
        (t, limits.types.get(t), limits.keys.get(t)) for t in sorted({*limits.types, *limits.keys})
    ]


def from_rows(rows: Sequence[tuple[str, int | None, int | None]]) -> ClaimLimits:
    return ClaimLimits(
        {t: most for t, most, _ in rows if most is not None},
        {t: most for t, _, most in rows if most is not None},
    )
