"""The reads that the SQLite reader and the PostgreSQL client store word alike.

    JobReader (job_reader.py, the port)
        └── SqlReads: get, get_many, statuses, list, counts, count_finished_before,
            │         retry_links, oldest_pending_age, the workers' rows
            ├── StoreReader          (sqlite_reader.py)    tables jobs, runs; marks ?
            └── PostgresClientStore  (postgres_client.py)  tables procpool_*; marks %s

A subclass gives its `_query`, its table of jobs, its parameter mark and how many ids
one lookup may name, and the two clauses the dialects write differently (a list of
values, a row comparison); what only one store can do (SQLite's index hint,
PostgreSQL's writes) stays in its own module.
"""

from __future__ import annotations

import builtins
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from procpool.adapters.stores.job_reader import (
    EVERY_JOB,
    JobQuery,
    held_back,
    key_limit_figures,
    limit_figures,
    pause_figures,
    published_limits,
    stored_pauses,
)
from procpool.adapters.stores.schedule_rows import ScheduleRows
from procpool.adapters.stores.sqlite import COLUMNS, UNIQUE_HELD, _job
from procpool.application.ports import WorkerRecord, WorkerReport
from procpool.domain.job import Job, Status
from procpool.domain.pauses import Pause
from procpool.domain.schedules import Stored

Rows = builtins.list[tuple[Any, ...]]


def worker_pairs(rows: Rows) -> builtins.list[tuple[WorkerRecord, WorkerReport]]:
    """Rows of (pid, create_time, state, current_job, jobs_done, updated_at) as the
    workers' records and last reports."""
    return [
        (WorkerRecord(pid, created), WorkerReport(pid, state or "starting", job, done, at or 0.0))
        for pid, created, state, job, done, at in rows
    ]


