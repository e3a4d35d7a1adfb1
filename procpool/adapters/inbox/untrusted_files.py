"""Reading a file someone else may have put there (the inbox, rejected/): the one way.

A producer, or anyone who can write the directory, decides what a name is. So a
file is opened with O_NOFOLLOW (a symlink is refused, never followed to a file of
ours), O_NONBLOCK (a FIFO or a device never holds the reader), O_NOCTTY and
O_CLOEXEC; what was opened is checked with fstat (regular files only: not a
directory, a FIFO, a device); and no more than a limit is ever read, even from a
file that grows while it is read.

    open_regular(path) ──▶ (fd, fstat) of a regular file, or None; OSError if not opened
    read_bounded(fd, size, limit) ──▶ its bytes, or None past `limit`
    read_regular(path, limit) ──▶ both: bytes, or None for any refusal

The daemon's inbox (directory.py) opens relative to the inbox's descriptor and tells
the refusals apart; the client's look-ups (rejections.py, the HTTP API) only need
bytes or None.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# Reports and rejected files larger than this are not read for ids: the names give them.
READ_LIMIT = 64 * 2**20
_CHUNK = 65536


def open_regular(
    path: str | Path, dir_fd: int | None = None, limit: int | None = None
) -> tuple[int, os.stat_result] | None:
    """Open `path` (relative to `dir_fd` if given) for reading: the descriptor and its
    fstat if it is a regular file (of at most `limit` bytes, if given), else None with
    nothing left open. The caller closes the descriptor.

    Raises:
        OSError: it could not be opened: FileNotFoundError; ELOOP, a symlink; ENXIO,
            a socket; EACCES...
    """
    fd = os.open(path, OPEN_FLAGS, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(info.st_mode) or (limit is not None and info.st_size > limit):
        os.close(fd)
        return None
    return fd, info


def read_bounded(fd: int, size: int, limit: int) -> bytes | None:
    """All of the open file `fd` from where it stands, `size` its expected length in
    bytes; None if it holds more than `limit` bytes (it grew while read).

    Raises:
        OSError: the read failed.
    """
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = os.read(fd, max(size - total, 0) + _CHUNK)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)


def read_regular(path: Path, limit: int = READ_LIMIT) -> bytes | None:
    """The bytes of a regular file of at most `limit` bytes; None if it is not one (a
    FIFO, a device, a directory, a link), is larger (or grows larger while read), or
    cannot be read (gone: taken by the daemon meanwhile)."""
    try:
        opened = open_regular(path, limit=limit)
        if opened is None:
            return None
        fd, info = opened
        try:
            return read_bounded(fd, info.st_size, limit)
        finally:
            os.close(fd)
    except OSError:
        return None
