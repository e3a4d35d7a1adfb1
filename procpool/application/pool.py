"""The worker processes: fork one, end one, read its exit.

A worker is ended in one way only, `terminate`: SIGTERM to its process group,
then SIGKILL to the group once the grace has passed. Neither step blocks the
supervisor's loop; the end is complete when the loop reaps the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import psutil

from procpool.application.channel import SupervisorEnd, WorkerEnd
from procpool.application.handlers import HandlerRegistry
from procpool.application.worker import WorkerOptions, worker_main
from procpool.domain.job import Job


class WorkerState(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    RETIRING = "retiring"  # told to stop once its queue is empty
    TERMINATING = "terminating"  # signalled; waiting to be reaped


class EndReason(StrEnum):
    """Why the supervisor is ending a worker; decides what becomes of its job."""

    CANCEL = "cancel"
    TIMEOUT = "timeout"
    HEARTBEAT = "heartbeat"
    MEMORY = "memory"
    SHUTDOWN = "shutdown"
    BROKEN = "broken"  # its channel failed


@dataclass(eq=False)
class WorkerProcess:
    """The supervisor's view of one worker.

    `assigned` holds the jobs handed to it and not finished, in the order it
    runs them; `current` names the one it has acknowledged starting. The
    others wait in its queue and have not run; `taking_back` names those it was
    asked to skip and has not yet answered for.
    """

    pid: int
    channel: SupervisorEnd
    spawned_at: float
    create_time: float
    state: WorkerState = WorkerState.STARTING
    assigned: dict[str, Job] = field(default_factory=dict)
    current: str | None = None
    taking_back: set[str] = field(default_factory=set)
    job_started_at: float = 0.0  # monotonic, of the current job
    last_heard_at: float = 0.0  # monotonic
    jobs_done: int = 0
    last_rss: int | None = None  # bytes, measured after its last job
    end_reason: EndReason | None = None
    # The job it ran when it was ended: one it moved on to meanwhile is not to blame.
    end_job: str | None = None
    end_detail: str = ""
    kill_at: float | None = None  # monotonic

    def fileno(self) -> int:
        return self.channel.fileno()

    @property
    def job(self) -> Job | None:
        """The job it runs now, if any."""
        return None if self.current is None else self.assigned.get(self.current)

    def run_named(self, job_id: str, lease: int, *, started: bool) -> Job | None:
        """The job a message names, if the message is about a run this worker holds now
        (DESIGN decision 8); with `started`, only if it is the run it has started."""
        job = self.assigned.get(job_id)
        if job is None or job.lease != lease or (started and self.current != job_id):
            return None
        return job

    @property
    def available(self) -> bool:
        return self.state is WorkerState.SERVING and not self.assigned

    @property
    def running_since(self) -> float | None:
        """When its current job started (monotonic); None if it has acknowledged none."""
        return None if self.current is None else self.job_started_at

    @property
    def queued(self) -> list[Job]:
        """Jobs waiting in its queue that it will run: not started, not being taken back."""
        return [
            job
            for job_id, job in self.assigned.items()
            if job_id != self.current and job_id not in self.taking_back
        ]


def spawn(
    registry: HandlerRegistry,
    options: WorkerOptions,
    close_in_child: Callable[[], None],
    now: float,
) -> WorkerProcess:
    """Fork a worker. `close_in_child` closes the supervisor's own descriptors in the child."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            parent_end.close()
            close_in_child()
            code = worker_main(WorkerEnd(child_end), registry, options, parent_pid)
        finally:
            os._exit(code)
    child_end.close()
    try:
        create_time = psutil.Process(pid).create_time()
    except psutil.Error:
        create_time = 0.0
    return WorkerProcess(
        pid=pid,
        channel=SupervisorEnd(parent_end),
        spawned_at=now,
        create_time=create_time,
        last_heard_at=now,
    )


def signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def terminate(
    worker: WorkerProcess, reason: EndReason, detail: str, now: float, grace: float
) -> None:
    """Start ending a worker: SIGTERM to its group now, SIGKILL at `now + grace`."""
    if worker.state is WorkerState.TERMINATING:
        return
    worker.state = WorkerState.TERMINATING
    worker.end_reason = reason
    worker.end_job = worker.current
    worker.end_detail = detail
    worker.kill_at = now + grace
    signal_group(worker.pid, signal.SIGTERM)


def kill_if_due(worker: WorkerProcess, now: float) -> None:
    if worker.kill_at is not None and now >= worker.kill_at:
        signal_group(worker.pid, signal.SIGKILL)
        worker.kill_at = None


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
    return f"the worker exited with code {code}", code, None


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a worker process, or None if it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
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
    except psutil.Error:
        return False
    group = []
    for process in psutil.process_iter():
        try:
            # A zombie is already dead; only its new parent can remove it.
            if os.getpgid(process.pid) == pid and process.status() != psutil.STATUS_ZOMBIE:
                group.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    if not group:
        return False
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_lives(p) for p in group):
        time.sleep(0.01)
    return True
