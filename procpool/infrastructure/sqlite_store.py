"""The SQLite job store: the only durable truth (DESIGN decision 4).

WAL mode with `synchronous=FULL`: a committed transaction survives a power
cut, and readers (the CLI) never block the writer (the supervisor). The
supervisor commits once per loop turn, so durability costs one fsync per turn.
The schema carries a version in `PRAGMA user_version`; each migration moves it
up by one, so an older store is upgraded in place on open.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec

from procpool.application.ports import WorkerRecord
from procpool.domain.job import Job, Progress, Status

MIGRATIONS: list[str] = [
    # 1: jobs and the workers of the running daemon
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        payload BLOB NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        timeout REAL,
        priority INTEGER NOT NULL,
        run_at REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_error TEXT,
        result BLOB,
        progress BLOB,
        worker_pid INTEGER,
        lease INTEGER NOT NULL,
        started_at REAL,
        cancel_requested INTEGER NOT NULL,
        digest TEXT NOT NULL
    ) WITHOUT ROWID;
    -- The dispatcher's one query per turn: the next due jobs by priority, then run_at.
    CREATE INDEX jobs_pending_order ON jobs (priority DESC, run_at) WHERE status = 'pending';
    -- When the next delayed or retried job becomes due, to set the loop's timeout.
    CREATE INDEX jobs_pending_run_at ON jobs (run_at) WHERE status = 'pending';
    CREATE INDEX jobs_status_updated ON jobs (status, updated_at);
    CREATE INDEX jobs_created ON jobs (created_at);
    CREATE TABLE workers (
        pid INTEGER PRIMARY KEY,
        create_time REAL NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = (
    "id, type, payload, status, attempts, max_attempts, timeout, priority, run_at,"
    " created_at, updated_at, last_error, result, progress, worker_pid, lease, started_at,"
    " cancel_requested, digest"
)
_progress_decoder = msgspec.json.Decoder(Progress)


def _job(row: tuple) -> Job:  # type: ignore[type-arg]
    (
        job_id, job_type, payload, status, attempts, max_attempts, timeout, priority,
        run_at, created_at, updated_at, last_error, result, progress, worker_pid, lease,
        started_at, cancel_requested, digest,
    ) = row  # fmt: skip
    return Job(
        id=job_id,
        type=job_type,
        payload=payload,
        status=Status(status),
        attempts=attempts,
        max_attempts=max_attempts,
        timeout=timeout,
        priority=priority,
        run_at=run_at,
        created_at=created_at,
        updated_at=updated_at,
        last_error=last_error,
        result=result,
        progress=None if progress is None else _progress_decoder.decode(progress),
        worker_pid=worker_pid,
        lease=lease,
        started_at=started_at,
        cancel_requested=bool(cancel_requested),
        digest=digest,
    )


def _row(job: Job) -> tuple:  # type: ignore[type-arg]
    return (
        job.id, job.type, job.payload, str(job.status), job.attempts, job.max_attempts,
        job.timeout, job.priority, job.run_at, job.created_at, job.updated_at, job.last_error,
        job.result, None if job.progress is None else msgspec.json.encode(job.progress),
        job.worker_pid, job.lease, job.started_at, int(job.cancel_requested), job.digest,
    )  # fmt: skip


class SchemaTooNew(Exception):
    pass


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the store has schema version {version}; this procpool knows up to {SCHEMA_VERSION}"
        )
    for number in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[number].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {number + 1}")
        db.execute("COMMIT")


class SqliteJobStore:
    """The writer. Used by the supervisor only."""

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute(f"PRAGMA synchronous = {synchronous}")
        self._db.execute("PRAGMA busy_timeout = 10000")
        _migrate(self._db)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def digests(self, job_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                self._db.execute(f"SELECT id, digest FROM jobs WHERE id IN ({marks})", chunk)
            )
        return found

    def insert(self, jobs: Sequence[Job]) -> None:
        self._db.executemany(
            f"INSERT INTO jobs ({COLUMNS}) VALUES ({','.join('?' * 19)})", map(_row, jobs)
        )

    def save(self, job: Job, *, expected: Status, expected_lease: int) -> bool:
        cursor = self._db.execute(
            "UPDATE jobs SET status = ?, attempts = ?, run_at = ?, updated_at = ?,"
            " last_error = ?, result = ?, progress = ?, worker_pid = ?, lease = ?,"
            " started_at = ?, cancel_requested = ?"
            " WHERE id = ? AND status = ? AND lease = ?",
            (
                str(job.status), job.attempts, job.run_at, job.updated_at, job.last_error,
                job.result,
                None if job.progress is None else msgspec.json.encode(job.progress),
                job.worker_pid, job.lease, job.started_at, int(job.cancel_requested),
                job.id, str(expected), expected_lease,
            ),
        )  # fmt: skip
        return cursor.rowcount == 1

    def due(self, now: float, limit: int) -> list[Job]:
        rows = self._db.execute(
            f"SELECT {COLUMNS} FROM jobs INDEXED BY jobs_pending_order"
            " WHERE status = 'pending' AND run_at <= ? ORDER BY priority DESC, run_at LIMIT ?",
            (now, limit),
        )
        return [_job(row) for row in rows]

    def next_run_at(self) -> float | None:
        row = self._db.execute("SELECT min(run_at) FROM jobs WHERE status = 'pending'").fetchone()
        return row[0]

    def with_status(self, status: Status) -> list[Job]:
        rows = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE status = ?", (str(status),))
        return [_job(row) for row in rows]

    def max_lease(self) -> int:
        return self._db.execute("SELECT coalesce(max(lease), 0) FROM jobs").fetchone()[0]

    def add_worker(self, worker: WorkerRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO workers (pid, create_time) VALUES (?, ?)",
            (worker.pid, worker.create_time),
        )

    def remove_worker(self, pid: int) -> None:
        self._db.execute("DELETE FROM workers WHERE pid = ?", (pid,))

    def workers(self) -> list[WorkerRecord]:
        return [
            WorkerRecord(*row) for row in self._db.execute("SELECT pid, create_time FROM workers")
        ]

    def close(self) -> None:
        self._db.close()
