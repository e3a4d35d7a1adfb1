"""The supervisor: one process, one thread, one loop.

    inbox/ ─scan─▶ ingest ─▶ ┌─────── store (SQLite) ───────┐ ─due─▶ dispatch ─RunJob─▶ worker
                             │ one transaction per loop turn │                           │
    signals ─▶ wake-up pipe  └───────────────────────────────┘ ◀─Finished/Progress/Log──┘
    SIGCHLD ─▶ reap ─▶ the dead worker's job: retried, failed, canceled or back to pending

Each turn waits once on every input (the workers' channels, the wake-up pipe
that signals write to, the inbox watch) with a timeout set by the nearest
deadline, then applies everything that happened in one store transaction, and
only after the commit sends jobs to workers, removes accepted inbox files and
writes the log lines: nothing is said or sent that the store does not hold.

No threads: the supervisor forks replacement workers at any time, and a fork
taken while another thread holds a lock copies the held lock into the child
(DESIGN decision 2).
"""

from __future__ import annotations

import contextlib
import math
import os
import selectors
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from procpool.application import pool
from procpool.application.channel import ChannelClosed
from procpool.application.dispatch import HORIZON, BatchSizer, Holder, plan
from procpool.application.events import emit
from procpool.application.handlers import HandlerRegistry
from procpool.application.ingest import Rejection, ingest
from procpool.application.ledger import Ledger
from procpool.application.messages import (
    Finished,
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
    ToWorker,
)
from procpool.application.pool import EndReason, WorkerProcess, WorkerState
from procpool.application.ports import Inbox, InboxFile, JobStore, WorkerRecord, WorkerReport
from procpool.application.recovery import recover
from procpool.application.telemetry import (
    Histogram,
    NoTelemetry,
    Snapshot,
    Telemetry,
    WorkerSnapshot,
)
from procpool.application.worker import WorkerOptions
from procpool.domain.job import Job, Status
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
    signal.SIGUSR1,
)
# A worker that has not said Ready by then is broken.
STARTUP_TIMEOUT = 30.0
MEMORY_SAMPLE_INTERVAL = 1.0
RETENTION_INTERVAL = 60.0
RETENTION_BATCH = 500
VACUUM_PAGES = 256


@dataclass
class Settings:
    """What the supervisor needs of the configuration; SIGHUP may replace it."""

    workers: int
    defaults: JobDefaults = field(default_factory=JobDefaults)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shutdown_timeout: float = 30.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 30.0
    max_result_bytes: int = 16_777_216
    max_jobs_per_worker: int = 0
    max_memory_mb: int = 0
    kill_grace: float = 1.0
    poll_interval: float = 1.0
    scan_batch: int = 1000
    retention_days: float = 7.0
    metrics_interval: float = 5.0


def _seconds(value: float) -> str:
    return f"{value:g} s"


