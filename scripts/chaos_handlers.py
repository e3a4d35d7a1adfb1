"""Handlers for scripts/chaos.py: a mixed workload that records who ran what, when.

Every run takes an exclusive lock on a file of its job: the kernel drops the
lock when its holder dies, however it dies, so a second attempt of the same job
that finds the lock taken proves two attempts overlapped, and says so in OVERLAP.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, PermanentError, handler
from procpool.builtin_handlers import _spin


def _work(ctx: JobContext, kind: str, payload: dict[str, Any]) -> Any:
    if kind == "echo":
        return payload
    if kind == "cpu":
        _spin(int(payload.get("iterations", 50_000)))
        return "spun"
    if kind == "sleep":
        time.sleep(float(payload.get("seconds", 0.05)))
        return "slept"
    if kind == "fail":
        raise RuntimeError(f"fails on purpose, attempt {ctx.attempt}")
    if kind == "kill_self":
        if ctx.attempt == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"
    raise PermanentError(f"unknown chaos kind {kind!r}")


@handler("chaos")
def chaos(ctx: JobContext, payload: dict[str, Any]) -> Any:
    spans = Path(payload["dir"])
    with open(spans / f"{ctx.job_id}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(spans / "OVERLAP", "a") as report:
                report.write(f"{ctx.job_id} attempt {ctx.attempt} pid {os.getpid()}\n")
            raise
        started = time.time()
        result = _work(ctx, payload["kind"], payload)
        with open(spans / "spans", "a") as record:
            record.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()} {started} {time.time()}\n")
        return result
