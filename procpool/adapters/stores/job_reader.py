"""The one read path to a home's jobs: the `JobReader` port.

    Client ─▶ JobReader ─┬─▶ StoreReader          HOME/procpool.db, read-only (SQLite)
      ▲                  └─▶ PostgresClientStore  database_url (PostgreSQL, shared)
      │
    CLI, `stats`, HTTP API (through Client only)

`open_reader` (reader_factory.py, apart so that this port imports none of its
adapters) decides once, from the configuration (`database_url`, then
$PROCPOOL_DATABASE_URL, then the config file of the home), which store a client
reads. Both readers answer every read the same way, by the contract tests in
tests/integration/test_job_reader.py; what only the shared store has (submitting and
canceling in the database, the daemons registered) is `SharedJobStore`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from procpool.application.ports import WorkerRecord, WorkerReport
from procpool.domain.job import Job, Run, Status
from procpool.domain.spec import JobDefaults, JobSpec


class JobReader(Protocol):
    """Reads of the job store; never a write. Times are seconds since the epoch.

    A reader opens its connection at first use, in the thread that uses it.

    Raises (from every read): procpool.ProcpoolError when a database cannot be reached.
    """

    def exists(self) -> bool:
        """Whether the store is there (SQLite: once a daemon created it)."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs found, by id; ids the store lacks are left out."""
        ...

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per type and status: {type: {status: n}}; absent pairs have none."""
        ...

    def count_finished_before(self, cutoff: float) -> int:
        """Terminal jobs last changed before `cutoff`: what retention would delete."""
        ...

    def retry_links(self) -> list[tuple[str, str, Status, float]]:
        """Every job that repeats another: (id, its `retry_of`, status, created_at)."""
        ...

    def oldest_pending_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest pending job was created; None: none pending."""
        ...

    def worker_reports(self) -> list[tuple[WorkerRecord, WorkerReport]]:
        """The workers of the live daemon(s), as last written by them."""
        ...

    def runs(self, job_id: str) -> list[Run]:
        """The ended runs of a job, oldest first."""
        ...

    def recent_runs(self, since: float) -> list[Run]:
        """The runs of every job that ended at `since` or later."""
        ...

    # Last of the reads: below it, `list` in an annotation would name this method.
    def list(
        self,
        statuses: Sequence[Status] = (),
        job_type: str | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> list[Job]:
        """Jobs, newest first (created_at, then id, both descending); `before` =
        (created_at, id) of a job: only those after it in this order."""
        ...

    def close(self) -> None:
        """Close the connection (a later read opens a new one)."""
        ...


@runtime_checkable
class SharedJobStore(JobReader, Protocol):
    """A store that clients write themselves (PostgreSQL): the database is the store,
    so a submission or a cancel is committed there, not handed to a daemon."""

    defaults: JobDefaults  # max_attempts and timeout of jobs that do not say

    def submit_spec(self, job_spec: JobSpec) -> None: ...

    def submit(self, jobs: Sequence[Job]) -> None: ...

    def cancel(self, job_id: str) -> Status | None: ...
