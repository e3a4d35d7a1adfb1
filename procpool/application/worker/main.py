"""The child's side: a worker process runs one job at a time, as its supervisor says.

```
 supervisor ══channel══▶ reader thread ──▶ queue ──▶ main thread: handler(ctx, payload)
     ▲                                                  │ ctx.progress   │ ctx.logger, print, fd 1/2
     ║                                                  ▼                ▼
     ╚═══════════ outbox ◀── heartbeat thread (Heartbeat, ProgressReport)   LogLine, output thread
                            (OutputLine)
```

A worker is forked by the supervisor with handlers already imported. Right
after the fork it leaves the supervisor's process group (so a terminal's
Ctrl-C reaches only the supervisor), becomes a child subreaper (orphaned
descendants of a handler stay under it, where ending the run finds them), asks
the kernel to SIGKILL it when the supervisor dies, and talks only through its
own channel. A SIGTERM from the supervisor kills the worker's whole process
group at once: whatever processes the handler started go with it.

While a job runs, a heartbeat thread reports every `heartbeat_interval`, and
carries the latest progress report when the handler reports faster than
`PROGRESS_INTERVAL`. A reader thread takes what the supervisor sends, so that a
request to skip a queued job is answered even while a handler computes. An
output thread sends what is written to fd 1 and 2 as lines (output.py).

After each job, what the job changed in the process (its standard streams, the
log sink, signal handlers, working directory, environment, `sys.path`) is put
back before its result leaves (baseline.py), so each job starts as in a fresh
worker. Should something not go back, the worker sends the result, a WARNING
log line of that job naming what it broke, and retires: it exits with
EXIT_UNFIT, and its queued jobs go back to pending unchanged.

Every message leaves through one outbox, and every string in it is bounded and
valid Unicode (`safe_text`): nothing a handler reports can make a send fail.
A failure in any of the worker's own threads ends the worker at once, with its
reason in a CRITICAL log line up the channel and on the daemon's stderr, and
exit code EXIT_INTERNAL: never a thread that dies silently and leaves the
worker half alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import struct
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, overload

import msgspec
from loguru import logger

from procpool.application import events
from procpool.application.handlers import RUN_KEY, HandlerRegistry, JobContext
from procpool.application.wire.channel import ChannelClosed, WorkerEnd
from procpool.application.wire.messages import (
    Checkpoint,
    CheckpointStored,
    Finished,
    Heartbeat,
    LogLine,
    OutputLine,
    ProgressReport,
    Ready,
    RunJob,
    Skip,
    Skipped,
    Started,
    Stop,
    ToSupervisor,
)
from procpool.application.worker import tree
from procpool.application.worker.baseline import Baseline
from procpool.application.worker.options import WorkerOptions
from procpool.application.worker.output import OutputCapture
from procpool.domain.errors import PermanentError, StaleAttempt
from procpool.domain.result import ResultError, encode_checkpoint, encode_result

PROGRESS_INTERVAL = 0.05
PROGRESS_MESSAGE_LIMIT = 1_000  # characters of a progress message
LOG_TEXT_LIMIT = 10_000  # characters of a log message, of each log field, of an error
LOG_FIELDS_LIMIT = 100  # fields of one log line
EXIT_INTERNAL = 70  # EX_SOFTWARE: one of the worker's own threads failed
EXIT_UNFIT = 75  # EX_TEMPFAIL: a job left the worker in a state it cannot undo
_PR_SET_PDEATHSIG = 1


def safe_text(text: str, limit: int | None = None) -> str:
    """`text` cut to `limit` characters (saying how many more there were), with
    what has no UTF-8 form (a lone surrogate, from a file name that is not
    UTF-8) written as a backslash escape: `caf\\udce9.jpg`."""
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... [cut: {len(text) - limit} more characters]"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _safe_value(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(str(k)): _safe_value(v) for k, v in value.items()}
    return value


class _Outbox:
    """The one way out of the worker. A message that cannot be encoded because a
    string in it has no UTF-8 form is sent with those strings escaped instead."""

    def __init__(self, channel: WorkerEnd) -> None:
        self._channel = channel
        self.owner = os.getpid()

    def send(self, *messages: ToSupervisor) -> None:
        if os.getpid() != self.owner:
            _from_forked_child(messages)
            return
        try:
            self._channel.send(*messages)
        except UnicodeEncodeError:  # raised while encoding, so nothing was sent
            self._channel.send(*(_escaped(message) for message in messages))


def _from_forked_child(messages: tuple[ToSupervisor, ...]) -> None:
    """A process the handler forked (multiprocessing's fork context does) inherits
    the channel, but its frames would interleave with the worker's and corrupt
    the stream: it never writes there. Its log lines go to its standard error,
    which the worker captures as `job.output`; its other messages are dropped."""
    lines = [
        f"{m.level}: {m.message}" if isinstance(m, LogLine) else m.text
        for m in messages
        if isinstance(m, LogLine | OutputLine)
    ]
    if lines:
        with contextlib.suppress(OSError):
            os.write(2, "".join(f"{line}\n" for line in lines).encode("utf-8", "backslashreplace"))


def _escaped(message: ToSupervisor) -> ToSupervisor:
    changes = {
        name: _safe_value(value)
        for name in message.__struct_fields__
        if isinstance(value := getattr(message, name), str | dict)
    }
    return msgspec.structs.replace(message, **changes)


def _kill_own_group(signum: int = 0, frame: object = None) -> None:
    os.killpg(os.getpid(), signal.SIGKILL)


def _prctl(option: int, value: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        pass


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL, unlike SIGTERM, needs no Python code to run: a worker stuck in a
    C call that holds the GIL dies with its supervisor all the same. What it
    leaves (its handler's processes) the next start's recovery kills, by group."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        _kill_own_group()


def _sigterm_to(action: Any) -> Any:
    """Set SIGTERM's action from the main thread (signal.signal's rule); returns the one
    it replaced, or None from another thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, action)


