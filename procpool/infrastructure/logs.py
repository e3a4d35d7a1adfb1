"""The daemon's logs: flat JSON lines in logs/procpool.jsonl, a readable line on stderr.

Only the supervisor writes them (DESIGN decision 1); workers send their lines
up their channels. Both sinks write synchronously: loguru's `enqueue=True`
would start a thread in a process that forks (DESIGN decision 2). The file is
written with plain `os.write` on an O_APPEND descriptor, so a forked worker
holds no buffered copy of it that could be flushed twice.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from procpool.application import events
from procpool.domain.timefmt import rfc3339

_encoder = msgspec.json.Encoder()
_RESERVED = ("ts", "level", "event", "msg")


def _encode(line: dict[str, Any]) -> bytes:
    try:
        return _encoder.encode(line)
    except (TypeError, ValueError):
        return _encoder.encode(
            {k: v if isinstance(v, str | int | float | bool) else repr(v) for k, v in line.items()}
        )


class _LineBuffer:
    """Lines gathered during one loop turn and written with one write() at its end:
    a syscall per line was a third of the supervisor's time under load."""

    FLUSH_AT = 256 * 1024

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._lines: list[bytes] = []
        self._size = 0

    def add(self, line: bytes) -> None:
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines.clear()
        self._size = 0
        while data:
            data = data[os.write(self.fd, data) :]


class JsonLogFile(_LineBuffer):
    """logs/procpool.jsonl: one flat JSON object per line, appended.

    Rotated by size: when a write would take the file past `max_bytes`, it is
    renamed to `procpool.jsonl.1` (the older ones move up by one, the oldest
    beyond `keep` is dropped) and a new file is started. The check happens once
    per flush, so a line is never split across two files.
    """

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        super().__init__(self._open())

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(fd).st_size
        return fd

    def flush(self) -> None:
        if self._lines and self.size and self.size + self._size > self.max_bytes:
            # A log that cannot rotate (a read-only directory, say) must not stop
            # the daemon: it keeps appending and tries again at the next flush.
            with contextlib.suppress(OSError):
                self._rotate()
        self.size += self._size
        super().flush()

    def _rotate(self) -> None:
        """Shift procpool.jsonl.N-1 to .N ... the current file to .1, then start anew."""
        for number in range(self.keep, 1, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(rotated_path(self.path, number - 1), rotated_path(self.path, number))
        if self.keep:
            os.rename(self.path, rotated_path(self.path, 1))
        else:
            self.path.unlink()
        old, self.fd = self.fd, self._open()
        os.close(old)

    def reopen(self) -> None:
        """For an external logrotate: continue in a new file at the same path."""
        super().flush()
        old, self.fd = self.fd, self._open()
        os.close(old)

    def stop(self) -> None:
        self.flush()
        os.close(self.fd)


def rotated_path(path: Path, number: int) -> Path:
    return path.with_name(f"{path.name}.{number}")


def rotated_files(path: Path) -> list[Path]:
    """The rotated files beside `path` that exist, oldest (highest number) first."""
    numbered = []
    for candidate in path.parent.glob(f"{path.name}.*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), candidate))
    return [candidate for _, candidate in sorted(numbered, reverse=True)]


_HUMAN_FIELDS = ("job_id", "worker_pid", "attempt", "duration_ms")


def human_line(line: dict[str, Any]) -> str:
    """One event as a person reads it: time, level, event, message, then the job's fields."""
    human = (
        f"{line.get('ts', '')} {line.get('level', ''):<7} {line.get('event', ''):<16}"
        f" {line.get('msg', '')}"
    )
    fields = "  ".join(f"{key}={line[key]}" for key in _HUMAN_FIELDS if key in line)
    return f"{human}  {fields}" if fields else human


class DaemonLogs:
    """The supervisor's log: each event written twice, as a flat JSON line to the
    file and as a readable line to standard error, at one level that SIGHUP may
    change. Loguru records made in the supervisor's process (a handler module
    logging as it is imported, say) are routed to the same two places."""

    def __init__(self, home: Path, level: str, max_bytes: int, keep: int) -> None:
        self.file = JsonLogFile(home / "logs" / "procpool.jsonl", max_bytes, keep)
        self.stderr = _LineBuffer(sys.stderr.fileno())
        self.set_level(level)

    def set_level(self, level: str) -> None:
        events.configure(self, level)
        logger.remove()  # loguru's default stderr sink, and any earlier configuration
        logger.add(self._from_loguru, level=level, format="{message}", catch=True)

    def _from_loguru(self, message: Any) -> None:
        record = message.record
        extra = dict(record["extra"])
        self.write_event(record["level"].name, extra.pop("event", "log"), record["message"], extra)

    def write_event(self, level: str, event: str, message: str, fields: dict[str, Any]) -> None:
        line: dict[str, Any] = {"ts": rfc3339(time.time()), "level": level, "event": event,
                                "msg": message}  # fmt: skip
        for key, value in fields.items():
            if value is not None and key not in _RESERVED:
                line[key] = value
        self.file.add(_encode(line) + b"\n")
        self.stderr.add(f"{human_line(line)}\n".encode("utf-8", "replace"))

    def set_rotation(self, max_bytes: int, keep: int) -> None:
        self.file.max_bytes = max_bytes
        self.file.keep = keep

    def flush(self) -> None:
        self.file.flush()
        self.stderr.flush()

    def reopen(self) -> None:
        self.file.reopen()

    def close_in_child(self) -> None:
        os.close(self.file.fd)

    def close(self) -> None:
        events.configure(None)
        logger.remove()
        self.stderr.flush()
        self.file.stop()
