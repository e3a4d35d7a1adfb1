"""The fleet in process: the memory store, a fake clock, and simulated workers.

The race matrix: each thing that can happen to a run (cancel, finish, fail,
timeout, heartbeat loss, worker exit, take-back, stop) at each phase the run
can be in (queued behind another job, sent to an idle worker, started,
finishing: its Finished already on the way), and for the signal-driven ends,
with each way a handler may answer SIGTERM (die, raise, return). The
simulated worker behaves as application/worker/main.py does: it answers a Skip for a queued
job, ignores one for a started job, and a SIGTERM per the handler's habit.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import pytest

from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application.handlers import HandlerRegistry
from procpool.application.supervisor.effects import Effects, TurnEffects
from procpool.application.supervisor.fleet import (
    EXIT_WAIT,
    FENCED_EXIT,
    Decision,
    Fleet,
    Say,
    Worker,
    WorkerState,
)
from procpool.application.supervisor.intake import Intake
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.membership import kill_all
from procpool.application.supervisor.settings import STARTUP_TIMEOUT, Limits
from procpool.application.wire.messages import (
    Checkpoint,
    Finished,
    Heartbeat,
    LogLine,
    ProgressReport,
    Ready,
    RunJob,
    Skip,
    Skipped,
    Started,
    Stop,
)
from procpool.application.worker.pool import describe_exit
from procpool.domain.fate import Cause
from procpool.domain.job import Job, Status
from procpool.domain.retry import RetryPolicy

WALL = 1_800_000_000.0
HEARTBEAT = 10.0
GRACE = 1.0
TIMEOUT = 5.0


@dataclass
class SimWorker:
    pid: int
    on_term: str  # "die", "raise" or "return": what its handler does on SIGTERM
    queue: list[RunJob] = field(default_factory=list)
    running: RunJob | None = None
    dead: bool = False


class Sim:
    """The supervisor's side of the loop, in process, against simulated workers."""

    def __init__(self, on_term: str = "die") -> None:
        self.now = 100.0
        self.store = MemoryJobStore()
        self.said: list[Say] = []
        self.ledger = Ledger(self.store, RetryPolicy(base=1.0, cap=1.0), self._log)
        self.fleet = Fleet(Limits(heartbeat_timeout=HEARTBEAT, kill_grace=GRACE))
        self.intake = Intake(self.store, self.ledger, HandlerRegistry(), self.fleet, self._log)
        # The supervisor's own interpreter of the fleet's decisions: what it sends and
        # says is taken from its turn's effects at once, as if each apply were a turn.
        self.turn = TurnEffects()
        self.effects = Effects(self.fleet, self.ledger, self.turn, deliver=self.signal)
        self.workers: dict[int, SimWorker] = {}
        self.on_term = on_term
        self.lease = 0
        self.stop_at: float | None = None

    def _log(self, level: str, event: str, message: str, **fields: object) -> None:
        self.said.append(Say(level, event, message, fields))

    # the supervisor's side

    def apply(self, decisions: list[Decision]) -> None:
        self.effects.apply(decisions, WALL + self.now)
        sends = dict(self.turn.sends)
        self.said += [Say(*logged) for logged in self.turn.logs]
        self.turn.clear()
        for pid, messages in sends.items():
            for message in messages:
                self.deliver_message(pid, message)

    def receive(self, pid: int, message: object) -> None:
        if pid in self.fleet.workers:
            self.apply(self.fleet.received(pid, message, self.now))  # type: ignore[arg-type]

    def spawn(self, pid: int) -> None:
        self.fleet.spawned(pid, self.now)
        self.workers[pid] = SimWorker(pid, self.on_term)
        self.receive(pid, Ready(pid))

    def submit(self, job_id: str, *, timeout: float | None = None) -> None:
        job = Job(id=job_id, type="t", run_at=WALL, created_at=WALL, updated_at=WALL,
                  timeout=timeout, max_attempts=3)  # fmt: skip
        self.store.insert([job])
        self.ledger.added(job)

    def hand(self, pid: int, job_id: str) -> None:
        job = self.store.get(job_id)
        assert job is not None
        self.lease += 1
        running = self.ledger.start(job, lease=self.lease, worker_pid=pid, now=WALL)
        self.apply([self.fleet.hand_out(self.fleet.workers[pid], running, self.now)])

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.fleet.check_deadlines(self.now, self.stop_at))

    def exited(self, pid: int, how: str = "the worker was killed by SIGKILL") -> None:
        self.workers[pid].dead = True
        self.apply(self.fleet.exited(pid, how, None, "SIGKILL", self.now))

    def stop(self, wait: float) -> None:
        self.apply(self.fleet.stop_queues())
        self.stop_at = self.now + wait

    # the simulated worker's side

    def deliver_message(self, pid: int, message: object) -> None:
        worker = self.workers[pid]
        if worker.dead:
            return
        if isinstance(message, RunJob):
            worker.queue.append(message)
        elif isinstance(message, Skip):
            for queued in worker.queue:
                if (queued.job_id, queued.lease) == (message.job_id, message.lease):
                    worker.queue.remove(queued)
                    self.receive(pid, Skipped(message.job_id, message.lease))
                    break
        elif isinstance(message, Stop) and not worker.queue and worker.running is None:
            self.exited(pid, "the worker exited with code 0")

    def signal(self, pid: int, signum: int) -> None:
        worker = self.workers[pid]
        if worker.dead:
            return
        if signum == signal.SIGKILL or worker.on_term == "die" or worker.running is None:
            self.exited(pid, f"the worker was killed by {signal.Signals(signum).name}")
            return
        job = worker.running
        worker.running = None
        if worker.on_term == "raise":
            self.receive(pid, Finished(job.job_id, job.lease, 0.1, error="Terminated: SIGTERM"))
        else:
            self.receive(pid, Finished(job.job_id, job.lease, 0.1, result=b'"partial"'))

    def start_next(self, pid: int, at: float = 0.0) -> RunJob | None:
        """The worker starts its next job; `at`: when, on its clock (0: now)."""
        worker = self.workers[pid]
        if worker.dead or worker.running is not None or not worker.queue:
            return None
        worker.running = worker.queue.pop(0)
        self.receive(pid, Started(worker.running.job_id, worker.running.lease, at))
        return worker.running

    def finish(self, pid: int, *, error: str | None = None) -> None:
        worker = self.workers[pid]
        if worker.dead or worker.running is None:
            return
        job, worker.running = worker.running, None
        result = None if error else b'{"ok": true}'
        self.receive(pid, Finished(job.job_id, job.lease, 0.01, result=result, error=error))

    def play_out(self, pid: int) -> None:
        """Let the worker run what it holds to the end, and the clock go on."""
        for _ in range(10):
            while self.start_next(pid) or self.workers[pid].running:
                self.finish(pid)
            self.tick(GRACE + 0.01)

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job


