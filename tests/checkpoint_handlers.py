"""Handlers that checkpoint, for the checkpoint tests (loaded with --handlers).

Each writes what its attempt found in `ctx.last_checkpoint` to DIR/seen-ATTEMPT, so a
test reads what every attempt was handed."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from procpool import CheckpointError, JobContext, StaleAttempt, handler


def _seen(ctx: JobContext, folder: Path) -> None:
    (folder / f"seen-{ctx.attempt}").write_text(json.dumps(ctx.last_checkpoint))


@handler("steps")
def steps(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """On its first attempt: checkpoint {"i": 1} to {"i": N}, write DIR/checkpointed,
    then end as `end` says: "raise", "sleep" (past its timeout), "kill_worker" (SIGKILL
    of its own worker), "hang" (SIGSTOP of its own worker, heartbeat thread included),
    "memory" (hold `mb` megabytes until the memory limit ends it), "wait" (until
    something kills it). An attempt handed a checkpoint returns it."""
    folder = Path(payload["dir"])
    _seen(ctx, folder)
    if ctx.last_checkpoint is not None:
        return {"resumed_from": ctx.last_checkpoint}
    for i in range(1, payload["n"] + 1):
        ctx.checkpoint({"i": i})
    (folder / "checkpointed").write_text("")
    end = payload["end"]
    if end == "raise":
        raise RuntimeError("cut short after its checkpoints")
    if end == "kill_worker":
        os.kill(os.getpid(), signal.SIGKILL)
    if end == "hang":
        os.kill(os.getpid(), signal.SIGSTOP)
    if end == "memory":
        block = bytearray(payload["mb"] * 1024 * 1024)
        block[::4096] = b"\x01" * len(block[::4096])  # touched: resident, not only mapped
    time.sleep(300)  # "sleep" and "wait": its timeout, or a kill, ends it
    return None


@handler("bad_checkpoints")
def bad_checkpoints(ctx: JobContext, payload: dict[str, Any]) -> list[str]:
    """An infinite float, a string of `size` characters and a set tried as checkpoints:
    the errors, in order."""
    errors = []
    for value in [{"ok": float("inf")}, "x" * payload["size"], {1, 2}]:
        try:
            ctx.checkpoint(value)
            errors.append("stored")
        except CheckpointError as error:
            errors.append(f"{type(error).__name__}: {error}")
    return errors


@handler("stale")
def stale(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Checkpoint {"i": 1}, then wait for SIGTERM (a cancel: this handler catches it),
    then checkpoint {"i": 2}: what that raises goes to DIR/after-term."""
    folder = Path(payload["dir"])
    termed: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: termed.append(signum))
    ctx.checkpoint({"i": 1})
    (folder / "checkpointed").write_text("")
    while not termed:
        time.sleep(0.01)
    try:
        ctx.checkpoint({"i": 2})
        outcome = "stored"
    except StaleAttempt as error:
        outcome = f"StaleAttempt: {error}"
    (folder / "after-term").write_text(outcome)


@handler("many_checkpoints")
def many_checkpoints(ctx: JobContext, payload: dict[str, Any]) -> dict[str, float]:
    """`n` checkpoints in a row; returns each round trip's seconds' median and p99 (the
    measure of scripts/bench_checkpoints.py)."""
    times = []
    for i in range(payload["n"]):
        began = time.perf_counter()
        ctx.checkpoint({"i": i})
        times.append(time.perf_counter() - began)
    times.sort()
    return {"median": times[len(times) // 2], "p99": times[int(len(times) * 0.99) - 1]}


def _note(path: Path, i: int) -> None:
    # One O_APPEND write a line: a kill cannot leave half of one.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)


@handler("checkpoint_forever")
def checkpoint_forever(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """On its first attempt: checkpoint {"i": 1}, {"i": 2}, ... until something ends it,
    appending each i to DIR/asked before the call and to DIR/returned once stored; a
    refusal goes to DIR/stale. A later attempt writes what it was handed to
    DIR/seen-ATTEMPT and returns it, checkpointing nothing."""
    folder = Path(payload["dir"])
    if ctx.attempt > 1:
        _seen(ctx, folder)
        return {"resumed_from": ctx.last_checkpoint}
    i = 0
    while True:
        i += 1
        _note(folder / "asked", i)
        try:
            ctx.checkpoint({"i": i})
        except StaleAttempt as error:
            (folder / "stale").write_text(f"StaleAttempt: {error}")
            raise
        _note(folder / "returned", i)
        time.sleep(0.01)
