"""The supervisor as one daemon among others on a shared store (PostgreSQL): its lease,
its fence, and a turn lost with the connection.

    each turn, in its transaction: store.tick ─▶ membership.apply_tick ─▶ Effects.apply
                                   (first turn after a loss: membership.reconcile)
    after each commit: renew_fence ─▶ fence.py's shared map ─▶ the watchdog, each worker
    before each turn:  check_fence ─ lease may have run out ─▶ SIGKILL every worker group
    StoreLost inside a turn ─▶ rolled_back: the ends and unsent messages kept ─▶ reconcile

What a tick and a reconciliation mean is membership.py's (functions of their
inputs); this holds what the supervisor keeps between turns to act on them: the
fence and its watchdog, the store's listener in the loop's selector, and what a
lost turn left to reconcile (DESIGN decision 14, CONTRACT section 11).
"""

from __future__ import annotations

import selectors
import signal
import time
from collections.abc import Callable
from typing import cast

from procpool.application.events import emit
from procpool.application.fence import Fence
from procpool.application.ports import JobStore, SharedStore, StoreLost
from procpool.application.supervisor.busy import PAUSE_MAX, PAUSE_MIN
from procpool.application.supervisor.effects import Effects, Sends
from procpool.application.supervisor.fleet import RunEnded
from procpool.application.supervisor.membership import apply_tick, kill_all, reconcile
from procpool.application.worker import pool
from procpool.domain.wording import plural


class Member:
    """This daemon's membership of a shared store. `others` is the loop's selector of
    inputs other than workers: the store's listener goes there, with "store" as data."""

    def __init__(
        self,
        shared: SharedStore,
        effects: Effects,
        others: selectors.BaseSelector,
        flush_logs: Callable[[], None],
    ) -> None:
        self.shared = shared
        self.fence = Fence()  # until when the lease holds, and the workers' pids
        self.fenced = False  # the lease ran out here: no run may go on, none may start
        self._effects = effects
        self._ends: list[RunEnded] = []  # the runs the turn ended, should it be lost
        effects.ends = self._ends
        self._others = others
        self._flush_logs = flush_logs
        self._watchdog_retry_at = 0.0  # monotonic: a failed fork of it is tried again then
        self._store_fd: int | None = None  # the store's listener, when selected
        # A connection lost inside a turn: the runs that turn ended (kept with their
        # results for the next turn to record again) and what it would have sent.
        self._lost: tuple[list[RunEnded], Sends] | None = None
        self._losing = False  # turns lost since the last commit: a spell of losses
        self._lost_pause = PAUSE_MIN  # seconds before a turn after a repeated loss

    # ----------------------------------------------------------------- each turn

    def watch(self) -> None:
        """Before the wait: put the store's listener, once it has one, in the selector
        (again after a lost connection, under a new descriptor)."""
        if self._store_fd is None:
            self._store_fd = self.shared.listener()
            if self._store_fd is not None:
                self._others.register(self._store_fd, selectors.EVENT_READ, "store")

    def heard(self) -> None:
        """The listener is readable: take the notifications (the tick reads the news)."""
        if self._store_fd is None:
            # Dropped at an earlier report of this select. The cause seen (a closed
            # listener still in epoll through a worker's copy) is gone: the listener now
            # leaves the selector before it is closed; this keeps any other double
            # report from ending the daemon.
            return
        if not self.shared.heard():  # broken: out of the selector, then closed
            self._others.unregister(self._store_fd)
            self._store_fd = None

    def tick(self, now: float, wall: float) -> None:
        """In the turn's transaction: renew the lease and act on what the store says;
        in the first turn after a loss, make the fleet and the store agree again."""
        effects = self._effects
        decisions = apply_tick(
            self.shared.tick(), self.shared, effects.fleet, effects.ledger, effects.turn.log,
            now, wall,
        )  # fmt: skip
        effects.apply(decisions, wall)
        if self._lost is None:
            return
        ends, unsent = self._lost
        self._lost = None
        self._ends.extend(ends)  # should this turn be lost too, they are kept again
        effects.ledger.load()
        decisions = reconcile(self.shared.owned(), ends, unsent, effects.fleet, effects.ledger,
                              effects.turn.log, wall)  # fmt: skip
        effects.apply(decisions, wall)

    def new_lease(self) -> int:
        """The fencing token of a new attempt: unique across the daemons."""
        return self.shared.new_lease()

    def committed(self) -> None:
        self._losing = False

    def timeouts(self) -> tuple[float | None, float | None]:
        """Seconds until the next tick is due, and until the fence (None once fenced)."""
        return self.shared.tick_in(), None if self.fenced else max(0.0, self.shared.fence_in())

    # ----------------------------------------------------------------- the fence

    def renew_fence(self) -> None:
        """After a commit: tell the watchdog and the workers until when the lease holds
        now, and fork the watchdog (fence.py) if it does not run: at the start, or after
        it died. Never inside a transaction: no fork copies one."""
        fence = self.fence
        fence.renewed(time.clock_gettime(time.CLOCK_BOOTTIME) + self.shared.fence_in())
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

    def check_fence(self) -> None:
        """Once this daemon's lease may have run out (no renewal for lease - margin
        seconds, on a clock that counts suspend), kill every worker's runs before another
        daemon may take them over, and start none until a renewal commits (DESIGN
        decision 14)."""
        late = self.shared.fence_in() <= 0
        if late and not self.fenced:
            fleet = self._effects.fleet
            emit(
                "ERROR", "daemon.fenced",
                "the lease on the store was not renewed in time: ending every run before"
                " another daemon may take it over; no job starts until it is renewed",
                workers=len(fleet),
            )  # fmt: skip
            self._effects.outside(kill_all(fleet))
            self._flush_logs()
        self.fenced = late

    def stop(self) -> None:
        """The daemon stops, or starts again in place: the watchdog ends."""
        self.fence.stop()

    def pids(self) -> list[int]:
        """The watchdog's, while it runs: no worker's orphan."""
        return [] if self.fence.watchdog is None else [self.fence.watchdog]

    def exited(self, pid: int, status: int) -> bool:
        """Whether a reaped child was the watchdog (said; another is forked after the turn)."""
        if not self.fence.exited(pid):
            return False
        _how, code, signal_name = pool.describe_exit(status)
        self._effects.turn.log(
            "ERROR", "fence.watchdog_exited",
            f"the fence's watchdog ended ({signal_name or f'exit code {code}'});"
            " another is started after this turn",
            code=code, signal=signal_name,
        )  # fmt: skip
        return True

    # ----------------------------------------------------------------- losses

    def rolled_back(self, lost: StoreLost) -> None:
        """The connection broke inside a turn (CONTRACT 11): nothing the turn decided
        happens, but the runs it ended are kept with their results, and what it would
        have sent, for the next turn that begins to reconcile (`tick`). Until then the
        fence (the watchdog, `check_fence`) ends the runs if the lease runs out.

        Lost again before a turn committed: said once per spell, and the next turn
        waits as for a busy store. The cause is likely still there (a row another
        session holds past BUSY_SPARE before the fence makes every turn that needs it
        give up at once), and tried at once it spun hundreds of turns a second."""
        again, self._losing = self._losing, True
        ends, unsent = list(self._ends), dict(self._effects.turn.sends)
        if self._lost is not None:  # lost again before a turn reconciled the first loss
            ends = self._lost[0] + ends
            for pid, messages in self._lost[1].items():
                unsent[pid] = messages + unsent.get(pid, [])
        self._lost = (ends, unsent)
        self._ends.clear()
        self._effects.turn.clear()
        if again:
            self.check_fence()
            time.sleep(self._lost_pause)
            self._lost_pause = min(2 * self._lost_pause, PAUSE_MAX)
            return
        self._lost_pause = PAUSE_MIN
        workers = len(self._effects.fleet)
        emit(
            "WARNING", "store.lost",
            f"{lost}: the turn is rolled back; keeping {plural(workers, 'worker')}"
            " and their results, reconnecting",
            error=str(lost), workers=workers,
        )  # fmt: skip
        self._flush_logs()

    def wait_for_store(self, stop_asked: Callable[[], bool]) -> bool:
        """After StoreLost at a start: wait until the store answers again, the pause
        growing up to PAUSE_MAX. Returns False if `stop_asked()` meanwhile."""
        pause = PAUSE_MIN
        while not stop_asked():
            if self.shared.reachable():
                return True
            time.sleep(pause)
            pause = min(2 * pause, PAUSE_MAX)
        return False


