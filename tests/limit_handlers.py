"""Handlers for the concurrency-limit tests: each run writes start and end marks.

Every run appends "JOB PID start TIME" before its work and "JOB PID end TIME" after it
to DIR/marks (O_APPEND: one write per line, whole lines from several processes), so a
test judges how many runs of a type were alive at once. A run lasts `seconds`, or, with
"gate": NAME, until DIR/NAME exists (`seconds` at the most).

`render` is limited by its handler (limit=2); `capped` and `keyed` only by the
configuration or by their jobs' concurrency_key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, handler


def _mark(directory: Path, job_id: str, what: str) -> None:
    fd = os.open(directory / "marks", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{job_id} {os.getpid()} {what} {time.time()}\n".encode())
    finally:
        os.close(fd)


def _run(ctx: JobContext, payload: dict[str, Any]) -> Any:
    directory = Path(payload["dir"])
    _mark(directory, ctx.job_id, "start")
    until = time.monotonic() + float(payload.get("seconds", 0.2))
    gate = directory / payload["gate"] if "gate" in payload else None
    while time.monotonic() < until and not (gate is not None and gate.exists()):
        time.sleep(0.01)
    _mark(directory, ctx.job_id, "end")
    return ctx.job_id


@handler("render", limit=2)
def render(ctx: JobContext, payload: dict[str, Any]) -> Any:
    return _run(ctx, payload)


@handler("capped")
def capped(ctx: JobContext, payload: dict[str, Any]) -> Any:
    return _run(ctx, payload)


@handler("keyed")
def keyed(ctx: JobContext, payload: dict[str, Any]) -> Any:
    return _run(ctx, payload)
