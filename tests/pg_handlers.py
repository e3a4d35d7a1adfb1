"""A handler for the several-daemons tests: each run records its span and proves it ran
alone.

`span` ({"dir": D, "seconds": S, "gate": NAME}) takes an exclusive lock on D/JOB.lock
for the whole run (the kernel drops it when its holder dies, however it dies): a run that
finds it taken writes D/OVERLAP. It appends "JOB ATTEMPT PID start|end TIME" lines to D/spans.
With a gate, the run lasts until D/NAME exists (S seconds at the most): a test that
must stop a daemon while a run is still going opens the gate when it is ready.
With "progress_every": P it reports its progress every P seconds while it runs.
With "sum": N, the first attempt computes sum(range(N)) instead of sleeping: one long
C call that holds the GIL; with "first_seconds", the first attempt sleeps that long.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from procpool import JobContext, handler


def _note(directory: Path, line: str) -> None:
    fd = os.open(directory / "spans", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@handler("span")
def span(ctx: JobContext, payload: dict[str, Any]) -> Any:
    directory = Path(payload["dir"])
    with open(directory / f"{ctx.job_id}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _note(directory, f"{ctx.job_id} {ctx.attempt} {os.getpid()} overlap {time.time()}")
            (directory / "OVERLAP").write_text(ctx.job_id)
            raise
        _note(directory, f"{ctx.job_id} {ctx.attempt} {os.getpid()} start {time.time()}")
        seconds = float(payload.get("seconds", 0.1))
        every = payload.get("progress_every")  # seconds between progress reports, if any
        if "sum" in payload and ctx.attempt == 1:
            sum(range(payload["sum"]))  # one C call that holds the GIL throughout
        elif "first_seconds" in payload and ctx.attempt == 1:
            time.sleep(float(payload["first_seconds"]))
        elif "gate" in payload:
            gate, until = directory / payload["gate"], time.monotonic() + seconds
            while not gate.exists() and time.monotonic() < until:
                time.sleep(0.01)
        elif every is None:
            time.sleep(seconds)
        else:
            began = time.monotonic()
            while (spent := time.monotonic() - began) < seconds:
                ctx.progress(min(1.0, spent / seconds))
                time.sleep(float(every))
        _note(directory, f"{ctx.job_id} {ctx.attempt} {os.getpid()} end {time.time()}")
    return {"pid": os.getpid()}