class Alone:
    """A store of one writer (SQLite): no lease to renew, no fence, no turn lost with a
    connection; the fencing tokens count on from the store's largest."""

    fence = None
    fenced = False

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._lease: int | None = None  # the last fencing token given

    def new_lease(self) -> int:
        """In a turn's transaction: the fencing token of a new attempt."""
        if self._lease is None:
            self._lease = self._store.max_lease()
        self._lease += 1
        return self._lease

    def pids(self) -> list[int]:
        return []

    def stop(self) -> None:
        pass

    def watch(self) -> None:
        pass

    def heard(self) -> None:
        raise AssertionError("a store of one writer has no listener")

    def tick(self, now: float, wall: float) -> None:
        pass

    def committed(self) -> None:
        pass

    def timeouts(self) -> tuple[float | None, float | None]:
        return None, None

    def renew_fence(self) -> None:
        pass

    def check_fence(self) -> None:
        pass

    def exited(self, pid: int, status: int) -> bool:
        return False

    def rolled_back(self, lost: StoreLost) -> None:
        raise lost

    def wait_for_store(self, stop_asked: Callable[[], bool]) -> bool:
        return not stop_asked()


def membership(
    store: JobStore,
    effects: Effects,
    others: selectors.BaseSelector,
    flush_logs: Callable[[], None],
) -> Member | Alone:
    """The supervisor's membership: of the daemons on a shared store, or alone."""
    if not store.shared:
        return Alone(store)
    return Member(cast(SharedStore, store), effects, others, flush_logs)
