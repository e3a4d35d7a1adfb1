"""Signals: recorded when they arrive, handled in the loop's turn, one method each.

    kernel ─signal─▶ (installed by Signals.install) the number into a deque ─▶ the wake-up pipe ends
                                                               the loop's select
    the turn ─Signals.handle─▶ SignalHandlers.handle_<name>: term, int, quit, hup, usr1, chld

A handler that Python runs between two bytecodes only records the number; the
loop acts on it in its next turn, inside the turn's transaction like any other
input (gunicorn's arbiter keeps the same split, and the same `handle_<signal>`
table). What each signal means is the users' contract (docs/operations.md):
TERM and INT stop, waiting `shutdown_timeout` for running jobs (a second one ends
them now); QUIT stops without waiting; HUP reloads the configuration; USR1
reopens the log; CHLD wakes the loop, whose turn then reaps.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from procpool.application.supervisor.effects import Effects
from procpool.application.supervisor.fleet import Fleet
from procpool.application.supervisor.settings import Settings
from procpool.application.supervisor.telemetry import Telemetry
from procpool.application.worker import pool
from procpool.domain.wording import plural

STOPS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})


class Signals:
    """The signals the supervisor handles, recorded as they arrive; `fileno` is the
    wake-up pipe's end that the loop selects on."""

    def __init__(self) -> None:
        self._recorded: deque[int] = deque()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._wake_read

    def install(self) -> None:
        def record(signum: int, frame: object) -> None:
            self._recorded.append(signum)

        for signum in pool.HELD_ACROSS_FORK:
            signal.signal(signum, record)
        # The wake-up fd makes a signal that arrives while the loop waits end the wait.
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)

    @staticmethod
    def release() -> None:
        """The loop is over: a late stop signal has nothing left to stop, so it is
        ignored. Left to the interpreter, whose finalization puts back the default
        action, it would end the exiting daemon by the signal instead of with exit 0."""
        signal.set_wakeup_fd(-1)
        for signum in pool.HELD_ACROSS_FORK:
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGCHLD else signal.SIG_IGN)

    @property
    def pending(self) -> bool:
        return bool(self._recorded)

    @property
    def stop_pending(self) -> bool:
        """Whether a stop signal waits to be handled."""
        return any(signum in STOPS for signum in self._recorded)

    def drain(self) -> None:
        """Empty the wake-up pipe: the deque, not the pipe, says which signals came."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass

    def handle(self, handlers: SignalHandlers, now: float) -> None:
        """In the turn: each recorded signal, in order, to its `handle_<name>`."""
        while self._recorded:
            name = signal.Signals(self._recorded.popleft()).name
            getattr(handlers, f"handle_{name.removeprefix('SIG').lower()}")(now)

    def close(self) -> None:
        os.close(self._wake_read)
        os.close(self._wake_write)


@dataclass
class Stop:
    """Whether the daemon is stopping, and when its running jobs are ended (monotonic)."""

    begun: bool = False
    at: float | None = None


@dataclass
class SignalHandlers:
    """What each signal does, in the turn (see the module's docstring). `settings()`
    gives the settings in force; `reconfigure` puts reloaded ones in force; `reload`
    reads them anew (None: SIGHUP does nothing), `reopen_logs` reopens the log files."""

    stop: Stop
    fleet: Fleet
    effects: Effects
    telemetry: Telemetry
    settings: Callable[[], Settings]
    reconfigure: Callable[[Settings], None]
    reload: Callable[[], Settings] | None = None
    reopen_logs: Callable[[], None] | None = None
    # Whether a SIGCHLD came since the last reap: a turn without one has no exit to
    # reap and skips its waitpid (issue 25). True at first: the first turn reaps.
    children_exited: bool = True

    def handle_term(self, now: float) -> None:
        self._stop_signal(now, "SIGTERM")

    def handle_int(self, now: float) -> None:
        self._stop_signal(now, "SIGINT")

    def handle_quit(self, now: float) -> None:
        self.begin_stop(now, "SIGQUIT", 0.0)

    def handle_hup(self, now: float) -> None:
        if self.reload is None:
            return
        try:
            settings = self.reload()
        except Exception as error:
            self.effects.turn.log(
                "ERROR", "config.reload_failed", f"config not reloaded: {error}", error=str(error)
            )
            return
        old = self.settings()
        self.reconfigure(settings)
        self.effects.turn.log(
            "INFO",
            "config.reloaded",
            f"config reloaded: {plural(settings.workers, 'worker')} (was {old.workers})",
            workers=settings.workers,
        )

    def handle_usr1(self, now: float) -> None:
        if self.reopen_logs is not None:
            self.reopen_logs()

    def handle_chld(self, now: float) -> None:
        """A child exited: this turn reaps (`children_exited`)."""
        self.children_exited = True

    def _stop_signal(self, now: float, name: str) -> None:
        """TERM or INT: stop, giving running jobs shutdown_timeout; a second one ends
        them now."""
        stop = self.stop
        if not stop.begun:
            self.begin_stop(now, name, self.settings().shutdown_timeout)
        elif stop.at is None or stop.at > now:
            self.effects.turn.log(
                "INFO", "daemon.stopping", "second stop signal: not waiting for jobs"
            )
            stop.at = now

    def begin_stop(self, now: float, why: str, wait: float) -> None:
        """Stop: no job starts, queued ones are taken back, running ones are ended
        `wait` seconds from `now` (or sooner, if a stop already set an earlier time)."""
        stop = self.stop
        if not stop.begun:
            stop.begun = True
            self.telemetry.stopping()
            running = sum(1 for w in self.fleet if w.current is not None)
            self.effects.turn.log(
                "INFO",
                "daemon.stopping",
                f"stopping on {why}: {plural(running, 'running job')}"
                f" {'gets' if running == 1 else 'get'} {wait:g} s to finish",
                signal=why,
                running=running,
                shutdown_timeout=wait,
            )
            # Take-backs are sends to workers: nothing is recorded, so no time is given
            # (as for the retirements in the loop's turn).
            self.effects.apply(self.fleet.stop_queues(), 0.0)
        deadline = now + wait
        stop.at = min(stop.at or deadline, deadline)
