"""Handlers for the fate and loop tests (loaded with --handlers fate_handlers).

Each misbehaves in a way real handlers do: clean-up idioms that take over
SIGTERM, C calls that hold the GIL, threads that outlive their job.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, handler


def _mark_started(payload: Any) -> None:
    if isinstance(payload, dict) and "started_file" in payload:
        Path(payload["started_file"]).write_text(str(os.getpid()))


@handler("sigterm_raises")
def sigterm_raises(ctx: JobContext, payload: Any) -> str:
    """The clean-up idiom: SIGTERM becomes an exception, which the handler lets out."""

    def raise_it(signum: int, frame: object) -> None:
        raise RuntimeError("terminated by SIGTERM")

    signal.signal(signal.SIGTERM, raise_it)
    _mark_started(payload)
    time.sleep(300)
    return "slept"


@handler("sigterm_exits_0")
def sigterm_exits_0(ctx: JobContext, payload: Any) -> str:
    """SIGTERM ends the process with status 0, as if all went well."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    _mark_started(payload)
    time.sleep(300)
    return "slept"


@handler("sigterm_returns")
def sigterm_returns(ctx: JobContext, payload: Any) -> str:
    """SIGTERM makes the handler stop early and return what it has, normally."""
    asked = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: asked.set())
    _mark_started(payload)
    asked.wait(300)
    return "partial result"


@handler("hold_gil")
def hold_gil(ctx: JobContext, payload: Any) -> str:
    """A C call that keeps the GIL for `seconds`: no other thread of the worker runs
    meanwhile, its channel reader and heartbeat included."""
    _mark_started(payload)
    ctypes.PyDLL(None).sleep(int(payload["seconds"]))
    return "held"


@handler("leave_a_reporter")
def leave_a_reporter(ctx: JobContext, payload: Any) -> str:
    """Return at once, leaving a thread that keeps reporting progress for this job."""

    def report() -> None:
        for _ in range(100):
            ctx.progress(0.5, "from the job before")
            time.sleep(0.02)

    threading.Thread(target=report, daemon=True).start()
    return "left"


@handler("report_and_sleep")
def report_and_sleep(ctx: JobContext, payload: Any) -> str:
    ctx.progress(0.1, "my own progress")
    time.sleep(float(payload["seconds"]))
    return "done"


# Written at import, to stdout and without a flush: it must appear once, not again
# at every worker's exit.
print("fate_handlers imported")
