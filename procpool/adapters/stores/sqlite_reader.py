"""Read-only access to the store, for the CLI and the client (DESIGN decision 1).

A read-only connection never takes a write lock, so reading can never slow
down or block the supervisor, and a bug here cannot change a job. The reads worded
alike on PostgreSQL are in sql_reads.py; here are SQLite's own (`list` as a merge of
one seek per status, the index hint of `recent_runs`,
`count_finished_before` bounded by creation time) and its answer while the store is
not made yet.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from procpool.adapters.stores.job_reader import EVERY_JOB, JobQuery
from procpool.adapters.stores.sql_reads import Rows, SqlReads, worker_pairs
from procpool.adapters.stores.sqlite import (
    DEPENDENCIES_SCHEMA,
    FINISHED_BEFORE,
    KEEP_PARENTS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    _run,
    columns_at,
)
from procpool.application.ports import WorkerRecord, WorkerReport
from procpool.domain.job import Job, Run, Status


class StoreReader(SqlReads):
    JOBS = "jobs"
    MARK = "?"
    LOOKUP_CHUNK = 500  # under SQLite's oldest limit of parameters in a statement (999)
    PARENTS = "job_parents"
    HELD = "status = 'pending' AND ready = 2"
    LIMITS = "limits"
    PAUSES = "pauses"
    SCHEDULES = "schedules"
    SCHEDULE_SKIPS = "schedule_skips"
    CHECKPOINTS = "checkpoints"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._schema = 0  # the store's schema version, as last read (`_version`)

    def exists(self) -> bool:
        """Whether the store's file is there (the daemon creates it when it starts)."""
        return self._db is not None or self.path.is_file()

    def _connection(self) -> sqlite3.Connection | None:
        if self._db is None:
            if not self.path.exists():
                return None
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 5000")
        return self._db

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> Rows:
        db = self._connection()
        if db is None:
            return []
        try:
            return db.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError:
            # The daemon creates the file first, then its tables, one migration per
            # transaction: until the last has committed, a table may be missing.
            # (Asked of the schema version rather than read from SQLite's message.)
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                return []
            raise

    def list(self, query: JobQuery = EVERY_JOB) -> builtins.list[Job]:
        # One ordered seek per status in jobs_status_created, merged newest first: an
        # index of every job by creation time alone would cost each job a page write.
        # The seeks share one read transaction, so one snapshot: a job the daemon moves
        # from one status to another between two seeks would be listed twice, or not at
        # all.
        db = self._connection()
        if db is None:
            return []
        if query.after is not None:
            # A job's dependents are found through the edges' index and then filtered: by
            # status, SQLite would walk the status index instead.
            every = super().list(replace(query, statuses=(), limit=2**62))
            wanted = set(query.statuses) or set(Status)
            return [job for job in every if job.status in wanted][: query.limit]
        found: builtins.list[Job] = []
        db.execute("BEGIN")
        try:
            for status in dict.fromkeys(query.statuses or Status):
                found.extend(super().list(replace(query, statuses=(status,))))
        finally:
            db.execute("COMMIT")
        found.sort(key=lambda job: (job.created_at, job.id), reverse=True)
        return found[: query.limit]

    def count_finished_before(self, cutoff: float) -> int:
        # No index named: a reader may open a home its daemon has not migrated yet, and
        # the planner seeks the status index of either schema.
        keep = KEEP_PARENTS if self._version() >= DEPENDENCIES_SCHEMA else ""
        rows = self._query(
            FINISHED_BEFORE.format(what="count(*)", hint="") + keep, (cutoff, cutoff)
        )
        return int(rows[0][0]) if rows else 0

    def _version(self) -> int:
        """Read again until it is this procpool's own, which a store never leaves
        (migrations only go forward): a read of jobs then asks no PRAGMA first."""
        if self._schema < SCHEMA_VERSION:
            db = self._connection()
            self._schema = 0 if db is None else int(db.execute("PRAGMA user_version").fetchone()[0])
        return self._schema

    def _columns(self) -> str:
        """A daemon older than this reader may still run on the home: the jobs' columns
        its schema lacks read as null."""
        return columns_at(self._version())

    def _any_of(self, column: str, values: Sequence[str]) -> tuple[str, builtins.list[object]]:
        return f"{column} IN ({','.join('?' * len(values))})", [*values]

    def _before(self, before: tuple[float, str]) -> tuple[str, builtins.list[object]]:
        return "(created_at < ? OR (created_at = ? AND id < ?))", [before[0], *before]

    def worker_reports(self) -> builtins.list[tuple[WorkerRecord, WorkerReport]]:
        return worker_pairs(
            self._query(
                "SELECT pid, create_time, state, current_job, jobs_done, updated_at FROM workers"
                " ORDER BY pid"
            )
        )

    def runs(self, job_id: str) -> builtins.list[Run]:
        rows = self._query(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE job_id = ? ORDER BY lease", (job_id,)
        )
        return [_run(row) for row in rows]

    def recent_runs(self, since: float) -> builtins.list[Run]:
        rows = self._query(
            f"SELECT {RUN_COLUMNS} FROM runs INDEXED BY runs_ended WHERE ended_at >= ?", (since,)
        )
        return [_run(row) for row in rows]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
