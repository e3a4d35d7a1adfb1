"""The one interpreter of the fleet's decisions, and the effects of a turn.

    fleet ─decisions─▶ Effects.apply ─RunEnded, Began, ProgressMade─▶ ledger (the turn's
         │                  │                                       transaction)
         │                  ├─Deliver─▶ a signal to the worker's group, now
         │                  └─Send, Say─▶ held in the turn's effects ─┐
         │                                                           ▼ after the commit
         └──────────────────────────────────────────────── Effects.carry_out: the door's
                          answers, rejected and accepted inbox files, sends, log lines

Inside a turn, a decision about the store is carried out in the turn's transaction;
what is said or sent waits for the commit, so that nothing is said or sent that
the store does not hold. A signal goes at once: it changes nothing the store holds.
Every caller of the fleet, the loop, membership and the tests' simulated workers
alike, carries its decisions out through `Effects.apply`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

from procpool.application.events import emit, emit_fields
from procpool.application.ports import Inbox, InboxFile
from procpool.application.supervisor import checkpoints
from procpool.application.supervisor.fleet import (
    Began,
    CheckpointAsked,
    Decision,
    Deliver,
    Fleet,
    ProgressMade,
    RunEnded,
    Say,
    Send,
)
from procpool.application.supervisor.ingest import RejectedFile
from procpool.application.supervisor.ledger import Ledger
from procpool.application.wire.messages import ToWorker
from procpool.application.worker import pool

Sends = dict[int, list[ToWorker]]  # worker pid -> the messages for it, in order


@dataclass
class TurnEffects:
    """What a turn does outside the store, in order, once its transaction has committed."""

    sends: Sends = field(default_factory=dict)
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


class Answers(Protocol):
    """The socket door, as the effects see it: told what a commit made terminal."""

    def committed(self, finished: list[str]) -> None: ...


@dataclass
class Effects:
    """Carries out the fleet's decisions (`apply`), and after the commit the turn's
    effects (`carry_out`). `deliver` sends a signal to a worker's process group, `rss`
    measures a worker's memory in bytes (None if it is gone): the system's by default,
    a simulation's in tests. `ends`: on a shared store, the runs this turn ended, kept
    with their results should the turn be lost (member.py); None on a store of one
    writer."""

    fleet: Fleet
    ledger: Ledger
    turn: TurnEffects
    _: KW_ONLY
    deliver: Callable[[int, int], None] = pool.signal_group
    rss: Callable[[int], int | None] = pool.rss_bytes
    ends: list[RunEnded] | None = None

    def apply(self, decisions: list[Decision], wall: float) -> None:
        """Carry out decisions: in the store (this turn's transaction), or as effects of
        the turn. `wall`: the time the store records (seconds since the epoch)."""
        for done, decision in enumerate(decisions):
            try:
                self._apply_one(decision, wall)
            except BaseException:  # the store's error, StoreLost once out of the turn
                self.offline(decisions[done + 1 :])
                raise

    def offline(self, decisions: list[Decision]) -> None:
        """The turn failed (the connection broke) before these decisions reached the
        store: the ends of runs are kept for the reconciliation, what was to be sent or
        said waits with the turn's other effects, signals go now."""
        for decision in decisions:
            if isinstance(decision, RunEnded):
                if self.ends is not None:
                    self.ends.append(decision)
            elif isinstance(decision, Send | Deliver | Say):
                self._apply_one(decision, 0.0)

    def outside(self, decisions: list[Decision]) -> None:
        """Decisions made after the commit: signals and log lines only."""
        for decision in decisions:
            if isinstance(decision, Deliver):
                self.deliver(decision.pid, decision.signum)
            elif isinstance(decision, Say):
                emit(decision.level, decision.event, decision.message, **decision.fields)

    def _apply_one(self, decision: Decision, wall: float) -> None:
        # Told by its exact type, commonest first: isinstance with a msgspec struct class
        # (its metaclass is not `type`) costs about 120 ns for each miss (issue 25).
        if type(decision) is RunEnded:
            if self.ends is not None:  # first: kept even if its write fails
                self.ends.append(decision)
            self.ledger.end_run(decision, wall)
            if self.fleet.limits.max_memory_bytes and decision.worker_pid in self.fleet.workers:
                # After every job, so that a leaking worker is retired when idle
                # even if it is never idle at a periodic sample.
                rss = self.rss(decision.worker_pid)
                self.fleet.measured(decision.worker_pid, rss, 0.0)
        elif type(decision) is Began:
            begun = self.ledger.began(decision.job, wall)
            self.fleet.update(decision.worker_pid, begun)
        elif type(decision) is ProgressMade:
            job = self.ledger.progress(decision.job, decision.fraction, decision.message, wall)
            self.fleet.update(decision.worker_pid, job)
        elif type(decision) is CheckpointAsked:
            answer = checkpoints.take(self.ledger.store, decision, wall, self.turn.log)
            self.turn.sends.setdefault(decision.worker_pid, []).append(answer)
        elif type(decision) is Send:
            self.turn.sends.setdefault(decision.pid, []).append(decision.message)
        elif type(decision) is Deliver:
            self.deliver(decision.pid, decision.signum)
        elif type(decision) is Say:
            self.turn.log(decision.level, decision.event, decision.message, **decision.fields)

    def carry_out(
        self,
        door: Answers | None,
        inbox: Inbox,
        send: Callable[[Sends], None],
        flush_logs: Callable[[], None],
    ) -> None:
        """After the commit: the door's answers first (a client waits for each, one round
        trip at a time; what follows is nobody's), then the inbox's rejected and accepted
        files, the sends to workers (`send`), the log lines."""
        if self.ends is not None:
            self.ends.clear()  # committed: the store holds those ends now
        turn = self.turn
        finished = self.ledger.take_finished()
        if door is not None:
            door.committed(finished)
        for rejection in turn.rejected:
            where = inbox.reject(
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
        inbox.remove(turn.accepted)
        send(turn.sends)
        for level, event, message, fields in turn.logs:
            emit_fields(level, event, message, fields)
        turn.clear()
        flush_logs()
