"""The supervisor: one process, one thread, one loop.

    inbox/ ─scan─▶ intake ─▶ ┌─────── store (SQLite) ───────┐ ─due─▶ dispatch ─RunJob─▶ worker
                             │ one transaction per loop turn │                           │
    signals ─▶ wake-up pipe  └───────────────────────────────┘ ◀─Started/Finished/Log───┘
    SIGCHLD ─▶ reap ─▶ fleet: each run's fate (domain/fate.py) ─▶ ledger
                  └──▶ companions (the HTTP server: started, restarted, stopped last)

A turn, in the manner of CPython's `concurrent.futures.process._ExecutorManagerThread`:

    wait      one select over every input, as long as the nearest future event allows
    read      in the turn's one store transaction: the shared store's tick, the
              signals, what the selector found (each worker message applied at once)
    apply     the door's requests, reaped exits, deadlines, memory samples
    decide    inbox files, schedules' occurrences, retirements, dispatch, retention
    gather    other clients' next submits, when due within a millisecond, or the ends
              of short jobs begun in the turn (group commit)
    commit    the attempt history, the metrics snapshot; the transaction commits
    effects   answers, inbox files, sends, log lines; then forks and companions

Nothing is said or sent that the store does not hold, and no fork copies an open
transaction. The loop's parts live beside it: what each message and exit means
(fleet.py, pure), the worker processes (workers.py), the one interpreter of the
fleet's decisions and the turn's effects (effects.py), signals (signals.py), a
shared store's lease and fence (member.py), dispatch (handout.py, over dispatch.py's
plan), schedules (scheduling.py), retention (retention.py), a busy store (busy.py),
the wait (wait.py, pure) and the selectors it waits on (inputs.py).

No threads: the supervisor forks replacement workers at any time, and a fork
taken while another thread holds a lock copies the held lock into the child
(DESIGN decision 2).
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable, Sequence

from procpool.application.events import emit
from procpool.application.handlers import HandlerRegistry
from procpool.application.ports import Inbox, JobStore, StartRegister, StoreBusy, StoreLost
from procpool.application.supervisor import wait
from procpool.application.supervisor.busy import BusySpell
from procpool.application.supervisor.companion import Companion, Companions
from procpool.application.supervisor.door import Connection, Door
from procpool.application.supervisor.effects import Effects, TurnEffects
from procpool.application.supervisor.fleet import Fleet
from procpool.application.supervisor.handout import Dispatcher
from procpool.application.supervisor.inputs import Inputs, Selected
from procpool.application.supervisor.intake import Intake
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.member import membership
from procpool.application.supervisor.recovery import recover
from procpool.application.supervisor.retention import Retention
from procpool.application.supervisor.scheduling import Scheduler
from procpool.application.supervisor.settings import Settings
from procpool.application.supervisor.signals import SignalHandlers, Signals, Stop
from procpool.application.supervisor.telemetry import (
    NoTelemetry,
    Snapshot,
    Telemetry,
    take_snapshot,
)
from procpool.application.supervisor.workers import WorkerManager
from procpool.application.worker import pool
from procpool.domain.wording import plural


class Supervisor:
    """The daemon's one thread: `run` serves turn after turn until a stop has ended
    every worker and companion (the module's docstring)."""

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
        clock: wait.Clock = time,
    ) -> None:
        self.store, self.inbox, self.registry, self.settings = store, inbox, registry, settings
        # The claim counts: see `due`.
        store.serve(settings.serving(registry.names()))
        self.clock = clock
        self._flush_logs = flush_logs
        self._close_in_child_extra = close_in_child
        self._telemetry: Telemetry = telemetry or NoTelemetry()
        self._starts = starts
        self.companions = Companions(companions)  # children that are not workers
        self.inputs = Inputs()  # two selectors, one inside the other (inputs.py)
        self.fleet = Fleet(settings.limits)
        self.turn_effects = TurnEffects()
        self.ledger = Ledger(store, settings.retry, self.turn_effects.log)
        self.effects = Effects(self.fleet, self.ledger, self.turn_effects)
        self.intake = Intake(store, self.ledger, registry, self.fleet, self.turn_effects.log)
        # The socket door (DESIGN decision 12): clients submit, wait and cancel through it.
        self.door = (
            None
            if door is None
            else Door(door, self.inputs.others, self.turn_effects.log, self.clock.monotonic)
        )
        # Alone, or one of several daemons on a shared store (PostgreSQL): member.py.
        self.member = membership(store, self.effects, self.inputs.others, flush_logs)
        self.workers = WorkerManager(
            self.fleet, self.effects, self.inputs.workers, registry, settings,
            close_in_child=self._close_in_child, starts=starts, tree_mark=tree_mark,
            fence=self.member.fence,
        )  # fmt: skip
        self.stop = Stop()
        self.signals = Signals()
        self.handlers = SignalHandlers(
            self.stop, self.fleet, self.effects, self._telemetry, lambda: self.settings,
            self._reconfigure, reload=reload, reopen_logs=reopen_logs,
        )  # fmt: skip
        self.retention = Retention(self.ledger, store)
        self.scheduler = Scheduler(store, self.ledger, self.turn_effects.log, registry.names)
        self.dispatcher = Dispatcher(
            store, self.fleet, self.ledger, self.effects, self.member.new_lease
        )
        self.busy = BusySpell(self.turn_effects.log, flush_logs, self.clock.monotonic)
        self._next_scan = 0.0  # monotonic
        self._next_publish = 0.0

    # ----------------------------------------------------------------- life

    def run(self) -> int:
        """Serve until a signal stops the daemon. Returns the exit code."""
        self.start()
        while not (self.stop.begun and not len(self.fleet)) or self.companions.running:
            try:
                self.turn()
            except StoreBusy as busy:
                self.busy.wait(busy, self.member.check_fence)
            except StoreLost as lost:
                self._rolled_back(lost)
        self.close()
        return 0

    def start(self) -> None:
        """Before the first turn: signals, the subreaper, the start's recovery, the forks."""
        self.signals.install()
        inbox_fd = self.inbox.fileno()
        if inbox_fd is not None:
            self.inputs.others.register(inbox_fd, selectors.EVENT_READ, "inbox")
        self.inputs.others.register(self.signals.fileno(), selectors.EVENT_READ, "wake")
        self.workers.adopt()
        self.member.renew_fence()  # forks the watchdog, before any worker
        while True:
            try:
                self._recover()
                break
            except StoreBusy as busy:
                self.busy.wait(busy, self.member.check_fence)
        self._carry_out()
        workers = self.settings.workers
        emit(
            "INFO", "daemon.started", f"procpool started with {plural(workers, 'worker')}",
            pid=os.getpid(), workers=workers, handlers=self.registry.names(),
        )  # fmt: skip
        now = self.clock.monotonic()
        self.workers.spawn_missing(now)
        self.companions.tick(now, self.stop.begun and not len(self.fleet))
        self._telemetry.ready(self.settings.workers)

    def close(self) -> None:
        """After the last turn: every worker and companion has ended."""
        self.signals.release()
        self.member.stop()
        if self.door is not None:
            self.door.close()
        emit("INFO", "daemon.stopped", "procpool stopped", pid=os.getpid())
        self.inputs.close()
        self.signals.close()

    def abandon(self) -> int:
        """After StoreLost: end every worker now and wait for it, deciding no fate (the
        store, read afresh, decides them). Returns how many there were. The companions
        are left to the next start, which ends what carries this home's mark."""
        self.member.stop()
        return self.workers.abandon()

    def wait_for_shared_store(self) -> bool:
        """After StoreLost: wait until the shared store answers again, so that the next
        start finds it. Returns False if a stop was asked for meanwhile."""
        return self.member.wait_for_store(lambda: self.stop_asked)

    @property
    def stop_asked(self) -> bool:
        """Whether a stop began, or a stop signal waits to be handled."""
        return self.stop.begun or self.signals.stop_pending

    def _recover(self) -> None:
        with self.store.transaction():
            self.busy.free()
            self.ledger.load()
            begun = set() if self._starts is None else self._starts.begun()
            recover(self.store, self.ledger, self.clock.time(), begun)
            self.ledger.flush_history()

    def _reconfigure(self, settings: Settings) -> None:
        """SIGHUP reloaded the settings: in force from this turn on."""
        self.settings = self.workers.settings = settings
        self.ledger.retry = settings.retry
        self.fleet.limits = settings.limits
        self.store.serve(settings.serving(self.registry.names()))

    def _close_in_child(self) -> None:
        """In a freshly forked worker: drop the supervisor's descriptors."""
        if self.door is not None:
            self.door.close_in_child()
        self.inputs.close()
        self.signals.close()
        self.workers.close_in_child()
        self._close_in_child_extra()

    # ----------------------------------------------------------------- a turn

    def turn(self) -> None:
        """One turn of the loop (the module's docstring)."""
        ready = self._wait()
        now, wall = self.clock.monotonic(), self.clock.time()
        self.member.check_fence()
        with self.store.transaction():
            self.busy.free()
            scan = self._read(ready, now, wall)
            self._apply(now, wall)
            self._decide(now, wall, scan)
            self._gather_clients(now, wall)
            self._gather_ends(now, wall)
            snapshot = self._commit(now, wall)
        self._after_commit(now)
        if snapshot is not None:
            self._next_publish = now + self.settings.metrics_interval
            self._telemetry.publish(snapshot)

    def _wait(self) -> Selected:
        """Select over every input until the nearest future event; lingering first
        (group commit) on the inputs other than workers, while workers' news gathers.
        What came from outside already is taken at once, with the workers' news."""
        self.member.watch()
        if self.door is not None:
            self.door.watch_again(self.clock.monotonic())
        # What came from outside ends the wait at once, however long it might have been.
        ready = self.inputs.ready_now()
        if ready:
            return ready
        timeout = wait.wait_timeout(self._alarms())
        lingering = 0.0
        if timeout > 0 and not self.stop.begun:
            waiting = (self.door is not None and self.door.waiting) or self.fleet.awaits_commit()
            queued = self.fleet.linger(wait.LINGER_QUEUED, wait.LINGER_MIN)
            lingering = wait.linger(queued, self.dispatcher.jobs_waiting, waiting)
        return self.inputs.select(timeout, lingering)

    def _alarms(self) -> wait.Alarms:
        now, stopping = self.clock.monotonic(), self.stop.begun
        lacking = len(self.fleet.counted()) < self.settings.workers
        tick_in, fence_in = self.member.timeouts()
        sampling = self.settings.max_memory_mb and any(w.current for w in self.fleet)
        deadlines = [self.fleet.next_deadline(self.stop.at)]
        deadlines += self.companions.deadlines(stopping)
        return wait.Alarms(
            now, self.clock.time(), signals=self.signals.pending, stopping=stopping,
            publish_at=self._next_publish, retention_at=self.retention.next_at,
            scan_at=self._next_scan, spawn_at=self.fleet.spawn_at() if lacking else None,
            due_at=self.dispatcher.next_due, look_again_at=self.dispatcher.look_again_at,
            schedule_at=None if stopping or self.member.fenced else self.scheduler.next_at,
            door_paused_until=None if self.door is None else self.door.paused_until,
            memory_sample_at=self.workers.next_memory_sample if sampling else None,
            tick_in=tick_in, fence_in=fence_in,
            worker_deadlines=tuple(d for d in deadlines if d is not None),
        )  # fmt: skip

    def _read(self, ready: Selected, now: float, wall: float) -> bool:
        """What came in: the shared store's news, the signals, what the selector found
        ready. Returns whether the inbox has news (or its scan is due)."""
        self.member.tick(now, wall)
        for record in self.workers.records:
            self.store.add_worker(record)
        self.workers.records.clear()
        self.signals.handle(self.handlers, now)
        news = False
        with self.ledger.held():  # nothing here reads a job from the store
            for key, mask in ready:
                if key.data == "wake":
                    self.signals.drain()
                elif key.data == "store":
                    self.member.heard()
                elif key.data == "inbox":
                    self.inbox.drain_events()
                    news = True
                elif key.data == "door" or isinstance(key.data, Connection):
                    assert self.door is not None
                    self.door.ready(key.data, mask)
                else:
                    self.workers.serve(key.data, mask, now, wall)
        return news or now >= self._next_scan

    def _apply(self, now: float, wall: float) -> None:
        """Act on what came in: the clients' requests (before dispatch: a job submitted
        now can be handed to a free worker in this turn), exits, deadlines, memory."""
        if self.door is not None:
            self._serve_door(now, wall)
        if self.handlers.children_exited or self.workers.unjudged:
            not_orphans = lambda: self.companions.pids() + self.member.pids()  # noqa: E731
            for pid in self.workers.reap(now, wall, self._child_exited, not_orphans):
                self.store.remove_worker(pid)
            # Only once reaped: a turn that failed in its reap reaps again. A SIGCHLD
            # that came during the reap is handled in the next turn, which reaps again.
            self.handlers.children_exited = False
        self.workers.judge_deadlines(now, wall, self.stop.at)
        self.workers.sample_memory(now, wall)

    def _gather_clients(self, now: float, wall: float) -> None:
        """Group commit across clients (Door.gather): the next submits of other clients
        that submit in a loop, when they come within about a millisecond, are served in
        this turn too, and their jobs handed out, so that its commit answers them all."""
        if self.door is None or self.stop.begun or not self.door.gather():
            return
        self._serve_door(now, wall)
        self.dispatcher.dispatch(now, wall, self.workers.deaf(), self.member.fenced)

    def _gather_ends(self, now: float, wall: float) -> None:
        """A job's start and end in one commit (wait.ends_wait): when workers began their
        only jobs in this turn, jobs are short and the commit answers no one, their ends
        are awaited and read in this turn, and the workers freed handed work. Anything
        from outside ends the wait; it stays ready for the next turn."""
        begun = self.fleet.take_begun()
        if not begun or self.stop.begun:
            return
        answering = (self.door is not None and self.door.answering) or self.fleet.awaits_commit()
        seconds = wait.ends_wait(self.fleet.batch.mean, answering)
        deadline = self.clock.monotonic() + seconds
        heard = False
        with self.ledger.held():  # nothing here reads a job from the store
            while seconds > 0:
                ready = self.inputs.workers.select(seconds)
                for key, mask in ready:
                    if key.data != "others":
                        self.workers.serve(key.data, mask, now, wall)
                        heard = True
                begun = [(pid, job) for pid, job in begun if self.fleet.runs_alone(pid, job)]
                if not begun or any(key.data == "others" for key, _ in ready):
                    break
                seconds = deadline - self.clock.monotonic()
        if heard:
            self.dispatcher.dispatch(now, wall, self.workers.deaf(), self.member.fenced)

    def _serve_door(self, now: float, wall: float) -> None:
        assert self.door is not None
        settings = self.settings
        decisions = self.door.serve(
            self.intake, self.store, settings.defaults, settings.max_file_bytes, now, wall
        )
        self.effects.apply(decisions, wall)

    def _decide(self, now: float, wall: float, scan: bool) -> None:
        """Inbox files in, schedules' occurrences made, workers retired, due jobs out, old
        jobs pruned."""
        if scan and not self.stop.begun:
            self._ingest(now, wall)
        closed = self.stop.begun or self.member.fenced
        if not closed:
            self.scheduler.run(wall, self.settings.defaults)
        retiring = self.fleet.retirements(self.settings.workers, self.stop.begun, now)
        self.effects.apply(retiring, 0.0)
        self.dispatcher.dispatch(now, wall, self.workers.deaf(), closed)
        self.retention.prune(now, wall, self.settings.retention_days)

    def _commit(self, now: float, wall: float) -> Snapshot | None:
        """The last writes of the turn; the metrics snapshot, when one is due."""
        snapshot = None
        if now >= self._next_publish:
            snapshot = take_snapshot(self.fleet, self.ledger, self.store, pool.rss_bytes, wall)
        self.ledger.flush_history()
        return snapshot

    def _after_commit(self, now: float) -> None:
        self.member.renew_fence()
        self._carry_out()
        if not self.stop.begun:
            self.workers.spawn_missing(now)
        self.companions.tick(now, self.stop.begun and not len(self.fleet))

    def _carry_out(self) -> None:
        self.member.committed()
        self.effects.carry_out(self.door, self.inbox, self.workers.send, self._flush_logs)

    # ----------------------------------------------------------------- the steps

    def _ingest(self, now: float, wall: float) -> None:
        # Where the files read in parts stand, as committed: the scan goes on from there.
        progress = self.store.files_in_progress()
        files = list(self.inbox.scan(self.settings.scan_batch, progress))
        self._next_scan = now if self.inbox.more() else now + self.settings.poll_interval
        self.intake.vanished(self.inbox.vanished(progress), progress)
        received = self.intake.files(files, self.settings.defaults, now, wall, progress)
        self.effects.apply(received.decisions, wall)
        if received.prune_days is not None:
            self.retention.asked(received.prune_days, now)
        self.turn_effects.accepted.extend(received.accepted)
        self.turn_effects.rejected.extend(received.rejected)

    def _child_exited(self, pid: int, status: int, now: float) -> None:
        """A reaped child that is no worker: the fence's watchdog, or a companion."""
        if not self.member.exited(pid, status):
            self.companions.exited(pid, status, now)

    # ----------------------------------------------------------------- the store's faults

    def _rolled_back(self, lost: StoreLost) -> None:
        """The connection broke inside a turn (CONTRACT 11): nothing the turn decided
        happens (no send, no answer, no log line of it, no inbox file removed: the next
        scan reads those again), but the workers are kept, and so are their results
        (member.py reconciles them in the first turn that begins)."""
        self.ledger.rolled_back()
        self.scheduler.rolled_back()
        if self.door is not None:
            self.door.rolled_back()
        # The records of workers forked since (the lost turn stored them): stored again.
        self.workers.record_again()
        self.member.rolled_back(lost)
