"""The child's side: a worker process runs one job at a time, as its supervisor says.

A worker is forked by the supervisor with handlers already imported. Right
after the fork it leaves the supervisor's process group (so a terminal's
Ctrl-C reaches only the supervisor), asks the kernel to signal it when the
supervisor dies, and talks only through its own channel. A SIGTERM, whether
from the supervisor ending a job or from the supervisor's death, kills the
worker's whole process group at once: whatever processes the handler started
go with it.

While a job runs, a heartbeat thread reports every `heartbeat_interval`, and
carries the latest progress report when the handler reports faster than
`PROGRESS_INTERVAL`. The same thread exits the worker if its parent changes.
A reader thread takes what the supervisor sends, so that a request to skip a
queued job is answered even while a handler computes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import msgspec
from loguru import logger

from procpool.application import events
from procpool.application.channel import ChannelClosed, WorkerEnd
from procpool.application.handlers import HandlerRegistry, JobContext
from procpool.application.messages import (
    Finished,
    Heartbeat,
    LogLine,
    ProgressReport,
    Ready,
    RunJob,
    Skip,
    Skipped,
    Started,
    Stop,
    ToSupervisor,
)
from procpool.domain.errors import PermanentError

PROGRESS_INTERVAL = 0.05
_PR_SET_PDEATHSIG = 1
_LOG_EXTRA_SKIP = frozenset({"job_id", "attempt"})


def _kill_own_group(signum: int = 0, frame: object = None) -> None:
    os.killpg(os.getpid(), signal.SIGKILL)


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent-pid check below still holds
        pass
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        _kill_own_group()


def _reset_signals() -> None:
    """Undo what the supervisor installed: its handlers and wake-up fd are not ours."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _kill_own_group)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class _Reporter:
    """The worker's outgoing side while a job runs: progress, heartbeats, log lines."""

    def __init__(self, channel: WorkerEnd, heartbeat_interval: float, parent_pid: int) -> None:
        self.channel = channel
        self.heartbeat_interval = heartbeat_interval
        self.parent_pid = parent_pid
        # Held while sending too, so reports leave in the order they were made.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._job: RunJob | None = None
        self._unsent: ProgressReport | None = None
        self._last_sent_at = 0.0

    def begin(self, job: RunJob) -> None:
        with self._lock:
            self._job = job
            self._unsent = None
            self._last_sent_at = time.monotonic()

    def end(self) -> ProgressReport | None:
        """The job is over; returns a progress report held back by the rate limit,
        so that the last report is sent before the result, not dropped."""
        with self._lock:
            held, self._job, self._unsent = self._unsent, None, None
        return held

    def progress(self, fraction: float, message: str | None) -> None:
        with self._lock:
            if self._job is None:
                return
            report = ProgressReport(self._job.job_id, self._job.lease, fraction, message)
            now = time.monotonic()
            if now - self._last_sent_at < PROGRESS_INTERVAL:
                self._unsent = report
                self._wake.set()
                return
            self._unsent = None
            self._last_sent_at = now
            self.channel.send(report)

    def log(self, message: Any) -> None:
        record = message.record
        extra = {
            key: value if isinstance(value, str | int | float | bool | None) else repr(value)
            for key, value in record["extra"].items()
            if key not in _LOG_EXTRA_SKIP
        }
        line = LogLine(
            level=record["level"].name,
            message=record["message"],
            job_id=record["extra"].get("job_id"),
            fields=extra,
        )
        with self._lock:
            self.channel.send(line)

    def run_heartbeats(self) -> None:
        while True:
            self._wake.wait(
                PROGRESS_INTERVAL if self._unsent is not None else self.heartbeat_interval
            )
            self._wake.clear()
            if os.getppid() != self.parent_pid:
                _kill_own_group()
            try:
                self._send_due(time.monotonic())
            except OSError:
                _kill_own_group()

    def _send_due(self, now: float) -> None:
        with self._lock:
            job = self._job
            if job is None:
                return
            message: ProgressReport | Heartbeat
            if self._unsent is not None and now - self._last_sent_at >= PROGRESS_INTERVAL:
                message, self._unsent = self._unsent, None
            elif now - self._last_sent_at >= self.heartbeat_interval:
                message = Heartbeat(job.job_id, job.lease)
            else:
                return
            self._last_sent_at = now
            self.channel.send(message)