PHASES = ("queued", "sent", "started", "finishing")
ON_TERM = ("die", "raise", "return")
W = 11  # the worker's pid

# (event, phase) -> (status, attempts) of job B once everything has played out.
EXPECTED: dict[tuple[str, str], tuple[Status, int]] = {}
for phase in PHASES:
    EXPECTED[("finish", phase)] = (Status.COMPLETED, 0)
    EXPECTED[("fail", phase)] = (Status.PENDING, 1)
    EXPECTED[("cancel", phase)] = (Status.CANCELED, 0)
EXPECTED |= {
    ("timeout", "queued"): (Status.COMPLETED, 0),  # a timeout runs from the start only
    ("timeout", "sent"): (Status.COMPLETED, 0),
    ("timeout", "started"): (Status.PENDING, 1),
    ("timeout", "finishing"): (Status.PENDING, 1),  # ended for it: the reason wins
    ("heartbeat", "queued"): (Status.PENDING, 0),  # its worker hung on job A
    ("heartbeat", "sent"): (Status.PENDING, 0),  # never started: not charged
    ("heartbeat", "started"): (Status.PENDING, 1),
    ("heartbeat", "finishing"): (Status.PENDING, 1),
    ("exit", "queued"): (Status.PENDING, 0),
    ("exit", "sent"): (Status.PENDING, 0),
    ("exit", "started"): (Status.PENDING, 1),
    ("exit", "finishing"): (Status.COMPLETED, 0),  # its Finished is read before its exit
    ("take_back", "queued"): (Status.PENDING, 0),
    ("take_back", "sent"): (Status.PENDING, 0),
    ("take_back", "started"): (Status.COMPLETED, 0),  # too late: it runs to the end
    ("take_back", "finishing"): (Status.COMPLETED, 0),
    ("stop", "queued"): (Status.PENDING, 0),
    ("stop", "sent"): (Status.PENDING, 0),
    ("stop", "started"): (Status.PENDING, 0),  # stopped by the shutdown: not charged
    ("stop", "finishing"): (Status.COMPLETED, 0),  # it finished within the wait
}
EVENTS = sorted({event for event, _ in EXPECTED})


