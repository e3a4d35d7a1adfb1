"""The worker processes, as the supervisor owns them: fork, channel, read, reap, measure.

    spawn_missing ─fork (pool.spawn)─▶ worker ─channel─▶ read ─messages─▶ fleet.received
          │ slot in the start register, pid in the fence      │            ─▶ Effects.apply
          ▼                                                    ▼
    records, stored in the next turn              reap ─exit─▶ fleet.exited ─▶ Effects.apply
                                                    └─▶ forget: channel closed, group killed

What a worker is doing and what its messages and its exit mean is the fleet's
(fleet.py, pure bookkeeping); this manager holds what a live process needs: its
channel in the loop's selector, its slot, its record for the store. The split is
pebble's: a process-owning manager beside pure task bookkeeping.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from collections.abc import Callable, Iterable

from procpool.application.events import emit
from procpool.application.fence import Fence
from procpool.application.handlers import HandlerRegistry
from procpool.application.ports import StartRegister, WorkerRecord
from procpool.application.supervisor.effects import Effects, Sends
from procpool.application.supervisor.fleet import Fleet, WorkerState
from procpool.application.supervisor.settings import Settings
from procpool.application.wire.channel import FRAME_OVERHEAD, ChannelClosed, SupervisorEnd
from procpool.application.wire.messages import CheckpointStored
from procpool.application.worker import pool, tree
from procpool.application.worker.options import WorkerOptions
from procpool.domain.wording import plural

MEMORY_SAMPLE_INTERVAL = 1.0  # seconds between samples of the running workers' memory


class WorkerManager:
    """The live worker processes: each one's channel (registered in `selector` with its
    pid as data), its start-register slot, and its record until the store has it.
    `settings` is replaced on SIGHUP; `fence` is the shared store's (None otherwise)."""

    def __init__(
        self,
        fleet: Fleet,
        effects: Effects,
        selector: selectors.BaseSelector,
        registry: HandlerRegistry,
        settings: Settings,
        *,
        close_in_child: Callable[[], None],
        starts: StartRegister | None = None,
        tree_mark: str | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.fleet = fleet
        self.effects = effects
        self.settings = settings
        self.channels: dict[int, SupervisorEnd] = {}
        self.records: list[WorkerRecord] = []  # forked, to be stored in the next turn
        self.next_memory_sample = 0.0  # monotonic
        self._selector = selector
        self._registry = registry
        self._close_in_child = close_in_child
        self._starts = starts
        self._tree_mark = tree_mark  # what every worker's process tree carries (tree.py)
        self._fence = fence
        self._slots: dict[int, int] = {}  # pid -> its slot in the start register
        self._spawn_failures = 0  # forks failed in a row: said once, at the first
        self._unjudged: list[tuple[int, int]] = []  # reaped exits a lost turn left unjudged
        self._watching_writes: set[int] = set()  # pids whose channel is selected for writing

    # ----------------------------------------------------------------- fork

    def adopt(self) -> None:
        """At the start: become the subreaper of what workers' handlers leave, and end
        what a handler of an earlier run left (it carries this home's mark)."""
        tree.become_subreaper()
        if self._tree_mark is None:
            return
        for pid in tree.end_marked(self._tree_mark):
            emit(
                "WARNING", "process.killed_stale",
                f"killed process {pid}, left by a handler of an earlier run", pid=pid,
            )  # fmt: skip

    def spawn_missing(self, now: float) -> None:
        """Fork what the pool lacks: after the turn's commit, never inside it."""
        settings = self.settings
        missing = settings.workers - len(self.fleet.counted())
        # A full pool, the usual turn, is known by the count alone (issue 25).
        if missing <= 0 or now < self.fleet.spawn_at():
            return
        max_frame = max(settings.max_result_bytes, settings.max_checkpoint_bytes) + FRAME_OVERHEAD
        starts = self._starts
        for _ in range(missing):
            slot = min(set(range(len(self._slots) + 1)) - set(self._slots.values()))

            def start_slot(slot: int = slot) -> memoryview | None:
                return None if starts is None else starts.slot(slot)

            try:
                options = WorkerOptions(
                    settings.heartbeat_interval,
                    settings.max_result_bytes,
                    self._tree_mark,
                    None if self._fence is None else self._fence.view,
                    settings.max_checkpoint_bytes,
                )
                forked = pool.spawn(
                    self._registry, options, self._close_in_child, max_frame, start_slot
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
            self.records.append(WorkerRecord(forked.pid, forked.create_time))

    def record_again(self) -> None:
        """After a lost turn, which stored the records of the workers forked since: the
        record of every worker is stored again in the next turn."""
        self.records = [WorkerRecord(w.pid, pool.create_time(w.pid)) for w in self.fleet]

    # ----------------------------------------------------------------- channels

    def serve(self, pid: int, mask: int, now: float, wall: float) -> None:
        """A worker's channel is ready (selector events in `mask`)."""
        channel = self.channels[pid]
        if mask & selectors.EVENT_WRITE:
            with contextlib.suppress(ChannelClosed):  # its exit is reaped and judged
                channel.flush()
            self._watch_writable(pid)
        if mask & selectors.EVENT_READ:
            self.read(pid, now, wall)

    def read(self, pid: int, now: float, wall: float) -> bool:
        """Take what a worker sent, each message judged by the fleet and its decisions
        carried out at once. Returns whether anything came."""
        channel = self.channels[pid]
        messages, closed, broken = channel.receive()
        for done, message in enumerate(messages):
            try:
                self.effects.apply(self.fleet.received(pid, message, now), wall)
            except BaseException:  # the store's error, StoreLost once out of the turn
                # Read from the channel, so never read again: the fleet takes them now.
                for later in messages[done + 1 :]:
                    self.effects.offline(self.fleet.received(pid, later, now))
                raise
        if broken is not None:
            failed = self.fleet.channel_failed(pid, f"the worker sent {broken}", now)
            self.effects.apply(failed, wall)
        if closed or broken is not None:
            self._unregister(pid)
        return bool(messages)

    def send(self, sends: Sends) -> None:
        """After the commit: queue each worker's messages on its channel, without
        blocking (what the socket does not take waits in the channel's buffer)."""
        for pid, queued in sends.items():
            channel = self.channels.get(pid)
            worker = self.fleet.get(pid)
            if channel is None or worker is None:
                continue
            messages = queued
            if worker.state is WorkerState.TERMINATING:
                # Only a checkpoint's answer (a refusal) still goes: its handler waits.
                messages = [m for m in queued if isinstance(m, CheckpointStored)]
                if not messages:
                    continue
            try:
                channel.send(messages)
            except ChannelClosed as error:
                # A worker that died (a zombie until reaped) is judged by its exit;
                # one that lives with its channel closed can take no job: end it.
                if pool.alive(pid):
                    failed = self.fleet.channel_failed(pid, f"the channel failed: {error}", 0.0)
                    self.effects.outside(failed)
            self._watch_writable(pid)

    def deaf(self) -> set[int]:
        """The workers that have not read what was sent to them: they get no more jobs."""
        return {pid for pid, channel in self.channels.items() if channel.backlogged}

    def _watch_writable(self, pid: int) -> None:
        """Wait for a worker's socket to be writable only while bytes wait for it."""
        channel = self.channels[pid]
        backlogged = channel.backlogged
        # Known here, not asked of the selector: a look-up per send for what rarely changes.
        if backlogged is (pid in self._watching_writes):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if backlogged else 0)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(channel.fileno(), events, pid)
            if backlogged:
                self._watching_writes.add(pid)
            else:
                self._watching_writes.discard(pid)

    def _unregister(self, pid: int) -> None:
        self._watching_writes.discard(pid)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self.channels[pid].fileno())

    # ----------------------------------------------------------------- ends

    def reap(
        self,
        now: float,
        wall: float,
        other: Callable[[int, int, float], None],
        keep: Callable[[], Iterable[int]],
    ) -> list[int]:
        """Reap every exited child. A worker's exit is judged once what it said before
        dying has been read; `other(pid, status, now)` is told of every other child (the
        watchdog, the companions) first, and `keep()` names the processes that are no
        worker's orphans. Returns the pids of the workers whose exits were judged."""
        reaped = pool.reap_any()
        exited = self._unjudged + [(pid, status) for pid, status in reaped if pid in self.channels]
        self._unjudged = []
        for pid, status in reaped:
            if pid not in self.channels:
                other(pid, status, now)
        if exited:
            # What their handlers left is now ours (we are a subreaper): it dies before
            # the runs' fates are decided, so a retry never overlaps it.
            ended = dict(exited)
            tree.end_orphans([pid for pid in self.channels if pid not in ended] + list(keep()))
        judged: list[int] = []
        for index, (pid, status) in enumerate(exited):
            if self.fleet.get(pid) is None:
                continue
            try:
                # Whatever it said before dying counts: read it all before judging the exit.
                while self.read(pid, now, wall):
                    pass
                how, code, signal_name = pool.describe_exit(status)
                self.effects.apply(self.fleet.exited(pid, how, code, signal_name, now), wall)
            except BaseException:
                # The turn failed (a lost connection): reaped exits are never reaped
                # again, so those not judged yet wait for the next turn.
                done = self.fleet.get(pid) is None
                self._unjudged = exited[index + 1 :] if done else exited[index:]
                if done:
                    self._forget(pid)
                raise
            self._forget(pid)
            judged.append(pid)
        return judged

    @property
    def unjudged(self) -> bool:
        """Whether a lost turn left reaped exits to judge (`reap` judges them)."""
        return bool(self._unjudged)

    def _forget(self, pid: int) -> None:
        """A worker's exit was judged: what is left of it goes."""
        pool.signal_group(pid, signal.SIGKILL)  # what its handler may have left
        self._unregister(pid)
        self.channels.pop(pid).close()
        slot = self._slots.pop(pid, None)
        if self._fence is not None and slot is not None:
            self._fence.remove(slot)

    def judge_deadlines(self, now: float, wall: float, stop_at: float | None) -> None:
        """End the workers past a deadline, each once what it sent has been read: after
        a gap in the loop (SIGSTOP or Ctrl-Z then SIGCONT, a long turn, a stall on the
        store) the select may come back empty while heartbeats wait in the channels."""
        nearest = self.fleet.next_deadline(stop_at)
        if nearest is None or now < nearest:
            # Nothing is due, the usual turn: no worker is overdue, and nothing is read
            # that could make one so. One look at the deadlines instead of two (issue 25).
            return
        for pid in self.fleet.overdue(now, stop_at):
            if pid in self.channels:
                self.read(pid, now, wall)
        self.effects.apply(self.fleet.check_deadlines(now, stop_at), wall)

    def sample_memory(self, now: float, wall: float) -> None:
        """Every MEMORY_SAMPLE_INTERVAL, with max_memory_mb set: each running worker's RSS."""
        if not self.settings.max_memory_mb or now < self.next_memory_sample:
            return
        self.next_memory_sample = now + MEMORY_SAMPLE_INTERVAL
        for worker in self.fleet:
            if worker.current is not None:
                measured = self.fleet.measured(worker.pid, pool.rss_bytes(worker.pid), now)
                self.effects.apply(measured, wall)

    def abandon(self) -> int:
        """End every worker now (SIGKILL to its process group) and wait for it, deciding
        no fate. Returns how many there were."""
        pids = [worker.pid for worker in self.fleet]
        for pid in pids:
            pool.signal_group(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        return len(pids)

    def close_in_child(self) -> None:
        """In a freshly forked child: drop the supervisor's ends of the channels."""
        for channel in self.channels.values():
            channel.close()
