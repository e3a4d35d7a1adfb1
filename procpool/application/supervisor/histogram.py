"""The run-time histogram: what the ledger counts into when a run ends, and what
telemetry copies into each snapshot. Below both, so that neither imports the other
to share it."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Seconds; the run-time histogram's upper bounds (Prometheus `le`), +Inf implied.
RUN_TIME_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(RUN_TIME_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(RUN_TIME_BUCKETS, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)
