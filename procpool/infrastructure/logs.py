"""The daemon's logs: flat JSON lines in logs/procpool.jsonl, a readable line on stderr.

Only the supervisor writes them (DESIGN decision 1); workers send their lines
up their channels. Both sinks write synchronously: loguru's `enqueue=True`
would start a thread in a process that forks (DESIGN decision 2). The file is
written with plain `os.write` on an O_APPEND descriptor, so a forked worker
holds no buffered copy of it that could be flushed twice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import msgspec
from loguru import logger

from procpool.domain.timefmt import rfc3339

_encoder = msgspec.json.Encoder()
_RESERVED = ("ts", "level", "event", "msg")


def _flat(record: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "ts": rfc3339(record["time"].timestamp()),
        "level": record["level"].name,
        "event": record["extra"].get("event", "log"),
        "msg": record["message"],
    }
    for key, value in record["extra"].items():
        if key not in _RESERVED and value is not None:
            line[key] = value
    return line


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
    """logs/procpool.jsonl: one flat JSON object per line, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        super().__init__(self._open())

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def reopen(self) -> None:
        """For an external logrotate: continue in a new file at the same path."""
        self.flush()
        old, self.fd = self.fd, self._open()
        os.close(old)

    def stop(self) -> None:
        self.flush()
        os.close(self.fd)


_HUMAN_FIELDS = ("job_id", "worker_pid", "attempt", "duration_ms")


class DaemonLogs:
    """The supervisor's log: one loguru sink that writes each event twice, as a flat
    JSON line to the file and as a readable line to standard error, at one level
    that SIGHUP may change. (One sink, not two: loguru's cost is per sink.)"""

    def __init__(self, home: Path, level: str) -> None:
        self.file = JsonLogFile(home / "logs" / "procpool.jsonl")
        self.stderr = _LineBuffer(sys.stderr.fileno())
        self.set_level(level)

    def set_level(self, level: str) -> None:
        logger.remove()  # loguru's default stderr sink, and any earlier configuration
        logger.add(self.write, level=level, format="{message}", catch=True)

    def write(self, message: Any) -> None:
        record = message.record
        line = _flat(record)
        self.file.add(_encode(line) + b"\n")
        fields = "  ".join(f"{key}={line[key]}" for key in _HUMAN_FIELDS if key in line)
        human = f"{line['ts']} {line['level']:<7} {line['event']:<16} {line['msg']}"
        self.stderr.add(
            f"{human}  {fields}\n".encode("utf-8", "replace")
            if fields
            else f"{human}\n".encode("utf-8", "replace")
        )

    def flush(self) -> None:
        self.file.flush()
        self.stderr.flush()

    def reopen(self) -> None:
        self.file.reopen()

    def close_in_child(self) -> None:
        os.close(self.file.fd)

    def close(self) -> None:
        logger.remove()
        self.stderr.flush()
        self.file.stop()
