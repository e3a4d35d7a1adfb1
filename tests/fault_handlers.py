"""Handlers that misbehave on purpose, for the fault tests (loaded with --handlers)."""

from __future__ import annotations

import ctypes
import datetime
import enum
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, PermanentError, handler
from procpool.application.worker import main as worker


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
    """Start a grandchild, write its pid where the test can see it, and sleep.

    With `outlive_daemon`, the worker first cancels the kernel's signal at its
    supervisor's death: a worker that can survive its daemon, for recovery tests."""
    if payload.get("outlive_daemon"):
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG: none
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


_BAD_RESULTS: dict[str, Any] = {
    "set": {"tags": {1, 2}},
    "nan": {"score": float("nan")},
    "inf": [1.0, float("-inf")],
    "bytes": {"data": b"\x00\x01"},
    "datetime": {"when": [datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)]},
    "int_key": {1: "one"},
    "surrogate": {"file": "caf\udce9.jpg"},
}


class _Color(enum.IntEnum):
    RED = 1


@handler("result_of")
def result_of(ctx: JobContext, payload: Any) -> Any:
    """Return the value named by the payload: one of _BAD_RESULTS, or an accepted oddity."""
    if payload == "accepted":
        return {"pair": (1, 2), "color": _Color.RED, "flag": True, "none": None}
    return _BAD_RESULTS[payload]


@handler("talk")
def talk(ctx: JobContext, payload: Any) -> str:
    """Write to stdout and stderr every way a handler might."""
    print("printed line")
    sys.stderr.write("stderr line\n")
    os.write(1, b"fd one line\n")
    os.write(2, b"not utf-8: caf\xe9\n")
    subprocess.run(["sh", "-c", "echo child stdout; echo child stderr >&2"], check=True)
    thread = threading.Thread(target=lambda: print("thread line"))
    thread.start()
    thread.join()
    print("x" * 50_000)
    print("name caf\udce9.jpg")
    print("no newline at the end", end="")
    return "talked"


@handler("clash")
def clash(ctx: JobContext, payload: Any) -> str:
    """Log with fields named like the daemon's own, and overlong text."""
    ctx.logger.info(
        "resized",
        event="resize",
        level="custom",
        message="mine",
        msg="also mine",
        ts=1,
        worker_pid=-1,
        job_id="someone-else",
    )
    ctx.logger.info("y" * 20_000, big="z" * 20_000)
    ctx.progress(0.5, "p" * 5_000)
    time.sleep(0.3)
    return "logged"


@handler("surrogate_progress")
def surrogate_progress(ctx: JobContext, payload: Any) -> str:
    """A progress message and a log line naming a file that is not UTF-8; the second
    report comes within the rate limit, so the heartbeat thread is the one that sends it."""
    name = os.fsdecode(b"caf\xe9.jpg")
    ctx.progress(0.1, "starting")
    ctx.progress(0.5, f"reading {name}")
    ctx.logger.info(f"opened {name}", file=name)
    time.sleep(0.5)
    return "read"


@handler("quiet")
def quiet(ctx: JobContext, payload: Any) -> str:
    """Sleep without a word: only heartbeats show it is alive."""
    time.sleep(float(payload["seconds"]))
    return "slept"


@handler("leave_thread")
def leave_thread(ctx: JobContext, payload: Any) -> str:
    """Return at once, leaving a thread that keeps reporting and logging for this job."""

    def linger() -> None:
        deadline = time.monotonic() + float(payload["seconds"])
        while time.monotonic() < deadline:
            ctx.progress(0.99, "left behind")
            ctx.logger.info("late line")
            time.sleep(0.05)

    threading.Thread(target=linger, daemon=True).start()
    return "left"


@handler("gil")
def gil(ctx: JobContext, payload: Any) -> int:
    """Spend minutes in one C call that holds the GIL and runs no Python signal handler."""
    Path(payload["pid_file"]).write_text(str(os.getpid()))
    return sum(range(10**13))


@handler("break_heartbeat")
def break_heartbeat(ctx: JobContext, payload: Any) -> str:
    """Make the worker's heartbeat thread fail, as a bug in it would."""

    def broken(self: Any, now: float) -> None:
        raise RuntimeError("heartbeat broke")

    worker._Reporter._send_due = broken  # type: ignore[method-assign]
    time.sleep(5)
    return "unreachable"


@handler("orphan")
def orphan(ctx: JobContext, payload: Any) -> str:
    """Start a grandchild whose parent exits at once: an orphan; write its pid."""
    started = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    Path(payload["pid_file"]).write_text(f"{os.getpid()} {started.stdout.strip()}")
    time.sleep(float(payload.get("seconds", 30)))
    return "done"


@handler("close_stdout")
def close_stdout(ctx: JobContext, payload: Any) -> str:
    """Close fd 1 (and Python's stdout over it), as some daemonizing code does."""
    sys.stdout.flush()
    os.close(1)
    return "closed"


@handler("gated")
def gated(ctx: JobContext, payload: Any) -> str:
    """Report progress (a tenth of the way a second, up to 90 %) until the file
    payload["gate"] exists, then finish: a test opens the gate once it has seen what
    it needs of the run, instead of hoping a fixed length outlasts its own start."""
    gate, started = Path(payload["gate"]), time.monotonic()
    while not gate.exists():
        elapsed = time.monotonic() - started
        ctx.progress(min(0.9, elapsed / 10), f"{max(0.0, 10 - elapsed):.1f} s left")
        time.sleep(0.05)
    ctx.progress(1.0, "done")
    return "opened"
