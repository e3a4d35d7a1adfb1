"""Read-only access to the store, for the CLI and the client (DESIGN decision 1).

A read-only connection never takes a write lock, so reading can never slow
down or block the supervisor, and a bug here cannot change a job.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procpool.adapters.stores.job_reader import held_back, limit_figures, published_limits
from procpool.adapters.stores.sqlite import (
    COLUMNS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    _job,
    _run,
)
from procpool.application.ports import WorkerRecord, WorkerReport
from procpool.domain.job import Job, Run, Status


class StoreReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

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

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
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

    def get(self, job_id: str) -> Job | None:
        rows = self._query(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def get_many(self, job_ids: Sequence[str]) -> dict[str, Job]:
        found: dict[str, Job] = {}
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT {COLUMNS} FROM jobs WHERE id IN ({marks})", chunk):
                job = _job(row)
                found[job.id] = job
        return found

    def list(
        self,
        statuses: Sequence[Status] = (),
        job_type: str | None = None,
        limit: int = 100,
        before: tuple[float, str] | None = None,
    ) -> list[Job]:
        """Jobs, newest first (by created_at, then id); `before` = (created_at, id) of
        a job: only those that come after it in this order (the HTTP API's cursor)."""
        where: builtins.list[str] = []
        parameters: builtins.list[object] = []
        if before is not None:
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            parameters.extend([before[0], before[0], before[1]])
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            parameters.extend(str(s) for s in statuses)
        if job_type is not None:
            where.append("type = ?")
            parameters.append(job_type)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT {COLUMNS} FROM jobs {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
            [*parameters, limit],
        )
        return [_job(row) for row in rows]

    def counts(self) -> dict[str, dict[str, int]]:
        """Jobs per type and status: {type: {status: n}}."""
        table: dict[str, dict[str, int]] = {}
        for job_type, status, count in self._query(
            "SELECT type, status, count(*) FROM jobs GROUP BY type, status"
        ):
            table.setdefault(job_type, {})[status] = count
        return table

    def count_finished_before(self, cutoff: float) -> int:
        """Terminal jobs last changed before `cutoff`: what retention would delete."""
        rows = self._query(
            "SELECT count(*) FROM jobs WHERE status IN ('completed', 'failed', 'canceled')"
            " AND updated_at < ?",
            (cutoff,),
        )
        return rows[0][0] if rows else 0

    def retry_links(self) -> builtins.list[tuple[str, str, Status, float]]:
        """Every job that repeats another: (id, its `retry_of`, status, created_at)."""
        rows = self._query(
            "SELECT id, retry_of, status, created_at FROM jobs WHERE retry_of NOT NULL"
        )
        return [(job_id, of, Status(status), created) for job_id, of, status, created in rows]

    def oldest_pending_age(self, now: float | None = None) -> float | None:
        rows = self._query("SELECT min(created_at) FROM jobs WHERE status = 'pending'")
        oldest: float | None = rows[0][0] if rows else None
        if oldest is None:
            return None
        return (now or time.time()) - oldest

    def worker_reports(self) -> builtins.list[tuple[WorkerRecord, WorkerReport]]:
        rows = self._query(
            "SELECT pid, create_time, state, current_job, jobs_done, updated_at FROM workers"
            " ORDER BY pid"
        )
        return [
            (
                WorkerRecord(pid, created),
                WorkerReport(pid, state or "starting", job, done, at or 0.0),
            )
            for pid, created, state, job, done, at in rows
        ]

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

    def waiting(self, jobs: Sequence[Job], now: float) -> dict[str, dict[str, object]]:
        return held_back(jobs, now, self._query, "limits", "jobs")

    def limit_figures(self, now: float) -> builtins.list[tuple[str, int, int, int]]:
        limits = published_limits(self._query, "limits")
        return limit_figures(limits, now, self._query, "jobs", "?")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
