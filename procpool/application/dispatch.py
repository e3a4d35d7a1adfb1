"""How many jobs to hand an idle worker at once.

A worker is given work only when its queue is empty (the backpressure: pending
work waits in the store). One job at a time would cost a whole loop turn, with
its durable commit, per job; for jobs of a few microseconds that turn is most
of the cost. So an idle worker gets as many jobs as it is expected to finish in
`window` seconds, judged by a moving average of recent run times: one for jobs
of 25 ms, dozens for no-op jobs. Due work is also shared out so that no worker
is handed a batch while another stays idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")


class BatchSizer:
    def __init__(self, window: float = 0.002, largest: int = 64, weight: float = 0.05) -> None:
        self.window = window
        self.largest = largest
        self.weight = weight
        self._mean: float | None = None  # seconds per job; None until a job has finished

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
    if not workers:
        return []
    hands: list[list[T]] = [[] for _ in workers]
    for index, item in enumerate(items):
        hands[index % len(workers)].append(item)
    return [(worker, hand) for worker, hand in zip(workers, hands, strict=True) if hand]