def _fork_with_default_sigterm() -> None:
    """A process the handler forks without exec (multiprocessing's fork context) must not
    inherit the worker's SIGTERM handler: it would kill a process group that is not its
    own, and multiprocessing's terminate() relies on SIGTERM's default. Reset after the
    fork is too late: a SIGTERM that arrives before the child's hooks ran is taken by
    the inherited handler (threading's own hook runs first) and lost, and a
    `Pool.terminate()` right after a worker started then waits forever. So SIGTERM is
    at its default across the fork itself; should one reach the worker in that
    instant, it dies as SIGTERM means, and the supervisor ends its group."""
    before: list[Any] = []  # the action during the fork: ours, or the handler's own

    def restore() -> None:
        action = before.pop() if before else None
        if action is not None:
            _sigterm_to(action)

    os.register_at_fork(
        before=lambda: before.append(_sigterm_to(signal.SIG_DFL)),
        after_in_parent=restore,
        # A fork from another thread than the main one cannot change the parent's
        # handler: the child, whose only thread is its main one, resets its own.
        after_in_child=lambda: _sigterm_to(signal.SIG_DFL),
    )


def _reset_signals() -> None:
    """Undo what the supervisor installed: its handlers and wake-up fd are not ours."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _kill_own_group)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


class _Reporter:
    """The worker's outgoing side while a job runs: progress, heartbeats, log lines.

    Progress is reported by the run's own context: a thread a handler left
    behind that reports after its job ended is ignored, never taken for the
    next job's progress.
    """

    def __init__(
        self, outbox: _Outbox, heartbeat_interval: float, parent_pid: int, fence: Any = None
    ) -> None:
        self.fence = fence
        self.outbox = outbox
        self.heartbeat_interval = heartbeat_interval
        self.parent_pid = parent_pid
        # Held while sending too, so reports leave in the order they were made.
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._run: RunJob | None = None
        self._unsent: ProgressReport | None = None
        self._last_sent_at = 0.0

    def begin(self, run: RunJob) -> None:
        with self._lock:
            self._run = run
            self._unsent = None
            self._last_sent_at = time.monotonic()
        if self.fence is not None:
            # Its wait now ends by when the lease may run out. Without a fence, it
            # wakes by the first heartbeat's time unasked (run_heartbeats): waking it
            # each job cost a thread switch and two GIL hand-offs (issue 25).
            self._wake.set()

    def end(self) -> ProgressReport | None:
        """The job is over; returns a progress report held back by the rate limit,
        so that the last report is sent before the result, not dropped."""
        with self._lock:
            held, self._run, self._unsent = self._unsent, None, None
        return held

    @property
    def current(self) -> tuple[str, int] | None:
        run = self._run
        return None if run is None else (run.job_id, run.attempt)

    def progress(self, run: RunJob, fraction: float, message: str | None) -> None:
        if os.getpid() != self.outbox.owner:
            return  # a forked child of the handler: see _from_forked_child
        text = None if message is None else safe_text(message, PROGRESS_MESSAGE_LIMIT)
        with self._lock:
            if self._run is not run:
                return
            report = ProgressReport(run.job_id, run.lease, fraction, text)
            now = time.monotonic()
            if now - self._last_sent_at < PROGRESS_INTERVAL:
                if self._unsent is None:  # the heartbeat thread sends it when due
                    self._wake.set()
                self._unsent = report
                return
            self._unsent = None
            self._last_sent_at = now
            self.outbox.send(report)

    def log(self, message: Any) -> None:
        """Loguru's sink in the worker: the record as a LogLine, bound to the run its
        logger was bound to (`ctx.logger`), else to the job running now."""
        record = message.record
        extra: dict[str, Any] = dict(record["extra"])
        bound = extra.pop(RUN_KEY, None) or self.current
        job_id, attempt = bound if bound is not None else (None, None)
        for key, value in (("job_id", job_id), ("attempt", attempt)):
            if key in extra and extra[key] == value:  # what ctx.logger binds, not a field
                del extra[key]
        fields = {
            safe_text(str(key), 200): _field(value)
            for key, value in list(extra.items())[:LOG_FIELDS_LIMIT]
        }
        if len(extra) > LOG_FIELDS_LIMIT:
            fields["fields_cut"] = len(extra) - LOG_FIELDS_LIMIT
        level = record["level"].name
        if level not in _LEVELS.values():
            fields.setdefault("custom_level", safe_text(level, 200))
            level = _standard_level(record["level"].no)
        if record["exception"] is not None:
            fields["traceback"] = safe_text(
                "".join(traceback.format_exception(*record["exception"])), LOG_TEXT_LIMIT
            )
        line = LogLine(
            level=level,
            message=safe_text(record["message"], LOG_TEXT_LIMIT),
            job_id=job_id,
            attempt=attempt,
            fields=fields,
        )
        if os.getpid() != self.outbox.owner:
            # A forked child of the handler: the lock may have been copied held.
            self.outbox.send(line)
            return
        with self._lock:
            self.outbox.send(line)

    def run_heartbeats(self) -> None:
        while True:
            self._wake.wait(min(self._next_send_in(time.monotonic()), self._fence_in()))
            self._wake.clear()
            if os.getppid() != self.parent_pid:
                _kill_own_group()
            if self._fence_in() <= 0:
                _kill_own_group()
            try:
                self._send_due(time.monotonic())
            except OSError:  # the supervisor is gone
                _kill_own_group()

    def _next_send_in(self, now: float) -> float:
        """Seconds until a held progress report or the next heartbeat is due (`now`,
        `time.monotonic()`); with no run, a heartbeat interval (the parent check's pace).
        Read without the lock: a run that begins meanwhile set `_last_sent_at` to a
        later time, so a wait worked out before it ends early, never late."""
        if self._run is None:
            return self.heartbeat_interval
        every = PROGRESS_INTERVAL if self._unsent is not None else self.heartbeat_interval
        return max(0.0, self._last_sent_at + every - now)

    def _fence_in(self) -> float:
        """Seconds until this worker's run must have ended unless the lease is renewed
        (math.inf: no shared store, no run, or no lease yet). The second line of the
        fence (application/fence.py): checked when due, not once per heartbeat."""
        if self.fence is None or self._run is None:
            return math.inf
        valid_until: float = struct.unpack_from("d", self.fence)[0]
        if not valid_until:
            return math.inf
        return max(0.0, valid_until - time.clock_gettime(time.CLOCK_BOOTTIME))

    def _send_due(self, now: float) -> None:
        with self._lock:
            run = self._run
            if run is None:
                return
            message: ProgressReport | Heartbeat
            if self._unsent is not None and now - self._last_sent_at >= PROGRESS_INTERVAL:
                message, self._unsent = self._unsent, None
            elif now - self._last_sent_at >= self.heartbeat_interval:
                message = Heartbeat(run.job_id, run.lease)
            else:
                return
            self._last_sent_at = now
            self.outbox.send(message)


class _Checkpoints:
    """`ctx.checkpoint`'s round trip: the value sent up, the handler's thread waiting
    until the reader thread hands it the supervisor's answer (sent after the commit).
    One checkpoint at a time per worker; a context whose run has ended is stale."""

    def __init__(self, outbox: _Outbox, reporter: _Reporter, max_bytes: int) -> None:
        self._outbox = outbox
        self._reporter = reporter
        self._max_bytes = max_bytes
        self._one_at_a_time = threading.Lock()
        self._answered = threading.Condition()
        self._answer: CheckpointStored | None = None
        self._closed = False

    def store(self, run: RunJob, value: Any) -> None:
        """Raises CheckpointError (bad value) or StaleAttempt (not stored)."""
        data = encode_checkpoint(value, self._max_bytes)
        if os.getpid() != self._outbox.owner:
            raise StaleAttempt("a checkpoint is taken from the worker's process only")
        with self._one_at_a_time:
            while True:
                if self._reporter.current != (run.job_id, run.attempt):
                    raise StaleAttempt(f"the run of job {run.job_id} that took this is over")
                with self._answered:
                    self._answer = None
                self._outbox.send(Checkpoint(run.job_id, run.lease, data))
                with self._answered:
                    while self._answer is None and not self._closed:
                        self._answered.wait()
                    answer = self._answer
                if answer is None:
                    raise StaleAttempt("the daemon is gone: the checkpoint was not stored")
                if answer.again:  # the daemon's turn was lost before its commit
                    continue
                if not answer.stored:
                    raise StaleAttempt(
                        f"attempt {run.attempt} of job {run.job_id} no longer owns the job"
                        " (canceled, timed out, or its daemon's lease lost):"
                        " the checkpoint was not stored"
                    )
                return

    def answered(self, answer: CheckpointStored) -> None:
        with self._answered:
            self._answer = answer
            self._answered.notify_all()

    def closed(self) -> None:
        with self._answered:
            self._closed = True
            self._answered.notify_all()


# loguru's own levels by number, highest first: the only names a LogLine carries.
_LEVELS = {50: "CRITICAL", 40: "ERROR", 30: "WARNING", 25: "SUCCESS", 20: "INFO", 10: "DEBUG",
           5: "TRACE"}  # fmt: skip


def _standard_level(number: int) -> str:
    """A level of the handler's own (`logger.level("NOTICE", no=35)`) as loguru's
    own level at or below its number (WARNING); TRACE below all."""
    return next((name for no, name in _LEVELS.items() if number >= no), "TRACE")


def _field(value: Any) -> Any:
    """A handler's log field as a JSON scalar: strings bounded, anything else as its repr."""
    if isinstance(value, str):
        return safe_text(value, LOG_TEXT_LIMIT)
    if isinstance(value, bool | int | float | None):
        return value
    try:
        text = repr(value)
    except Exception as error:  # a broken __repr__ must not lose the line
        text = f"<{type(value).__name__} whose repr failed: {type(error).__name__}>"
    return safe_text(text, LOG_TEXT_LIMIT)


def _describe(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"the handler called sys.exit({error.code!r})"
    try:
        text = str(error)
    except Exception:
        text = ""
    return safe_text(f"{type(error).__name__}: {text}" if text else type(error).__name__,
                     LOG_TEXT_LIMIT)  # fmt: skip


def _execute(
    registry: HandlerRegistry,
    run: RunJob,
    reporter: _Reporter,
    options: WorkerOptions,
    checkpoints: _Checkpoints,
) -> Finished:
    started = time.perf_counter()
    function = registry.get(run.type)
    if function is None:
        return Finished(
            run.job_id,
            run.lease,
            0.0,
            error=f"unknown job type {run.type!r}; registered: {', '.join(registry.names())}",
            permanent=True,
        )
    context = JobContext(
        run.job_id,
        run.attempt,
        lambda fraction, text: reporter.progress(run, fraction, text),
        checkpoint=lambda value: checkpoints.store(run, value),
        last_checkpoint=(
            None if run.last_checkpoint is None else msgspec.json.decode(run.last_checkpoint)
        ),
        scheduled_for=run.scheduled_for,
        parents=None if run.parents is None else msgspec.json.decode(run.parents),
    )
    try:
        value = function(context, msgspec.json.decode(run.payload))
    except PermanentError as error:
        return Finished(
            run.job_id,
            run.lease,
            time.perf_counter() - started,
            error=_describe(error),
            permanent=True,
        )
    except (
        BaseException
    ) as error:  # a handler's KeyboardInterrupt or SystemExit fails the attempt too
        context.logger.bind(traceback=traceback.format_exc()).debug("handler raised")
        return Finished(
            run.job_id, run.lease, time.perf_counter() - started, error=_describe(error)
        )
    duration = time.perf_counter() - started
    try:
        result = encode_result(value, options.max_result_bytes)
    except ResultError as error:
        return Finished(
            run.job_id, run.lease, duration, error=safe_text(str(error), LOG_TEXT_LIMIT)
        )
    except Exception as error:  # a container whose iteration raises, say
        return Finished(
            run.job_id,
            run.lease,
            duration,
            error=f"the result cannot be encoded as JSON: {_describe(error)}",
        )
    return Finished(run.job_id, run.lease, duration, result=result)


class _Queue:
    """The jobs queued here, filled by a reader thread.

    The supervisor may queue a worker's next jobs before its current one ends,
    and may take back any that have not started (Skip), to cancel them, to give
    them to a worker that fell idle, or to let a more urgent job go first.
    Reading in a thread of its own answers a Skip within one GIL switch interval
    even while a handler computes, so a queued job never waits behind a long one.
    """

    def __init__(self, channel: WorkerEnd, outbox: _Outbox, checkpoints: _Checkpoints) -> None:
        self._channel = channel
        self._outbox = outbox
        self._checkpoints = checkpoints
        self._ready = threading.Condition()
        self._items: deque[RunJob | Stop] = deque()
        self._closed = False

    def read(self) -> None:
        try:
            while True:
                for message in self._channel.receive(block=True):
                    if isinstance(message, Skip):
                        self._skip(message)
                    elif isinstance(message, CheckpointStored):
                        self._checkpoints.answered(message)
                    else:
                        with self._ready:
                            self._items.append(message)
                            self._ready.notify()
        except (ChannelClosed, OSError):
            self._checkpoints.closed()
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
        self._outbox.send(Skipped(*key))

    @overload
    def take(self, *, block: Literal[True]) -> RunJob | Stop: ...

    @overload
    def take(self, *, block: bool) -> RunJob | Stop | None: ...

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


class _Fatal:
    """Ends the worker when one of its own threads fails, saying why."""

    def __init__(self, outbox: _Outbox, reporter: _Reporter, stderr_fd: int) -> None:
        self._outbox = outbox
        self._reporter = reporter
        self._stderr_fd = stderr_fd

    def guard(self, name: str, target: Callable[[], None]) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except BaseException:
                self.end(f"the worker's {name} thread failed", traceback.format_exc())

        return threading.Thread(target=run, name=name, daemon=True)

    def end(self, reason: str, detail: str) -> None:
        """Say why on the daemon's stderr and up the channel, then exit at once,
        whatever fails on the way."""
        pid = os.getpid()
        try:
            text = f"procpool worker {pid}: {reason}\n{detail}"
            with contextlib.suppress(OSError):
                os.write(self._stderr_fd, text.encode("utf-8", "backslashreplace"))
            current = self._reporter.current
            job_id, attempt = current if current is not None else (None, None)
            line = LogLine(
                "CRITICAL",
                f"{reason}; worker {pid} exits with code {EXIT_INTERNAL}",
                job_id,
                attempt,
                {"traceback": safe_text(detail, LOG_TEXT_LIMIT)},
            )
            self._outbox.send(line)
        finally:
            os._exit(EXIT_INTERNAL)


def _serve(
    channel: WorkerEnd,
    outbox: _Outbox,
    registry: HandlerRegistry,
    reporter: _Reporter,
    capture: OutputCapture,
    options: WorkerOptions,
    fatal: _Fatal,
    start_slot: memoryview | None,
    baseline: Baseline,
) -> int:
    """Run the jobs the supervisor queued here, in order, sending each Finished
    together with the next Started in one write when the next is already here.
    Returns 0 when told to Stop, EXIT_UNFIT when a job left the worker unfit."""
    checkpoints = _Checkpoints(outbox, reporter, options.max_checkpoint_bytes)
    queue = _Queue(channel, outbox, checkpoints)
    fatal.guard("reader", queue.read).start()
    outgoing: list[ToSupervisor] = []
    while True:
        message = queue.take(block=False)
        if message is None:
            if outgoing:
                outbox.send(*outgoing)
                outgoing.clear()
            message = queue.take(block=True)
        if isinstance(message, Stop):
            if outgoing:
                outbox.send(*outgoing)
            return 0
        if start_slot is not None:  # before Started: recovery must see the run began
            start_slot[:] = message.lease.to_bytes(8, "little")
        outgoing.append(Started(message.job_id, message.lease, time.monotonic()))
        outbox.send(*outgoing)
        outgoing.clear()
        capture.bind((message.job_id, message.attempt))
        reporter.begin(message)
        outcome = _execute(registry, message, reporter, options, checkpoints)
        # What the handler started ends with its run (tree.py), before its result
        # leaves: a retry elsewhere never overlaps it.
        tree.end_tree()
        capture.bind(None)  # the job's output leaves before its result
        unfit = baseline.restore()
        held = reporter.end()
        if held is not None:
            outgoing.append(held)
        outgoing.append(outcome)
        if unfit:
            outbox.send(*outgoing, _retiring(message, unfit))
            return EXIT_UNFIT


def _retiring(run: RunJob, unfit: list[str]) -> LogLine:
    what = safe_text("; ".join(unfit), LOG_TEXT_LIMIT)
    return LogLine(
        "WARNING",
        f"job {run.job_id} left its worker unfit for another job, so worker {os.getpid()}"
        f" retires: it could not put back {what}",
        run.job_id,
        run.attempt,
        {},
    )


def worker_main(
    channel: WorkerEnd,
    registry: HandlerRegistry,
    options: WorkerOptions,
    parent_pid: int,
    start_slot: memoryview | None = None,
) -> int:
    """The worker's whole life. Returns the exit code (or exits with EXIT_INTERNAL)."""
    os.setsid()
    tree.become_subreaper()
    _fork_with_default_sigterm()
    if options.tree_mark is not None:
        os.environ[tree.MARKER] = options.tree_mark
    _reset_signals()
    _die_with_parent(parent_pid)
    _stdin_from_null()
    outbox = _Outbox(channel)
    capture = OutputCapture(lambda lines: outbox.send(*lines))
    reporter = _Reporter(outbox, options.heartbeat_interval, parent_pid, options.fence)
    fatal = _Fatal(outbox, reporter, capture.original_stderr)
    events.configure(None)  # the supervisor's log sink is not ours: lines go up the channel
    baseline = Baseline(
        lambda: logger.add(reporter.log, level="DEBUG", format="{message}", catch=True),
        capture.restore,
    )
    fatal.guard("heartbeat", reporter.run_heartbeats).start()
    fatal.guard("output", capture.run).start()
    try:
        outbox.send(Ready(os.getpid()))
        return _serve(
            channel, outbox, registry, reporter, capture, options, fatal, start_slot, baseline
        )
    except (ChannelClosed, OSError):
        return 0
    except BaseException:
        fatal.end("the worker's main thread failed", traceback.format_exc())
        raise  # not reached: end() exits
    finally:
        with contextlib.suppress(Exception):
            capture.bind(None)


def _stdin_from_null() -> None:
    """A handler that reads standard input must not take the daemon's terminal's."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