def _reach(sim: Sim, phase: str) -> None:
    """Job B on worker W, in `phase`; in `queued`, job A runs in front of it."""
    if phase == "queued":
        sim.hand(W, "A")
        sim.start_next(W)
    sim.hand(W, "B")
    if phase in ("started", "finishing"):
        sim.start_next(W)


def _happen(sim: Sim, event: str, phase: str) -> None:
    if event == "finish":
        return  # played out below
    if event == "fail":
        if phase == "finishing":
            return  # its Finished carries the error
        if phase == "queued":
            sim.finish(W)
        sim.start_next(W)
        sim.finish(W, error="ValueError: bad input")
    elif event == "cancel":
        sim.apply(sim.intake.cancel("B", sim.now, WALL))
    elif event == "timeout":
        sim.tick(TIMEOUT + 0.1)
    elif event == "heartbeat":
        sim.tick(HEARTBEAT + 0.1)
    elif event == "exit":
        sim.exited(W)
    elif event == "take_back":
        sim.apply([sim.fleet.take_back(sim.fleet.workers[W], sim.job("B"))])
    elif event == "stop":
        sim.stop(wait=3.0)
        if phase != "finishing":
            sim.tick(3.1)


@pytest.mark.parametrize("on_term", ON_TERM)
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("event", EVENTS)
def test_race_matrix(event: str, phase: str, on_term: str) -> None:
    sim = Sim(on_term)
    sim.spawn(W)
    sim.submit("A")
    sim.submit("B", timeout=TIMEOUT)
    _reach(sim, phase)
    if phase == "finishing":
        # Its Finished is written, not yet read.
        sim.workers[W].running = None
        error = "ValueError: bad input" if event == "fail" else None
        finished = Finished("B", sim.job("B").lease, 0.01, result=None if error else b"1",
                            error=error)  # fmt: skip
        if event == "exit":  # the reap reads what a worker wrote before it died
            sim.receive(W, finished)
            _happen(sim, event, phase)
        else:
            _happen(sim, event, phase)
            sim.receive(W, finished)
    else:
        _happen(sim, event, phase)
    if W in sim.fleet.workers:
        sim.play_out(W)
    job = sim.job("B")
    assert (job.status, job.attempts) == EXPECTED[(event, phase)], sim.said
    assert job.worker_pid is None or job.status is Status.RUNNING
    assert sim.job("A").status is not Status.RUNNING or W in sim.fleet.workers


