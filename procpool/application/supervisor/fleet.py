"""The fleet: what the supervisor knows of its workers, and what each event means.

Pure bookkeeping, no I/O and no clock: every method takes the time it
happens at (monotonic seconds) and returns decisions for the supervisor to
carry out: runs that ended and their fates, jobs that began, progress to
store, messages to send, signals to deliver, lines to log.

    spawned ──Ready──▶ SERVING ──hand_out──▶ (sent) ──Started──▶ (running) ──Finished──▶ idle
        │                 │                     │                   │
        └─ deadline ──────┴──── Stop ─▶ RETIRING┴── any deadline ───┴──▶ TERMINATING ─exit─▶ gone

Every state a worker can be in has a deadline (`deadlines`), the one source
for the loop's wait and for the check that ends workers; a worker held in a
state past it is ended, and its runs take their fates from `domain.fate`.
A worker's messages are untrusted: one about a run it does not hold is
stale and dropped (DESIGN decision 8); one that breaks the protocol (a
second Started, a Finished for a job it never started) ends it as broken.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import cast, get_args

import msgspec

from procpool.application.supervisor.dispatch import BatchSizer, Holder
from procpool.application.supervisor.settings import Limits
from procpool.application.wire import messages as wire
from procpool.domain.fate import Cause, Fate, Phase, Report, fate
from procpool.domain.job import Job

# How long a worker the supervisor ended holds back its replacement (seconds). It is
# usually reaped within milliseconds of its SIGTERM (its handler SIGKILLs its group),
# and the turn that reaps it decides its runs' fates (a cancel is reported): forked
# first, the replacement would put the fork's milliseconds before that turn. One
# that lingers (a C call holding the GIL ignores SIGTERM until its SIGKILL) is
# replaced once this has passed all the same.
EXIT_WAIT = 0.05
FENCED_EXIT = (
    "the worker was killed by SIGKILL: the fence ended its runs, as this daemon's lease"
    " on the store was not renewed in time"
)


class WorkerState(StrEnum):
    STARTING = "starting"
    SERVING = "serving"
    RETIRING = "retiring"  # told to stop once its queue is empty
    TERMINATING = "terminating"  # signalled; waiting to be reaped


@dataclass(eq=False)
class Worker:
    """The fleet's view of one worker process.

    `assigned` holds the runs handed to it and not ended, in the order it runs
    them; `current` names the one it acknowledged starting. The others wait in
    its queue; `taking_back` names those it was asked to skip.
    """

    pid: int
    spawned_at: float
    state: WorkerState = WorkerState.STARTING
    assigned: dict[str, Job] = field(default_factory=dict)
    current: str | None = None
    taking_back: set[str] = field(default_factory=set)
    started_at: float = 0.0  # of the current job
    last_heard_at: float = 0.0
    owes_start_since: float = 0.0  # it holds jobs and has started none since then
    retiring_since: float = 0.0
    jobs_done: int = 0
    last_rss: int | None = None  # bytes, measured after its last job
    end_cause: Cause | None = None
    end_run: tuple[str, int] | None = None  # (job id, lease) it was ended for
    end_detail: str = ""
    kill_at: float | None = None
    terminated_at: float = 0.0  # when it was sent SIGTERM
    # Killed as the lease ran out (membership.kill_all), by the supervisor or before it by
    # the fence's watchdog: a SIGKILL is then the fence's, not the out-of-memory killer's.
    fenced: bool = False

    @property
    def job(self) -> Job | None:
        """The job it runs now, if any."""
        return None if self.current is None else self.assigned.get(self.current)

    @property
    def available(self) -> bool:
        return self.state is WorkerState.SERVING and not self.assigned

    @property
    def queued(self) -> list[Job]:
        """Jobs waiting in its queue that it will run: not started, not being taken back."""
        return [
            job
            for job_id, job in self.assigned.items()
            if job_id != self.current and job_id not in self.taking_back
        ]

    @property
    def running_since(self) -> float | None:
        return None if self.current is None else self.started_at


# ----------------------------------------------------------------- decisions
# Frozen msgspec structs, not frozen dataclasses: one is made per job for each of
# several decisions, and a frozen dataclass's __init__ (an object.__setattr__ per field)
# cost 2 us for a RunEnded, a struct's 0.15 us.


class RunEnded(msgspec.Struct, frozen=True):
    """A run is over; `fate` says what becomes of its job."""

    job: Job
    fate: Fate
    phase: Phase
    cause: Cause
    error: str | None = None  # for a failed attempt: what to record
    label: str = ""  # why an attempt failed, for the metrics
    result: bytes | None = None
    duration: float | None = None
    exit_signal: str | None = None
    worker_pid: int = 0


class Began(msgspec.Struct, frozen=True):
    """The worker started the job: store and log it."""

    job: Job
    worker_pid: int


class ProgressMade(msgspec.Struct, frozen=True):
    job: Job
    fraction: float
    message: str | None
    worker_pid: int


class CheckpointAsked(msgspec.Struct, frozen=True):
    """A run's handler asks to store a checkpoint (`value`, JSON bytes); `owned`:
    whether the fleet still lets the run write (its worker is not being ended, no
    cancel was asked). The answer goes back after the commit (checkpoints.py)."""

    job: Job
    worker_pid: int
    value: bytes
    owned: bool


class Send(msgspec.Struct, frozen=True):
    pid: int
    message: wire.ToWorker


class Deliver(msgspec.Struct, frozen=True):
    """Send a signal to the worker's process group (and what it started)."""

    pid: int
    signum: int


