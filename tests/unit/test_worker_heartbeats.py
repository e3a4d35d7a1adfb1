"""When the worker's heartbeat thread sends (worker/main.py _Reporter): a heartbeat
one interval after the run began and after each send, a held progress report once
PROGRESS_INTERVAL passed, without the run's start waking the thread (no fence)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, NoReturn

import pytest

from procpool.application.wire.messages import Heartbeat, ProgressReport, RunJob
from procpool.application.worker import main
from procpool.application.worker.main import PROGRESS_INTERVAL, _Reporter

RUN = RunJob("J", 4, 1, "t", b"null")
INTERVAL = 1.0


class Outbox:
    owner = os.getpid()

    def __init__(self) -> None:
        self.sent: list[tuple[float, Any]] = []  # (time.monotonic(), message)

    def send(self, *messages: Any) -> None:
        self.sent.extend((time.monotonic(), message) for message in messages)


def reporter(begun_at: float | None, unsent: bool = False) -> _Reporter:
    made = _Reporter(Outbox(), INTERVAL, os.getppid())  # type: ignore[arg-type]
    if begun_at is not None:
        made._run = RUN
        made._last_sent_at = begun_at
    if unsent:
        made._unsent = ProgressReport("J", 4, 0.5, None)
    return made


@pytest.mark.parametrize(
    ("begun_at", "unsent", "now", "wait"),
    [
        (None, False, 100.0, INTERVAL),  # no run: the parent check's pace
        (100.0, False, 100.0, INTERVAL),  # a run just began
        (100.0, False, 100.7, 0.3),  # the rest of the interval, not a whole one
        (100.0, False, 101.5, 0.0),  # overdue: at once
        (100.0, True, 100.01, PROGRESS_INTERVAL - 0.01),  # a held report goes first
        (100.0, True, 100.2, 0.0),
    ],
)
def test_the_thread_sleeps_until_its_next_send_is_due(
    begun_at: float | None, unsent: bool, now: float, wait: float
) -> None:
    assert reporter(begun_at, unsent)._next_send_in(now) == pytest.approx(wait)


class Ended(Exception):
    """Raised in place of killing the process group: ends the heartbeat thread only."""


def _end_thread(signum: int = 0, frame: object = None) -> NoReturn:
    raise Ended


def _heartbeats(made: _Reporter) -> None:
    with contextlib.suppress(Ended):
        made.run_heartbeats()


def test_a_run_begun_during_the_idle_wait_has_its_heartbeat_one_interval_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(main, "_kill_own_group", _end_thread)
    made = reporter(None)
    outbox: Outbox = made.outbox  # type: ignore[assignment]
    thread = threading.Thread(target=_heartbeats, args=(made,), daemon=True)
    thread.start()
    # Begun inside the thread's idle wait (a whole interval, the run's start does not
    # wake it): a thread that slept a fixed interval after each look would send its
    # first heartbeat nearly two intervals after the run began, past a timeout of 1.5.
    time.sleep(0.2)
    begun = time.monotonic()
    made.begin(RUN)
    deadline = begun + 10 * INTERVAL
    while len(outbox.sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    made.parent_pid = -1  # the next look ends the thread
    thread.join(10 * INTERVAL)
    assert not thread.is_alive()
    (first_at, first), (second_at, second) = outbox.sent[:2]
    assert isinstance(first, Heartbeat) and isinstance(second, Heartbeat)
    # A send's time is taken as it is made, a little after the time it is counted from.
    assert 0.95 * INTERVAL <= first_at - begun < 1.5 * INTERVAL
    assert 0.95 * INTERVAL <= second_at - first_at < 1.5 * INTERVAL
