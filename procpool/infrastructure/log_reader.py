"""Reading the daemon's JSON log for `procpool logs`: filters, the rotated files in
order, and following the live file across rotations.

The daemon rotates `procpool.jsonl` by renaming it to `procpool.jsonl.1` (the
older ones move up by one) and starting a new file; an external logrotate
renames or truncates it and sends SIGUSR1. A follower keeps its descriptor
on the file it reads, so a rename loses nothing: it reads that file to its
end, then any rotated file written after it, then the new file.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from procpool.infrastructure.logs import rotated_files

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


class LogFollower:
    """The lines appended to the log from now on (after what `open` returns)."""

    CHUNK = 1 << 16

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode: tuple[int, int] | None = None
        self._partial = b""

    def open(self) -> list[bytes] | None:
        """Open the current file and return its complete lines so far; None if it
        does not exist yet (the daemon has not started on this home)."""
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open while following)
        except FileNotFoundError:
            return None
        status = os.fstat(self._file.fileno())
        self._inode = (status.st_dev, status.st_ino)
        return self._read()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read(self) -> list[bytes]:
        assert self._file is not None
        chunks = [self._partial]
        while chunk := self._file.read(self.CHUNK):
            chunks.append(chunk)
        *lines, self._partial = b"".join(chunks).split(b"\n")
        return [line + b"\n" for line in lines]

    def poll(self) -> list[bytes]:
        """The complete lines written since the last call; [] if none."""
        if self._file is None:  # the file was renamed again before we could open it
            return self.open() or []
        lines = self._read()
        if lines:
            return lines
        try:
            status = os.stat(self.path)
        except FileNotFoundError:
            return []  # between a rotation's rename and the new file
        assert self._file is not None
        if (status.st_dev, status.st_ino) != self._inode:
            return self._switch()
        if status.st_size < self._file.tell():  # truncated in place (logrotate's copytruncate)
            self._file.seek(0)
            self._partial = b""
        return []

    def _switch(self) -> list[bytes]:
        """The file was renamed: finish it, read the rotated files newer than it, then
        continue in the new file."""
        lines = self._read()
        if self._partial:
            lines.append(self._partial + b"\n")
            self._partial = b""
        self.close()
        for file in self._rotated_after(self._inode):
            try:
                lines.extend(
                    line if line.endswith(b"\n") else line + b"\n"
                    for line in file.read_bytes().splitlines(keepends=True)
                )
            except FileNotFoundError:
                continue
        fresh = self.open()
        return lines + (fresh or [])

    def _rotated_after(self, inode: tuple[int, int] | None) -> list[Path]:
        """The rotated files written after ours, oldest first. Only if ours is among
        them: a file that an external logrotate renamed has no successors we know."""
        files = rotated_files(self.path)
        for index, file in enumerate(files):
            try:
                status = file.stat()
            except FileNotFoundError:
                continue
            if (status.st_dev, status.st_ino) == inode:
                return files[index + 1 :]
        return []
