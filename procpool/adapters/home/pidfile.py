"""The pid file: holds the daemon's pid and an exclusive lock while it runs.

The lock, not the pid, says whether a daemon is alive: the kernel drops it
when the process dies, however it dies, so a stale file is recognised safely.
The file is opened through HomeDir: a link or a FIFO planted under its name is
refused (UnsafeHomeFile), never written through.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from procpool.adapters.home.files import HomeDir, refusal
from procpool.domain.errors import ProcpoolError


class AlreadyRunning(ProcpoolError):
    def __init__(self, pid: int | None, path: Path) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"procpool is already running on this home ({who} holds {path})")


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class PidFile:
    """`HOME/NAME` (procpool.pid)."""

    def __init__(self, home: HomeDir, name: str = "procpool.pid") -> None:
        self.home = home
        self.name = name
        self.path = home.path / name
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """Lock and write our pid. Returns the pid of a stale file that was taken over.

        Raises:
            AlreadyRunning: a live daemon holds the lock.
            UnsafeHomeFile: the name is a link, not a regular file, or another user's.
            OSError: the file cannot be opened or written.
        """
        fd = self.home.open(self.name, os.O_RDWR | os.O_CREAT, 0o644)
        # `running_pid` holds a shared lock for an instant: a short retry tells it
        # from a live daemon, which holds the lock for good.
        deadline = time.monotonic() + 0.5
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise AlreadyRunning(holder, self.path) from None
                time.sleep(0.02)
        stale = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return stale if stale != os.getpid() else None

    def close_in_child(self) -> None:
        """A forked worker must not keep the daemon's lock alive."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def release(self) -> None:
        if self.fd is not None:
            self.home.unlink(self.name)
            os.close(self.fd)
            self.fd = None


def running_pid(path: Path) -> int | None:
    """The pid of the daemon that holds this pid file, or None if none does (a link or
    anything but a regular file is no daemon's: a daemon refuses to start on it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            return None
        raise
    try:
        # Any owner's: a producer of the home's group asks about the daemon's file.
        if refusal(path, os.fstat(fd), any_owner=True) is not None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
