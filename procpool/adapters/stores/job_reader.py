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

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from procpool.application.ports import WorkerRecord, WorkerReport
from procpool.domain.job import Job, Run, Status
from procpool.domain.limits import ClaimLimits, Running, from_rows, waiting
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

    def limit_figures(self, now: float) -> list[tuple[str, int, int, int]]:
        """Each type limit the daemon published: (type, max, running, waiting), where
        `waiting` counts the type's due pending jobs (see `limit_figures` below)."""
        ...

    def waiting(self, jobs: Sequence[Job], now: float) -> dict[str, dict[str, object]]:
        """Why each of these jobs that is pending and due is held back by a limit, by id
        (`limits.waiting`), from the limits the daemon published and the running jobs
        now; jobs not held back are left out. Two queries, none when no job is due."""
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

    def job_defaults(self) -> JobDefaults:
        """What a job that leaves a field out gets (the handlers' and the config's)."""
        ...

    def submit_spec(self, job_spec: JobSpec) -> None: ...

    def submit(self, jobs: Sequence[Job]) -> None: ...

    def cancel(self, job_id: str) -> Status | None: ...


def held_back(
    jobs: Sequence[Job],
    now: float,
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]],
    limits_table: str,
    jobs_table: str,
) -> dict[str, dict[str, object]]:
    """`JobReader.waiting` over a store's tables, read with `query`."""
    due = [job for job in jobs if job.status is Status.PENDING and job.run_at <= now]
    if not due:
        return {}
    limits = published_limits(query, limits_table)
    if not limits.types and all(job.concurrency_key is None for job in due):
        return {}
    running = Running.of([tuple(row) for row in query(
        f"SELECT type, concurrency_key, count(*) FROM {jobs_table}"
        " WHERE status = 'running' GROUP BY type, concurrency_key", ())])  # fmt: skip
    found = {job.id: waiting(job, limits, running, now) for job in due}
    return {job_id: why for job_id, why in found.items() if why is not None}


def limit_figures(
    limits: ClaimLimits,
    now: float,
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]],
    jobs_table: str,
    mark: str,
) -> list[tuple[str, int, int, int]]:
    """Each type limit as (type, max, running, waiting): `waiting` counts the type's due
    pending jobs (those its limit holds back while it is full). Two queries over the
    limited types only; none without limits. `mark` is the store's placeholder."""
    if not limits.types:
        return []
    names = sorted(limits.types)
    marks = ",".join([mark] * len(names))
    running = dict(query(
        f"SELECT type, count(*) FROM {jobs_table} WHERE status = 'running'"
        f" AND type IN ({marks}) GROUP BY type", names))  # fmt: skip
    waiting = dict(query(
        f"SELECT type, count(*) FROM {jobs_table} WHERE status = 'pending'"
        f" AND run_at <= {mark} AND type IN ({marks}) GROUP BY type", [now, *names]))  # fmt: skip
    return [(t, limits.types[t], running.get(t, 0), waiting.get(t, 0)) for t in names]


def published_limits(
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]], limits_table: str
) -> ClaimLimits:
    """The limits a daemon wrote into the store for readers."""
    return from_rows([tuple(row) for row in query(
        f"SELECT type, max_running, key_max FROM {limits_table}", ())])  # fmt: skip
