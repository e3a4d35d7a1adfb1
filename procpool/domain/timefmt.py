"""Times as procpool shows them: UTC, RFC 3339, with a Z."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from functools import lru_cache


@lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))


def rfc3339(moment: float | datetime) -> str:
    """UTC, microseconds, with a Z: 2026-11-28T02:04:15.123456Z."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.timestamp()
    # math.floor and zfill: the same text as int(moment // 1) and an f-string's 06d
    # (micros is never negative), in half the time (every log line is dated here).
    whole = math.floor(moment)
    micros = round((moment - whole) * 1_000_000)
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return f"{_second(whole)}{str(micros).zfill(6)}Z"
