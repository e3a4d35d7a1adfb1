"""ctx.checkpoint's round trip in the worker (worker/main.py _Checkpoints), against a
fake outbox: the handler's thread waits for the supervisor's answer, sends again when
told to (a lost turn), and raises StaleAttempt or CheckpointError as it should."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from procpool import CheckpointError, StaleAttempt
from procpool.application.wire.messages import Checkpoint, CheckpointStored, RunJob
from procpool.application.worker.main import _Checkpoints

RUN = RunJob("J", 4, 1, "t", b"null")


class Outbox:
    owner = os.getpid()

    def __init__(self) -> None:
        self.sent: list[Checkpoint] = []
        self.arrived = threading.Semaphore(0)

    def send(self, *messages: Any) -> None:
        self.sent.extend(messages)
        self.arrived.release()


class Reporter:
    current: tuple[str, int] | None = ("J", 1)


def asking(answers: list[CheckpointStored | None]) -> tuple[list[Checkpoint], BaseException | None]:
    """Store {"i": 1}, answering each send with the next of `answers` (None: the
    channel closes); returns what was sent and what the call raised."""
    outbox = Outbox()
    checkpoints = _Checkpoints(outbox, Reporter(), 100)  # type: ignore[arg-type]
    raised: list[BaseException] = []

    def call() -> None:
        try:
            checkpoints.store(RUN, {"i": 1})
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    for answer in answers:
        assert outbox.arrived.acquire(timeout=30)
        if answer is None:
            checkpoints.closed()
        else:
            checkpoints.answered(answer)
    thread.join(30)
    assert not thread.is_alive()
    return outbox.sent, raised[0] if raised else None


def test_stored_returns_and_a_lost_turn_sends_it_again() -> None:
    sent, raised = asking(
        [CheckpointStored("J", 4, False, again=True), CheckpointStored("J", 4, True)]
    )
    assert raised is None
    assert sent == [Checkpoint("J", 4, b'{"i":1}')] * 2


@pytest.mark.parametrize("answer", [CheckpointStored("J", 4, False), None])
def test_not_stored_or_no_daemon_is_a_stale_attempt(answer: CheckpointStored | None) -> None:
    _, raised = asking([answer])
    assert isinstance(raised, StaleAttempt)


def test_a_bad_value_or_an_ended_run_sends_nothing() -> None:
    outbox = Outbox()
    reporter = Reporter()
    checkpoints = _Checkpoints(outbox, reporter, 10)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="max_checkpoint_bytes"):
        checkpoints.store(RUN, "x" * 20)
    with pytest.raises(CheckpointError, match=r"checkpoint\[0\]: set is not a JSON value"):
        checkpoints.store(RUN, [{1}])
    reporter.current = None  # a thread the handler left behind, after its run ended
    with pytest.raises(StaleAttempt, match="is over"):
        checkpoints.store(RUN, 1)
    assert outbox.sent == []
