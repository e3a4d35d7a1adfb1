"""Handlers with per-type defaults, for the tests of `@handler(..., timeout=,
max_attempts=, priority=)` (CONTRACT section 13).

`tight` gives its jobs 2 attempts of 1 s each; a payload {"sleep": S} makes a run last
S seconds (past the timeout: the run is killed). `urgent` gives its jobs priority 7 and
a limit of 2; `echo` (built in) gives none, so the configuration's apply.
"""

from __future__ import annotations

import time
from typing import Any

from procpool import JobContext, handler


@handler("tight", max_attempts=2, timeout=1)
def tight(ctx: JobContext, payload: Any) -> Any:
    if isinstance(payload, dict) and "sleep" in payload:
        time.sleep(float(payload["sleep"]))
    return payload


@handler("urgent", priority=7, limit=2)
def urgent(ctx: JobContext, payload: Any) -> Any:
    return payload