class SqlReads(ABC):
    """The shared reads of a SQL store. `JOBS`: the jobs table; `PARENTS`: the table of
    dependencies; `LIMITS`: the limits
    the daemon published; `PAUSES`: the paused types; `MARK`: the parameter mark of the
    driver. A read of a store that is not there yet returns no rows."""

    JOBS: str
    PARENTS: str  # the edges of dependencies: (job_id, parent_id)
    HELD: str  # the condition of a job its parents hold back, as its partial index has it
    LIMITS: str
    PAUSES: str
    SCHEDULES: str
    SCHEDULE_SKIPS: str
    CHECKPOINTS: str
    MARK: str
    LOOKUP_CHUNK: int  # ids one statement of `_by_ids` names at the most

    @abstractmethod
    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> Rows:
        """The rows of one statement."""

    def schedules(self) -> builtins.list[Stored]:
        """Every stored schedule, by name (none in a store older than schedules)."""
        return self._schedule_rows().all()

    def schedule_skips(self) -> dict[str, int]:
        """Occurrences skipped since the store began, by reason."""
        return self._schedule_rows().skip_counts()

    def _schedule_rows(self) -> ScheduleRows:
        return ScheduleRows(self._query, self.SCHEDULES, self.SCHEDULE_SKIPS, self.MARK)

    @abstractmethod
    def _any_of(self, column: str, values: Sequence[str]) -> tuple[str, builtins.list[object]]:
        """The condition "`column` is one of `values`", with its parameters."""

    @abstractmethod
    def _before(self, before: tuple[float, str]) -> tuple[str, builtins.list[object]]:
        """The condition "(created_at, id) comes before `before`", with its parameters."""

    def _columns(self) -> str:
        """The jobs' columns in the order `_job` reads them, as this store has them."""
        return COLUMNS

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        return {job.id: job for job in map(_job, self._by_ids(self._columns(), job_ids))}

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Status]:
        return {job_id: Status(status) for job_id, status in self._by_ids("id, status", job_ids)}

    def _by_ids(self, columns: str, job_ids: Sequence[str]) -> Rows:
        """`columns` of the jobs named in `job_ids` that the store has, LOOKUP_CHUNK ids a
        statement."""
        rows: Rows = []
        for start in range(0, len(job_ids), self.LOOKUP_CHUNK):
            where, parameters = self._any_of("id", job_ids[start : start + self.LOOKUP_CHUNK])
            rows += self._query(f"SELECT {columns} FROM {self.JOBS} WHERE {where}", parameters)
        return rows

    def get(self, job_id: str) -> Job | None:
        rows = self._query(
            f"SELECT {self._columns()} FROM {self.JOBS} WHERE id = {self.MARK}", (job_id,)
        )
        return _job(rows[0]) if rows else None

    def list(self, query: JobQuery = EVERY_JOB) -> builtins.list[Job]:
        statuses, job_type = query.statuses, query.job_type
        conditions = [
            self._before(query.before) if query.before is not None else None,
            self._any_of("status", [str(s) for s in statuses]) if statuses else None,
            (f"type = {self.MARK}", [job_type]) if job_type is not None else None,
            (
                f"id IN (SELECT job_id FROM {self.PARENTS} WHERE parent_id = {self.MARK})",
                [query.after],
            )
            if query.after is not None
            else None,
        ]
        where = [condition for condition in conditions if condition is not None]
        clause = f"WHERE {' AND '.join(sql for sql, _ in where)}" if where else ""
        rows = self._query(
            f"SELECT {self._columns()} FROM {self.JOBS} {clause}"
            f" ORDER BY created_at DESC, id DESC LIMIT {self.MARK}",
            [*(value for _, values in where for value in values), query.limit],
        )
        return [_job(row) for row in rows]

    def checkpoint(self, job_id: str) -> tuple[bytes, float] | None:
        """The job's last checkpoint (JSON bytes) and when it was committed; None if it
        has none (or no such job exists)."""
        rows = self._query(
            f"SELECT c.value, j.checkpoint_at FROM {self.CHECKPOINTS} c JOIN {self.JOBS} j"
            f" ON j.id = c.job_id WHERE c.job_id = {self.MARK}",
            (job_id,),
        )
        return (bytes(rows[0][0]), rows[0][1]) if rows else None

    def key_holder(self, job_type: str, key: str) -> str | None:
        """The id of the live job of this type that holds this unique_key, if one does."""
        rows = self._query(
            f"SELECT id FROM {self.JOBS} WHERE type = {self.MARK} AND unique_key = {self.MARK}"
            f" AND {UNIQUE_HELD}",
            (job_type, key),
        )
        return rows[0][0] if rows else None

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per type and status: {type: {status: n}}."""
        table: dict[str, dict[str, int]] = {}
        for job_type, status, count in self._query(
            f"SELECT type, status, count(*) FROM {self.JOBS} GROUP BY type, status"
        ):
            table.setdefault(job_type, {})[status] = count
        return table

    def count_finished_before(self, cutoff: float) -> int:
        """Terminal jobs last changed before `cutoff`: what retention would delete."""
        rows = self._query(
            f"SELECT count(*) FROM {self.JOBS} AS j WHERE status IN ('completed', 'failed',"
            f" 'canceled') AND updated_at < {self.MARK}"
            # Retention keeps a parent while a job that waits for it lives.
            f" AND NOT EXISTS (SELECT 1 FROM {self.PARENTS} AS d JOIN {self.JOBS} AS c"
            " ON c.id = d.job_id WHERE d.parent_id = j.id AND c.status IN ('pending', 'running'))",
            (cutoff,),
        )
        return int(rows[0][0]) if rows else 0

    def retry_links(self) -> builtins.list[tuple[str, str, Status, float]]:
        """Every job that repeats another: (id, its `retry_of`, status, created_at)."""
        rows = self._query(
            f"SELECT id, retry_of, status, created_at FROM {self.JOBS} WHERE retry_of IS NOT NULL"
        )
        return [(job_id, of, Status(status), created) for job_id, of, status, created in rows]

    def oldest_pending_age(self, now: float | None = None) -> float | None:
        rows = self._query(f"SELECT min(created_at) FROM {self.JOBS} WHERE status = 'pending'")
        oldest: float | None = rows[0][0] if rows else None
        return None if oldest is None else (now or time.time()) - oldest

    def waiting(self, jobs: Sequence[Job], now: float) -> dict[str, dict[str, object]]:
        return held_back(jobs, now, self._query, (self.LIMITS, self.JOBS, self.PAUSES), self.MARK)

    def pauses(self) -> builtins.list[Pause]:
        return stored_pauses(self._query, self.PAUSES)

    def pause_figures(self, now: float) -> builtins.list[tuple[Pause, int]]:
        return pause_figures(self.pauses(), now, self._query, self.JOBS, self.MARK)

    def key_limit_figures(self, now: float) -> builtins.list[tuple[str, int, int, int, int]]:
        limits = published_limits(self._query, self.LIMITS)
        return key_limit_figures(limits, now, self._query, self.JOBS, self.MARK)

    def expired_count(self) -> int:
        # Worded as the partial index over expired jobs is, so that it is the one read.
        rows = self._query(
            f"SELECT count(*) FROM {self.JOBS} WHERE status = 'canceled' AND last_error = 'expired'"
        )
        return int(rows[0][0]) if rows else 0

    def dependency_counts(self) -> tuple[int, int]:
        held = self._query(f"SELECT count(*) FROM {self.JOBS} WHERE {self.HELD}")
        canceled = self._query(
            f"SELECT count(*) FROM {self.JOBS} WHERE status = 'canceled'"
            " AND canceled_by IS NOT NULL"
        )
        return (int(held[0][0]) if held else 0, int(canceled[0][0]) if canceled else 0)

    def limit_figures(self, now: float) -> builtins.list[tuple[str, int, int, int]]:
        limits = published_limits(self._query, self.LIMITS)
        return limit_figures(limits, now, self._query, self.JOBS, self.MARK)
