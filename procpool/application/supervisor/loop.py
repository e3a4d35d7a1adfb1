"""The supervisor: one process, one thread, one loop.

    inbox/ ─scan─▶ intake ─▶ ┌─────── store (SQLite) ───────┐ ─due─▶ dispatch ─RunJob─▶ worker
                             │ one transaction per loop turn │                           │
    signals ─▶ wake-up pipe  └───────────────────────────────┘ ◀─Started/Finished/Log───┘
    SIGCHLD ─▶ reap ─▶ fleet: each run's fate (domain/fate.py) ─▶ ledger
                  └──▶ companions (the HTTP server: started, restarted, stopped last)

Each turn waits once on every input (the workers' channels, the wake-up pipe
that signals write to, the inbox watch) with a timeout set by the nearest
future deadline, then applies everything that happened in one store
transaction, and only after the commit answers the socket door's clients (first:
they wait for it), sends to workers, removes accepted inbox files, writes the log
lines and forks missing workers: nothing is said or sent that the store does not
hold, and no fork copies an open transaction.

What each message and each exit means, and when a worker must be ended, is
the fleet's (fleet.py, pure); this module is the loop and its effects.

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
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from procpool.application.events import emit
from procpool.application.fence import Fence
from procpool.application.handlers import HandlerRegistry
from procpool.application.ports import (
    Inbox,
    InboxFile,
    JobStore,
    SharedStore,
    StartRegister,
    StoreBusy,
    StoreLost,
    WorkerRecord,
)
from procpool.application.supervisor.companion import Companion
from procpool.application.supervisor.dispatch import HORIZON, PATIENCE, plan
from procpool.application.supervisor.door import Connection, Door
from procpool.application.supervisor.fleet import (
    Began,
    Decision,
    Deliver,
    Fleet,
    ProgressMade,
    RunEnded,
    Say,
    Send,
    WorkerState,
)
from procpool.application.supervisor.ingest import RejectedFile
from procpool.application.supervisor.intake import Intake
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.membership import apply_tick, kill_all, reconcile
from procpool.application.supervisor.recovery import recover
from procpool.application.supervisor.settings import Settings
from procpool.application.supervisor.telemetry import NoTelemetry, Telemetry, take_snapshot
from procpool.application.wire.channel import FRAME_OVERHEAD, ChannelClosed, SupervisorEnd
from procpool.application.wire.messages import ToWorker
from procpool.application.worker import pool, tree
from procpool.application.worker.main import WorkerOptions
from procpool.domain.wording import plural

MEMORY_SAMPLE_INTERVAL = 1.0
RETENTION_INTERVAL = 60.0
RETENTION_BATCH = 500
VACUUM_PAGES = 256
# Seconds between tries while another process holds the store's lock, doubling
# (each try also waits for the lock itself: the store's LOCK_WAIT).
STORE_PAUSE_MIN = 0.05
STORE_PAUSE_MAX = 0.5
# Group commit: while every worker has work queued (Fleet.linger), or no due job
# waits for a worker and no client for a job (_unawaited_linger), the loop lets the
# ends of jobs gather for up to LINGER seconds, so that one turn and one durable
# commit (about 0.1 ms of CPU and 0.1-0.5 ms of disk) serve several jobs, not one
# each. Under LINGER_MIN it is not worth a turn of its own. Clients, the inbox and
# signals are served at once all the same.
LINGER = 0.005
LINGER_MIN = 0.0005


def _seconds(value: float) -> str:
    return f"{value:g} s"


@dataclass
class _Effects:
    """What a turn does outside the store, in order, once its transaction has committed."""

    sends: dict[int, list[ToWorker]] = field(default_factory=dict)
    logs: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    accepted: list[InboxFile] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)

    def log(self, level: str, event: str, message: str, **fields: Any) -> None:
        self.logs.append((level, event, message, fields))

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
        starts: StartRegister | None = None,
        tree_mark: str | None = None,
        companions: Sequence[Companion] = (),
        door: socket.socket | None = None,
    ) -> None:
        self.store = store
        self.inbox = inbox
        self.registry = registry
        self.settings = settings
        store.set_limits(settings.claim, registry.names())  # the claim counts: see `due`
        self._reload = reload
        self._reopen_logs = reopen_logs
        self._flush_logs = flush_logs
        self._close_in_child_extra = close_in_child
        self.fleet = Fleet(settings.limits)
        self.channels: dict[int, SupervisorEnd] = {}
        self._starts = starts
        self._tree_mark = tree_mark  # what every worker's process tree carries (tree.py)
        self._companions = list(companions)  # children that are not workers (companion.py)
        self._slots: dict[int, int] = {}  # pid -> its slot in the start register
        self._new_workers: list[WorkerRecord] = []  # forked, to be stored in the next turn
        self._spawn_failures = 0  # forks failed in a row: said once, at the first
        self._signals: deque[int] = deque()
        # Two selectors, one inside the other: the workers' channels in the loop's own,
        # everything else (the socket door, the inbox, the wake-up pipe, the shared
        # store) in `_others`, whose descriptor the loop's selects too. So the loop can
        # wait for the others alone while workers' messages gather (group commit).
        self._selector = selectors.DefaultSelector()
        self._others = selectors.DefaultSelector()
        self._selector.register(self._others.fileno(), selectors.EVENT_READ, "others")
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lease = 0
        self._stopping = False
        self._stop_at: float | None = None  # monotonic: running jobs are ended then
        self._next_scan = 0.0
        self._next_due: float | None = None  # wall time of the earliest future pending job
        self._look_again_at: float | None = None  # monotonic: a queued job may come back then
        self._waiting_jobs = True  # due jobs waited for a worker after the last dispatch
        self._next_memory_sample = 0.0
        self._effects = _Effects()
        self._telemetry: Telemetry = telemetry or NoTelemetry()
        self.ledger = Ledger(store, settings.retry, self._effects.log)
        self.intake = Intake(store, self.ledger, registry, self.fleet, self._effects.log)
        # The socket door (DESIGN decision 12): clients submit, wait and cancel through it.
        self.door = None if door is None else Door(door, self._others, self._effects.log)
        self._next_publish = 0.0
        self._next_retention = 0.0
        self._prune_older_than: float | None = None  # days, asked for by `procpool prune`
        self._store_busy_since: float | None = None  # monotonic: when the store became busy
        self._store_pause = STORE_PAUSE_MIN
        # Several daemons on one store (PostgreSQL): see membership.py.
        self._shared: SharedStore | None = cast(SharedStore, store) if store.shared else None
        self._fenced = False  # the lease ran out here: no run may go on, none may start
        # Until when the lease holds, and the workers' pids, for the watchdog (fence.py).
        self._fence = Fence() if self._shared is not None else None
        self._watchdog_retry_at = 0.0  # monotonic: a failed fork of it is tried again then
        self._store_fd: int | None = None  # the shared store's listener, when selected
        # A connection lost inside a turn: the runs that turn ended (kept with their
        # results for the next turn to record again) and what it would have sent.
        self._turn_ends: list[RunEnded] = []
        self._unjudged: list[tuple[int, int]] = []  # reaped exits a lost turn left unjudged
        self._lost: tuple[list[RunEnded], dict[int, list[ToWorker]]] | None = None
        self._losing = False  # turns lost since the last commit: a spell of losses
        self._lost_pause = STORE_PAUSE_MIN  # seconds before a turn after a repeated loss

    # ----------------------------------------------------------------- life

    def run(self) -> int:
        """Serve until a signal stops the daemon. Returns the exit code."""
        self._install_signals()
        inbox_fd = self.inbox.fileno()
        if inbox_fd is not None:
            self._others.register(inbox_fd, selectors.EVENT_READ, "inbox")
        self._others.register(self._wake_read, selectors.EVENT_READ, "wake")
        tree.become_subreaper()
        if self._tree_mark is not None:
            for pid in tree.end_marked(self._tree_mark):
                emit(
                    "WARNING", "process.killed_stale",
                    f"killed process {pid}, left by a handler of an earlier run", pid=pid,
                )  # fmt: skip
        self._renew_fence()  # forks the watchdog, before any worker
        while True:
            try:
                self._recover()
                break
            except StoreBusy as busy:
                self._wait_for_store(busy)
        self._after_commit()
        emit(
            "INFO",
            "daemon.started",
            f"procpool started with {plural(self.settings.workers, 'worker')}",
            pid=os.getpid(),
            workers=self.settings.workers,
            handlers=self.registry.names(),
        )
        self._spawn_missing(time.monotonic())
        self._tend_companions(time.monotonic())
        self._telemetry.ready(self.settings.workers)
        while not (self._stopping and not len(self.fleet)) or self._companions_running():
            try:
                self._turn()
            except StoreBusy as busy:
                self._wait_for_store(busy)
            except StoreLost as lost:
                self._rolled_back(lost)
        self._release_signals()
        if self._fence is not None:
            self._fence.stop()
        if self.door is not None:
            self.door.close()
        emit("INFO", "daemon.stopped", "procpool stopped", pid=os.getpid())
        self._selector.close()
        self._others.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        return 0

    def abandon(self) -> int:
        """After StoreLost: end every worker now (SIGKILL to its process group) and wait
        for it, deciding no fate (the store, read afresh, decides them). Returns how
        many there were. The companions are left to the next start, which ends what
        carries this home's mark."""
        if self._fence is not None:
            self._fence.stop()
        pids = [worker.pid for worker in self.fleet]
        for pid in pids:
            pool.signal_group(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        return len(pids)

    def wait_for_shared_store(self) -> bool:
        """After StoreLost: wait until the shared store answers again, the pause growing
        up to STORE_PAUSE_MAX, so that the next start finds it. Returns False if a stop
        was asked for meanwhile (signals are still recorded here)."""
        assert self._shared is not None
        pause = STORE_PAUSE_MIN
        while not self.stop_asked:
            if self._shared.reachable():
                return True
            time.sleep(pause)
            pause = min(2 * pause, STORE_PAUSE_MAX)
        return False

    @property
    def stop_asked(self) -> bool:
        """Whether a stop began, or a stop signal waits to be handled."""
        stops = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
        return self._stopping or any(signum in stops for signum in self._signals)

    def _recover(self) -> None:
        with self.store.transaction():
            self._store_free()
            self.ledger.load()
            begun = set() if self._starts is None else self._starts.begun()
            recover(self.store, self.ledger, time.time(), begun)
            self._lease = self.store.max_lease()
            self.ledger.flush_history()

    def _wait_for_store(self, busy: StoreBusy) -> None:
        """Another process holds the store's lock, and the turn did not begin: its inputs
        wait where they were (the selector reports them again, signals stay queued).
        Say so once, now, then pause before the next try."""
        if self._store_busy_since is None:
            self._store_busy_since = time.monotonic()
            self._store_pause = STORE_PAUSE_MIN
            emit(
                "WARNING",
                "store.busy",
                f"the store is busy: {busy}; waiting for it, nothing is lost",
                error=str(busy),
            )
            self._flush_logs()
        self._check_fence()
        time.sleep(self._store_pause)
        self._store_pause = min(2 * self._store_pause, STORE_PAUSE_MAX)

    def _store_free(self) -> None:
        """In a transaction that began: end a busy spell."""
        if self._store_busy_since is not None:
            waited = time.monotonic() - self._store_busy_since
            self._store_busy_since = None
            self._effects.log(
                "INFO",
                "store.available",
                f"the store is free again after {waited:.1f} s",
                waited_s=round(waited, 3),
            )

    def _install_signals(self) -> None:
        def record(signum: int, frame: object) -> None:
            self._signals.append(signum)

        for signum in pool.HELD_ACROSS_FORK:
            signal.signal(signum, record)
        # The wake-up fd makes a signal that arrives while the loop waits end the wait.
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    @staticmethod
    def _release_signals() -> None:
        """The loop is over: a late stop signal has nothing left to stop, so it is
        ignored. Left to the interpreter, whose finalization puts back the default
        action, it would end the exiting daemon by the signal instead of with exit 0."""
        signal.set_wakeup_fd(-1)
        for signum in pool.HELD_ACROSS_FORK:
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGCHLD else signal.SIG_IGN)

    def _close_in_child(self) -> None:
        """In a freshly forked worker: drop the supervisor's descriptors."""
        if self.door is not None:
            self.door.close_in_child()
        self._selector.close()
        self._others.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        for channel in self.channels.values():
            channel.close()
        self._close_in_child_extra()

    # ----------------------------------------------------------------- the loop

    def _watch_store(self) -> None:
        """Put the shared store's listener, once it has one, in the selector (again
        after a lost connection, under a new descriptor)."""
        assert self._shared is not None
        if self._store_fd is None:
            self._store_fd = self._shared.listener()
            if self._store_fd is not None:
                self._others.register(self._store_fd, selectors.EVENT_READ, "store")

    def _turn(self) -> None:
        if self._shared is not None:
            self._watch_store()
        if self.door is not None:
            self.door.watch_again(time.monotonic())
        timeout = self._wait_timeout()
        if timeout > 0 and not self._stopping:
            linger = self.fleet.linger(LINGER, LINGER_MIN) or self._unawaited_linger()
            if linger:
                # Whatever comes from outside ends it, and is then selected below.
                waited = time.monotonic()
                self._others.select(min(linger, timeout))
                timeout = max(0.0, timeout - (time.monotonic() - waited))
        ready = self._selector.select(timeout)
        if any(key.data == "others" for key, _ in ready):
            ready = [pair for pair in ready if pair[0].data != "others"]
            ready += self._others.select(0)
        now, wall = time.monotonic(), time.time()
        self._check_fence()
        with self.store.transaction():
            self._store_free()
            if self._shared is not None:
                tick = self._shared.tick()
                self._apply(
                    apply_tick(tick, self._shared, self.fleet, self.ledger, self._effects.log,
                               now, wall),
                    wall,
                )  # fmt: skip
                self._reconcile(wall)
            for record in self._new_workers:
                self.store.add_worker(record)
            self._new_workers.clear()
            self._handle_signals(now)
            scan = self._take_inputs(ready, now, wall) or now >= self._next_scan
            self._serve_door(now, wall)
            self._reap(now, wall)
            self._judge_deadlines(now, wall)
            self._sample_memory(now, wall)
            if scan and not self._stopping:
                self._ingest(now, wall)
            self._retire_due(now)
            self._expire_then_dispatch(now, wall)
            if now >= self._next_retention:
                self._prune(now, wall)
            publish = now >= self._next_publish
            if publish:
                snapshot = take_snapshot(self.fleet, self.ledger, self.store, pool.rss_bytes, wall)
            self.ledger.flush_history()
        self._renew_fence()
        self._after_commit()
        self._spawn_missing(now)
        self._tend_companions(now)
        if publish:
            self._next_publish = now + self.settings.metrics_interval
            self._telemetry.publish(snapshot)

    def _unawaited_linger(self) -> float:
        """Group commit when the pool is not full: LINGER while no due job waits for a
        worker and no client on the socket waits for a job, so what workers say (ends
        of jobs no one waits for, a freed worker with nothing to take) may join the
        next turn's commit, which a client's next submit usually brings within the
        wait. 0 otherwise: the turn comes at once."""
        if self._waiting_jobs or (self.door is not None and self.door.waiting):
            return 0.0
        return LINGER

    def _take_inputs(
        self, ready: list[tuple[selectors.SelectorKey, int]], now: float, wall: float
    ) -> bool:
        """Read what the selector found ready. Returns whether the inbox has news."""
        news = False
        with self.ledger.held():  # nothing here reads a job from the store
            for key, mask in ready:
                if key.data == "wake":
                    self._drain_wake_pipe()
                elif key.data == "store":
                    if self._store_fd is None:
                        # Dropped at an earlier report of this select. The cause seen (a
                        # closed listener still in epoll through a worker's copy) is gone:
                        # the listener now leaves the selector before it is closed; this
                        # keeps any other double report from ending the daemon.
                        continue
                    assert self._shared is not None
                    if not self._shared.heard():  # broken: out of the selector, then closed
                        self._others.unregister(self._store_fd)
                        self._store_fd = None
                elif key.data == "inbox":
                    self.inbox.drain_events()
                    news = True
                elif key.data == "door" or isinstance(key.data, Connection):
                    assert self.door is not None
                    self.door.ready(key.data, mask)
                else:
                    self._serve_channel(key.data, mask, now, wall)
        return news

    def _wait_timeout(self) -> float:
        """Until the nearest future event: a past one has been acted on already, so the
        loop never spins while workers are busy and due jobs wait for them."""
        if self._signals:
            return 0.0
        now = time.monotonic()
        deadlines = [self._next_publish, self._next_retention]
        if not self._stopping:
            deadlines.append(self._next_scan)
            if len(self.fleet.counted()) < self.settings.workers:
                deadlines.append(self.fleet.spawn_at())
        if self._next_due is not None:
            deadlines.append(now + max(0.0, self._next_due - time.time()))
        if self._look_again_at is not None:
            deadlines.append(self._look_again_at)
        if self.door is not None and self.door.paused_until is not None:
            deadlines.append(self.door.paused_until)
        if self.settings.max_memory_mb and any(w.current for w in self.fleet):
            deadlines.append(self._next_memory_sample)
        if self._shared is not None:
            deadlines.append(now + self._shared.tick_in())
            if not self._fenced:
                deadlines.append(now + max(0.0, self._shared.fence_in()))
        worker_deadline = self.fleet.next_deadline(self._stop_at)
        if worker_deadline is not None:
            deadlines.append(worker_deadline)
        for companion in self._companions:
            deadline = companion.next_deadline(self._stopping)
            if deadline is not None:
                deadlines.append(deadline)
        return max(0.0, min(deadlines) - now)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _apply(self, decisions: list[Decision], wall: float) -> None:
        """Carry out the fleet's decisions: in the store (this turn's transaction), or
        as effects of the turn."""
        for done, decision in enumerate(decisions):
            try:
                self._apply_one(decision, wall)
            except BaseException:  # the store's error, StoreLost once out of the turn
                self._offline(decisions[done + 1 :])
                raise

    def _offline(self, decisions: list[Decision]) -> None:
        """The turn failed (the connection broke) before these decisions reached the store: the
        ends of runs are kept for the reconciliation, what was to be sent or said waits
        with the turn's other effects, signals go now."""
        for decision in decisions:
            if isinstance(decision, RunEnded):
                self._turn_ends.append(decision)
            elif isinstance(decision, Send | Deliver | Say):
                self._apply_one(decision, 0.0)

    def _apply_one(self, decision: Decision, wall: float) -> None:
        if isinstance(decision, RunEnded):
            if self._shared is not None:  # first: kept even if its write fails
                self._turn_ends.append(decision)
            self.ledger.end_run(decision, wall)
            if self.settings.max_memory_mb and decision.worker_pid in self.channels:
                # After every job, so that a leaking worker is retired when idle
                # even if it is never idle at a periodic sample.
                rss = pool.rss_bytes(decision.worker_pid)
                self.fleet.measured(decision.worker_pid, rss, 0.0)
        elif isinstance(decision, Began):
            begun = self.ledger.began(decision.job, wall)
            self.fleet.update(decision.worker_pid, begun)
        elif isinstance(decision, ProgressMade):
            job = self.ledger.progress(decision.job, decision.fraction, decision.message, wall)
            self.fleet.update(decision.worker_pid, job)
        elif isinstance(decision, Send):
            self._effects.sends.setdefault(decision.pid, []).append(decision.message)
        elif isinstance(decision, Deliver):
            pool.signal_group(decision.pid, decision.signum)
        elif isinstance(decision, Say):
            self._effects.log(decision.level, decision.event, decision.message, **decision.fields)

    def _rolled_back(self, lost: StoreLost) -> None:
        """The connection broke inside a turn (CONTRACT 11): nothing the turn decided
        happens (no send, no answer, no log line of it, no inbox file removed: the next
        scan reads those again), but the workers are kept, and so are their results: the
        runs the turn ended, and what waits unread in their channels. The next turn that
        begins, once the store answers, reconciles (membership.reconcile); until then the
        fence (the watchdog, `_check_fence`) ends the runs if the lease runs out.

        Lost again before a turn committed: said once per spell, and the next turn
        waits as for a busy store. The cause is likely still there (a row another
        session holds past BUSY_SPARE before the fence makes every turn that needs it
        give up at once), and tried at once it spun hundreds of turns a second."""
        again, self._losing = self._losing, True
        ends, unsent = list(self._turn_ends), dict(self._effects.sends)
        if self._lost is not None:  # lost again before a turn reconciled the first loss
            ends = self._lost[0] + ends
            for pid, messages in self._lost[1].items():
                unsent[pid] = messages + unsent.get(pid, [])
        self._lost = (ends, unsent)
        self._turn_ends.clear()
        self._effects.clear()
        self.ledger.rolled_back()
        if self.door is not None:
            self.door.rolled_back()
        # The records of workers forked since (the lost turn stored them): stored again.
        self._new_workers = [
            WorkerRecord(worker.pid, pool.create_time(worker.pid)) for worker in self.fleet
        ]
        if again:
            self._check_fence()
            time.sleep(self._lost_pause)
            self._lost_pause = min(2 * self._lost_pause, STORE_PAUSE_MAX)
            return
        self._lost_pause = STORE_PAUSE_MIN
        emit(
            "WARNING", "store.lost",
            f"{lost}: the turn is rolled back; keeping {plural(len(self.fleet), 'worker')}"
            " and their results, reconnecting",
            error=str(lost), workers=len(self.fleet),
        )  # fmt: skip
        self._flush_logs()

    def _reconcile(self, wall: float) -> None:
        """In the first turn after a loss (`_rolled_back`): the fleet and the store agree
        again, and the counts are read afresh."""
        if self._lost is None or self._shared is None:
            return
        ends, unsent = self._lost
        self._lost = None
        self._turn_ends.extend(ends)  # should this turn be lost too, they are kept again
        self.ledger.load()
        decisions = reconcile(self._shared.owned(), ends, unsent, self.fleet, self.ledger,
                              self._effects.log, wall)  # fmt: skip
        self._apply(decisions, wall)

    def _after_commit(self) -> None:
        self._turn_ends.clear()  # committed: the store holds those ends now
        self._losing = False
        effects = self._effects
        # The door's answers first: a client waits for each, one round trip at a time,
        # and what follows (inbox files, sends to workers, log lines) is nobody's.
        finished = self.ledger.take_finished()
        if self.door is not None:
            self.door.committed(finished)
        for rejection in effects.rejected:
            where = self.inbox.reject(
                rejection.file, rejection.error, rejection.lines, rejection.duplicate
            )
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
        for pid, messages in effects.sends.items():
            channel = self.channels.get(pid)
            worker = self.fleet.get(pid)
            if channel is None or worker is None or worker.state is WorkerState.TERMINATING:
                continue
            try:
                channel.send(messages)
            except ChannelClosed as error:
                # A worker that died (a zombie until reaped) is judged by its exit;
                # one that lives with its channel closed can take no job: end it.
                if pool.alive(pid):
                    failed = self.fleet.channel_failed(pid, f"the channel failed: {error}", 0.0)
                    self._outside(failed)
            self._watch_writable(pid)
        for level, event, message, fields in effects.logs:
            emit(level, event, message, **fields)
        effects.clear()
        self._flush_logs()

    def _outside(self, decisions: list[Decision]) -> None:
        """Decisions made after the commit: signals and log lines only."""
        for decision in decisions:
            if isinstance(decision, Deliver):
                pool.signal_group(decision.pid, decision.signum)
            elif isinstance(decision, Say):
                emit(decision.level, decision.event, decision.message, **decision.fields)

    def _watch_writable(self, pid: int) -> None:
        """Wait for a worker's socket to be writable only while bytes wait for it."""
        channel = self.channels[pid]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if channel.backlogged else 0)
        with contextlib.suppress(KeyError, ValueError):
            if self._selector.get_key(channel.fileno()).events != events:
                self._selector.modify(channel.fileno(), events, pid)

    # ----------------------------------------------------------------- signals

    def _handle_signals(self, now: float) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self._stopping:
                    if self._stop_at is not None and self._stop_at <= now:
                        continue  # already not waiting: nothing new to say
                    self._effects.log(
                        "INFO", "daemon.stopping", "second stop signal: not waiting for jobs"
                    )
                    self._stop_at = now
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
            running = sum(1 for w in self.fleet if w.current is not None)
            self._effects.log(
                "INFO",
                "daemon.stopping",
                f"stopping on {why}: {plural(running, 'running job')}"
                f" {'gets' if running == 1 else 'get'} {_seconds(wait)} to finish",
                signal=why,
                running=running,
                shutdown_timeout=wait,
            )
            self._apply(self.fleet.stop_queues(), time.time())
        deadline = now + wait
        self._stop_at = min(self._stop_at or deadline, deadline)

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
        self.fleet.limits = settings.limits
        self.store.set_limits(settings.claim, self.registry.names())
        self._effects.log(
            "INFO",
            "config.reloaded",
            f"config reloaded: {plural(settings.workers, 'worker')} (was {old.workers})",
            workers=settings.workers,
        )

    # ----------------------------------------------------------------- workers

    def _spawn_missing(self, now: float) -> None:
        """Fork what the pool lacks: after the turn's commit, never inside it."""
        if self._stopping or now < self.fleet.spawn_at():
            return
        max_frame = self.settings.max_result_bytes + FRAME_OVERHEAD
        starts = self._starts
        for _ in range(self.settings.workers - len(self.fleet.counted())):
            slot = min(set(range(len(self._slots) + 1)) - set(self._slots.values()))

            def start_slot(slot: int = slot) -> memoryview | None:
                return None if starts is None else starts.slot(slot)

            try:
                options = WorkerOptions(
                    self.settings.heartbeat_interval,
                    self.settings.max_result_bytes,
                    self._tree_mark,
                    None if self._fence is None else self._fence.view,
                )
                forked = pool.spawn(
                    self.registry, options, self._close_in_child, max_frame, start_slot
                )  # fmt: skip
            except OSError as error:  # out of processes, memory or descriptors
                if not self._spawn_failures:
                    emit(
                        "ERROR", "worker.spawn_failed",
                        f"cannot fork a worker: {error}; trying again every second",
                        error=str(error),
                    )  # fmt: skip
                self._spawn_failures += 1
                self.fleet.respawn_not_before = now + 1.0
                return
            if self._spawn_failures:
                tries = plural(self._spawn_failures, "failed try", "failed tries")
                emit(
                    "INFO", "worker.spawn_recovered", f"forked a worker again, after {tries}",
                    failed=self._spawn_failures,
                )  # fmt: skip
                self._spawn_failures = 0
            self.fleet.spawned(forked.pid, now)
            self._slots[forked.pid] = slot
            if self._fence is not None:
                self._fence.add(slot, forked.pid)
            self.channels[forked.pid] = forked.channel
            self._selector.register(forked.channel.fileno(), selectors.EVENT_READ, forked.pid)
            self._new_workers.append(WorkerRecord(forked.pid, forked.create_time))

    def _serve_channel(self, pid: int, mask: int, now: float, wall: float) -> None:
        channel = self.channels[pid]
        if mask & selectors.EVENT_WRITE:
            with contextlib.suppress(ChannelClosed):  # its exit is reaped and judged
                channel.flush()
            self._watch_writable(pid)
        if mask & selectors.EVENT_READ:
            self._read(pid, now, wall)

    def _read(self, pid: int, now: float, wall: float) -> bool:
        """Take what a worker sent. Returns whether anything came."""
        channel = self.channels[pid]
        messages, closed, broken = channel.receive()
        for done, message in enumerate(messages):
            try:
                self._apply(self.fleet.received(pid, message, now), wall)
            except BaseException:  # the store's error, StoreLost once out of the turn
                # Read from the channel, so never read again: the fleet takes them now.
                for later in messages[done + 1 :]:
                    self._offline(self.fleet.received(pid, later, now))
                raise
        if broken is not None:
            self._apply(self.fleet.channel_failed(pid, f"the worker sent {broken}", now), wall)
        if closed or broken is not None:
            self._unregister(pid)
        return bool(messages)

    def _unregister(self, pid: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self.channels[pid].fileno())

    def _reap(self, now: float, wall: float) -> None:
        reaped = pool.reap_any()
        exited = self._unjudged + [(pid, status) for pid, status in reaped if pid in self.channels]
        self._unjudged = []
        for pid, status in reaped:
            if pid in self.channels:
                continue
            if self._fence is not None and self._fence.exited(pid):
                self._watchdog_exited(status)
                continue
            for companion in self._companions:
                if companion.exited(pid, status, now):
                    break
        if exited:
            # What their handlers left is now ours (we are a subreaper): it dies before
            # the runs' fates are decided, so a retry never overlaps it.
            keep = [pid for pid in self.channels if pid not in dict(exited)]
            keep.extend(c.pid for c in self._companions if c.pid is not None)
            if self._fence is not None and self._fence.watchdog is not None:
                keep.append(self._fence.watchdog)
            tree.end_orphans(keep)
        for index, (pid, status) in enumerate(exited):
            worker = self.fleet.get(pid)
            if worker is None:
                continue
            try:
                # Whatever it said before dying counts: read it all before judging the exit.
                while self._read(pid, now, wall):
                    pass
                how, code, signal_name = pool.describe_exit(status)
                self._apply(self.fleet.exited(pid, how, code, signal_name, now), wall)
            except BaseException:
                # The turn failed (a lost connection): reaped exits are never reaped
                # again, so those not judged yet wait for the next turn.
                judged = self.fleet.get(pid) is None
                self._unjudged = exited[index + 1 :] if judged else exited[index:]
                if judged:
                    self._forget_worker(pid)
                raise
            self._forget_worker(pid)
            self.store.remove_worker(pid)

    def _forget_worker(self, pid: int) -> None:
        """A worker's exit was judged: what is left of it goes."""
        pool.signal_group(pid, signal.SIGKILL)  # what its handler may have left
        self._unregister(pid)
        self.channels.pop(pid).close()
        slot = self._slots.pop(pid, None)
        if self._fence is not None and slot is not None:
            self._fence.remove(slot)

    def _tend_companions(self, now: float) -> None:
        """Start or restart the companions; once stopping has ended every worker, stop
        them: the HTTP server answers while running jobs finish."""
        stopping = self._stopping and not len(self.fleet)
        for companion in self._companions:
            companion.tick(now, stopping)

    def _companions_running(self) -> bool:
        return any(companion.running for companion in self._companions)

    def _judge_deadlines(self, now: float, wall: float) -> None:
        """End the workers past a deadline, each once what it sent has been read: after
        a gap in the loop (SIGSTOP or Ctrl-Z then SIGCONT, a long turn, a stall on the
        store) the select may come back empty while heartbeats wait in the channels."""
        for pid in self.fleet.overdue(now, self._stop_at):
            if pid in self.channels:
                self._read(pid, now, wall)
        self._apply(self.fleet.check_deadlines(now, self._stop_at), wall)

    def _retire_due(self, now: float) -> None:
        self._apply(self.fleet.retirements(self.settings.workers, self._stopping, now), 0.0)

    def _sample_memory(self, now: float, wall: float) -> None:
        if not self.settings.max_memory_mb or now < self._next_memory_sample:
            return
        self._next_memory_sample = now + MEMORY_SAMPLE_INTERVAL
        for worker in self.fleet:
            if worker.current is not None:
                self._apply(self.fleet.measured(worker.pid, pool.rss_bytes(worker.pid), now), wall)

    # ----------------------------------------------------------------- jobs

    def _ingest(self, now: float, wall: float) -> None:
        # Where the files read in parts stand, as committed: the scan goes on from there.
        progress = self.store.files_in_progress()
        files = list(self.inbox.scan(self.settings.scan_batch, progress))
        self._next_scan = now if self.inbox.more() else now + self.settings.poll_interval
        self.intake.vanished(self.inbox.vanished(progress), progress)
        received = self.intake.files(files, self.settings.defaults, now, wall, progress)
        self._apply(received.decisions, wall)
        if received.prune_days is not None:
            asked = self._prune_older_than
            days = received.prune_days
            self._prune_older_than = days if asked is None else min(asked, days)
            self._next_retention = now
        self._effects.accepted.extend(received.accepted)
        self._effects.rejected.extend(received.rejected)

    def _serve_door(self, now: float, wall: float) -> None:
        """The requests that came over the socket this turn, before dispatch: a job
        submitted now can be handed to a free worker in the same turn."""
        if self.door is None:
            return
        settings = self.settings
        decisions = self.door.serve(
            self.intake, self.store, settings.defaults, settings.max_file_bytes, now, wall
        )
        self._apply(decisions, wall)

    def _expire_then_dispatch(self, now: float, wall: float) -> None:
        """Pending jobs past their expires_at are canceled before the claim could start
        them (CONTRACT 13), and the loop wakes up when the next one expires."""
        expiry = self.ledger.expire_due(wall)
        self._dispatch(now, wall)
        if expiry is not None:
            self._next_due = min(expiry, self._next_due or expiry)

    def _dispatch(self, now: float, wall: float) -> None:
        self._look_again_at = None
        deaf = {pid for pid, channel in self.channels.items() if channel.backlogged}
        idle, busy, holders = self.fleet.candidates(now, deaf)
        self._waiting_jobs = True  # until this turn's plan says otherwise
        if self._stopping or self._fenced or not (idle or busy or holders):
            self._next_due = None  # a worker freed later makes a turn of its own
            return
        batch = self.fleet.batch
        size = batch.size()
        limit = (len(idle) + len(busy)) * size + 1
        due = self.store.due(wall, limit)
        if not due and not holders:  # nothing to hand out or take back: no plan to make
            self._next_due = self.store.next_run_at(wall)
            self._waiting_jobs = False
            return
        decided = plan(
            due, idle=idle, busy=busy, holders=holders, size=size, expected=batch.mean,
            now=now, patience=PATIENCE, horizon=HORIZON,
        )  # fmt: skip
        handed = 0
        for worker, jobs in decided.handouts:
            for job in jobs[: self.fleet.room(worker, len(jobs))]:
                running = self.ledger.start(
                    job, lease=self._new_lease(), worker_pid=worker.pid, now=wall
                )
                self._apply([self.fleet.hand_out(worker, running, now)], wall)
                handed += 1
        # A job taken back goes to the worker it was taken back for at the next turn.
        self._waiting_jobs = handed < len(due) or bool(decided.take_back)
        self._apply([self.fleet.take_back(w, job) for w, job in decided.take_back], wall)
        self._look_again_at = decided.look_again_at
        self._next_due = self.store.next_run_at(wall) if len(due) < limit else None

    def _new_lease(self) -> int:
        """The fencing token of a new attempt: unique across daemons on a shared store."""
        if self._shared is not None:
            return self._shared.new_lease()
        self._lease += 1
        return self._lease

    def _renew_fence(self) -> None:
        """After a commit: tell the watchdog and the workers until when the lease holds
        now, and fork the watchdog (fence.py) if it does not run: at the start, or after
        it died. Never inside a transaction: no fork copies one."""
        fence, shared = self._fence, self._shared
        if fence is None or shared is None:
            return
        fence.renewed(time.clock_gettime(time.CLOCK_BOOTTIME) + shared.fence_in())
        if fence.watchdog is not None or time.monotonic() < self._watchdog_retry_at:
            return
        held = signal.pthread_sigmask(signal.SIG_BLOCK, pool.HELD_ACROSS_FORK)
        try:
            fence.start()
        except OSError as error:
            # Until it runs, the supervisor's own check and each worker's thread fence.
            self._watchdog_retry_at = time.monotonic() + 1.0
            emit("ERROR", "fence.watchdog_failed", f"cannot fork the fence's watchdog: {error}",
                 error=str(error))  # fmt: skip
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _watchdog_exited(self, status: int) -> None:
        _how, code, signal_name = pool.describe_exit(status)
        self._effects.log(
            "ERROR", "fence.watchdog_exited",
            f"the fence's watchdog ended ({signal_name or f'exit code {code}'});"
            " another is started after this turn",
            code=code, signal=signal_name,
        )  # fmt: skip

    def _check_fence(self) -> None:
        """On a shared store: once this daemon's lease may have run out (no renewal for
        lease - margin seconds, on a clock that counts suspend), kill every worker's
        runs before another daemon may take them over, and start none until a renewal
        commits (DESIGN decision 14)."""
        if self._shared is None:
            return
        late = self._shared.fence_in() <= 0
        if late and not self._fenced:
            emit(
                "ERROR", "daemon.fenced",
                "the lease on the store was not renewed in time: ending every run before"
                " another daemon may take it over; no job starts until it is renewed",
                workers=len(self.fleet),
            )  # fmt: skip
            self._outside(kill_all(self.fleet))
            self._flush_logs()
        self._fenced = late

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
