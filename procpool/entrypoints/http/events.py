"""The structured log as Server-Sent Events, and a wake-up when the log grows.

An event's id is where it ends in the log: `INODE:OFFSET`, the file's inode and
the byte offset just past the line. A client that reconnects with
`Last-Event-ID` resumes right after that line, also across rotations: the file
is found among `procpool.jsonl` and its rotated copies by its inode, read to its
end, then every newer file in turn. If that file is gone (rotated out of
`log_keep`), the stream resumes at the oldest file still there, after a comment
saying that events were lost. An id that is not of this shape is a 400.

Memory stays bounded whatever a client does: the stream reads the log through a
LogCursor (adapters/logs/cursor.py: at most CHUNK bytes at a time, a line longer than
MAX_LINE skipped) and only reads more once the server has handed the previous
chunk to the socket, which waits while the client does not read.

`LogWatch` tells waiters (the event streams, `GET /jobs/{id}/wait`) that the
log grew: inotify on `logs/` where the kernel has it, else a tick every
FALLBACK_TICK seconds. The daemon writes a log line after each commit that
changes a job, so a long poll looks at the store when a line comes, and at
least every WAIT_FLOOR seconds, never in a tight loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fnmatch
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from procpool.adapters.logs.cursor import LogCursor

KEEPALIVE = 15.0  # seconds between keep-alive comments on a quiet stream
FALLBACK_TICK = 0.25  # seconds, without inotify
WAIT_FLOOR = 1.0  # a waiter looks again after this long even if no line came
RETRY_MS = 1000  # how long a client waits before it reconnects
_ID = re.compile(r"([0-9]{1,20}):([0-9]{1,20})")
_IN_MODIFY, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x80, 0x100
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000


class BadEventId(ValueError):
    """A Last-Event-ID this server did not give out."""


def parse_event_id(text: str) -> tuple[int, int]:
    found = _ID.fullmatch(text.strip())
    if not found:
        raise BadEventId(f"Last-Event-ID must be INODE:OFFSET as this server sends, got {text!r}")
    return int(found.group(1)), int(found.group(2))


@dataclass(frozen=True)
class EventFilter:
    """Which log lines to send: of any of `jobs`, of any of the job `types`, whose
    event matches any of the `events` patterns ("job.*"); an empty kind passes all."""

    jobs: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    events: tuple[str, ...] = ()

    def matches(self, line: dict[str, object]) -> bool:
        if self.jobs and line.get("job_id") not in self.jobs:
            return False
        if self.types and line.get("type") not in self.types:
            return False
        event = str(line.get("event"))
        return not self.events or any(fnmatch.fnmatchcase(event, p) for p in self.events)


class LogWatch:
    """Wakes every waiter when the log directory changes (one inotify per server)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._changed = asyncio.Event()
        self._fd: int | None = None
        self._watching = False
        self._libc: ctypes.CDLL | None = None
        self._tick: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """In the event loop: watch with inotify, else tick."""
        with contextlib.suppress(OSError, AttributeError):
            self._libc = ctypes.CDLL(None, use_errno=True)
            fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                asyncio.get_running_loop().add_reader(fd, self._drain)
        self._try_watch()

    def _try_watch(self) -> None:
        """Watch logs/ (it appears with the daemon's first start); tick until then."""
        if self._fd is not None and self._libc is not None and not self._watching:
            mask = _IN_MODIFY | _IN_MOVED_TO | _IN_CREATE
            self._watching = self._libc.inotify_add_watch(
                self._fd, os.fsencode(self.directory), mask
            ) >= 0  # fmt: skip
        if not self._watching:
            self._wake()
            self._tick = asyncio.get_running_loop().call_later(FALLBACK_TICK, self._try_watch)

    def _drain(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> None:
        """Return when the log changes, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
        if self._fd is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


def _frame(event_id: str, line: bytes, event: str) -> bytes:
    # The JSON line holds no newline (JSON escapes it), so it is one data: field.
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), event.encode(), line)


_EVENT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


async def stream(
    cursor: LogCursor,
    watch: LogWatch,
    wanted: EventFilter,
    lost: bool,
    closing: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """The event stream: a first comment, then one frame per matching log line,
    a keep-alive comment after KEEPALIVE quiet seconds; ends when `closing()`."""
    yield f"retry: {RETRY_MS}\n: procpool events\n\n".encode()
    if lost:
        yield b": events before these were rotated out of the log\n\n"
    quiet_since = time.monotonic()
    try:
        while not closing():
            lines = cursor.read()
            frames = []
            for event_id, raw in lines:
                try:
                    line = msgspec.json.decode(raw)
                except msgspec.DecodeError:
                    continue
                if not isinstance(line, dict) or not wanted.matches(line):
                    continue
                name = str(line.get("event"))
                frames.append(_frame(event_id, raw, name if _EVENT_NAME.fullmatch(name) else "log"))
            if frames:
                quiet_since = time.monotonic()
                yield b"".join(frames)
            if lines:
                continue  # more may be there: read before waiting
            idle = time.monotonic() - quiet_since
            if idle >= KEEPALIVE:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
                continue
            await watch.changed(min(WAIT_FLOOR, KEEPALIVE - idle))
    finally:
        cursor.close()
