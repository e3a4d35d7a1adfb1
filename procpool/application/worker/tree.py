"""A handler's process tree: every process it started ends with its run (CONTRACT 3).

A handler may start processes that leave the worker's process group: a child
in a session of its own (`Popen(start_new_session=True)`, `setsid`), a
daemonized grandchild. Three things keep them from outliving the run:

- Each worker is a child subreaper (PR_SET_CHILD_SUBREAPER), so orphans of its
  handler are re-parented to the worker, not to init: its tree stays whole. After
  each job the worker kills what is left of that tree (`end_tree`), so a run's
  processes never overlap the next run's, nor a retry's.
- The supervisor is a child subreaper too: when a worker dies (killed for a
  cancel or a timeout, or crashed), the orphans of its tree become the
  supervisor's children, and every child of the supervisor that is not a worker
  is such an orphan: killed at once (`end_orphans`), before the run's fate
  (and with it a retry) is decided.
- Every worker marks its environment with `MARKER` (the daemon's home); a
  process that inherited the mark and outlived a daemon killed with -9 is found
  by it at the next start (`end_marked`).

What still escapes: a process that leaves the tree and clears its environment
(a double fork that also empties `environ`). Under systemd, `KillMode=
control-group` (the unit in config/) ends every process of the cgroup with the
daemon; that closes the gap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterable

import psutil

MARKER = "_PROCPOOL_TREE"  # outside PROCPOOL_*: not a configuration key
# What a look at other processes may raise: psutil's errors, and a plain OSError when
# /proc cannot be opened at all (EMFILE, ENFILE, ENOMEM), which psutil lets through.
# Either way the look failed, not the process looked at: the caller goes on without it.
INSPECTION_ERRORS = (psutil.Error, OSError)
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans among this process's descendants are re-parented to it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _kill(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    killed = []
    for process in processes:
        with contextlib.suppress(*INSPECTION_ERRORS):
            process.send_signal(signal.SIGKILL)  # checks pid and start time first
            killed.append(process)
    return killed


# __WALL (linux/wait.h): children of every kind, also those made by clone(2) with an
# exit signal other than SIGCHLD, which waitid leaves out without it.
_WALL = 0x40000000


def has_children() -> bool:
    """Whether this process (any of its threads) has a child, alive or a zombie: one
    waitid(2) that reaps nothing (WNOWAIT) and fails with ECHILD when there is none,
    about 4 us where reading /proc/self/task/*/children took 90. In a subreaper, no
    child means no descendant at all."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT | _WALL)
    except ChildProcessError:
        return False
    return True


def _child_pids() -> list[int] | None:
    """This process's children, from /proc/self/task/*/children (each line is cheap
    to read); None where the kernel does not list them."""
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children", "rb") as listing:
                pids.extend(int(pid) for pid in listing.read().split())
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except (OSError, ValueError):
            return None
    return pids


def end_tree(wait: float = 2.0) -> int:
    """Kill every descendant of this process and reap them. Returns how many there
    were. Call only when no handler code waits for them (between jobs)."""
    if not has_children():
        return 0
    try:
        descendants = psutil.Process().children(recursive=True)
    except INSPECTION_ERRORS:
        return 0
    killed = _kill(descendants)
    if killed:
        with contextlib.suppress(*INSPECTION_ERRORS):
            psutil.wait_procs(killed, timeout=wait)  # reaps those that are our children
    return len(killed)


def end_orphans(workers: Iterable[int]) -> int:
    """Kill every child of this process that is not one of `workers`, with its
    descendants: in a subreaper supervisor, each is what a dead worker's handler
    left. They are reaped by the loop's reaper. Returns how many were killed."""
    keep = set(workers)
    listed = _child_pids()
    if listed is not None and keep.issuperset(listed):
        # The common case, after a worker's exit: no orphan. psutil's children() would
        # read the stat of every process on the machine to find out (1.6 ms with 75
        # processes), on the path of every cancel and timeout.
        return 0
    try:
        children = psutil.Process().children()
    except INSPECTION_ERRORS:
        # Out of descriptors: the worker's group gets its SIGKILL all the same (the
        # loop's reaper); what left it is killed at the next worker's exit, or by the
        # mark at the next start.
        return 0
    orphans = []
    for child in children:
        if child.pid in keep:
            continue
        with contextlib.suppress(*INSPECTION_ERRORS):
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            orphans.extend(child.children(recursive=True))
            orphans.append(child)
    return len(_kill(orphans))


def end_marked(mark: str) -> list[int]:
    """Kill every process whose environment carries `MARKER=mark`, but this one:
    what workers of an earlier daemon on the same home left behind. Returns their
    pids. Reads every process's environment: for the start, not for the loop."""
    marked = []
    me = os.getpid()
    for process in psutil.process_iter():
        with contextlib.suppress(*INSPECTION_ERRORS):
            if process.pid != me and process.environ().get(MARKER) == mark:
                marked.append(process)
    killed = _kill(marked)
    with contextlib.suppress(*INSPECTION_ERRORS):
        psutil.wait_procs(killed, timeout=5)
    return [p.pid for p in killed]
