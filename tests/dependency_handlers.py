"""Handlers for the dependency tests (tests/e2e/test_dependencies.py).

`mark` appends "JOB PID" to DIR/runs (O_APPEND: whole lines from several processes),
so that a test counts how many times each job ran, then returns its payload's
`value`; with "gate": NAME it first waits until DIR/NAME exists. `parents` returns
what the attempt was handed as ctx.parents (an empty object if nothing). `flip` fails
until DIR/ok exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, handler


@handler("mark")
def mark(ctx: JobContext, payload: dict[str, Any]) -> Any:
    directory = Path(payload["dir"])
    gate = directory / payload["gate"] if "gate" in payload else None
    while gate is not None and not gate.exists():
        time.sleep(0.01)
    fd = os.open(directory / "runs", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.job_id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return payload.get("value")


@handler("flip")
def flip(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Fails until DIR/ok exists."""
    if not (Path(payload["dir"]) / "ok").exists():
        raise RuntimeError("not yet")
    return "flipped"


@handler("parents")
def parents(ctx: JobContext, payload: Any) -> Any:
    return ctx.parents
