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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from procpool.application.ports import WorkerRecord, WorkerReport
from procpool.domain.dependencies import Decision, verdict
from procpool.domain.dependencies import waiting as after_waiting
from procpool.domain.job import Job, Run, Status
from procpool.domain.limits import ClaimLimits, Running, from_rows, waiting
from procpool.domain.pauses import Pause
from procpool.domain.pauses import waiting as pause_waiting
from procpool.domain.schedules import Changes, Schedule, Stored
from procpool.domain.spec import JobDefaults, JobSpec


@dataclass(frozen=True)
class JobQuery:
    """Which jobs `JobReader.list` reads: of any of `statuses` (none: every status),
    of `job_type` (None: every type), at most `limit`, and with `before` = (created_at,
    id) of a job, only those after it newest first (the HTTP API's page cursor); with
    `after` a job's id, only the jobs that wait for it (their `after` names it)."""

    statuses: Sequence[Status] = ()
    job_type: str | None = None
    limit: int = 100
    before: tuple[float, str] | None = None
    after: str | None = None


EVERY_JOB = JobQuery()


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

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Status]:
        """The status of each job found, by id; ids the store lacks are left out. Reads
        two columns, not the whole rows: what a wait looks at until every job is done."""
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

    def key_holder(self, job_type: str, key: str) -> str | None:
        """The id of the live job of this type that holds this unique_key, if one does."""
        ...

    def checkpoint(self, job_id: str) -> tuple[bytes, float] | None:
        """The job's last checkpoint (JSON bytes) and when it was committed (seconds
        since the epoch); None if it has none."""
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
        """Why each of these jobs that is pending and due is held back by a pause
        (`pauses.waiting`) or a limit (`limits.waiting`), by id, from the pauses, the
        limits the daemon published and the running jobs now; jobs not held back are
        left out. Three queries, none when no job is due."""
        ...

    def pauses(self) -> list[Pause]:
        """Every stored pause by type, those past their `until` included (the first claim
        after it removes them; `Pause.in_force` tells)."""
        ...

    def expired_count(self) -> int:
        """Jobs in the store canceled because they expired (`last_error` "expired")."""
        ...

    def dependency_counts(self) -> tuple[int, int]:
        """(pending jobs their parents hold back, jobs in the store canceled because a
        parent failed or was canceled)."""
        ...

    def pause_figures(self, now: float) -> list[tuple[Pause, int]]:
        """Each pause in force at `now`, with its type's due pending jobs."""
        ...

    def key_limit_figures(self, now: float) -> list[tuple[str, int, int, int, int]]:
        """Each type with a key limit or a keyed job running: (type, max per key, keys
        running, keys full, due pending jobs of the full keys); `key_limit_figures`."""
        ...

    def schedules(self) -> list[Stored]:
        """Every stored schedule, by name (CONTRACT section 14)."""
        ...

    def schedule_skips(self) -> dict[str, int]:
        """Occurrences of schedules skipped since the store began, by reason."""
        ...

    # Last of the reads: below it, `list` in an annotation would name this method.
    def list(self, query: JobQuery = EVERY_JOB) -> list[Job]:
        """The jobs `query` selects, newest first (created_at, then id, both
        descending), at most `query.limit` of them."""
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

    def submit_spec(self, job_spec: JobSpec) -> str:
        """The job's id, or that of the live job that holds its unique_key."""
        ...

    def submit(
        self, jobs: Sequence[Job], resumes: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """All or none; returns the jobs not added because a live job holds their
        unique_key: new id -> the holder's id. `resumes`: new id -> the job whose last
        checkpoint it starts from."""
        ...

    def cancel(self, job_id: str) -> Status | None: ...

    def pause(self, pauses: Sequence[Pause]) -> None: ...

    def resume(self, types: Sequence[str]) -> list[str]: ...

    def apply_schedules(self, wanted: Sequence[Schedule]) -> Changes:
        """Make the stored schedules be `wanted`; returns what changed.

        Raises:
            ScheduleError: a schedule's job type is served by no live daemon that said
                which types it serves (`job.type` named); nothing is written.
        """
        ...

    def change_schedule(self, name: str, action: str, at: float) -> str | None:
        """`pause`, `resume`, `remove` or `trigger` (its job made at `at`) the schedule
        `name`. Returns the triggered job's id (else None).

        Raises:
            procpool.domain.schedules.UnknownSchedule: no such schedule.
        """
        ...


def held_back(
    jobs: Sequence[Job],
    now: float,
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]],
    tables: tuple[str, str, str],
    mark: str = "?",
) -> dict[str, dict[str, object]]:
    """`JobReader.waiting` over a store's tables (limits, jobs, pauses), read with
    `query` (`mark`: its parameter mark). Parents that do not allow the job to start
    win, whether it is due or not; then a pause wins over a limit: the paused type
    starts nothing whatever runs."""
    after = held_by_parents(jobs, query, tables[1], mark)
    due = [
        job
        for job in jobs
        if job.status is Status.PENDING and job.run_at <= now and job.id not in after
    ]
    if not due:
        return after
    return after | _paused_or_limited(due, now, query, tables)


