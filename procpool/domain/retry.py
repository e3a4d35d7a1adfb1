"""Retry backoff: exponential, capped, with jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RetryPolicy:
    """`base` * 2^(attempts-1) seconds, capped at `cap`, then scaled by a random
    factor in [1 - jitter, 1] so that jobs that failed together do not retry together.
    Jitter only shortens the wait: the cap stays a true upper bound."""

    base: float = 1.0
    cap: float = 300.0
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def backoff(self, attempts: int) -> float:
        """The wait before the next try, after `attempts` (>= 1) failed attempts."""
        exponent = min(max(attempts - 1, 0), 64)
        delay = min(self.cap, self.base * 2.0**exponent)
        return delay * self.rng.uniform(1.0 - self.jitter, 1.0)