def test_a_worker_silent_in_every_state_is_ended_within_its_deadline() -> None:
    """Starting, sent, running, retiring, terminating: each has a deadline."""
    sim = Sim()
    sim.fleet.spawned(1, sim.now)  # never says Ready
    sim.workers[1] = SimWorker(1, "die")
    sim.tick(30.1)
    assert 1 not in sim.fleet.workers

    sim.spawn(2)
    sim.submit("sent")
    sim.hand(2, "sent")  # never says Started
    sim.tick(HEARTBEAT + 0.1)
    assert 2 not in sim.fleet.workers
    assert (sim.job("sent").status, sim.job("sent").attempts) == (Status.PENDING, 0)

    sim.spawn(3)
    sim.workers[3].running = RunJob("x", 0, 1, "t", b"null")  # wedged: it will not exit
    sim.workers[3].on_term = "raise"
    sim.apply(sim.fleet.retire(sim.fleet.workers[3], sim.now))
    sim.tick(HEARTBEAT + 0.1)
    assert sim.fleet.workers[3].state is WorkerState.TERMINATING
    sim.tick(GRACE + 0.01)  # SIGKILL
    assert 3 not in sim.fleet.workers


def test_a_terminating_worker_has_one_deadline_its_kill() -> None:
    sim = Sim("raise")
    sim.spawn(W)
    worker = sim.fleet.workers[W]
    sim.workers[W].running = RunJob("x", 0, 1, "t", b"null")  # so SIGTERM does not end it
    sim.apply(sim.fleet.terminate(worker, Cause.HUNG, "hung", 0.0))
    assert [(at, cause) for at, cause, _ in sim.fleet.deadlines(worker, None)] == [
        (GRACE, Cause.NONE)
    ]


def test_next_deadline_is_never_in_the_past_after_a_check() -> None:
    """The loop waits for the next future deadline: after the check acted on every
    expired one, none is left in the past (the spin of issue 13)."""
    sim = Sim("raise")
    sim.spawn(W)
    sim.submit("B", timeout=TIMEOUT)
    sim.hand(W, "B")
    sim.start_next(W)
    for step in (1.0, 4.5, 0.6, 1.5, 20.0):
        sim.tick(step)
        upcoming = sim.fleet.next_deadline(sim.stop_at)
        assert upcoming is None or upcoming > sim.now


def test_messages_that_break_the_protocol_end_the_worker_as_broken() -> None:
    """Each break is named in the run's last_error, in the same words as before
    Fleet.received told the protocol and the message's kind in one pass."""
    cases = {
        "second Ready": (lambda sim, lease: Ready(W), "it said Ready twice"),
        "Started twice": (lambda sim, lease: Started("B", lease), "it started B twice"),
        "Started of a queued job": (
            lambda sim, lease: Started("Q", lease + 1),
            "it started Q while running another",
        ),
        "Finished of a queued job": (
            lambda sim, lease: Finished("Q", lease + 1, 0.0, result=b"1"),
            "it sent Finished for Q, which it had not started",
        ),
        "Skipped of the running job": (
            lambda sim, lease: Skipped("B", lease),
            "it skipped B, which it had started",
        ),
        "progress of a queued job": (
            lambda sim, lease: ProgressReport("Q", lease + 1, 0.5, None),
            "it sent ProgressReport for Q, which it had not started",
        ),
        "checkpoint of a queued job": (
            lambda sim, lease: Checkpoint("Q", lease + 1, b"1"),
            "it sent Checkpoint for Q, which it had not started",
        ),
        "heartbeat of a queued job": (
            lambda sim, lease: Heartbeat("Q", lease + 1),
            "it sent Heartbeat for Q, which it had not started",
        ),
    }
    for what, (make, words) in cases.items():
        sim = Sim()
        sim.spawn(W)
        sim.submit("B")
        sim.submit("Q")
        sim.hand(W, "B")
        sim.start_next(W)
        sim.hand(W, "Q")
        lease = sim.job("B").lease
        sim.receive(W, make(sim, lease))
        assert W not in sim.fleet.workers, what
        assert (sim.job("B").status, sim.job("B").attempts) == (Status.PENDING, 1), what
        assert (sim.job("Q").status, sim.job("Q").attempts) == (Status.PENDING, 0), what
        assert sim.job("B").last_error == f"the worker broke the protocol: {words}", what


