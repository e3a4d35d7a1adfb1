"""Following the daemon's JSON log across rotations, one line at a time: the one
follower, for `procpool logs -f` and the HTTP API's event stream.

A position is `INODE:OFFSET`, the file's inode and the byte offset just past a
line. The daemon rotates `procpool.jsonl` by renaming it to `procpool.jsonl.1`
(the older ones move up by one) and starting a new file; an external logrotate
renames or truncates it (copytruncate). The cursor keeps its descriptor on the
file it reads, so a rename loses nothing: it reads that file to its end, then
every newer rotated file in turn, then the new file; a file truncated in place is
read again from its start.

Memory stays bounded: a read takes at most CHUNK bytes, and a line longer than
MAX_LINE is skipped, not buffered.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

from procpool.adapters.logs.writer import rotated_files

CHUNK = 64 * 1024
MAX_LINE = 1024 * 1024


class LogCursor:
    """A reading position in the log that follows rotations: one open file at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self._inode = 0
        self._offset = 0  # just past the last complete line handed out
        self._partial = b""
        self._skipping = False  # inside a line longer than MAX_LINE

    def open(self) -> bool:
        """Start at the beginning of the current file; False if there is none yet (the
        daemon has not started on this home)."""
        return self._open(self.path)

    def start_at_end(self) -> None:
        """From now on: only lines written after this."""
        if self._open(self.path):
            assert self._file is not None
            self._offset = self._file.seek(0, os.SEEK_END)

    def resume(self, inode: int, offset: int) -> bool:
        """Right after the line that ended at `offset` of the file `inode`. Returns
        False if that file is gone: reading starts at the oldest file there is."""
        for path in [*rotated_files(self.path), self.path]:
            with contextlib.suppress(OSError):
                if path.stat().st_ino == inode and self._open(path):
                    assert self._file is not None
                    size = os.fstat(self._file.fileno()).st_size
                    # Beyond the end: truncated in place since (copytruncate); read it all.
                    self._offset = self._file.seek(offset if offset <= size else 0)
                    return True
        files = rotated_files(self.path)
        self._open(files[0] if files else self.path)
        return False

    def _open(self, path: Path) -> bool:
        self.close()
        try:
            self._file = open(path, "rb")  # noqa: SIM115 (kept open while streaming)
        except OSError:
            return False
        self._inode = os.fstat(self._file.fileno()).st_ino
        self._offset = 0
        self._partial = b""
        self._skipping = False
        return True

    def read(self) -> list[tuple[str, bytes]]:
        """Up to CHUNK bytes of complete lines, each with its event id; [] at the end
        of the newest file (and then the next call looks again)."""
        if self._file is None and not self._open(self.path):
            return []
        assert self._file is not None
        chunk = self._file.read(CHUNK)
        if not chunk:
            self._next_file()
            return []
        data = self._partial + chunk if self._partial else chunk
        lines: list[tuple[str, bytes]] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if not self._skipping:
                lines.append((f"{self._inode}:{self._offset + end + 1}", data[start:end]))
            self._skipping = False
            start = end + 1
        self._offset += start  # `_offset` is where `_partial` starts in the file
        self._partial = data[start:]
        if len(self._partial) > MAX_LINE:
            self._offset += len(self._partial)
            self._partial = b""
            self._skipping = True
        return lines

    def _next_file(self) -> None:
        """At the end of a file: if it is no longer the current one (rotated), go on
        with the next newer file; if it was truncated in place, from its start."""
        assert self._file is not None
        try:
            current = self.path.stat().st_ino
        except OSError:
            return  # between a rotation's rename and the new file: look again later
        if current == self._inode:
            with contextlib.suppress(OSError):
                if os.fstat(self._file.fileno()).st_size < self._file.tell():  # copytruncate
                    self._file.seek(0)
                    self._offset = 0
                    self._partial = b""
            return
        ordered = []
        for path in [*rotated_files(self.path), self.path]:
            with contextlib.suppress(OSError):
                ordered.append((path.stat().st_ino, path))
        inodes = [inode for inode, _ in ordered]
        newer = ordered[inodes.index(self._inode) + 1 :] if self._inode in inodes else []
        # Ours moved out of sight (an external logrotate): the current file is next.
        self._open(newer[0][1] if newer else self.path)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
