"""The handlers every daemon has: echo, sleep, cpu, fail."""

from __future__ import annotations

import time
from typing import Any

from procpool.application.handlers import JobContext, handler
from procpool.domain.errors import PermanentError


def _number(payload: Any, key: str) -> float | None:
    if not isinstance(payload, dict) or key not in payload:
        return None
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise PermanentError(f"payload.{key} must be a number >= 0, got {value!r}")
    return float(value)


@handler("echo")
def echo(ctx: JobContext, payload: Any) -> Any:
    return payload


@handler("sleep")
def sleep(ctx: JobContext, payload: Any) -> dict[str, float]:
    seconds = _number(payload, "seconds")
    if seconds is None:
        raise PermanentError('sleep needs a payload {"seconds": S}')
    deadline = time.monotonic() + seconds
    step = min(0.25, max(seconds / 20, 0.01))
    while (left := deadline - time.monotonic()) > 0:
        ctx.progress(1.0 - left / seconds if seconds else 1.0, f"{left:.1f} s left")
        time.sleep(min(step, left))
    ctx.progress(1.0, "done")
    return {"slept": seconds}


def _spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


@handler("cpu")
def cpu(ctx: JobContext, payload: Any) -> dict[str, float]:
    seconds = _number(payload, "seconds")
    iterations = _number(payload, "iterations")
    if iterations is not None:
        _spin(int(iterations))
        return {"iterations": int(iterations)}
    if seconds is None:
        raise PermanentError('cpu needs a payload {"seconds": S} or {"iterations": N}')
    deadline = time.process_time() + seconds
    done = 0
    while time.process_time() < deadline:
        _spin(10_000)
        done += 10_000
    return {"seconds": seconds, "iterations": done}


@handler("fail")
def fail(ctx: JobContext, payload: Any) -> dict[str, int]:
    payload = payload if isinstance(payload, dict) else {}
    message = str(payload.get("message", "failed on purpose"))
    times = payload.get("times")
    if times is None or ctx.attempt <= int(times):
        raise RuntimeError(f"{message} (attempt {ctx.attempt})")
    return {"succeeded_on_attempt": ctx.attempt}