@dataclass
class _Effects:
    """What a turn does outside the store, in order, once its transaction has committed."""

    sends: dict[WorkerProcess, list[ToWorker]] = field(default_factory=dict)
    logs: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    accepted: list[InboxFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def log(self, level: str, event: str, message: str, **fields: Any) -> None:
        self.logs.append((level, event, message, fields))

    def send(self, worker: WorkerProcess, message: ToWorker) -> None:
        self.sends.setdefault(worker, []).append(message)

    def clear(self) -> None:
        self.sends.clear()
        self.logs.clear()
        self.accepted.clear()
        self.rejected.clear()


class Supervisor:
    def __init__(
        self,
        store: JobStore,
        inbox: Inbox,
        registry: HandlerRegistry,
        settings: Settings,
        *,
        reload: Callable[[], Settings] | None = None,
        reopen_logs: Callable[[], None] | None = None,
        flush_logs: Callable[[], None] = lambda: None,
        close_in_child: Callable[[], None] = lambda: None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.store = store
        self.inbox = inbox
        self.registry = registry
        self.settings = settings
        self._reload = reload
        self._reopen_logs = reopen_logs
        self._flush_logs = flush_logs
        self._close_in_child_extra = close_in_child
        self.workers: dict[int, WorkerProcess] = {}
        self._signals: deque[int] = deque()
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lease = 0
        self._stopping = False
        self._stop_deadline: float | None = None
        self._next_scan = 0.0
        self._next_due: float | None = None  # wall time of the earliest future pending job
        self._look_again_at: float | None = None  # monotonic: a queued job may come back then
        self._next_memory_sample = 0.0
        self._respawn_not_before = 0.0
        self._failed_spawns = 0
        self._effects = _Effects()
        self._batch = BatchSizer()
        self._telemetry: Telemetry = telemetry or NoTelemetry()
        self.ledger = Ledger(store, settings.retry, self._effects.log)
        self._next_publish = 0.0
        self._next_retention = 0.0
        self._prune_older_than: float | None = None  # days, asked for by `procpool prune`

    # ----------------------------------------------------------------- life

    def run(self) -> int:
        """Serve until a signal stops the daemon. Returns the exit code."""
        self._install_signals()
        inbox_fd = self.inbox.fileno()
        if inbox_fd is not None:
            self._selector.register(inbox_fd, selectors.EVENT_READ, "inbox")
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        with self.store.transaction():
            self.ledger.load()
            recover(self.store, self.ledger, time.time())
            self._lease = self.store.max_lease()
            self.ledger.flush_history()
        self._apply_effects(time.monotonic())
        emit(
            "INFO",
            "daemon.started",
            f"procpool started with {self.settings.workers} workers",
            pid=os.getpid(),
            workers=self.settings.workers,
            handlers=self.registry.names(),
        )
        self._telemetry.ready(self.settings.workers)
        while not (self._stopping and not self.workers):
            self._turn()
        emit("INFO", "daemon.stopped", "procpool stopped", pid=os.getpid())
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        return 0

    def _install_signals(self) -> None:
        def record(signum: int, frame: object) -> None:
            self._signals.append(signum)

        for signum in HANDLED_SIGNALS:
            signal.signal(signum, record)
        # The wake-up fd makes a signal that arrives while the loop waits end the wait.
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    def _close_in_child(self) -> None:
        """In a freshly forked worker: drop the supervisor's descriptors."""
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        for worker in self.workers.values():
            worker.channel.close()
        self._close_in_child_extra()

    # ----------------------------------------------------------------- the loop

    def _turn(self) -> None:
        ready = self._selector.select(self._wait_timeout())
        now, wall = time.monotonic(), time.time()
        with self.store.transaction():
            self._handle_signals(now)
            scan = now >= self._next_scan
            for key, _ in ready:
                if key.data == "wake":
                    self._drain_wake_pipe()
                elif key.data == "inbox":
                    self.inbox.drain_events()
                    scan = True
                else:
                    self._read_worker(key.data, now, wall)
            self._reap(now, wall)
            self._check_deadlines(now, wall)
            if scan and not self._stopping:
                self._ingest(now, wall)
            self._retire_due(now)
            self._dispatch(now, wall)
            self._spawn_missing(now)
            if now >= self._next_retention:
                self._prune(now, wall)
            publish = now >= self._next_publish
            if publish:
                snapshot = self._snapshot(wall)
            self.ledger.flush_history()
        self._apply_effects(now)
        if publish:
            self._next_publish = now + self.settings.metrics_interval
            self._telemetry.publish(snapshot)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._next_publish] + ([] if self._stopping else [self._next_scan])
        if self._signals:
            return 0.0
        if self._next_due is not None:
            deadlines.append(now + max(0.0, self._next_due - time.time()))
        if self._look_again_at is not None:
            deadlines.append(self._look_again_at)
        if self._stop_deadline is not None:
            deadlines.append(self._stop_deadline)
        if self.settings.max_memory_mb and any(w.job for w in self.workers.values()):
            deadlines.append(self._next_memory_sample)
        if len(self._counted_workers()) < self.settings.workers and not self._stopping:
            deadlines.append(self._respawn_not_before)
        for worker in self.workers.values():
            deadlines.extend(self._worker_deadlines(worker))
        return max(0.0, min(deadlines, default=now + 60.0) - now)

    def _limits(self, worker: WorkerProcess) -> list[tuple[float, EndReason]]:
        """When a live worker is ended unless it moves on first, and why: the one
        source of these deadlines, for the loop's timeout and for the check."""
        if worker.state is WorkerState.STARTING:
            return [(worker.spawned_at + STARTUP_TIMEOUT, EndReason.BROKEN)]
        job = worker.job
        if worker.state is WorkerState.TERMINATING or job is None:
            return []
        limits = (
            []
            if job.timeout is None
            else [(worker.job_started_at + job.timeout, EndReason.TIMEOUT)]
        )
        limits.append((worker.last_heard_at + self.settings.heartbeat_timeout, EndReason.HEARTBEAT))
        return limits

    def _worker_deadlines(self, worker: WorkerProcess) -> list[float]:
        if worker.state is WorkerState.TERMINATING:
            return [] if worker.kill_at is None else [worker.kill_at]
        return [at for at, _ in self._limits(worker)]

    def _limit_detail(self, worker: WorkerProcess, reason: EndReason) -> str:
        if reason is EndReason.BROKEN:
            return "the worker never became ready"
        if (
            reason is EndReason.TIMEOUT
            and worker.job is not None
            and worker.job.timeout is not None
        ):
            return f"timed out after {_seconds(worker.job.timeout)}"
        return f"no heartbeat for {_seconds(self.settings.heartbeat_timeout)}: the worker hung"

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _apply_effects(self, now: float) -> None:
        effects = self._effects
        for rejection in effects.rejected:
            where = self.inbox.reject(rejection.file, rejection.error, rejection.lines)
            if not where:  # the file changed since it was read: the next scan judges it anew
                continue
            emit(
                "WARNING",
                "file.rejected",
                f"rejected {rejection.file.name}: {rejection.error}",
                file=rejection.file.name,
                error=rejection.error,
                moved_to=where,
                lines=[{"line": e.line, "error": e.error} for e in rejection.lines],
            )
        self.inbox.remove(effects.accepted)
        for worker, messages in effects.sends.items():
            if worker.state is WorkerState.TERMINATING:
                continue
            try:
                worker.channel.send(messages)
            except ChannelClosed as error:
                pool.terminate(
                    worker,
                    EndReason.BROKEN,
                    f"the channel to the worker failed: {error}",
                    now,
                    self.settings.kill_grace,
                )
        for level, event, message, fields in effects.logs:
            emit(level, event, message, **fields)
        effects.clear()
        self._flush_logs()

    # ----------------------------------------------------------------- signals

    def _handle_signals(self, now: float) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self._stopping:
                    self._effects.log(
                        "INFO", "daemon.stopping", "second stop signal: not waiting for jobs"
                    )
                    self._stop_deadline = now
                else:
                    self._begin_stop(
                        now, signal.Signals(signum).name, self.settings.shutdown_timeout
                    )
            elif signum == signal.SIGQUIT:
                self._begin_stop(now, "SIGQUIT", 0.0)
            elif signum == signal.SIGHUP:
                self._reload_settings()
            elif signum == signal.SIGUSR1 and self._reopen_logs is not None:
                self._reopen_logs()

    def _begin_stop(self, now: float, why: str, wait: float) -> None:
        if not self._stopping:
            self._stopping = True
            self._telemetry.stopping()
            running = sum(1 for w in self.workers.values() if w.current is not None)
            self._effects.log(
                "INFO",
                "daemon.stopping",
                f"stopping on {why}: {running} running jobs get {_seconds(wait)} to finish",
                signal=why,
                running=running,
                shutdown_timeout=wait,
            )
            # Queued jobs that have not started go back to pending instead of running.
            for worker in self.workers.values():
                for job in worker.assigned.values():
                    if job.id != worker.current:
                        self._effects.send(worker, Skip(job.id, job.lease))
        deadline = now + wait
        self._stop_deadline = min(self._stop_deadline or deadline, deadline)

    def _reload_settings(self) -> None:
        if self._reload is None:
            return
        try:
            settings = self._reload()
        except Exception as error:
            self._effects.log(
                "ERROR", "config.reload_failed", f"config not reloaded: {error}", error=str(error)
            )
            return
        old = self.settings
        self.settings = settings
        self.ledger.retry = settings.retry
        self._effects.log(
            "INFO",
            "config.reloaded",
            f"config reloaded: {settings.workers} workers (was {old.workers})",
            workers=settings.workers,
        )

    # ----------------------------------------------------------------- workers

    # ----------------------------------------------------------------- workers

    def _counted_workers(self) -> list[WorkerProcess]:
        """Workers that hold a slot: not on their way out."""
        return [
            w
            for w in self.workers.values()
            if w.state in (WorkerState.STARTING, WorkerState.SERVING)
        ]

    def _spawn_missing(self, now: float) -> None:
        if self._stopping or now < self._respawn_not_before:
            return
        for _ in range(self.settings.workers - len(self._counted_workers())):
            try:
                worker = pool.spawn(
                    self.registry,
                    WorkerOptions(self.settings.heartbeat_interval, self.settings.max_result_bytes),
                    self._close_in_child,
                    now,
                )
            except OSError as error:
                self._effects.log("ERROR", "worker.spawn_failed", f"cannot fork a worker: {error}")
                self._respawn_not_before = now + 1.0
                return
            self.workers[worker.pid] = worker
            self._selector.register(worker.channel.fileno(), selectors.EVENT_READ, worker)
            self.store.add_worker(WorkerRecord(worker.pid, worker.create_time))

    def _read_worker(self, worker: WorkerProcess, now: float, wall: float) -> None:
        messages, closed = worker.channel.receive()
        for message in messages:
            self._on_message(worker, message, now, wall)
        if closed:
            self._unregister(worker)

    def _unregister(self, worker: WorkerProcess) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.channel.fileno())

    def _on_message(
        self, worker: WorkerProcess, message: ToSupervisor, now: float, wall: float
    ) -> None:
        if isinstance(message, Ready):
            if worker.state is WorkerState.STARTING:
                worker.state = WorkerState.SERVING
                self._failed_spawns = 0
                self._effects.log(
                    "INFO", "worker.started", f"worker {worker.pid} started", worker_pid=worker.pid
                )
            return
        if isinstance(message, LogLine):
            self._effects.log(
                message.level,
                "job.log" if message.job_id else "worker.log",
                message.message,
                job_id=message.job_id,
                attempt=message.attempt,
                worker_pid=worker.pid,
                fields=message.fields or None,
            )
            return
        if isinstance(message, OutputLine):
            self._effects.log(
                "INFO",
                "job.output" if message.job_id else "worker.output",
                message.text,
                job_id=message.job_id,
                attempt=message.attempt,
                worker_pid=worker.pid,
                stream=message.stream,
            )
            return
        job = worker.run_named(
            message.job_id, message.lease, started=not isinstance(message, Started | Skipped)
        )
        if job is None:
            self._effects.log(
                "DEBUG",
                "message.stale",
                f"dropped a {type(message).__name__} from a run that is no longer current",
                job_id=message.job_id,
                worker_pid=worker.pid,
            )
            return
        worker.last_heard_at = now
        worker.taking_back.discard(job.id)
        if isinstance(message, Started):
            worker.current = job.id
            worker.job_started_at = now
            self.ledger.began(job)
            if job.cancel_requested:  # the cancel came while it was queued, the Skip too late
                self._terminate(worker, EndReason.CANCEL, "canceled", now)
        elif isinstance(message, Skipped):
            del worker.assigned[job.id]
            self._requeue(job, wall)
        elif isinstance(message, ProgressReport):
            worker.assigned[job.id] = self.ledger.progress(
                job, message.fraction, message.message, wall
            )
        elif isinstance(message, Finished):
            self._on_finished(worker, job, message, wall)

    def _on_finished(self, worker: WorkerProcess, job: Job, message: Finished, wall: float) -> None:
        if message.error is None:
            self.ledger.complete(job, message.result or b"null", message.duration, wall)
        else:
            reason = "permanent" if message.permanent else "error"
            self.ledger.fail(job, message.error, wall, reason=reason, duration=message.duration)
        del worker.assigned[job.id]
        worker.current = None
        worker.jobs_done += 1
        self._batch.observe(message.duration)
        if self.settings.max_memory_mb:
            worker.last_rss = pool.rss_bytes(worker.pid)

    def _requeue(self, job: Job, wall: float) -> None:
        """A job that waited in a worker's queue and never started: canceled, or pending."""
        if job.cancel_requested:
            self.ledger.cancel(job, wall, ran=False)
        else:
            self.ledger.interrupt(job, wall, ran=False)

    def _reap(self, now: float, wall: float) -> None:
        for pid, status in pool.reap_any():
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            # Whatever it said before dying counts: read it before judging the exit.
            messages, _ = worker.channel.receive()
            for message in messages:
                self._on_message(worker, message, now, wall)
            self._on_exit(worker, status, now, wall)

    def _on_exit(self, worker: WorkerProcess, status: int, now: float, wall: float) -> None:
        text, code, signal_name = pool.describe_exit(status)
        if worker.end_reason is not None:  # we ended it: the exit says nothing more
            text = f"ended by the supervisor ({worker.end_reason}): {worker.end_detail}"
        pool.signal_group(worker.pid, signal.SIGKILL)  # what its handler may have left
        self._unregister(worker)
        worker.channel.close()
        self.store.remove_worker(worker.pid)
        reason = worker.end_reason
        for job in worker.assigned.values():
            if job.id != worker.current:
                self._requeue(job, wall)
            elif job.cancel_requested:
                self.ledger.cancel(job, wall, ran=True, exit_signal=signal_name)
            elif reason is EndReason.SHUTDOWN:
                self.ledger.interrupt(job, wall, ran=True, exit_signal=signal_name)
            elif reason is not None and job.id != worker.end_job:
                # Ended for the job before it (a cancel, a timeout) just as it moved on.
                why = f"ending its worker ({reason}) for job {worker.end_job}"
                self.ledger.interrupt(job, wall, ran=True, exit_signal=signal_name, why=why)
            else:
                error = worker.end_detail if reason is not None else text
                label = str(reason) if reason is not None else "worker_died"
                self.ledger.fail(job, error, wall, reason=label, exit_signal=signal_name)
        if worker.state is WorkerState.STARTING:
            self._failed_spawns += 1
            self._respawn_not_before = now + min(5.0, 0.05 * 2**self._failed_spawns)
        expected = reason is not None or worker.state is WorkerState.RETIRING
        self._effects.log(
            "INFO" if expected else "WARNING",
            "worker.exited",
            f"worker {worker.pid} exited: {text}",
            worker_pid=worker.pid,
            exit_code=code,
            signal=signal_name,
            reason=str(reason) if reason else ("retired" if expected else "unexpected"),
            jobs_done=worker.jobs_done,
        )

    def _terminate(self, worker: WorkerProcess, reason: EndReason, detail: str, now: float) -> None:
        pool.terminate(worker, reason, detail, now, self.settings.kill_grace)

    def _check_deadlines(self, now: float, wall: float) -> None:
        settings = self.settings
        stop_due = self._stop_deadline is not None and now >= self._stop_deadline
        sample_memory = settings.max_memory_mb > 0 and now >= self._next_memory_sample
        if sample_memory:
            self._next_memory_sample = now + MEMORY_SAMPLE_INTERVAL
        for worker in list(self.workers.values()):
            if worker.state is WorkerState.TERMINATING:
                pool.kill_if_due(worker, now)
                continue
            if stop_due and worker.job is not None:
                self._terminate(worker, EndReason.SHUTDOWN, "the daemon is stopping", now)
                continue
            expired = next((reason for at, reason in self._limits(worker) if now >= at), None)
            if expired is not None:
                self._terminate(worker, expired, self._limit_detail(worker, expired), now)
            elif sample_memory and worker.job is not None:
                self._check_memory(worker, now)

    def _check_memory(self, worker: WorkerProcess, now: float) -> None:
        rss = pool.rss_bytes(worker.pid)
        limit = self.settings.max_memory_mb * 1024 * 1024
        if rss is not None and rss > 2 * limit:
            self._terminate(
                worker,
                EndReason.MEMORY,
                f"out of memory: the worker used {rss / 2**20:.0f} MB,"
                f" more than twice max_memory_mb ({self.settings.max_memory_mb} MB)",
                now,
            )

    def _retire_due(self, now: float) -> None:
        """Stop idle workers that should go; one recycled at a time, so that
        replacements do not all happen at the same moment."""
        settings = self.settings
        counted = self._counted_workers()
        surplus = len(counted) - settings.workers
        retiring = any(w.state is WorkerState.RETIRING for w in self.workers.values())
        for worker in counted:
            if not worker.available:
                continue
            if self._stopping or surplus > 0:
                surplus -= 1
            elif retiring:
                continue
            elif (
                settings.max_jobs_per_worker and worker.jobs_done >= settings.max_jobs_per_worker
            ) or self._over_memory(worker):
                retiring = True
            else:
                continue
            worker.state = WorkerState.RETIRING
            self._effects.send(worker, Stop())

    def _over_memory(self, worker: WorkerProcess) -> bool:
        limit = self.settings.max_memory_mb
        return bool(limit) and worker.last_rss is not None and worker.last_rss > limit * 1024 * 1024

    def _takes_more(self, worker: WorkerProcess) -> bool:
        """Whether a busy worker may be handed its next jobs: not once its quota is
        spoken for or it is over the memory limit (it is retired when idle)."""
        quota = self.settings.max_jobs_per_worker
        if quota and worker.jobs_done + len(worker.assigned) >= quota:
            return False
        return not self._over_memory(worker)

    # ----------------------------------------------------------------- jobs

    def _ingest(self, now: float, wall: float) -> None:
        files = list(self.inbox.scan(self.settings.scan_batch))
        more = len(files) >= self.settings.scan_batch
        self._next_scan = now if more else now + self.settings.poll_interval
        if not files:
            return
        result = ingest(
            files,
            self.store,
            self.registry,
            self.registry.names(),
            self.settings.defaults,
            wall,
        )
        accepted: dict[str, list[Job]] = {}
        for job, file in result.jobs:
            accepted.setdefault(file.name, []).append(job)
            self.ledger.added(job)
        for name, new_jobs in accepted.items():
            first = new_jobs[0]
            if len(new_jobs) == 1:
                message = f"job {first.id} accepted from {name}"
            else:
                message = f"{len(new_jobs)} jobs accepted from {name}"
            self._effects.log(
                "INFO", "file.accepted", message,
                file=name, jobs=len(new_jobs), job_id=first.id, type=first.type,
            )  # fmt: skip
        for job_id, file in result.duplicates:
            self._effects.log(
                "INFO", "file.duplicate", f"job {job_id} from {file.name} already exists",
                job_id=job_id, file=file.name,
            )  # fmt: skip
        for job_id, file in result.cancels:
            self._cancel(job_id, file, now, wall)
        for days, file in result.prunes:
            asked = self._prune_older_than
            self._prune_older_than = days if asked is None else min(asked, days)
            self._next_retention = now
            self._effects.log(
                "INFO", "prune.requested", f"prune of jobs older than {days:g} days requested",
                days=days, file=file.name,
            )  # fmt: skip
        self._effects.accepted.extend(result.accepted)
        self._effects.rejected.extend(result.rejected)

    def _holder(self, job: Job) -> WorkerProcess | None:
        """The worker that holds this run of the job."""
        for worker in self.workers.values():
            held = worker.assigned.get(job.id)
            if held is not None and held.lease == job.lease:
                return worker
        return None

    def _cancel(self, job_id: str, file: InboxFile, now: float, wall: float) -> None:
        job = self.store.get(job_id)
        if job is None:
            self._effects.log(
                "WARNING", "cancel.unknown", f"cannot cancel {job_id}: no such job",
                job_id=job_id, file=file.name,
            )  # fmt: skip
        elif job.status.is_terminal:
            self._effects.log(
                "INFO", "cancel.ignored", f"job {job_id} is already {job.status}",
                job_id=job_id, status=str(job.status), file=file.name,
            )  # fmt: skip
        elif job.status is Status.PENDING:
            self.ledger.cancel(job, wall, ran=False)
        elif not job.cancel_requested:
            requested = self.ledger.request_cancel(job, wall)
            worker = self._holder(job)
            if worker is None:
                return
            worker.assigned[job.id] = requested
            if worker.current == job.id:
                self._terminate(worker, EndReason.CANCEL, "canceled", now)
            else:
                self._effects.send(worker, Skip(job.id, job.lease))

    def _dispatch(self, now: float, wall: float) -> None:
        self._look_again_at = None
        idle: list[WorkerProcess] = []
        busy: list[tuple[WorkerProcess, float]] = []  # started all it was given
        holders: list[Holder[WorkerProcess]] = []
        for worker in self.workers.values():
            if worker.state is not WorkerState.SERVING:
                continue
            if not worker.assigned:
                idle.append(worker)
            elif queued := worker.queued:
                holders.append(Holder(worker, queued, worker.running_since))
            elif self._takes_more(worker):
                since = worker.running_since
                busy.append((worker, now if since is None else since))
        if self._stopping or not (idle or busy or holders):
            self._next_due = None  # a worker freed later makes a turn of its own
            return
        size = self._batch.size()
        limit = (len(idle) + len(busy)) * size + 1
        due = self.store.due(wall, limit)
        decided = plan(
            due, idle=idle, busy=busy, holders=holders, size=size, expected=self._batch.mean,
            now=now, window=self._batch.window, horizon=HORIZON,
        )  # fmt: skip
        quota = self.settings.max_jobs_per_worker
        for worker, batch in decided.handouts:
            if not worker.assigned:
                worker.last_heard_at = now
            # A worker due for recycling is not handed more than it may still run.
            room = quota - worker.jobs_done - len(worker.assigned)
            for job in batch[: max(1, room)] if quota else batch:
                self._lease += 1
                running = self.ledger.start(job, lease=self._lease, worker_pid=worker.pid, now=wall)
                worker.assigned[job.id] = running
                self._effects.send(
                    worker, RunJob(job.id, running.lease, running.attempt, job.type, job.payload)
                )
        for worker, job in decided.take_back:
            worker.taking_back.add(job.id)
            self._effects.send(worker, Skip(job.id, job.lease))
        self._look_again_at = decided.look_again_at
        self._next_due = self.store.next_run_at() if len(due) < limit else None

    def _prune(self, now: float, wall: float) -> None:
        """Retention: delete terminal jobs older than retention_days (or the days a prune
        request names), a small batch at a time."""
        asked = math.inf if self._prune_older_than is None else self._prune_older_than
        days = min(self.settings.retention_days, asked)
        deleted = self.ledger.prune(days, wall, RETENTION_BATCH)
        if deleted:
            self.store.vacuum_step(VACUUM_PAGES)
        full = deleted == RETENTION_BATCH
        if not full:
            self._prune_older_than = None
        self._next_retention = now + (1.0 if full else RETENTION_INTERVAL)

    def _snapshot(self, wall: float) -> Snapshot:
        workers = [
            WorkerSnapshot(
                pid=w.pid,
                state="busy" if w.assigned and w.state is WorkerState.SERVING else str(w.state),
                current_job=w.current,
                jobs_done=w.jobs_done,
                rss_bytes=pool.rss_bytes(w.pid),
            )
            for w in self.workers.values()
        ]
        self.store.update_workers(
            [WorkerReport(w.pid, w.state, w.current_job, w.jobs_done, wall) for w in workers]
        )
        oldest = self.store.oldest_pending_created()
        return Snapshot(
            at=wall,
            jobs={key: count for key, count in self.ledger.counts.items() if count},
            failed_attempts=Counter(self.ledger.failed_attempts),
            run_seconds={
                k: Histogram(list(h.counts), h.total) for k, h in self.ledger.run_seconds.items()
            },
            workers=workers,
            oldest_pending_age=None if oldest is None else max(0.0, wall - oldest),
        )