def _describe(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"the handler called sys.exit({error.code!r})"
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _execute(registry: HandlerRegistry, job: RunJob, reporter: _Reporter) -> Finished:
    started = time.perf_counter()
    function = registry.get(job.type)
    if function is None:
        return Finished(
            job.job_id,
            job.lease,
            0.0,
            error=f"unknown job type {job.type!r}; registered: {', '.join(registry.names())}",
            permanent=True,
        )
    context = JobContext(job.job_id, job.attempt, reporter.progress)
    try:
        value = function(context, msgspec.json.decode(job.payload))
    except PermanentError as error:
        return Finished(
            job.job_id,
            job.lease,
            time.perf_counter() - started,
            error=_describe(error),
            permanent=True,
        )
    except (
        BaseException
    ) as error:  # a handler's KeyboardInterrupt or SystemExit fails the attempt too
        context.logger.bind(traceback=traceback.format_exc()).debug("handler raised")
        return Finished(
            job.job_id, job.lease, time.perf_counter() - started, error=_describe(error)
        )
    duration = time.perf_counter() - started
    try:
        result = msgspec.json.encode(value)
    except (TypeError, ValueError, OverflowError) as error:
        return Finished(
            job.job_id,
            job.lease,
            duration,
            error=f"the result is not JSON-serializable: {error}",
        )
    return Finished(job.job_id, job.lease, duration, result=result)


class _Queue:
    """The jobs queued here, filled by a reader thread.

    The supervisor may queue a worker's next jobs before its current one ends,
    and may take back any that have not started (Skip), to cancel them, to give
    them to a worker that fell idle, or to let a more urgent job go first.
    Reading in a thread of its own answers a Skip within one GIL switch interval
    even while a handler computes, so a queued job never waits behind a long one.
    """

    def __init__(self, channel: WorkerEnd) -> None:
        self._channel = channel
        self._ready = threading.Condition()
        self._items: deque[RunJob | Stop] = deque()
        self._closed = False

    def read(self) -> None:
        try:
            while True:
                for message in self._channel.receive(block=True):
                    if isinstance(message, Skip):
                        self._skip(message)
                    else:
                        with self._ready:
                            self._items.append(message)
                            self._ready.notify()
        except (ChannelClosed, OSError):
            with self._ready:
                self._closed = True
                self._ready.notify()

    def _skip(self, skip: Skip) -> None:
        key = (skip.job_id, skip.lease)
        with self._ready:
            for item in self._items:
                if isinstance(item, RunJob) and (item.job_id, item.lease) == key:
                    self._items.remove(item)
                    break
            else:
                return  # already started: its Started is on the way
        self._channel.send(Skipped(*key))

    def take(self, *, block: bool) -> RunJob | Stop | None:
        """The next message to act on; None if there is none and `block` is false."""
        with self._ready:
            while block and not self._items and not self._closed:
                self._ready.wait()
            if self._items:
                return self._items.popleft()
            if self._closed:
                raise ChannelClosed("the supervisor closed the channel")
            return None


def _serve(
    channel: WorkerEnd,
    registry: HandlerRegistry,
    reporter: _Reporter,
    start_slot: memoryview | None,
) -> int:
    """Run the jobs the supervisor queued here, in order, sending each Finished
    together with the next Started in one write when the next is already here."""
    queue = _Queue(channel)
    threading.Thread(target=queue.read, name="reader", daemon=True).start()
    outgoing: list[ToSupervisor] = []
    while True:
        message = queue.take(block=False)
        if message is None:
            if outgoing:
                channel.send(*outgoing)
                outgoing.clear()
            message = queue.take(block=True)
        if isinstance(message, Stop):
            if outgoing:
                channel.send(*outgoing)
            return 0
        if start_slot is not None:  # before Started: recovery must see the run began
            start_slot[:] = message.lease.to_bytes(8, "little")
        outgoing.append(Started(message.job_id, message.lease))
        channel.send(*outgoing)
        outgoing.clear()
        reporter.begin(message)
        outcome = _execute(registry, message, reporter)
        held = reporter.end()
        if held is not None:
            outgoing.append(held)
        outgoing.append(outcome)


def worker_main(
    channel: WorkerEnd,
    registry: HandlerRegistry,
    heartbeat_interval: float,
    parent_pid: int,
    start_slot: memoryview | None = None,
) -> int:
    """The worker's whole life. Returns the exit code."""
    os.setsid()
    _reset_signals()
    _die_with_parent(parent_pid)
    reporter = _Reporter(channel, heartbeat_interval, parent_pid)
    events.configure(None)  # the supervisor's log sink is not ours: lines go up the channel
    logger.remove()
    logger.add(reporter.log, level="DEBUG", format="{message}", catch=True)
    threading.Thread(target=reporter.run_heartbeats, name="heartbeat", daemon=True).start()
    try:
        channel.send(Ready(os.getpid()))
        return _serve(channel, registry, reporter, start_slot)
    except (ChannelClosed, OSError):
        return 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
