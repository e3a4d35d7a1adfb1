"""The handlers scripts/bench_checkpoints.py runs (loaded with --handlers checkpoint_jobs)."""

from __future__ import annotations

import time
from typing import Any

from procpool import JobContext, handler


@handler("bench_plain")
def plain(ctx: JobContext, payload: Any) -> None:
    """The baseline job: returns at once."""


@handler("bench_once")
def once(ctx: JobContext, payload: Any) -> None:
    """Checkpoints once, then returns."""
    ctx.checkpoint({"done": payload})


@handler("bench_round_trips")
def round_trips(ctx: JobContext, payload: dict[str, Any]) -> dict[str, list[float]]:
    """`n` checkpoints in a row, then `n` progress reports (which wait for no answer):
    each call's seconds."""
    checkpoints, reports = [], []
    for i in range(payload["n"]):
        began = time.perf_counter()
        ctx.checkpoint({"i": i, "pad": "x" * payload.get("pad", 0)})
        checkpoints.append(time.perf_counter() - began)
    for i in range(payload["n"]):
        began = time.perf_counter()
        ctx.progress(i / payload["n"])
        reports.append(time.perf_counter() - began)
    return {"checkpoint": checkpoints, "progress": reports}