class Say(msgspec.Struct, frozen=True):
    level: str
    event: str
    message: str
    fields: dict[str, object]


Decision = RunEnded | Began | ProgressMade | CheckpointAsked | Send | Deliver | Say


def _seconds(value: float) -> str:
    return f"{value:g} s"


class Why(Enum):
    """Why a deadline ends a worker, worded by `Fleet._reason` only once it passed."""

    KILL = "kill"
    STOPPING = "stopping"
    NOT_READY = "not_ready"
    TIMED_OUT = "timed_out"
    NO_HEARTBEAT = "no_heartbeat"
    NO_START = "no_start"
    NO_EXIT = "no_exit"


# The kinds of message about the worker itself, not about one of its runs.
_ABOUT_WORKER: frozenset[type] = frozenset(get_args(wire.AboutWorker))
# The states of the workers that hold a slot of the pool.
_IN_POOL = frozenset({WorkerState.STARTING, WorkerState.SERVING})
_REASONS = {Why.KILL: "kill", Why.STOPPING: "the daemon is stopping"}


# The failure label of a run, in the metrics, by the supervisor's reason or the report.
_LABELS = {
    Cause.TIMEOUT: "timeout",
    Cause.HUNG: "heartbeat",
    Cause.MEMORY: "memory",
    Cause.BROKEN: "broken",
    Report.ERROR: "error",
    Report.PERMANENT: "permanent",
    Report.NONE: "worker_died",
}


