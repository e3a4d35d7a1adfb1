"""The loop's wait (supervisor/wait.py): how long its select may sleep, how long it
lingers for group commit, and how long a turn waits for other clients' submits, as pure
functions of a fake clock's readings; and how long a turn that saw jobs begin waits for
their ends."""

from __future__ import annotations

import pytest

from procpool.application.supervisor.wait import (
    ENDS_WAIT,
    LINGER,
    SIBLINGS_WAIT,
    Alarms,
    ends_wait,
    linger,
    siblings_wait,
    wait_timeout,
)

NOW = 1_000.0  # monotonic
WALL = 1_800_000_000.0  # seconds since the epoch
FAR = NOW + 3600.0


def _alarms(**changed: object) -> Alarms:
    """Every periodic event an hour away, none of the others: the wait is an hour."""
    base: dict[str, object] = {"publish_at": FAR, "retention_at": FAR, "scan_at": FAR}
    return Alarms(NOW, WALL, **(base | changed))  # type: ignore[arg-type]


CASES = [
    # (what is set, seconds the select may sleep)
    ({}, 3600.0),
    ({"signals": True}, 0.0),  # a signal waits: no sleep, whatever else
    ({"signals": True, "scan_at": NOW + 5}, 0.0),
    ({"scan_at": NOW + 1.0}, 1.0),
    ({"scan_at": NOW + 1.0, "stopping": True}, 3600.0),  # no scan while stopping
    ({"publish_at": NOW + 5.0, "stopping": True}, 5.0),  # metrics go on while stopping
    ({"retention_at": NOW + 60.0}, 60.0),
    ({"scan_at": NOW - 2.0}, 0.0),  # a past event: at once, never negative
    ({"spawn_at": NOW + 0.05}, 0.05),  # the pool lacks a worker
    ({"spawn_at": NOW + 0.05, "stopping": True}, 3600.0),  # nothing forked while stopping
    ({"due_at": WALL + 2.5}, 2.5),  # a scheduled job: wall time, turned monotonic
    ({"due_at": WALL - 10.0}, 0.0),  # due already
    ({"schedule_at": WALL + 1.5}, 1.5),  # a schedule's next occurrence: wall time too
    ({"schedule_at": WALL - 3.0}, 0.0),  # come already
    ({"schedule_at": WALL + 1.5, "due_at": WALL + 0.7}, 0.7),
    ({"look_again_at": NOW + 0.25}, 0.25),  # a queued job may be taken back then
    ({"door_paused_until": NOW + 0.1}, 0.1),
    ({"memory_sample_at": NOW + 1.0}, 1.0),
    ({"tick_in": 0.5}, 0.5),  # seconds from now: the shared store's renewal
    ({"fence_in": 2.0, "tick_in": 3.0}, 2.0),
    ({"worker_deadlines": (NOW + 30.0, NOW + 0.7)}, 0.7),  # the nearest deadline
    ({"worker_deadlines": (NOW + 0.7,), "stopping": True}, 0.7),  # kept while stopping
    ({"scan_at": NOW + 1.0, "due_at": WALL + 0.5, "tick_in": 0.8}, 0.5),  # the nearest wins
]


@pytest.mark.parametrize(("changed", "expected"), CASES)
def test_the_wait_lasts_until_the_nearest_future_event(
    changed: dict[str, object], expected: float
) -> None:
    assert wait_timeout(_alarms(**changed)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("queued", "jobs_waiting", "clients_waiting", "expected"),
    [
        (0.002, True, True, 0.002),  # every worker has work queued: its own linger
        (0.0, False, False, LINGER),  # no one waits for what the workers say
        (0.0, True, False, 0.0),  # a due job waits for a worker: at once
        (0.0, False, True, 0.0),  # a client waits on the socket: at once
    ],
)
def test_the_loop_lingers_only_when_no_one_waits(
    queued: float, jobs_waiting: bool, clients_waiting: bool, expected: float
) -> None:
    assert linger(queued, jobs_waiting, clients_waiting) == expected


@pytest.mark.parametrize(
    ("expected", "seconds"),
    [
        ([], 0.0),  # no other client submits in a loop: commit at once
        ([(NOW - 0.0001, 0.0003)], 0.0005),  # answered 0.1 ms ago, took 0.3 ms: until 0.6
        ([(NOW, 0.0002), (NOW, 0.0004)], 0.0008),  # the last of them
        ([(NOW - 0.001, 0.0003)], 0.0),  # past twice its pause: not awaited
        ([(NOW, 0.002)], 0.0),  # one that took longer than SIBLINGS_WAIT is not awaited
        ([(NOW, 0.002), (NOW, 0.0001)], 0.0002),  # ... nor held against the others
        ([(NOW, SIBLINGS_WAIT)], SIBLINGS_WAIT),  # never longer than SIBLINGS_WAIT
        ([(NOW, 0.0)], 0.0),  # one that answered at once and is not there: not awaited
    ],
)
def test_a_turn_waits_for_the_next_submits_of_clients_that_submit_in_a_loop(
    expected: list[tuple[float, float]], seconds: float
) -> None:
    assert siblings_wait(expected, NOW) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize(
    ("mean", "answering", "seconds"),
    [
        (0.0001, False, ENDS_WAIT),  # short jobs, no one answered: their ends are awaited
        (ENDS_WAIT / 2, False, ENDS_WAIT),  # at the bound
        (ENDS_WAIT / 2 + 1e-6, False, 0.0),  # longer jobs: their ends come in turns of their own
        (0.0001, True, 0.0),  # a client or a handler waits for the commit: not delayed
        (None, False, 0.0),  # no job has ended yet: nothing known of their length
        (0.0, False, ENDS_WAIT),
    ],
)
def test_a_turn_that_saw_short_jobs_begin_waits_for_their_ends_unless_it_answers(
    mean: float | None, answering: bool, seconds: float
) -> None:
    assert ends_wait(mean, answering) == seconds
