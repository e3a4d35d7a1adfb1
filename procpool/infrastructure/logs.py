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
        "ts": rfc3339(record["time"]),
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


class JsonLogFile:
    """A loguru sink: one flat JSON object per line, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def write(self, message: Any) -> None:
        os.write(self.fd, _encode(_flat(message.record)) + b"\n")

    def reopen(self) -> None:
        """For an external logrotate: continue in a new file at the same path."""
        old, self.fd = self.fd, self._open()
        os.close(old)

    def stop(self) -> None:
        os.close(self.fd)


def _human(record: Any) -> str:
    extra = record["extra"]
    fields = " ".join(
        f"{key}={value}"
        for key, value in extra.items()
        if key in ("job_id", "worker_pid", "attempt", "duration_ms") and value is not None
    )
    event = extra.get("event", "log")
    line = (
        f"{record['time']:%Y-%m-%d %H:%M:%S.%f}"[:-3]
        + f" {record['level'].name:<7} {event:<16} {record['message']}"
    )
    return (line + ("  " + fields if fields else "")).replace("{", "{{").replace("}", "}}") + "\n"


class DaemonLogs:
    """The supervisor's two sinks, at one level that SIGHUP may change."""

    def __init__(self, home: Path, level: str) -> None:
        self.file = JsonLogFile(home / "logs" / "procpool.jsonl")
        self.set_level(level)

    def set_level(self, level: str) -> None:
        logger.remove()  # loguru's default stderr sink, and any earlier configuration
        logger.add(self.file.write, level=level, format="{message}", catch=True)
        logger.add(sys.stderr, level=level, format=_human, colorize=False, catch=True)

    def reopen(self) -> None:
        self.file.reopen()

    def close_in_child(self) -> None:
        os.close(self.file.fd)

    def close(self) -> None:
        logger.remove()
        self.file.stop()
