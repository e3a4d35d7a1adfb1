"""The pid file: holds the daemon's pid and an exclusive lock while it runs.

The lock, not the pid, says whether a daemon is alive: the kernel drops it
when the process dies, however it dies, so a stale file is recognised safely.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

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
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> int | None:
        """Lock and write our pid. Returns the pid of a stale file that was taken over."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def running_pid(path: Path) -> int | None:
    """The pid of the daemon that holds this pid file, or None if none does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
