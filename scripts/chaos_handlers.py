"""Handlers for scripts/chaos.py: a mixed workload that records who ran what, when.

Every run takes an exclusive lock on a file of its job: the kernel drops the
lock when its holder dies, however it dies, so a second attempt of the same job
that finds the lock taken proves two attempts overlapped, and says so in OVERLAP.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from loguru import logger

from procpool import JobContext, PermanentError, handler
from procpool.entrypoints.builtin_handlers import _spin


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
    return _hostile(ctx, kind, payload)


def _hostile(ctx: JobContext, kind: str, payload: dict[str, Any]) -> Any:
    """What real handlers do that once took the daemon down or outlived their run."""
    if kind == "sigterm_raises":  # a clean-up idiom: SIGTERM becomes an exception
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("terminated"))
        time.sleep(float(payload.get("seconds", 0.05)))
        return "slept"
    if kind == "session_child":  # a child in a session of its own, left running
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        with open(Path(payload["dir"]) / "children", "a") as record:
            record.write(f"{child.pid}\n")
        time.sleep(float(payload.get("seconds", 0.05)))
        return "left a child"
    if kind == "fork_and_log":  # multiprocessing's fork context, logging from children
        with multiprocessing.get_context("fork").Pool(2) as pool:
            return sum(pool.map(_child_logs, range(4)))
    if kind == "clashing_log":  # log fields named like the daemon's own
        ctx.logger.info("resized", event="resize", level="x", job_id="y", worker_pid=0)
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr)
        ctx.progress(0.5, "caf\udce9.jpg")  # a file name that is not UTF-8
        return "logged"
    if kind == "odd_result":  # not JSON: fails every attempt, naming the type
        return {"tags": {1, 2}}
    raise PermanentError(f"unknown chaos kind {kind!r}")


def _child_logs(n: int) -> int:
    logger.info("from a forked child " + "x" * 5_000, child=n)
    return n


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