class Fleet:
    """Every worker the supervisor has forked and not yet reaped, by pid."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.workers: dict[int, Worker] = {}
        self.batch = BatchSizer()
        # The job types whose handlers have called ctx.checkpoint: while one runs, the
        # loop does not linger (its worker waits for the turn's commit).
        self.checkpointing: set[str] = set()
        # Workers that exit by themselves before they are ready (a broken handler
        # module, a fork that cannot run) are replaced after a pause that doubles with
        # each, up to 5 s; one killed by a signal from outside is replaced at once.
        self.failed_starts = 0
        self.respawn_not_before = 0.0
        # (pid, job id) of each start taken since the loop last asked (`take_begun`).
        self._begun: list[tuple[int, str]] = []

    def __iter__(self) -> Iterator[Worker]:
        return iter(list(self.workers.values()))

    def __len__(self) -> int:
        return len(self.workers)

    def get(self, pid: int) -> Worker | None:
        return self.workers.get(pid)

    def counted(self) -> list[Worker]:
        """Workers that hold a slot of the pool: not on their way out."""
        return [w for w in self.workers.values() if w.state in _IN_POOL]

    def spawn_at(self) -> float:
        """When the pool's missing workers may be forked (monotonic seconds): not
        during the pause after failed starts, nor while a worker ended by the
        supervisor may still be dying (EXIT_WAIT from its SIGTERM)."""
        at = self.respawn_not_before
        for worker in self.workers.values():
            if worker.state is WorkerState.TERMINATING:
                at = max(at, worker.terminated_at + EXIT_WAIT)
        return at

    def holder(self, job: Job) -> Worker | None:
        """The worker that holds this run of the job."""
        for worker in self.workers.values():
            held = worker.assigned.get(job.id)
            if held is not None and held.lease == job.lease:
                return worker
        return None

    # ----------------------------------------------------------------- life

    def spawned(self, pid: int, now: float) -> None:
        self.workers[pid] = Worker(pid=pid, spawned_at=now, last_heard_at=now)

    def retire(self, worker: Worker, now: float) -> list[Decision]:
        """Ask an idle worker to exit."""
        worker.state = WorkerState.RETIRING
        worker.retiring_since = now
        return [Send(worker.pid, wire.Stop())]

    def retirements(self, wanted: int, stopping: bool, now: float) -> list[Decision]:
        """Stop idle workers that should go: all when stopping, the surplus over
        `wanted`, and one at a time (so that replacements do not all happen at the
        same moment) of those past max_jobs_per_worker or the memory limit."""
        counted = self.counted()
        surplus = len(counted) - wanted
        quota = self.limits.max_jobs_per_worker
        if not (stopping or surplus > 0 or quota or self.limits.max_memory_bytes):
            return []  # the common turn: no worker can be due to go
        retiring = any(w.state is WorkerState.RETIRING for w in self.workers.values())
        decisions: list[Decision] = []
        for worker in counted:
            if not worker.available:
                continue
            if stopping or surplus > 0:
                surplus -= 1
            elif retiring:
                continue
            elif (quota and worker.jobs_done >= quota) or self.over_memory(worker):
                retiring = True
            else:
                continue
            decisions += self.retire(worker, now)
        return decisions

    def terminate(self, worker: Worker, cause: Cause, detail: str, now: float) -> list[Decision]:
        """Start ending a worker: SIGTERM now, SIGKILL once the grace has passed. The
        end is complete when the worker is reaped (`exited`)."""
        if worker.state is WorkerState.TERMINATING:
            return []
        worker.state = WorkerState.TERMINATING
        worker.end_cause = cause
        job = worker.job
        worker.end_run = None if job is None else (job.id, job.lease)
        worker.end_detail = detail
        worker.kill_at = now + self.limits.kill_grace
        worker.terminated_at = now
        return [Deliver(worker.pid, signal.SIGTERM)]

    def exited(
        self, pid: int, how: str, exit_code: int | None, exit_signal: str | None, now: float
    ) -> list[Decision]:
        """The worker was reaped: every run it held ends. `how` says how it exited."""
        worker = self.workers.pop(pid, None)
        if worker is None:
            return []
        if worker.state is WorkerState.STARTING and exit_signal is None:
            self.failed_starts += 1
            self.respawn_not_before = now + min(5.0, 0.05 * 2**self.failed_starts)
        if worker.fenced and exit_signal == "SIGKILL":
            how = FENCED_EXIT
        decisions: list[Decision] = [
            self._end(worker, job, Report.NONE, exit_signal=exit_signal, error=how)
            for job in list(worker.assigned.values())
        ]
        cause = worker.end_cause
        expected = cause is not None or worker.state is WorkerState.RETIRING
        if cause is not None:
            how = f"ended by the supervisor ({cause}): {worker.end_detail}"
        decisions.append(
            Say(
                "INFO" if expected else "WARNING",
                "worker.exited",
                f"worker {pid} exited: {how}",
                {
                    "worker_pid": pid,
                    "exit_code": exit_code,
                    "signal": exit_signal,
                    "reason": str(cause) if cause else ("retired" if expected else "unexpected"),
                    "jobs_done": worker.jobs_done,
                },
            )
        )
        return decisions

    def _cause(self, worker: Worker, job: Job) -> Cause:
        """Why the supervisor ended this run, if it did (see `domain.fate`)."""
        if job.cancel_requested:
            return Cause.CANCEL
        if worker.end_cause is None:
            return Cause.NONE
        if worker.end_run == (job.id, job.lease) or worker.end_cause is Cause.SHUTDOWN:
            return worker.end_cause
        if worker.end_run is None and job.id != worker.current:
            return worker.end_cause  # ended while it owed a start: its queue goes back
        return Cause.OTHER_RUN

    def _end(
        self,
        worker: Worker,
        job: Job,
        report: Report,
        *,
        error: str | None = None,
        result: bytes | None = None,
        duration: float | None = None,
        exit_signal: str | None = None,
    ) -> RunEnded:
        """End one run: `error` is the worker's own (its Finished error, or how it exited)."""
        phase = Phase.STARTED if worker.current == job.id else Phase.QUEUED
        cause = self._cause(worker, job)
        ended = fate(phase, report, cause)
        del worker.assigned[job.id]
        worker.taking_back.discard(job.id)
        if phase is Phase.STARTED:
            worker.current = None
            worker.jobs_done += 1
        if ended is Fate.REQUEUED:
            error = self._why_requeued(worker, cause, phase)
        elif cause is not Cause.NONE:
            error = worker.end_detail
        return RunEnded(
            job=job, fate=ended, phase=phase, cause=cause, error=error,
            label=_LABELS.get(cause if cause is not Cause.NONE else report, str(cause)),
            result=result, duration=duration, exit_signal=exit_signal, worker_pid=worker.pid,
        )  # fmt: skip

    @staticmethod
    def _why_requeued(worker: Worker, cause: Cause, phase: Phase) -> str:
        if phase is Phase.QUEUED:
            return "it had not started"
        if cause is Cause.SHUTDOWN:
            return "the shutdown"
        ended_for = "" if worker.end_run is None else f" for job {worker.end_run[0]}"
        return f"ending its worker ({worker.end_cause}){ended_for}"

    # ----------------------------------------------------------------- messages

    def received(self, pid: int, message: wire.ToSupervisor, now: float) -> list[Decision]:
        """What a message from a worker (one not yet reaped) means. Any message is a
        sign of life (a heartbeat stuck behind a flood of output lines is one too)."""
        worker = self.workers[pid]
        worker.last_heard_at = max(worker.last_heard_at, now)
        # A message's kind is told by its exact type (a decoded message is of one class,
        # never a subclass): isinstance with a msgspec struct class, whose metaclass is
        # not `type`, costs about 120 ns on a miss, and the union written here was built
        # anew at each call and cost 700 ns (issue 25).
        kind = type(message)
        if kind in _ABOUT_WORKER:
            return self._about_worker(worker, cast(wire.AboutWorker, message), now)
        message = cast(wire.AboutRun, message)
        job = worker.assigned.get(message.job_id)
        if job is None or job.lease != message.lease:
            stale: list[Decision] = [
                Say(
                    "DEBUG", "message.stale",
                    f"dropped a {type(message).__name__} from a run that is no longer current",
                    {"job_id": message.job_id, "worker_pid": pid},
                )
            ]  # fmt: skip
            if isinstance(message, wire.Checkpoint):  # its handler waits for the answer
                stale.append(Send(pid, wire.CheckpointStored(message.job_id, message.lease, False)))
            return stale
        # The protocol, checked in the same pass that tells the message's kind (the two
        # commonest first): one job at a time, each started once, and only a started
        # one reported on.
        started = worker.current == job.id
        violation = None
        if type(message) is wire.Finished:
            if started:
                return self._finished(worker, job, message, now)
        elif type(message) is wire.Started:
            if not started and worker.current is None:
                # The worker's own start time, never later than now: a worker can shorten
                # its job's timeout, not stretch it.
                return self._began(worker, job, min(message.at or now, now), now)
            violation = (
                f"it started {job.id} twice"
                if started
                else f"it started {job.id} while running another"
            )
        elif kind is wire.Skipped:
            if not started:
                return [self._end(worker, job, Report.NONE)]
            violation = f"it skipped {job.id}, which it had started"
        elif started:  # heard, if a heartbeat: that is all it says
            if type(message) is wire.ProgressReport or type(message) is wire.Checkpoint:
                return self._reported(worker, job, message, now)
            return []
        if violation is None:
            violation = f"it sent {type(message).__name__} for {job.id}, which it had not started"
        return self._broken(worker, violation, now)

    def _reported(
        self, worker: Worker, job: Job, message: wire.ProgressReport | wire.Checkpoint, now: float
    ) -> list[Decision]:
        if isinstance(message, wire.ProgressReport):
            return [ProgressMade(job, message.fraction, message.message, worker.pid)]
        size, most = len(message.value), self.limits.max_checkpoint_bytes
        if size > most:  # the worker checks it first: only a broken one sends more
            return self._broken(worker, f"it sent a checkpoint of {size} bytes, over {most}", now)
        owned = worker.state is not WorkerState.TERMINATING and not job.cancel_requested
        self.checkpointing.add(job.type)
        return [CheckpointAsked(job, worker.pid, message.value, owned)]

    def _about_worker(
        self, worker: Worker, message: wire.AboutWorker, now: float
    ) -> list[Decision]:
        if not isinstance(message, wire.Ready):
            return [_log_line(worker, message)]
        if worker.state is not WorkerState.STARTING:
            return self._broken(worker, "it said Ready twice", now)
        worker.state = WorkerState.SERVING
        worker.last_heard_at = now
        self.failed_starts = 0
        pid = worker.pid
        return [Say("INFO", "worker.started", f"worker {pid} started", {"worker_pid": pid})]

    def _began(self, worker: Worker, job: Job, at: float, now: float) -> list[Decision]:
        worker.current = job.id
        self._begun.append((worker.pid, job.id))
        worker.started_at = at
        worker.taking_back.discard(job.id)
        decisions: list[Decision] = [Began(job, worker.pid)]
        if job.cancel_requested:  # the cancel came while it was queued, the Skip too late
            decisions += self.terminate(worker, Cause.CANCEL, "canceled", now)
        return decisions

    def _finished(
        self, worker: Worker, job: Job, message: wire.Finished, now: float
    ) -> list[Decision]:
        size = 0 if message.result is None else len(message.result)
        if size > self.limits.max_result_bytes:
            return self._broken(
                worker,
                f"it sent a result of {size} bytes, over {self.limits.max_result_bytes}",
                now,
            )
        if message.error is None:
            report = Report.OK
        else:
            report = Report.PERMANENT if message.permanent else Report.ERROR
        self.batch.observe(message.duration)
        result = (message.result or b"null") if report is Report.OK else None
        ended = self._end(
            worker, job, report, error=message.error, duration=message.duration, result=result
        )
        if worker.assigned:
            worker.owes_start_since = now
        return [ended]

    def _broken(self, worker: Worker, detail: str, now: float) -> list[Decision]:
        return self.terminate(worker, Cause.BROKEN, f"the worker broke the protocol: {detail}", now)

    def channel_failed(self, pid: int, detail: str, now: float) -> list[Decision]:
        """Its channel failed, or carried what no worker may send."""
        worker = self.workers.get(pid)
        if worker is None:
            return []
        return self.terminate(worker, Cause.BROKEN, detail, now)

    def update(self, pid: int, job: Job) -> None:
        """The job as the ledger saved it, for the next compare-and-set."""
        worker = self.workers.get(pid)
        if worker is not None and job.id in worker.assigned:
            worker.assigned[job.id] = job

    def measured(self, pid: int, rss: int | None, now: float) -> list[Decision]:
        """A memory sample of a worker; one past twice the limit with a job is ended."""
        worker = self.workers.get(pid)
        limit = self.limits.max_memory_bytes
        if worker is None or rss is None or not limit:
            return []
        if worker.current is None:
            worker.last_rss = rss
            return []
        if rss > 2 * limit and worker.state is not WorkerState.TERMINATING:
            return self.terminate(
                worker, Cause.MEMORY,
                f"out of memory: the worker used {rss / 2**20:.0f} MB,"
                f" more than twice max_memory_mb ({limit // 2**20} MB)",
                now,
            )  # fmt: skip
        return []

    # ----------------------------------------------------------------- dispatch

    def hand_out(self, worker: Worker, job: Job, now: float, parents: bytes | None = None) -> Send:
        """Give a claimed (running) job to a worker; `parents`: see wire.RunJob."""
        if not worker.assigned:
            worker.owes_start_since = now
            worker.last_heard_at = now
        worker.assigned[job.id] = job
        return Send(
            worker.pid,
            wire.RunJob(
                job.id,
                job.lease,
                job.attempt,
                job.type,
                job.payload,
                job.scheduled_for,
                parents=parents,
            ),
        )

    def take_back(self, worker: Worker, job: Job) -> Send:
        worker.taking_back.add(job.id)
        return Send(worker.pid, wire.Skip(job.id, job.lease))

    def cancel(self, worker: Worker, job: Job, now: float) -> list[Decision]:
        """A cancel was requested for a run this worker holds (`job` carries the flag)."""
        worker.assigned[job.id] = job
        if worker.current == job.id:
            return self.terminate(worker, Cause.CANCEL, "canceled", now)
        if worker.state is WorkerState.TERMINATING:
            return []
        return [self.take_back(worker, job)]

    def linger(self, longest: float, shortest: float) -> float:
        """How long the loop may wait before its next turn, so that one turn and its
        durable commit take in the ends of several jobs (group commit): half the queued
        work of the worker with the least of it (its queue's length times the mean run
        time), at most `longest` seconds. 0 when that is under `shortest` or no worker
        serves: a worker with little or nothing queued is fed at once, so no worker runs
        dry during the wait, and an idle pool answers as fast as ever."""
        mean = self.batch.mean
        if not mean or mean <= 0:
            return 0.0
        if self.awaits_commit():
            return 0.0
        least = math.inf
        for worker in self.workers.values():
            if worker.state is WorkerState.SERVING:
                least = min(least, len(worker.queued) * mean)
        if least == math.inf:
            return 0.0
        wait = min(longest, least / 2)
        return wait if wait >= shortest else 0.0

    def take_begun(self) -> list[tuple[int, str]]:
        """(pid, job id) of the workers that began a job since the last call, run it
        still, and hold no other: each one's next word is that job's end."""
        begun, self._begun = self._begun, []
        return [(pid, job_id) for pid, job_id in begun if self.runs_alone(pid, job_id)]

    def runs_alone(self, pid: int, job_id: str) -> bool:
        """Whether the worker runs that job and holds no other."""
        worker = self.workers.get(pid)
        return worker is not None and worker.current == job_id and len(worker.assigned) == 1

    def awaits_commit(self) -> bool:
        """Whether a worker runs a job of a type whose handlers call ctx.checkpoint: its
        next checkpoint waits for the turn's commit, as a client on the socket does, so
        the loop should not linger (group commit) before that turn."""
        if not self.checkpointing:
            return False
        return any(_may_checkpoint(w, self.checkpointing) for w in self.workers.values())

    def takes_more(self, worker: Worker) -> bool:
        """Whether a busy worker may be handed its next jobs: not once its quota is
        spoken for or it is over the memory limit (it is retired when idle)."""
        quota = self.limits.max_jobs_per_worker
        if quota and worker.jobs_done + len(worker.assigned) >= quota:
            return False
        return not self.over_memory(worker)

    def room(self, worker: Worker, batch: int) -> int:
        """How many of `batch` jobs a worker may still be handed under its quota."""
        quota = self.limits.max_jobs_per_worker
        return (
            max(1, min(batch, quota - worker.jobs_done - len(worker.assigned))) if quota else batch
        )

    def over_memory(self, worker: Worker) -> bool:
        limit = self.limits.max_memory_bytes
        return bool(limit) and worker.last_rss is not None and worker.last_rss > limit

    def candidates(
        self, now: float, deaf: set[int]
    ) -> tuple[list[Worker], list[tuple[Worker, float]], list[Holder[Worker]]]:
        """Who may be handed jobs: (idle, busy with less than half a batch queued,
        holders of a queue); a worker may be both of the last two. `deaf` names
        workers with unsent bytes: they get nothing until they read."""
        idle: list[Worker] = []
        busy: list[tuple[Worker, float]] = []
        holders: list[Holder[Worker]] = []
        low = self.batch.size() / 2
        for worker in self.workers.values():
            if worker.state is not WorkerState.SERVING:
                continue
            if not worker.assigned:
                if worker.pid not in deaf:
                    idle.append(worker)
                continue
            queued = worker.queued
            if queued:
                holders.append(Holder(worker, queued, worker.running_since))
            if len(queued) < low and worker.pid not in deaf and self.takes_more(worker):
                since = worker.running_since
                busy.append((worker, now if since is None else since))
        return idle, busy, holders

    def stop_queues(self) -> list[Decision]:
        """The daemon stops: queued jobs that have not started go back instead of running."""
        return [
            self.take_back(worker, job)
            for worker in self.workers.values()
            if worker.state is not WorkerState.TERMINATING
            for job in worker.queued
        ]

    # ----------------------------------------------------------------- deadlines

    def deadlines(self, worker: Worker, stop_at: float | None) -> list[tuple[float, Cause, str]]:
        """When a worker is ended unless it moves on first, and why (`_deadlines`, with
        each reason worded). A terminating worker's one deadline is its SIGKILL (cause
        NONE)."""
        return [
            (at, cause, self._reason(worker, why))
            for at, cause, why in self._deadlines(worker, stop_at)
        ]

    def _deadlines(self, worker: Worker, stop_at: float | None) -> list[tuple[float, Cause, Why]]:
        """The one source of the deadlines, for the loop's timeout and for the check;
        the reasons are left unworded: the loop looks at every worker's deadlines twice
        a turn, and a reason is read only when its deadline passes."""
        if worker.state is WorkerState.TERMINATING:
            return [] if worker.kill_at is None else [(worker.kill_at, Cause.NONE, Why.KILL)]
        found: list[tuple[float, Cause, Why]] = []
        if stop_at is not None:
            found.append((stop_at, Cause.SHUTDOWN, Why.STOPPING))
        if worker.state is WorkerState.STARTING:
            found.append(
                (worker.spawned_at + self.limits.startup_timeout, Cause.BROKEN, Why.NOT_READY)
            )
            return found
        beat = self.limits.heartbeat_timeout
        job = worker.job
        if job is not None:
            if job.timeout is not None:
                found.append((worker.started_at + job.timeout, Cause.TIMEOUT, Why.TIMED_OUT))
            found.append((worker.last_heard_at + beat, Cause.HUNG, Why.NO_HEARTBEAT))
        elif worker.assigned:
            found.append((worker.owes_start_since + beat, Cause.HUNG, Why.NO_START))
        elif worker.state is WorkerState.RETIRING:
            found.append((worker.retiring_since + beat, Cause.HUNG, Why.NO_EXIT))
        return found

    def _reason(self, worker: Worker, why: Why) -> str:
        limits = self.limits
        beat = _seconds(limits.heartbeat_timeout)
        if why is Why.NOT_READY:
            return f"the worker did not become ready within {_seconds(limits.startup_timeout)}"
        if why is Why.TIMED_OUT:
            timeout = worker.job.timeout if worker.job is not None else None
            return f"timed out after {_seconds(timeout or 0.0)}"
        if why is Why.NO_HEARTBEAT:
            return f"no heartbeat for {beat}: the worker hung"
        if why is Why.NO_START:
            return f"the worker did not start its next job within {beat}"
        if why is Why.NO_EXIT:
            return f"the worker did not exit within {beat} of being told to"
        return _REASONS[why]

    def next_deadline(self, stop_at: float | None) -> float | None:
        # A plain loop, as it runs twice a turn: min over a nested generator took 2.6 us
        # for two busy workers, this 1.4 us.
        nearest: float | None = None
        for worker in self.workers.values():
            for at, _, _ in self._deadlines(worker, stop_at):
                if nearest is None or at < nearest:
                    nearest = at
        return nearest

    def overdue(self, now: float, stop_at: float | None) -> list[int]:
        """The workers past a deadline that a message from them could move (every one
        but a terminating worker's kill): the loop reads what each has sent before
        `check_deadlines` judges it. After a gap in the loop (the daemon paused, a long
        turn, a stall on the store) their messages may wait unread while the deadlines
        passed, and time the daemon did not see is not the worker's fault."""
        return [
            worker.pid
            for worker in self.workers.values()
            if worker.state is not WorkerState.TERMINATING
            and any(now >= at for at, _, _ in self._deadlines(worker, stop_at))
        ]

    def check_deadlines(self, now: float, stop_at: float | None) -> list[Decision]:
        """End every worker past one of its deadlines; SIGKILL those past their grace."""
        decisions: list[Decision] = []
        for worker in self:
            expired = [(cause, why) for at, cause, why in self._deadlines(worker, stop_at)
                       if now >= at]  # fmt: skip
            if not expired:
                continue
            if worker.state is WorkerState.TERMINATING:
                worker.kill_at = None
                decisions.append(Deliver(worker.pid, signal.SIGKILL))
                continue
            # The shutdown first: a stop is not a failure of the job, whatever else is due.
            cause, why = min(expired, key=lambda pair: pair[0] is not Cause.SHUTDOWN)
            decisions += self.terminate(worker, cause, self._reason(worker, why), now)
        return decisions


def _may_checkpoint(worker: Worker, types: set[str]) -> bool:
    """Whether the worker runs a job of a type that checkpoints: its checkpoint, which
    waits for the next commit, must not wait for a linger too."""
    job = worker.assigned.get(worker.current) if worker.current is not None else None
    return job is not None and job.type in types


def _log_line(worker: Worker, message: wire.LogLine | wire.OutputLine) -> Say:
    """A line a handler logged or printed, as an event bound to its job; the
    handler's own fields stay under `fields`, where no name clashes with ours."""
    job_id = message.job_id
    fields: dict[str, object] = {
        "job_id": job_id, "attempt": message.attempt, "worker_pid": worker.pid,
    }  # fmt: skip
    if isinstance(message, wire.OutputLine):
        fields["stream"] = message.stream
        return Say("INFO", "job.output" if job_id else "worker.output", message.text, fields)
    if message.fields:
        fields["fields"] = dict(message.fields)
    return Say(message.level, "job.log" if job_id else "worker.log", message.message, fields)