def test_a_message_about_a_run_the_worker_does_not_hold_is_dropped() -> None:
    """Fencing (DESIGN decision 8): an earlier run of the same job, or a job this
    worker does not hold, is stale: dropped and logged, the worker kept."""
    sim = Sim()
    sim.spawn(W)
    sim.submit("B")
    sim.hand(W, "B")
    sim.start_next(W)
    lease = sim.job("B").lease
    sim.receive(W, Finished("B", lease - 1, 0.0, result=b"1"))
    sim.receive(W, ProgressReport("C", lease, 0.5, None))
    assert sim.job("B").status is Status.RUNNING
    assert sum(s.event == "message.stale" for s in sim.said) == 2
    assert W in sim.fleet.workers


def test_an_oversized_result_ends_the_worker() -> None:
    sim = Sim()
    sim.fleet.limits = Limits(heartbeat_timeout=HEARTBEAT, kill_grace=GRACE, max_result_bytes=10)
    sim.spawn(W)
    sim.submit("B")
    sim.hand(W, "B")
    sim.start_next(W)
    sim.receive(W, Finished("B", sim.job("B").lease, 0.0, result=b"x" * 11))
    job = sim.job("B")
    assert (job.status, job.attempts) == (Status.PENDING, 1)
    assert "11 bytes" in (job.last_error or "")


@pytest.mark.parametrize(
    ("since_sigterm", "reaped", "wait"),
    [
        (0.0, False, EXIT_WAIT),  # just sent SIGTERM: its replacement waits for its exit
        (0.03, False, EXIT_WAIT - 0.03),
        (EXIT_WAIT + 0.01, False, 0.0),  # lingers (SIGTERM ignored): replaced all the same
        (0.01, True, 0.0),  # reaped: replaced at once
    ],
)
def test_a_worker_the_supervisor_ends_is_replaced_once_reaped(
    since_sigterm: float, reaped: bool, wait: float
) -> None:
    """The fork of a replacement comes after the turn that reaps the ended worker (where
    a canceled run is reported), not before it."""
    sim = Sim()
    sim.spawn(1)
    sim.spawn(2)
    assert sim.fleet.spawn_at() <= sim.now
    sim.fleet.terminate(sim.fleet.workers[1], Cause.CANCEL, "canceled", sim.now)
    sim.now += since_sigterm
    if reaped:
        sim.exited(1)
    assert max(0.0, sim.fleet.spawn_at() - sim.now) == pytest.approx(wait)


def test_the_pause_after_a_failed_start_outlasts_a_dying_worker() -> None:
    sim = Sim()
    sim.spawn(1)
    sim.fleet.spawned(2, sim.now)
    sim.apply(sim.fleet.exited(2, "the worker exited with code 1", 1, None, sim.now))
    sim.fleet.terminate(sim.fleet.workers[1], Cause.CANCEL, "canceled", sim.now)
    assert sim.fleet.spawn_at() == pytest.approx(sim.now + 0.1)  # 0.05 s doubled once


LONGEST, SHORTEST = 0.005, 0.0005


@pytest.mark.parametrize(
    ("mean", "queues", "expected"),
    [
        (None, [3, 3], 0.0),  # no job has finished yet: nothing to judge by
        (0.002, [0, 20], 0.0),  # one worker has nothing queued: it is fed at once
        (0.002, [20, 1], 0.001),  # half the shortest queue's work
        (0.002, [20, 20], LONGEST),  # never longer than the longest wait
        (0.0002, [2, 2], 0.0),  # under the shortest wait: not worth a turn
        (0.0, [5, 5], 0.0),  # no-op jobs, measured as taking no time
    ],
)
def test_the_loop_lingers_only_while_every_worker_has_work_queued(
    mean: float | None, queues: list[int], expected: float
) -> None:
    """Group commit (supervisor.LINGER): the wait is short enough that no worker's
    queue runs dry during it."""
    sim = Sim()
    for pid, queued in enumerate(queues, start=1):
        sim.spawn(pid)
        for n in range(queued + 1):  # the first one runs, the others wait behind it
            sim.submit(f"{pid}-{n}")
            sim.hand(pid, f"{pid}-{n}")
        sim.start_next(pid)
    if mean is not None:
        sim.fleet.batch.observe(mean)
    assert sim.fleet.linger(LONGEST, SHORTEST) == pytest.approx(expected)


