"""Reading the daemon's JSON log for `procpool logs`: filters and the rotated files in
order. Following the live file across rotations is cursor.py's, shared with the
HTTP API's event stream.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from procpool.adapters.logs.writer import rotated_files

LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40,
          "CRITICAL": 50}  # fmt: skip


def parse(raw: bytes) -> dict[str, Any] | None:
    """One log line as a dict, or None for a line that is not a JSON object."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class LogFilter:
    """Which lines to show. Values of one kind are alternatives (a line of any of
    the jobs, any of the events); kinds combine, so a line must pass every kind
    given. An empty kind lets every line through."""

    job_ids: tuple[str, ...] = ()
    events: tuple[str, ...] = ()  # names, or shell patterns such as "job.*"
    level: str | None = None  # this level and above

    def matches(self, line: dict[str, Any]) -> bool:
        if self.job_ids and line.get("job_id") not in self.job_ids:
            return False
        if self.events:
            event = str(line.get("event"))
            if not any(fnmatch.fnmatchcase(event, pattern) for pattern in self.events):
                return False
        if self.level is not None:
            # A level the daemon never writes (a handler's own) counts as INFO.
            return LEVELS.get(str(line.get("level")), 20) >= LEVELS[self.level.upper()]
        return True


def read_all(path: Path) -> Iterator[bytes]:
    """Every line of the log: the rotated files, oldest first, then the current one."""
    for file in [*rotated_files(path), path]:
        try:
            with open(file, "rb") as handle:
                for line in handle:
                    if line.endswith(b"\n"):  # the last line may be in the middle of a write
                        yield line
        except FileNotFoundError:
            continue  # rotated away while we read the others
