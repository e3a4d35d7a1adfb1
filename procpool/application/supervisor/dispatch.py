"""Which due jobs go to which worker, and which queued ones come back.

Pending work waits in the store; a worker holds the job it runs and a short
queue behind it. An idle worker gets as many jobs as it is expected to finish
in `window` seconds, judged by a moving average of recent run times: one for
jobs of 50 ms, 25 for jobs of 2 ms, up to 64 no-op jobs, because one job
at a time would cost a whole loop turn, with its durable commit, per job. The
queue is also what lets the loop wait for several jobs' ends before its next
turn (group commit: `Fleet.linger`), so it holds some milliseconds of work.

A busy worker whose queue holds less than half a batch gets its next batch at
once, so that it starts the next job without waiting for a loop turn and its
commit: but only with the jobs left after every idle worker has had its share,
and only when its current job is expected to end within `horizon`.
That is a prefetch, and Celery's lesson is what it must not do: leave a job
queued behind a long one while another worker idles, or in front of a more
urgent job. So a queued job that has not started is taken back (Skip, which
the worker's reader thread answers even while a handler computes): when a
worker idles with nothing due for it, or a due job that orders before it is
waiting, from a worker whose current job has run longer than `patience` (one
about to finish would start it sooner than taking it back would); and in any
case once the current job has run `horizon`, so a job shows `running` while it
still waits for at most about that long. A top-up puts jobs behind others
queued earlier, which may order after them: what is taken back for an urgent
job is every queued job that orders after it, wherever it stands.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from procpool.domain.job import Job

# How long a job may wait queued behind a worker's current job. Prefetch saves a
# loop turn (about a millisecond) per job: worth it for jobs of milliseconds,
# nothing for jobs of seconds, which should wait in the store instead.
HORIZON = 0.25
# How long a worker's current job runs before jobs queued behind it may be taken
# back for an idle worker or a more urgent job.
PATIENCE = 0.002

T = TypeVar("T")
U = TypeVar("U")
W = TypeVar("W")


class BatchSizer:
    def __init__(self, window: float = 0.05, largest: int = 64, weight: float = 0.05) -> None:
        self.window = window
        self.largest = largest
        self.weight = weight
        self._mean: float | None = None  # seconds per job; None until a job has finished

    @property
    def mean(self) -> float | None:
        return self._mean

    def observe(self, duration: float) -> None:
        if self._mean is None:
            self._mean = duration
        else:
            self._mean += self.weight * (duration - self._mean)

    def size(self) -> int:
        if self._mean is None:
            return 1
        if self._mean <= 0:
            return self.largest
        return max(1, min(self.largest, int(self.window / self._mean)))


def share(items: Sequence[T], workers: Sequence[U]) -> list[tuple[U, list[T]]]:
    """Deal items round-robin, so the first (most urgent) go to different workers."""
    # The nth worker's hand is every len(workers)th item from the nth: one slice each,
    # no Python step per item, no empty hand made for a worker beyond the items.
    step = len(workers)
    return [(worker, list(items[n::step])) for n, worker in enumerate(workers[: len(items)])]


def order(job: Job) -> tuple[int, float]:
    """The dispatch order: highest priority first, then oldest run_at."""
    return (-job.priority, job.run_at)


@dataclass(frozen=True)
class Holder(Generic[W]):
    """A busy worker with jobs queued behind the one it runs."""

    worker: W
    queued: Sequence[Job]  # in the order it would run them; none being taken back
    running_since: float | None  # monotonic; None until it acknowledges a job


@dataclass
class Plan(Generic[W]):
    handouts: list[tuple[W, list[Job]]] = field(default_factory=list)
    take_back: list[tuple[W, Job]] = field(default_factory=list)
    look_again_at: float | None = None  # monotonic: a take-back may be due then

    def look_again(self, at: float) -> None:
        self.look_again_at = at if self.look_again_at is None else min(self.look_again_at, at)


def plan(
    due: Sequence[Job],
    *,
    idle: Sequence[W],
    busy: Sequence[tuple[W, float]],
    holders: Sequence[Holder[W]],
    size: int,
    expected: float | None,
    now: float,
    patience: float,
    horizon: float,
) -> Plan[W]:
    """`due` holds the most urgent due jobs, in order, one more than idle and busy
    workers can take, so that what is left shows what waits. `busy` are workers
    that have started all they were given, with their current job's start."""
    result: Plan[W] = Plan()
    to_idle = due[: len(idle) * size]
    result.handouts.extend(share(to_idle, idle))
    starved = (len(idle) - len(to_idle)) * size
    rest = due[len(to_idle) :]
    ahead = [
        worker
        for worker, since in sorted(busy, key=lambda pair: pair[1])  # soonest done first
        if expected is not None and now - since + expected < horizon
    ]
    to_ahead = rest[: len(ahead) * size]
    result.handouts.extend(share(to_ahead, ahead))
    waiting = rest[len(to_ahead) :]
    urgent = order(waiting[0]) if waiting else None

    # The youngest current jobs first: theirs are the queues that would wait longest.
    for holder in sorted(holders, key=lambda h: -(h.running_since or now)):
        if holder.running_since is None:
            continue  # about to start its next job
        queued = list(holder.queued)
        elapsed = now - holder.running_since
        if elapsed >= horizon:
            back = queued
        else:
            # For an idle worker, the last queued; for an urgent job, all that order
            # after it (a top-up may have queued them ahead of more urgent ones).
            cut = len(queued) - max(0, min(starved, len(queued)))
            back = [
                job
                for n, job in enumerate(queued)
                if n >= cut or (urgent is not None and urgent < order(job))
            ]
            if back and elapsed < patience:
                result.look_again(holder.running_since + patience)
                back = []
            else:
                result.look_again(holder.running_since + horizon)
        starved -= len(back)
        result.take_back.extend((holder.worker, job) for job in back)
    return result