def test_a_worker_that_does_not_serve_yet_does_not_hold_the_loop() -> None:
    sim = Sim()
    sim.spawn(1)
    for n in range(11):
        sim.submit(f"j{n}")
        sim.hand(1, f"j{n}")
    sim.start_next(1)
    sim.fleet.spawned(2, sim.now)  # forked, not Ready yet: it takes no job
    sim.fleet.batch.observe(0.002)
    assert sim.fleet.linger(LONGEST, SHORTEST) == pytest.approx(0.005)
    sim.exited(1)
    assert sim.fleet.linger(LONGEST, SHORTEST) == 0.0  # no worker serves: no queue to wait on


def test_the_starts_taken_are_those_whose_end_is_the_workers_next_word() -> None:
    """A turn may wait for the end of a job it saw begin (wait.ends_wait): only of one
    its worker still runs, with nothing queued behind it."""
    sim = Sim()
    for pid in (1, 2, 3):
        sim.spawn(pid)
    for job_id, pid in (("alone", 1), ("ahead", 2), ("behind", 2), ("quick", 3)):
        sim.submit(job_id)
        sim.hand(pid, job_id)
    for pid in (1, 2, 3):
        sim.start_next(pid)
    sim.finish(3)  # its end came in the same read
    assert sim.fleet.take_begun() == [(1, "alone")]
    assert sim.fleet.take_begun() == [], "each start is taken once"
    sim.finish(2)
    sim.start_next(2)  # the last job of its queue: its end is next
    assert sim.fleet.take_begun() == [(2, "behind")]


def test_a_busy_worker_is_topped_up_once_its_queue_is_under_half_a_batch() -> None:
    """Prefetch keeps some work queued (so the loop may linger and the worker never
    waits for a turn), not only once the queue is empty."""
    sim = Sim()
    sim.spawn(W)
    sim.fleet.batch.observe(0.004)  # a batch: 0.05 s / 0.004 s = 12 jobs
    for n in range(6):
        sim.submit(f"j{n}")
        sim.hand(W, f"j{n}")
    sim.start_next(W)  # one runs, five wait behind it: under half a batch
    idle, busy, holders = sim.fleet.candidates(sim.now, set())
    assert (idle, [w.pid for w, _ in busy], [h.worker.pid for h in holders]) == ([], [W], [W])
    assert sim.fleet.candidates(sim.now, {W})[1] == []  # not while it does not read
    for n in range(6, 8):
        sim.submit(f"j{n}")
        sim.hand(W, f"j{n}")  # seven wait: enough
    idle, busy, holders = sim.fleet.candidates(sim.now, set())
    assert (idle, busy, [h.worker.pid for h in holders]) == ([], [], [W])


GAP = 3 * HEARTBEAT  # the loop saw nothing for this long (paused, a long turn, a stall)


def _read_waiting(sim: Sim, waiting: str | None, before: float) -> None:
    """The loop reads what W sent while it was not looking (from `before` on)."""
    if waiting == "heartbeat":
        sim.receive(W, Heartbeat("B", sim.job("B").lease))
    elif waiting == "log":
        sim.receive(W, LogLine("INFO", "working", "B", 1, {}))
    elif waiting == "stale":
        sim.receive(W, Heartbeat("taken-back", 99))
    elif waiting == "finished":
        sim.finish(W)
    elif waiting == "started":
        sim.start_next(W, at=before)
    elif waiting == "ready":
        sim.receive(W, Ready(W))


