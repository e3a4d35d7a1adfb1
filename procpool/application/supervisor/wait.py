"""How long the loop's select may sleep, and how long it lingers: pure functions.

    Alarms (now, the next scan, publish, prune, fork, due job, schedule occurrence,
    take-back, door pause, memory sample, tick, fence, every worker and companion
    deadline) ─▶ wait_timeout
    the pool's queues, due jobs waiting, clients waiting ─▶ linger

The timeout is the nearest future event: a deadline already past was acted on in
the turn before, so the loop neither spins nor polls. A due job that waits for a
busy worker sets none: the worker's message that it is free wakes the loop.

Group commit: while every worker has work queued (Fleet.linger), the loop lets the
ends of jobs gather for up to LINGER_QUEUED seconds, and while no due job waits for a
worker and no client for a job, for up to LINGER, so that one turn and one durable
commit (about 0.1 ms of CPU and 0.1-0.5 ms of disk) serve several jobs, not one each.
Under LINGER_MIN it is not worth a turn of its own. Clients, the inbox and signals
are served at once all the same (the loop's second selector).

Group commit across clients: a turn that answers a submit waits before its commit
for the next submits of clients that submit in a loop (Door.gather), each for twice
the time it took the time before, at most SIBLINGS_WAIT (siblings_wait).

A job's start and end in one commit: a turn that sees a worker begin its only job,
and whose commit answers no one, waits up to ENDS_WAIT before its commit for that
job's end when jobs take under half of that (ends_wait).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

LINGER = 0.005
# While every worker has work queued, no one waits for a turn but those whose jobs end
# in it: a longer wait takes in more ends per commit. On the real batch of
# scripts/bench.py, 15 ms (with a worker's batch of 50 ms of work, dispatch.BatchSizer)
# took a quarter to a third off the supervisor's CPU per job, and the wall time followed.
LINGER_QUEUED = 0.015
LINGER_MIN = 0.0005
# Group commit across clients (PostgreSQL's commit_delay and commit_siblings): a turn
# that answers a submit waits up to this long (seconds) before its commit for the next
# submits of clients that submit in a loop, so that the commit answers them all. Four
# threads submitting one job at a time each send their next within about 0.5 ms of
# their answers (their client's CPU, one after another under its GIL). It is also the
# most a client's answer waits for others'.
SIBLINGS_WAIT = 0.001
# A job's start and its end, one commit: a worker says Started before the handler runs
# and Finished after it, and a turn that took in the Started alone paid a durable commit
# for it, which its end then waited behind (one job at a time, back to back: often three
# commits a job instead of two). The end of a job of under half this long, with the
# worker's own work around the handler, mostly comes within it.
ENDS_WAIT = 0.001


class Clock(Protocol):
    """Where the loop reads the time: the `time` module, or a test's fake clock."""

    def monotonic(self) -> float: ...
    def time(self) -> float: ...


@dataclass(slots=True)
class Alarms:
    """What the loop's wait depends on. Times are monotonic seconds, except `wall`,
    `due_at` and `schedule_at` (seconds since the epoch); `tick_in` and `fence_in` are
    seconds from now.
    None: no such event. Made anew for each turn's wait (not frozen: a frozen
    dataclass of 15 fields takes twice as long to make)."""

    now: float
    wall: float
    signals: bool = False  # a signal waits to be handled
    stopping: bool = False
    publish_at: float = 0.0  # the metrics snapshot
    retention_at: float = 0.0  # the next prune
    scan_at: float = 0.0  # the next scan of the inbox
    spawn_at: float | None = None  # the pool lacks a worker: when one may be forked
    due_at: float | None = None  # the earliest future pending job
    schedule_at: float | None = None  # a schedule's next occurrence (not while stopping)
    look_again_at: float | None = None  # a queued job may be taken back then
    door_paused_until: float | None = None  # the socket door stopped accepting
    memory_sample_at: float | None = None  # while a memory limit is set and jobs run
    tick_in: float | None = None  # the shared store's next renewal
    fence_in: float | None = None  # the shared store's fence, unless fenced already
    worker_deadlines: tuple[float, ...] = ()  # the fleet's next and the companions'


def wait_timeout(alarms: Alarms) -> float:
    """Seconds until the nearest future event (0.0 if one is due or a signal waits)."""
    if alarms.signals:
        return 0.0
    now = alarms.now
    deadlines = [alarms.publish_at, alarms.retention_at, *alarms.worker_deadlines]
    if not alarms.stopping:
        deadlines.append(alarms.scan_at)
        if alarms.spawn_at is not None:
            deadlines.append(alarms.spawn_at)
    if alarms.due_at is not None:
        deadlines.append(now + max(0.0, alarms.due_at - alarms.wall))
    if alarms.schedule_at is not None:
        deadlines.append(now + max(0.0, alarms.schedule_at - alarms.wall))
    for at in (alarms.look_again_at, alarms.door_paused_until, alarms.memory_sample_at):
        if at is not None:
            deadlines.append(at)
    for seconds in (alarms.tick_in, alarms.fence_in):
        if seconds is not None:
            deadlines.append(now + seconds)
    return max(0.0, min(deadlines) - now)


def siblings_wait(expected: Iterable[tuple[float, float]], now: float) -> float:
    """Seconds a turn that answers a submit waits before its commit for other clients'
    next submits (SIBLINGS_WAIT at most). `expected`: for each other client
    whose last submit was answered and who has sent nothing since, when that answer went
    and how long the client took from its answer before to its submit after it
    (monotonic seconds). Each is awaited until twice that long after its answer; one
    that takes longer than SIBLINGS_WAIT, or is past that time, is not. 0.0: at once."""
    until = now
    for answered, pause in expected:
        if pause <= SIBLINGS_WAIT:
            until = max(until, answered + 2 * pause)
    return min(until - now, SIBLINGS_WAIT)


def linger(queued: float, jobs_waiting: bool, clients_waiting: bool) -> float:
    """Seconds the loop waits for the workers' news before its turn. `queued`: the
    fleet's linger while every worker has work queued (Fleet.linger), else 0.0. With
    none, LINGER while no due job waits for a worker and no client on the socket waits
    for a job: the ends of jobs no one waits for may join the next turn's commit,
    which a client's next submit usually brings within the wait. 0.0: at once."""
    if queued:
        return queued
    return 0.0 if jobs_waiting or clients_waiting else LINGER


def ends_wait(mean: float | None, answering: bool) -> float:
    """Seconds a turn in which workers began their only jobs waits before its commit for
    those jobs' ends (ENDS_WAIT), so that one commit holds a job's start and end.
    `mean`: the fleet's mean run time of a job in seconds, None until a job has ended;
    `answering`: whether the turn's commit answers a client or a handler, who would wait
    for another job's end. 0.0: not at all."""
    if answering or mean is None or mean > ENDS_WAIT / 2:
        return 0.0
    return ENDS_WAIT
