"""The Job, its five statuses and the one table of allowed transitions.

Every status change in procpool goes through a function of this module, so the
rules live in one place: the store only applies the result as a compare-and-set.
Times are seconds since the epoch (floats); the edges format them as RFC 3339.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec

from procpool.domain.errors import InvalidTransition


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELED})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.RUNNING, Status.CANCELED}),
    # running -> pending: a failed attempt to be retried, or a stop that cut it short.
    Status.RUNNING: frozenset({Status.PENDING, Status.COMPLETED, Status.FAILED, Status.CANCELED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELED: frozenset(),
}


def check_transition(current: Status, new: Status) -> None:
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"a {current} job cannot become {new}")


class Progress(msgspec.Struct, frozen=True):
    fraction: float
    message: str | None = None


class Job(msgspec.Struct, kw_only=True, frozen=True):
    """One job as the store keeps it.

    `payload` and `result` are kept as encoded JSON: the supervisor only moves
    them between the inbox, the store and a worker, so it never decodes them.
    `lease` numbers each dispatch; messages from a worker are applied only if
    they carry the lease of the job's current run (DESIGN decision 8).
    `digest` identifies the submission, for idempotent re-reads of a file.
    """

    id: str
    type: str
    payload: bytes = b"null"
    status: Status = Status.PENDING
    attempts: int = 0
    max_attempts: int = 3
    timeout: float | None = None
    priority: int = 0
    run_at: float
    created_at: float
    updated_at: float
    last_error: str | None = None
    result: bytes | None = None
    progress: Progress | None = None
    worker_pid: int | None = None
    lease: int = 0
    started_at: float | None = None
    cancel_requested: bool = False
    digest: str = ""
    retry_of: str | None = None
    # Jobs of one type with the same key share the key's limit (CONTRACT section 13).
    concurrency_key: str | None = None
    # A job still pending then is canceled as expired (CONTRACT section 13).
    expires_at: float | None = None
    # An occurrence of a schedule (CONTRACT section 14): the schedule's name, and the
    # occurrence's nominal time in the schedule's zone (RFC 3339 with its offset).
    schedule: str | None = None
    scheduled_for: str | None = None
    # The job holds this key of its type while it is live (CONTRACT section 16; which
    # statuses hold it: spec.UNIQUE_WHILE); None: no key.
    unique_key: str | None = None
    unique_while: str | None = None
    # When the last checkpoint was committed; the value itself is read apart (it may be
    # large, and only a dispatch and GET /jobs/ID/checkpoint need it).
    checkpoint_at: float | None = None
    # The jobs this one waits for, and what a parent's failure does to it: "cancel"
    # it, or "run" it once every parent is terminal (CONTRACT section 15).
    after: tuple[str, ...] = ()
    after_failure: str = "cancel"
    # The parent whose failure or cancel canceled this job.
    canceled_by: str | None = None

    @property
    def attempt(self) -> int:
        """The 1-based number of the attempt that runs (or would run) next."""
        return self.attempts + 1


MUTABLE_FIELDS = (
    "status", "attempts", "run_at", "updated_at", "last_error", "result", "progress",
    "worker_pid", "lease", "started_at", "cancel_requested", "canceled_by",
)  # fmt: skip
"""The fields that transitions change; the others are fixed when the job is created."""


_FIELD_INDEX = {name: n for n, name in enumerate(Job.__struct_fields__)}
_MUTABLE = tuple((name, _FIELD_INDEX[name]) for name in MUTABLE_FIELDS)


def changed_fields(old: Job, new: Job) -> list[str]:
    before, after = msgspec.structs.astuple(old), msgspec.structs.astuple(new)
    return [name for name, n in _MUTABLE if after[n] != before[n]]


# Each change of status is checked against the table, then made by one replace that
# names its fields: a helper taking them as **changes, packed and unpacked again, cost
# each transition about 0.3 us more, and every job is started and ended at least once.


def start(job: Job, *, lease: int, worker_pid: int, now: float) -> Job:
    """Claimed for a worker and handed to it: `running`, not started yet
    (`started_at` is None until the worker says it began: see `begin`)."""
    check_transition(job.status, Status.RUNNING)
    return msgspec.structs.replace(
        job, status=Status.RUNNING, updated_at=now, lease=lease, worker_pid=worker_pid,
        started_at=None, progress=None,
    )  # fmt: skip


def begin(job: Job, *, now: float) -> Job:
    """The worker began the run: from now on, its end counts as an attempt."""
    if job.status is not Status.RUNNING:
        raise InvalidTransition(f"only a running job begins, not a {job.status}")
    return msgspec.structs.replace(job, started_at=now, updated_at=now)


def complete(job: Job, *, result: bytes, now: float) -> Job:
    check_transition(job.status, Status.COMPLETED)
    return msgspec.structs.replace(
        job, status=Status.COMPLETED, updated_at=now, result=result, worker_pid=None
    )


def fail_attempt(job: Job, *, error: str, now: float, retry_at: float | None) -> Job:
    """Count a failed attempt. `retry_at` None means no retry: the job fails for good."""
    attempts = job.attempts + 1
    if retry_at is None or attempts >= job.max_attempts:
        check_transition(job.status, Status.FAILED)
        return msgspec.structs.replace(
            job, status=Status.FAILED, updated_at=now, attempts=attempts, last_error=error,
            worker_pid=None,
        )  # fmt: skip
    check_transition(job.status, Status.PENDING)
    return msgspec.structs.replace(
        job, status=Status.PENDING, updated_at=now, attempts=attempts, last_error=error,
        run_at=retry_at, worker_pid=None,
    )  # fmt: skip


def cancel(job: Job, *, now: float) -> Job:
    check_transition(job.status, Status.CANCELED)
    return msgspec.structs.replace(
        job, status=Status.CANCELED, updated_at=now, worker_pid=None, cancel_requested=True
    )


def expire(job: Job, *, now: float) -> Job:
    """A pending job past its expires_at: canceled, `last_error` "expired"."""
    if job.status is not Status.PENDING:
        raise InvalidTransition(f"only a pending job expires, not a {job.status}")
    check_transition(job.status, Status.CANCELED)
    return msgspec.structs.replace(
        job, status=Status.CANCELED, updated_at=now, last_error="expired"
    )


def cancel_by_parent(job: Job, *, parent: str, parent_status: Status, now: float) -> Job:
    """A pending job given up because its parent `parent` ended `parent_status` (failed
    or canceled) and it was not to run after a failure."""
    if job.status is not Status.PENDING:
        raise InvalidTransition(f"only a pending job is canceled by its parent, not a {job.status}")
    check_transition(job.status, Status.CANCELED)
    return msgspec.structs.replace(
        job, status=Status.CANCELED, updated_at=now, canceled_by=parent,
        last_error=f"canceled: its parent {parent} was {parent_status}",
    )  # fmt: skip


def request_cancel(job: Job, *, now: float) -> Job:
    """Mark a running job to be canceled once its process is gone."""
    if job.status is not Status.RUNNING:
        raise InvalidTransition(f"only a running job waits for its cancel, not a {job.status}")
    return msgspec.structs.replace(job, cancel_requested=True, updated_at=now)


def interrupt(job: Job, *, now: float) -> Job:
    """Put a running job back to pending with attempts unchanged (the daemon stopped it)."""
    check_transition(job.status, Status.PENDING)
    return msgspec.structs.replace(
        job, status=Status.PENDING, updated_at=now, worker_pid=None, run_at=now
    )


def report_progress(job: Job, progress: Progress, *, now: float) -> Job:
    if job.status is not Status.RUNNING:
        raise InvalidTransition(f"only a running job reports progress, not a {job.status}")
    return msgspec.structs.replace(job, progress=progress, updated_at=now)


class Run(msgspec.Struct, kw_only=True, frozen=True):
    """One run of a job, as the attempt history keeps it.

    `outcome` is the job's status after the run (`completed`, `failed`,
    `canceled`), `retry` for a failed attempt that will be tried again, or
    `interrupted` for a run the daemon stopped without counting an attempt.
    """

    job_id: str
    type: str
    lease: int
    attempt: int
    worker_pid: int | None
    started_at: float | None
    ended_at: float
    outcome: str
    error: str | None = None
    exit_signal: str | None = None


def run_of(old: Job, new: Job, *, now: float, exit_signal: str | None = None) -> Run:
    """The history record of the run that took `old` (running) to `new`."""
    if new.status is Status.PENDING:
        outcome = "retry" if new.attempts > old.attempts else "interrupted"
    else:
        outcome = str(new.status)
    return Run(
        job_id=old.id,
        type=old.type,
        lease=old.lease,
        attempt=old.attempt,
        worker_pid=old.worker_pid,
        started_at=old.started_at,
        ended_at=now,
        outcome=outcome,
        error=new.last_error if new.attempts > old.attempts else None,
        exit_signal=exit_signal,
    )
