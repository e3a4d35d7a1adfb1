"""Handlers for the containment tests (loaded with --handlers containment_handlers):
what real handlers do that once took the daemon down or outlived their run."""

from __future__ import annotations

import gc
import multiprocessing
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec

from procpool import JobContext, handler
from procpool.application.wire.channel import WorkerEnd

_forked_from: list[JobContext] = []  # the job's context, inherited by forked children


def _log_from_child(n: int) -> int:
    ctx = _forked_from[-1]
    ctx.logger.info("large " + "x" * 200_000, child=n)  # larger than any pipe or frame
    for _ in range(20):
        # Under PIPE_BUF: written at once, so lines of several children never mix.
        ctx.logger.info("from a forked child " + "x" * 3_000, child=n)
        ctx.progress(0.5, "from a forked child")
    return n


@handler("fork_and_log")
def fork_and_log(ctx: JobContext, payload: Any) -> list[int]:
    """multiprocessing's fork context: children inherit the worker, its channel and
    its logger, and log large lines at once."""
    ctx.logger.info("before the pool")
    _forked_from.append(ctx)
    with multiprocessing.get_context("fork").Pool(3) as workers:
        done = workers.map(_log_from_child, range(6))
    ctx.logger.info("after the pool")
    return done


@handler("terminate_at_once")
def terminate_at_once(ctx: JobContext, payload: Any) -> int:
    """`Process.terminate()` right after `start()`, many times: each child must die of
    the SIGTERM, however early in its life it arrives. Returns how many did."""
    fork = multiprocessing.get_context("fork")
    ended = 0
    for _ in range(payload["times"]):
        child = fork.Process(target=time.sleep, args=(60,))
        child.start()
        child.terminate()
        child.join(5)
        if child.exitcode is None:  # the SIGTERM was lost: the child lives on
            child.kill()
            child.join()
        else:
            ended += 1
    return ended


@handler("session_child")
def session_child(ctx: JobContext, payload: Any) -> str:
    """Start a child in a session of its own, record its pid, then wait (or return)."""
    record = Path(payload["record"])
    previous = record.read_text().split() if record.exists() else []
    overlap = any(_alive(int(pid)) for pid in previous)
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with record.open("a") as out:
        out.write(f"{child.pid}\n")
    if overlap:
        Path(payload["overlap"]).write_text("a child of an earlier attempt was alive")
    if payload.get("return"):
        return "left a child behind"
    time.sleep(float(payload.get("seconds", 300)))
    return "slept"


@handler("daemonized_grandchild")
def daemonized_grandchild(ctx: JobContext, payload: Any) -> str:
    """The classic double fork: a grandchild in a new session whose parent exits."""
    subprocess.run(["setsid", "sh", "-c", f"sleep 300 & echo $! > {payload['record']}"], check=True)
    time.sleep(float(payload.get("seconds", 300)))
    return "slept"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _channel() -> WorkerEnd:
    return next(o for o in gc.get_objects() if isinstance(o, WorkerEnd))


@handler("send_raw")
def send_raw(ctx: JobContext, payload: Any) -> str:
    """Write bytes of the test's choosing onto the worker's own channel, framed or
    not: what a buggy extension or a forked child sharing the socket can do."""
    body = bytes.fromhex(payload["hex"])
    frame = body if payload.get("raw") else struct.pack("!I", len(body)) + body
    channel = _channel()
    with channel._lock:
        channel.sock.sendall(frame)
    time.sleep(float(payload.get("seconds", 30)))
    return "sent"


def msgpack_hex(value: Any) -> str:
    return msgspec.msgpack.encode(value).hex()