def held_by_parents(
    jobs: Sequence[Job],
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]],
    jobs_table: str,
    mark: str,
) -> dict[str, dict[str, object]]:
    """The `waiting` of each pending job whose parents do not allow it to start yet
    (`dependencies.waiting`), by id. One query for all of their parents; none when no
    pending job has `after`."""
    pending = [job for job in jobs if job.status is Status.PENDING and job.after]
    parents = sorted({parent for job in pending for parent in job.after})
    if not parents:
        return {}
    statuses: dict[str, Status] = {}
    for start in range(0, len(parents), 500):
        chunk = parents[start : start + 500]
        rows = query(
            f"SELECT id, status FROM {jobs_table} WHERE id IN ({','.join([mark] * len(chunk))})",
            chunk,
        )
        statuses.update((job_id, Status(status)) for job_id, status in rows)
    found = {}
    for job in pending:
        if verdict(job.after_failure, job.after, statuses).decision is not Decision.READY:
            mine = {parent: statuses.get(parent, Status.CANCELED) for parent in job.after}
            found[job.id] = after_waiting(mine)
    return found


def _paused_or_limited(
    due: Sequence[Job],
    now: float,
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]],
    tables: tuple[str, str, str],
) -> dict[str, dict[str, object]]:
    limits_table, jobs_table, pauses_table = tables
    pauses = {pause.type: pause for pause in stored_pauses(query, pauses_table)}
    paused = {}
    for job in due:
        why = pause_waiting(job, pauses.get(job.type), now)
        if why is not None:
            paused[job.id] = why
    due = [job for job in due if job.id not in paused]
    if not due:
        return paused
    limits = published_limits(query, limits_table)
    if not limits.types and all(job.concurrency_key is None for job in due):
        return paused
    running = Running.of([tuple(row) for row in query(
        f"SELECT type, concurrency_key, count(*) FROM {jobs_table}"
        " WHERE status = 'running' GROUP BY type, concurrency_key", ())])  # fmt: skip
    found = {job.id: waiting(job, limits, running, now) for job in due}
    return paused | {job_id: why for job_id, why in found.items() if why is not None}


def stored_pauses(
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]], pauses_table: str
) -> list[Pause]:
    """Every pause in the store, by type."""
    rows = query(f"SELECT type, until, since FROM {pauses_table} ORDER BY type", ())
    return [Pause(*row) for row in rows]


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


def pause_figures(
    pauses: Sequence[Pause],
    now: float,
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]],
    jobs_table: str,
    mark: str,
) -> list[tuple[Pause, int]]:
    """Each pause in force at `now`, with its type's due pending jobs (those it holds
    back). One query over the paused types only; none without a pause in force."""
    live = [pause for pause in pauses if pause.in_force(now)]
    if not live:
        return []
    names = [pause.type for pause in live]
    marks = ",".join([mark] * len(names))
    waiting = dict(query(
        f"SELECT type, count(*) FROM {jobs_table} WHERE status = 'pending'"
        f" AND run_at <= {mark} AND type IN ({marks}) GROUP BY type", [now, *names]))  # fmt: skip
    return [(pause, waiting.get(pause.type, 0)) for pause in live]


def key_limit_figures(
    limits: ClaimLimits,
    now: float,
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]],
    jobs_table: str,
    mark: str,
) -> list[tuple[str, int, int, int, int]]:
    """Each type with a key limit, or with jobs of a key running, as (type, max per key,
    keys running, keys full, due pending jobs of the full keys). Keys can be many: only
    the running rows are grouped by key, and the pending jobs are counted for the full
    keys only, which are no more than the running jobs."""
    running = query(
        f"SELECT type, concurrency_key, count(*) FROM {jobs_table} WHERE status = 'running'"
        " AND concurrency_key IS NOT NULL GROUP BY type, concurrency_key", ())  # fmt: skip
    keys: dict[str, list[tuple[str, int]]] = {job_type: [] for job_type in limits.keys}
    for job_type, key, count in running:
        keys.setdefault(job_type, []).append((key, count))
    figures = []
    for job_type in sorted(keys):
        most = limits.key_limit(job_type)
        full = [key for key, count in keys[job_type] if count >= most]
        waiting = 0
        if full:
            marks = ",".join([mark] * len(full))
            waiting = query(
                f"SELECT count(*) FROM {jobs_table} WHERE status = 'pending' AND run_at <= {mark}"
                f" AND type = {mark} AND concurrency_key IN ({marks})", [now, job_type, *full],
            )[0][0]  # fmt: skip
        figures.append((job_type, most, len(keys[job_type]), len(full), int(waiting)))
    return figures


def published_limits(
    query: Callable[[str, Sequence[object]], Sequence[tuple[Any, ...]]], limits_table: str
) -> ClaimLimits:
    """The limits a daemon wrote into the store for readers."""
    return from_rows([tuple(row) for row in query(
        f"SELECT type, max_running, key_max FROM {limits_table}", ())])  # fmt: skip
