"""Handlers for the schedules' tests: `when` returns what the handler is told of its
occurrence (ctx.scheduled_for); `hold` runs `seconds` (a job longer than the period)."""

from __future__ import annotations

import time
from typing import Any

from procpool import JobContext, handler


@handler("when")
def when(ctx: JobContext, payload: Any) -> dict[str, Any]:
    return {"job_id": ctx.job_id, "scheduled_for": ctx.scheduled_for}


@handler("hold")
def hold(ctx: JobContext, payload: Any) -> str:
    time.sleep(float(payload.get("seconds", 3.0)))
    return ctx.job_id
