"""What the application needs from the outside world, as interfaces.

The supervisor is written against these; infrastructure provides SQLite and
in-memory stores and the file-system inbox.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from procpool.domain.errors import ProcpoolError
from procpool.domain.job import Job, Run, Status
from procpool.domain.spec import CancelRequest, JobSpec, PruneRequest


class StoreBusy(ProcpoolError):
    """Another process holds the store's write lock (a backup, an open `sqlite3` shell):
    the transaction did not begin and nothing changed. Try again later."""


@dataclass(frozen=True)
class WorkerRecord:
    """A worker as the store remembers it, so the next run can find it if it survives us."""

    pid: int
    create_time: float


@dataclass(frozen=True)
class WorkerReport:
    """What `procpool stats` shows of a live worker."""

    pid: int
    state: str
    current_job: str | None
    jobs_done: int
    updated_at: float


class JobStore(Protocol):
    """The authoritative job store. One writer: the supervisor.

    Changes are made inside `transaction()`; one transaction per loop turn,
    so a turn's changes cost one durable commit.
    """

    def transaction(self) -> AbstractContextManager[None]:
        """Begin, holding the write lock from the start; commit on a normal exit, roll
        back on an exception.

        Raises:
            StoreBusy: on entry, when another process holds the lock past a short wait.
        """
        ...

    def get(self, job_id: str) -> Job | None: ...

    def digests(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The submission digest of each of these ids that exists."""
        ...

    def insert(self, jobs: Sequence[Job]) -> None:
        """Add new jobs; their ids must not exist yet."""
        ...

    def save(
        self, job: Job, *, expected: Status, expected_lease: int, fields: Sequence[str] = ...
    ) -> bool:
        """Compare-and-set: write `job` if the stored row still has `expected` status
        and lease. Returns whether it did. `fields` may name the only fields that
        changed (of status, attempts, run_at, updated_at, last_error, result,
        progress, worker_pid, lease, started_at, cancel_requested); default: all."""
        ...

    def due(self, now: float, limit: int) -> list[Job]:
        """Up to `limit` pending jobs whose run_at has come: highest priority first, then
        oldest run_at. Its cost must not grow with the number of priority levels or of
        jobs scheduled for later: it runs every loop turn that has a worker free."""
        ...

    def next_run_at(self, after: float) -> float | None:
        """The earliest run_at later than `after` of any pending job: when the next
        scheduled job becomes due (seconds since the epoch)."""
        ...

    def with_status(self, status: Status) -> list[Job]: ...

    def max_lease(self) -> int: ...

    def add_worker(self, worker: WorkerRecord) -> None: ...

    def remove_worker(self, pid: int) -> None: ...

    def workers(self) -> list[WorkerRecord]: ...

    def update_workers(self, reports: Sequence[WorkerReport]) -> None: ...

    def record_runs(self, runs: Sequence[Run]) -> None:
        """Add to the attempt history."""
        ...

    def counts(self) -> dict[tuple[str, Status], int]:
        """Jobs per (type, status)."""
        ...

    def oldest_pending_created(self) -> float | None: ...

    def delete_finished_before(self, cutoff: float, limit: int) -> list[tuple[str, Status]]:
        """Delete up to `limit` terminal jobs last changed before `cutoff`, with their
        history. Returns the (type, status) of each deleted job."""
        ...

    def vacuum_step(self, pages: int) -> None:
        """Give up to `pages` free pages back to the file system."""
        ...

    def close(self) -> None: ...


class StartRegister(Protocol):
    """Which run each worker has begun, kept where it outlives the daemon (see
    infrastructure/start_register.py): one slot per live worker."""

    def begun(self) -> set[int]:
        """The leases of the runs the workers of earlier daemons began last."""
        ...

    def slot(self, index: int) -> memoryview | None:
        """Slot `index`, for the worker that owns it to write its run's lease into."""
        ...


@dataclass
class InboxEntry:
    """One object from an inbox file: a job spec, a cancel request, or why it is neither."""

    line: int | None  # 1-based line in a .jsonl file; None in a .json file
    value: JobSpec | CancelRequest | PruneRequest | None
    error: str | None = None


@dataclass
class InboxFile:
    """A file read from the inbox. `error` set means the whole file is rejected."""

    name: str
    stem: str
    is_lines: bool
    entries: list[InboxEntry] = field(default_factory=list)
    error: str | None = None
    token: object = None  # what the inbox needs to find this very file again


@dataclass
class LineError:
    line: int
    error: str


class Inbox(Protocol):
    def fileno(self) -> int | None:
        """A descriptor that becomes readable when files arrive, or None: poll."""
        ...

    def drain_events(self) -> None:
        """Consume the readiness of `fileno()`."""
        ...

    def scan(self, limit: int) -> Iterator[InboxFile]:
        """Read up to `limit` files, oldest first."""
        ...

    def remove(self, files: Iterable[InboxFile]) -> None:
        """Delete accepted files: called only after their jobs are committed."""
        ...

    def reject(self, file: InboxFile, error: str, lines: Sequence[LineError]) -> str:
        """Move a file into rejected/ beside its error report; returns where it went."""
        ...
