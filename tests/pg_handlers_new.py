"""A handler only some daemons of a test fleet load: a type new in a rolling deploy.

`fresh` ({"dir": D}) appends "JOB ATTEMPT PID fresh TIME" to D/spans and returns its pid.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, handler


@handler("fresh")
def fresh(ctx: JobContext, payload: dict[str, Any]) -> Any:
    with open(Path(payload["dir"]) / "spans", "a") as spans:
        spans.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()} fresh {time.time()}\n")
    return {"pid": os.getpid()}
