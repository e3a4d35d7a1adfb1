"""Handlers that misbehave on purpose, for the fault tests (loaded with --handlers)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, PermanentError, handler


@handler("attempt")
def attempt(ctx: JobContext, payload: Any) -> dict[str, Any]:
    return {"job_id": ctx.job_id, "attempt": ctx.attempt}


@handler("permanent")
def permanent(ctx: JobContext, payload: Any) -> None:
    raise PermanentError("this cannot work")


@handler("kill_self")
def kill_self(ctx: JobContext, payload: Any) -> str:
    """SIGKILL its own worker on the first `times` attempts (default 1), then succeed."""
    if ctx.attempt <= int((payload or {}).get("times", 1)):
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@handler("exit")
def exit_now(ctx: JobContext, payload: Any) -> None:
    os._exit(int((payload or {}).get("code", 3)))


@handler("spawn")
def spawn(ctx: JobContext, payload: Any) -> None:
    """Start a grandchild, write its pid where the test can see it, and sleep."""
    child = subprocess.Popen(["sleep", "300"])
    Path(payload["pid_file"]).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(300)


@handler("hang")
def hang(ctx: JobContext, payload: Any) -> None:
    """Stop the whole worker, heartbeat thread included: it looks hung."""
    os.kill(os.getpid(), signal.SIGSTOP)


@handler("unserializable")
def unserializable(ctx: JobContext, payload: Any) -> object:
    return object()


_leaked: list[bytearray] = []


@handler("hog")
def hog(ctx: JobContext, payload: Any) -> int:
    """Hold `mb` megabytes for `seconds`; with `leak`, keep them after the job, as a leak would."""
    block = bytearray(int(payload["mb"]) * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    if payload.get("leak"):
        _leaked.append(block)
    time.sleep(float(payload.get("seconds", 0)))
    return len(block)


@handler("exclusive")
def exclusive(ctx: JobContext, payload: Any) -> str:
    """Run while holding a per-job lock; log OVERLAP if another process runs the same job.

    The kernel drops the lock when its holder dies, however it dies, so this sees
    exactly whether two attempts of one job ever ran at the same moment.
    """
    directory = Path(payload["dir"])
    with open(directory / f"{ctx.job_id}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(directory / "OVERLAP", "a") as report:
                report.write(f"{ctx.job_id} attempt {ctx.attempt} pid {os.getpid()}\n")
            raise
        with open(directory / "runs", "a") as runs:
            runs.write(f"{ctx.job_id} {ctx.attempt} {os.getpid()}\n")
        time.sleep(float(payload.get("seconds", 0)))
    return "ran alone"


@handler("kill_daemon")
def kill_daemon(ctx: JobContext, payload: Any) -> str:
    """SIGKILL the supervisor on the first `times` attempts: a job that takes the daemon down."""
    if ctx.attempt <= int((payload or {}).get("times", 1_000_000)):
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(60)
    return "survived"


@handler("progress")
def progress(ctx: JobContext, payload: Any) -> str:
    steps = int(payload.get("steps", 10))
    for step in range(steps):
        ctx.progress(step / steps, f"step {step}")
        time.sleep(float(payload.get("pause", 0.1)))
    return "done"


@handler("chatty")
def chatty(ctx: JobContext, payload: Any) -> str:
    ctx.logger.info("hello from the handler")
    return "ok"