@pytest.mark.parametrize(
    ("setup", "waiting", "gap", "overdue", "after"),
    [
        # (how B stands, what W sent during the gap, gap, W overdue, B's (status, attempts,
        # error) and whether W lives once the loop read W's channel and judged)
        ("running", "heartbeat", GAP, True, (Status.RUNNING, 0, None, True)),
        ("running", "log", GAP, True, (Status.RUNNING, 0, None, True)),  # a sign of life too
        ("running", "stale", GAP, True, (Status.RUNNING, 0, None, True)),  # and a late one
        ("running", None, GAP, True, (Status.PENDING, 1, "no heartbeat", False)),  # silent
        ("running", None, HEARTBEAT / 2, False, (Status.RUNNING, 0, None, True)),
        # A job's own timeout is time it really ran, paused daemon or not...
        ("timed", "heartbeat", GAP, True, (Status.PENDING, 1, "timed out", False)),
        # ...but a result that waited is a result.
        ("timed", "finished", GAP, True, (Status.COMPLETED, 0, None, True)),
        ("sent", "started", GAP, True, (Status.RUNNING, 0, None, True)),
        # It started at the hand-over, before the gap: its timeout counts from there.
        ("sent-timed", "started", GAP, True, (Status.PENDING, 1, "timed out", False)),
        ("sent", None, GAP, True, (Status.PENDING, 0, None, False)),  # not started: uncharged
        # The stop's deadline is time the jobs had to finish: past it, they go back.
        ("stopping", "heartbeat", GAP, True, (Status.PENDING, 0, None, False)),
        ("stopping", "finished", GAP, True, (Status.COMPLETED, 0, None, False)),
        ("starting", "ready", STARTUP_TIMEOUT + 1, True, None),
        ("starting", None, STARTUP_TIMEOUT + 1, True, "ended"),
    ],
)
def test_after_a_gap_in_the_loop_a_worker_is_heard_before_it_is_judged(
    setup: str,
    waiting: str | None,
    gap: float,
    overdue: bool,
    after: tuple[Status, int, str | None, bool] | str | None,
) -> None:
    """The deadline rule of issue 22 (WorkerManager.judge_deadlines): the clock jumps
    while W's messages wait unread; the loop reads every overdue worker's channel, then
    judges. A worker whose messages waited is alive; what its own deadlines measure
    (a job's timeout, the stop's wait) still counts the gap."""
    sim = Sim()
    if setup == "starting":
        sim.fleet.spawned(W, sim.now)
        sim.workers[W] = SimWorker(W, "die")
    else:
        sim.spawn(W)
        sim.submit("B", timeout=TIMEOUT if setup.endswith("timed") else None)
        sim.hand(W, "B")
        if not setup.startswith("sent"):
            sim.start_next(W)
        if setup == "stopping":
            sim.stop(wait=3.0)
    before = sim.now
    sim.now += gap
    assert (W in sim.fleet.overdue(sim.now, sim.stop_at)) is overdue
    _read_waiting(sim, waiting, before)
    sim.apply(sim.fleet.check_deadlines(sim.now, sim.stop_at))
    if after is None:
        assert sim.fleet.workers[W].state is WorkerState.SERVING
    elif after == "ended":
        assert W not in sim.fleet.workers
    else:
        status, attempts, error, lives = after
        job = sim.job("B")
        assert (job.status, job.attempts) == (status, attempts)
        assert (W in sim.fleet.workers) is lives
        assert error is None or (job.last_error or "").startswith(error), job.last_error


def test_a_worker_cannot_stretch_its_jobs_timeout() -> None:
    """Started carries the worker's start time: one in the future counts as now."""
    sim = Sim()
    sim.spawn(W)
    sim.submit("B", timeout=TIMEOUT)
    sim.hand(W, "B")
    sim.start_next(W, at=sim.now + 1000.0)
    assert sim.fleet.workers[W].started_at == sim.now
    sim.tick(TIMEOUT + 0.1)
    assert (sim.job("B").status, sim.job("B").attempts) == (Status.PENDING, 1)


