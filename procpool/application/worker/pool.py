"""The worker processes as processes: fork one, signal one, read its exit.

What a worker is doing, and when it must be ended, is the fleet's to decide
(fleet.py, pure); this module does the system calls. A worker is ended in one
way only: SIGTERM to its process group, then SIGKILL once the grace has passed.
Neither step blocks the supervisor's loop; the end is complete when the loop
reaps the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from procpool.application.handlers import HandlerRegistry
from procpool.application.wire.channel import SupervisorEnd, WorkerEnd
from procpool.application.worker.main import EXIT_UNFIT, worker_main
from procpool.application.worker.options import WorkerOptions
from procpool.application.worker.tree import INSPECTION_ERRORS


@dataclass(frozen=True)
class Forked:
    """A worker just forked: its pid, the supervisor's end of its channel, and its
    start time (with the pid, what identifies it across a restart of the daemon)."""

    pid: int
    channel: SupervisorEnd
    create_time: float


# Signals the supervisor handles: held back across a fork, so that none runs the
# supervisor's handler (and writes its wake-up pipe) in a child that is not it.
HELD_ACROSS_FORK = frozenset(
    {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1}
)


def spawn(
    registry: HandlerRegistry,
    options: WorkerOptions,
    close_in_child: Callable[[], None],
    max_frame: int,
    start_slot: Callable[[], memoryview | None] = lambda: None,
) -> Forked:
    """Fork a worker. `close_in_child` closes the supervisor's own descriptors in the
    child; `max_frame` bounds what the worker may send in one message, in bytes;
    `start_slot`, called in the child, gives its slot of the start register.

    Called outside the store's transaction, with nothing buffered in stdio (or the
    child would write it again when it exits) and the supervisor's signals held.

    Raises:
        OSError: the fork failed (out of processes or memory).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_pid = os.getpid()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_ACROSS_FORK)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        parent_end.close()
        child_end.close()
        raise
    if pid == 0:  # the child: never returns; worker_main unblocks the signals
        code = 1
        try:
            parent_end.close()
            close_in_child()
            code = worker_main(WorkerEnd(child_end), registry, options, parent_pid, start_slot())
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    child_end.close()
    return Forked(pid, SupervisorEnd(parent_end, max_frame), create_time(pid))


def create_time(pid: int) -> float:
    """When the process started (psutil's seconds since the epoch); 0.0 if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except INSPECTION_ERRORS:  # the fork happened: the worker is kept all the same
        return 0.0


def signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def describe_exit(status: int) -> tuple[str, int | None, str | None]:
    """A raw wait status, of a worker that died by itself, as (readable text, exit
    code, signal name). Nobody here sends SIGKILL unasked, so a SIGKILL from outside
    is most likely the kernel's out-of-memory killer."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        text = f"the worker was killed by {name}"
        if signum == signal.SIGKILL:
            text += " (it may have run out of memory)"
        return text, None, name
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else status
    if code == EXIT_UNFIT:
        text = f"the worker retired (code {code}): its last job left it unfit (see that job's log)"
        return text, code, None
    return f"the worker exited with code {code}", code, None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a worker process, or None if it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss
    except INSPECTION_ERRORS:
        return None


def reap_any() -> list[tuple[int, int]]:
    """Every child that has exited, as (pid, wait status); never blocks."""
    exited = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        exited.append((pid, status))
    return exited


def _lives(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except INSPECTION_ERRORS:  # not known: waited for as if alive, up to the deadline
        return True


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except INSPECTION_ERRORS:  # not known: its exit, once reaped, says what became of it
        return False


def kill_stale_group(pid: int, create_time: float) -> bool:
    """Kill what is left of a worker of an earlier run: its process group, if the
    group is still that worker's. Returns whether anything was killed.

    Linux never hands out a pid that is still in use as a process group id, so
    if a process with this pid exists but started at another time, the pid was
    reused and no process of the old group can remain.
    """
    try:
        if abs(psutil.Process(pid).create_time() - create_time) > 0.01:
            return False
    except psutil.NoSuchProcess:
        pass  # the worker is gone; processes its handler started may not be
    except INSPECTION_ERRORS:
        return False
    group = []
    for process in psutil.process_iter():
        try:
            # A zombie is already dead; only its new parent can remove it.
            if os.getpgid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                group.append(process)
        except (ProcessLookupError, *INSPECTION_ERRORS):
            continue
    if not group:
        return False
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_lives(p) for p in group):
        time.sleep(0.01)
    return True
