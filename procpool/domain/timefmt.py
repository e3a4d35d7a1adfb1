"""Times as procpool shows them: UTC, RFC 3339, with a Z."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
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
    return rfc3339_each((moment,))[0]


def rfc3339_each(moments: Iterable[float]) -> list[str]:
    """rfc3339 of each of `moments` (seconds since the epoch), for the many a log writes
    at once: without a call each, and the text of the second they share made once."""
    texts: list[str] = []
    second: int | None = None  # the second of the last moment, and its text
    head = ""
    for moment in moments:
        # math.floor and zfill: the same text as int(moment // 1) and an f-string's 06d
        # (micros is never negative), in half the time.
        whole = math.floor(moment)
        micros = round((moment - whole) * 1_000_000)
        if micros == 1_000_000:
            whole, micros = whole + 1, 0
        if whole != second:
            second, head = whole, _second(whole)
        texts.append(f"{head}{str(micros).zfill(6)}Z")
    return texts
