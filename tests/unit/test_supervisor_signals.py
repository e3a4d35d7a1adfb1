"""The supervisor's signal table (supervisor/signals.py): each signal it handles has its
`handle_<name>`, and what each does to the stop, the settings and the log, on a fake
clock."""

from __future__ import annotations

import os
import signal

import pytest

from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application.supervisor.effects import Effects, TurnEffects
from procpool.application.supervisor.fleet import Fleet
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.settings import Settings
from procpool.application.supervisor.signals import SignalHandlers, Signals, Stop
from procpool.application.supervisor.telemetry import NoTelemetry
from procpool.application.worker import pool
from procpool.domain.retry import RetryPolicy

NOW = 500.0


class Harness:
    def __init__(self) -> None:
        self.settings = Settings(workers=2, shutdown_timeout=30.0)
        self.turn = TurnEffects()
        fleet = Fleet(self.settings.limits)
        effects = Effects(fleet, Ledger(MemoryJobStore(), RetryPolicy(), self.turn.log), self.turn)
        self.reopened = 0
        self.handlers = SignalHandlers(
            Stop(), fleet, effects, NoTelemetry(), lambda: self.settings, self.reconfigure,
            reload=lambda: Settings(workers=4), reopen_logs=self.reopen,
        )  # fmt: skip

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings

    def reopen(self) -> None:
        self.reopened += 1

    def events(self) -> list[str]:
        return [event for _level, event, _message, _fields in self.turn.logs]


def test_every_signal_the_supervisor_holds_has_its_handler() -> None:
    for signum in pool.HELD_ACROSS_FORK:
        name = signal.Signals(signum).name.removeprefix("SIG").lower()
        assert callable(getattr(SignalHandlers, f"handle_{name}", None)), name


@pytest.mark.parametrize(
    ("signals", "stop_at", "events", "workers", "reopened"),
    [
        (["TERM"], NOW + 30.0, ["daemon.stopping"], 2, 0),
        (["INT"], NOW + 30.0, ["daemon.stopping"], 2, 0),
        (["TERM", "INT"], NOW, ["daemon.stopping", "daemon.stopping"], 2, 0),  # not waiting
        (["TERM", "TERM", "TERM"], NOW, ["daemon.stopping", "daemon.stopping"], 2, 0),
        (["QUIT"], NOW, ["daemon.stopping"], 2, 0),  # no wait at all
        (["TERM", "QUIT"], NOW, ["daemon.stopping"], 2, 0),
        (["HUP"], None, ["config.reloaded"], 4, 0),
        (["USR1"], None, [], 2, 1),
        (["CHLD"], None, [], 2, 0),  # it only woke the loop: every turn reaps
    ],
)
def test_what_each_signal_does_in_the_turn(
    signals: list[str], stop_at: float | None, events: list[str], workers: int, reopened: int
) -> None:
    harness = Harness()
    kept = {signum: signal.getsignal(signum) for signum in pool.HELD_ACROSS_FORK}
    recorded = Signals()
    try:
        recorded.install()
        for name in signals:
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
        assert recorded.pending
        recorded.handle(harness.handlers, NOW)
    finally:
        Signals.release()
        for signum, handler in kept.items():
            signal.signal(signum, handler)
        recorded.close()
    assert not recorded.pending
    stop = harness.handlers.stop
    assert (stop.begun, stop.at) == (stop_at is not None, stop_at)
    assert harness.events() == events
    assert (harness.settings.workers, harness.reopened) == (workers, reopened)