def _deadline_case(case: str) -> tuple[Fleet, Worker]:
    fleet = Fleet(Limits(heartbeat_timeout=HEARTBEAT, kill_grace=GRACE, startup_timeout=4.0))
    worker = Worker(pid=W, spawned_at=1.0, state=WorkerState.SERVING, last_heard_at=2.0)
    job = Job(id="B", type="t", run_at=WALL, created_at=WALL, updated_at=WALL, timeout=TIMEOUT)
    if case == "starting":
        worker.state = WorkerState.STARTING
    elif case in ("running", "running untimed"):
        if case == "running untimed":
            job = Job(id="B", type="t", run_at=WALL, created_at=WALL, updated_at=WALL)
        worker.assigned, worker.current, worker.started_at = {"B": job}, "B", 3.0
    elif case == "owes a start":
        worker.assigned, worker.owes_start_since = {"B": job}, 5.0
    elif case == "retiring":
        worker.state, worker.retiring_since = WorkerState.RETIRING, 6.0
    elif case == "terminating":
        worker.state, worker.kill_at = WorkerState.TERMINATING, 7.0
    return fleet, worker


@pytest.mark.parametrize(
    ("case", "stop_at", "expected"),
    [
        ("idle", None, []),
        ("idle", 9.0, [(9.0, Cause.SHUTDOWN, "the daemon is stopping")]),
        ("starting", None,
         [(5.0, Cause.BROKEN, "the worker did not become ready within 4 s")]),
        ("running", None,
         [(8.0, Cause.TIMEOUT, "timed out after 5 s"),
          (12.0, Cause.HUNG, "no heartbeat for 10 s: the worker hung")]),
        ("running untimed", 9.5,
         [(9.5, Cause.SHUTDOWN, "the daemon is stopping"),
          (12.0, Cause.HUNG, "no heartbeat for 10 s: the worker hung")]),
        ("owes a start", None,
         [(15.0, Cause.HUNG, "the worker did not start its next job within 10 s")]),
        ("retiring", None,
         [(16.0, Cause.HUNG, "the worker did not exit within 10 s of being told to")]),
        ("terminating", 9.0, [(7.0, Cause.NONE, "kill")]),
    ],
)  # fmt: skip
def test_each_deadline_has_its_time_cause_and_reason(
    case: str, stop_at: float | None, expected: list[tuple[float, Cause, str]]
) -> None:
    """The reasons are worded only when asked for (a deadline passed): the words are
    those the check gives the ended run, the times those the loop waits for."""
    fleet, worker = _deadline_case(case)
    fleet.workers[W] = worker
    assert fleet.deadlines(worker, stop_at) == expected
    assert fleet.next_deadline(stop_at) == min((at for at, _, _ in expected), default=None)


@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "killed-from-outside"])
def test_a_sigkill_of_the_fence_is_worded_as_the_fences(fenced: bool) -> None:
    """A worker killed as the lease ran out (by the supervisor's kill_all, or before it
    by the watchdog) is not said to have run out of memory: its run's error and the
    worker's exit name the fence. Any other SIGKILL keeps the out-of-memory hint. The
    fate is the same either way."""
    sim = Sim()
    sim.spawn(W)
    sim.submit("a")
    sim.hand(W, "a")
    sim.start_next(W)
    if fenced:
        kill_all(sim.fleet)  # its Deliver is not carried out: the watchdog killed it
    how, _, signal_name = describe_exit(signal.SIGKILL)  # a raw wait status: the signal
    sim.workers[W].dead = True
    sim.apply(sim.fleet.exited(W, how, None, signal_name, sim.now))
    job = sim.job("a")
    exited = [s for s in sim.said if s.event == "worker.exited"]
    assert job.status is Status.PENDING and job.attempts == 1  # retried, either way
    assert job.last_error is not None
    if fenced:
        assert job.last_error == FENCED_EXIT
        assert "memory" not in exited[0].message and "fence" in exited[0].message
    else:
        assert "may have run out of memory" in job.last_error
        assert "may have run out of memory" in exited[0].message
