"""The fence of a daemon on a shared store: its runs end when its lease can no longer
be vouched for, without the supervisor and without the workers' GIL (DESIGN 16).

```
 supervisor ──after each commit──▶ shared map: valid-until (CLOCK_BOOTTIME, double)
      │ fork, reap                             worker pids (one int32 per slot)
      ▼                                              │ read
 watchdog (own session, single thread): sleeps until valid-until; not renewed by
 then: SIGKILL to every worker's process group
```

The supervisor writes, after each commit, the CLOCK_BOOTTIME second until which its
lease holds (the last committed renewal + lease - margin: adapters/stores/postgres.py, Timing),
and the pid of each worker it forks. The watchdog, a process forked by the
supervisor before any worker, sleeps on CLOCK_BOOTTIME (which counts suspend) until
that second; if no renewal moved it on meanwhile, it kills every worker's group.
The kernel carries out the kill: neither a stopped supervisor nor a handler holding
the GIL inside one long C call delays it. The supervisor's own check (`Member.check_fence`)
and each worker's fence thread stay as second lines, for a watchdog that was stopped
or killed; the supervisor forks a new one when it reaps the old.

Why a process and not a timer in each worker: a POSIX timer whose default action
kills the worker must be re-armed at each renewal by the worker itself, which a
handler holding the GIL prevents, so a healthy long C call would be killed while the
lease is fine. The watchdog needs nothing from the worker.

The watchdog lives in a session of its own (a terminal's Ctrl-Z or Ctrl-C does not
reach it) and dies with the supervisor (PR_SET_PDEATHSIG). What it cannot cover: a
watchdog and a supervisor both stopped by a signal to each pid while a handler holds
the GIL, and a host frozen whole (see docs/operations.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
import struct
import sys
import time

SLOTS = 65_536  # worker pids the map holds; a slot is the worker's start-register slot
_HEADER = 16  # the valid-until double, then how many slots were ever used (int64)
_PID = struct.Struct("i")
POLL = 0.05  # seconds between looks while the lease has no valid-until or has run out
_CLOCK_BOOTTIME = 7
_TIMER_ABSTIME = 1
_PR_SET_PDEATHSIG = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def boottime() -> float:
    """Seconds on the clock that goes on while the machine is suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Fence:
    """The shared map and the watchdog that acts on it (one per supervisor).

    `view` is what the workers get (WorkerOptions.fence): its first 8 bytes are the
    valid-until double their own fence thread reads."""

    def __init__(self) -> None:
        self.view = mmap.mmap(-1, _HEADER + SLOTS * _PID.size)
        self.watchdog: int | None = None  # its pid while it runs

    def valid_until(self) -> float:
        """The CLOCK_BOOTTIME second the lease holds until; 0.0: none written yet."""
        (value,) = struct.unpack_from("d", self.view, 0)
        return float(value)

    def renewed(self, valid_until: float) -> None:
        """A renewal committed: the runs may go on until `valid_until` (CLOCK_BOOTTIME s)."""
        struct.pack_into("d", self.view, 0, valid_until)

    def add(self, slot: int, pid: int) -> None:
        """A worker forked into `slot` (before any job is sent to it)."""
        if 0 <= slot < SLOTS:
            _PID.pack_into(self.view, _HEADER + slot * _PID.size, pid)
            (used,) = struct.unpack_from("q", self.view, 8)
            if slot >= used:
                struct.pack_into("q", self.view, 8, slot + 1)

    def remove(self, slot: int) -> None:
        if 0 <= slot < SLOTS:
            _PID.pack_into(self.view, _HEADER + slot * _PID.size, 0)

    def pids(self) -> list[int]:
        """The workers' pids: only the slots ever used are read (the map is large)."""
        (used,) = struct.unpack_from("q", self.view, 8)
        end = _HEADER + min(max(used, 0), SLOTS) * _PID.size
        return [pid for (pid,) in _PID.iter_unpack(self.view[_HEADER:end]) if pid > 0]

    def start(self) -> int:
        """Fork the watchdog. Returns its pid. Called from the supervisor's only thread,
        with its signals held or not yet installed.

        Raises:
            OSError: the fork failed.
        """
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._watch(parent)
            finally:
                os._exit(code)
        self.watchdog = pid
        return pid

    def exited(self, pid: int) -> bool:
        """Whether a reaped child was the watchdog (then it no longer runs)."""
        if pid != self.watchdog:
            return False
        self.watchdog = None
        return True

    def stop(self) -> None:
        """End the watchdog and reap it: the daemon stops, or starts again in place."""
        pid, self.watchdog = self.watchdog, None
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    # ------------------------------------------------------------- the watchdog

    def _watch(self, parent: int) -> int:
        """The watchdog's whole life: it never returns while its supervisor lives."""
        os.setsid()
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_IGN)
        for signum in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the map needs no descriptor
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        killed_for = -1.0  # the valid-until whose runs were killed
        killed: set[int] = set()
        while os.getppid() == parent:
            valid_until = self.valid_until()
            if valid_until > 0 and boottime() < valid_until:
                _sleep_until(libc, valid_until)
                continue
            if valid_until > 0:
                if valid_until != killed_for:
                    killed_for, killed = valid_until, set()
                # Once per pid: a worker forked after the lease ran out got no job (the
                # supervisor starts none while fenced), and may live.
                for pid in self.pids():
                    if pid not in killed:
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(pid, signal.SIGKILL)
                        killed.add(pid)
            time.sleep(POLL)
        return 0


def _sleep_until(libc: ctypes.CDLL, deadline: float) -> None:
    """Sleep until `deadline` on CLOCK_BOOTTIME: a suspend of the machine counts, which
    time.sleep's CLOCK_MONOTONIC does not. A signal may end it early: the caller looks
    again."""
    seconds = int(deadline)
    when = _Timespec(seconds, int((deadline - seconds) * 1e9))
    libc.clock_nanosleep(_CLOCK_BOOTTIME, _TIMER_ABSTIME, ctypes.byref(when), None)
