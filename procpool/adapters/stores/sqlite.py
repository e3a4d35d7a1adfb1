"""The SQLite job store: the only durable truth (DESIGN decision 4).

WAL mode with `synchronous=FULL`: a committed transaction survives a power
cut, and readers (the CLI) never block the writer (the supervisor). The
supervisor commits once per loop turn, so durability costs one fsync per turn.
The schema carries a version in `PRAGMA user_version`; each migration moves it
up by one, so an older store is upgraded in place on open.

Each transaction takes the write lock as it begins (`BEGIN IMMEDIATE`): a lock
held by another process (a backup, someone in the `sqlite3` shell) is met
before the turn has changed anything, waited for up to LOCK_WAIT (SQLite's
busy handler, which retries with growing sleeps up to 100 ms), and then
reported as StoreBusy for the supervisor to try again. A store file deleted or
replaced under the daemon is StoreLost: SQLite would go on writing into the
unlinked file, and every job accepted from then on would be gone at the next
start.

The WAL is bounded by `wal_max_bytes`. A reader that holds a snapshot (a backup,
a `sqlite3` shell in a transaction) keeps every frame written since from being
checkpointed, and the file grows; SQLite never shrinks it by itself. So
`journal_size_limit` truncates it to the bound whenever SQLite starts it over,
and at most once a second, after a commit, a WAL found past the bound gets a
TRUNCATE checkpoint that does not wait: it fails at once while a reader still
holds the old frames, and empties the file once none does.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import compress
from operator import attrgetter, is_not, itemgetter
from pathlib import Path
from typing import Any

import msgspec

from procpool.adapters.home.files import check_plain
from procpool.adapters.stores.job_reader import key_limit_figures, limit_figures, pause_figures
from procpool.adapters.stores.schedule_rows import ScheduleMethods, ScheduleRows
from procpool.application.block import Block
from procpool.application.events import emit
from procpool.application.ports import (
    FileProgress,
    LineError,
    SchemaTooNew,
    Serving,
    StoreBusy,
    StoreReplaced,
    WorkerRecord,
    WorkerReport,
)
from procpool.domain.job import MUTABLE_FIELDS, Job, Progress, Run, Status
from procpool.domain.limits import NO_LIMITS, Running, admit, as_rows
from procpool.domain.pauses import Pause, ended, first_wake, in_force, next_end
from procpool.domain.timefmt import rfc3339

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
    CREATE INDEX jobs_pending_order ON jobs (priority DESC, run_at) WHERE status = 'pending';
    CREATE INDEX jobs_status_updated ON jobs (status, updated_at);
    CREATE INDEX jobs_created ON jobs (created_at);
    CREATE TABLE workers (
        pid INTEGER PRIMARY KEY,
        create_time REAL NOT NULL
    );
    """,
    # 2: the attempt history, worker state for `stats`, retries of terminal jobs
    """
    CREATE TABLE runs (
        job_id TEXT NOT NULL,
        lease INTEGER NOT NULL,
        type TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker_pid INTEGER,
        started_at REAL,
        ended_at REAL NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        exit_signal TEXT,
        PRIMARY KEY (job_id, lease)
    ) WITHOUT ROWID;
    CREATE INDEX runs_ended ON runs (ended_at);
    ALTER TABLE jobs ADD COLUMN retry_of TEXT;
    -- The oldest pending job's age, for stats and metrics.
    CREATE INDEX jobs_pending_created ON jobs (created_at) WHERE status = 'pending';
    ALTER TABLE workers ADD COLUMN state TEXT;
    ALTER TABLE workers ADD COLUMN current_job TEXT;
    ALTER TABLE workers ADD COLUMN jobs_done INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workers ADD COLUMN updated_at REAL;
    """,
    # 3: due jobs apart from scheduled ones, so that finding the next due jobs is one
    # seek whatever the number of priority levels (the scheduled ones are promoted to
    # ready by `due` once their run_at has come; 0 here: the first `due` promotes them)
    """
    ALTER TABLE jobs ADD COLUMN ready INTEGER NOT NULL DEFAULT 0;
    DROP INDEX jobs_pending_order;
    CREATE INDEX jobs_ready_order ON jobs (priority DESC, run_at)
        WHERE status = 'pending' AND ready = 1;
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE status = 'pending' AND ready = 0;
    """,
    # 4: how far each large .jsonl file has been judged, committed with the jobs of its
    # lines (see ports.FileProgress), and its bad lines so far, for the report at its end
    """
    CREATE TABLE inbox_progress (
        key TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        byte_offset INTEGER NOT NULL,
        line INTEGER NOT NULL,
        entries INTEGER NOT NULL,
        accepted INTEGER NOT NULL,
        rejected INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE inbox_line_errors (
        key TEXT NOT NULL,
        line INTEGER NOT NULL,
        error TEXT NOT NULL,
        PRIMARY KEY (key, line)
    ) WITHOUT ROWID;
    """,
    # 5: concurrency limits (CONTRACT section 13). Once a limit is set or a job carries
    # a key, a claim seeks the due jobs of each type that has a slot left, past the keys
    # that have none: see `SqliteJobStore._due_limited`. The running jobs are counted
    # through their status index: an index of their own cost every job 3 us more
    # (two more index writes in its life), to spare only claims that count.
    """
    ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
    -- Expiry: only jobs that have one are in the index (`expired`, `next_expiry`).
    ALTER TABLE jobs ADD COLUMN expires_at REAL;
    CREATE INDEX jobs_expiry ON jobs (expires_at)
        WHERE status = 'pending' AND expires_at IS NOT NULL;
    -- The limits the daemon applies, for readers to say why a job waits (`waiting`);
    -- the claim never reads them.
    CREATE TABLE limits (
        type TEXT PRIMARY KEY,
        max_running INTEGER,
        key_max INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX jobs_ready_type ON jobs (type, priority DESC, run_at, concurrency_key)
        WHERE status = 'pending' AND ready = 1;
    """,
    # 6: pauses by type (CONTRACT section 13), one row per paused type, read by the
    # claim (`SqliteJobStore.due`) and by readers; `until` null: until resumed. The
    # expired jobs are counted for `stats` from an index that holds only them.
    """
    CREATE TABLE pauses (
        type TEXT PRIMARY KEY,
        until REAL,
        since REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX jobs_expired ON jobs (updated_at)
        WHERE status = 'canceled' AND last_error = 'expired';
    """,
    # 7: one index of status and creation time in place of three: the oldest pending job
    # is its first 'pending' entry, `list` merges one ordered seek per status (see
    # StoreReader.list), and each status change moves one entry as before, but a job's
    # insert writes two b-trees less and its claim one (a page less each per commit),
    # and a change of updated_at alone (a run begun, a cancel asked) writes none.
    # Retention seeks terminal jobs by created_at too (see `delete_finished_before`).
    """
    CREATE INDEX jobs_status_created ON jobs (status, created_at);
    DROP INDEX jobs_status_updated;
    DROP INDEX jobs_pending_created;
    DROP INDEX jobs_created;
    """,
    # 8: schedules (CONTRACT section 14), one row per schedule with its cursor (the last
    # occurrence handled, moved by compare-and-set with the occurrences' jobs:
    # schedule_rows.py), and the skips counted by reason. Retention never deletes them.
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        cursor REAL NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        last_job TEXT,
        last_run REAL,
        last_skip REAL,
        last_skip_reason TEXT,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE schedule_skips (
        reason TEXT PRIMARY KEY,
        count INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE jobs ADD COLUMN schedule TEXT;
    ALTER TABLE jobs ADD COLUMN scheduled_for TEXT;
    """,
    # 9: unique keys and checkpoints (CONTRACT section 16). The unique index holds only
    # the jobs that hold their key (UNIQUE_HELD), so a job frees it by the very write
    # that ends it, whatever ends it. A checkpoint's value has a table of its own: it may
    # be large, and the job's row is rewritten at every change of status.
    """
    ALTER TABLE jobs ADD COLUMN unique_key TEXT;
    ALTER TABLE jobs ADD COLUMN unique_while TEXT;
    ALTER TABLE jobs ADD COLUMN checkpoint_at REAL;
    CREATE UNIQUE INDEX jobs_unique_key ON jobs (type, unique_key)
        WHERE unique_key IS NOT NULL AND (status = 'running' AND unique_while = 'active'
            OR status = 'pending' AND (unique_while = 'active' OR lease = 0));
    CREATE TABLE checkpoints (
        job_id TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;
    """,
    # 10: dependencies (CONTRACT section 15). A job with `after` is inserted held
    # (ready = 2: in neither the ready nor the scheduled index, so the claim never
    # reads it) and released (ready = 0, then promoted as any scheduled job) in the
    # transaction that ends its last parent; one row per edge, found from either end.
    """
    ALTER TABLE jobs ADD COLUMN after_ids TEXT;
    ALTER TABLE jobs ADD COLUMN after_failure TEXT;
    ALTER TABLE jobs ADD COLUMN canceled_by TEXT;
    CREATE TABLE job_parents (
        job_id TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        PRIMARY KEY (job_id, parent_id)
    ) WITHOUT ROWID;
    CREATE INDEX job_parents_parent ON job_parents (parent_id, job_id);
    CREATE INDEX jobs_held ON jobs (id) WHERE status = 'pending' AND ready = 2;
    """,
]
# Which jobs hold their unique_key, word for word the unique index's predicate (so that
# the planner uses it): "active" ones while pending or running; "pending" ones until
# first handed to a worker (lease 0; the lease only grows, so such a job never takes its
# key back, and no two pending jobs can end up with one key).
UNIQUE_HELD = (
    "unique_key IS NOT NULL AND (status = 'running' AND unique_while = 'active'"
    " OR status = 'pending' AND (unique_while = 'active' OR lease = 0))"
)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = (
    "id, type, payload, status, attempts, max_attempts, timeout, priority, run_at,"
    " created_at, updated_at, last_error, result, progress, worker_pid, lease, started_at,"
    " cancel_requested, digest, retry_of, concurrency_key, expires_at, schedule, scheduled_for,"
    " unique_key, unique_while, checkpoint_at, after_ids, after_failure, canceled_by"
)
# The jobs' columns each migration added (by the schema version it made), which a
# reader newer than the daemon on its home reads as nulls until the daemon has migrated
# the store (`columns_at`).
ADDED_COLUMNS = {
    8: "schedule, scheduled_for",
    9: "unique_key, unique_while, checkpoint_at",
    10: "after_ids, after_failure, canceled_by",
}


def columns_at(version: int) -> str:
    """COLUMNS as a store of schema `version` has them: those added since read as null."""
    columns = COLUMNS
    for added_by, names in ADDED_COLUMNS.items():
        if version < added_by:
            columns = columns.replace(names, ", ".join(["NULL"] * len(names.split(","))))
    return columns


RUN_COLUMNS = (
    "job_id, type, lease, attempt, worker_pid, started_at, ended_at, outcome, error, exit_signal"
)
# Terminal jobs last changed before a cutoff, found by their status and creation time:
# a job is created before it last changes, so the bound on created_at only narrows the
# seek (after a step back of the wall clock, a job may wait that long more to be found).
FINISHED_BEFORE = (
    "SELECT {what} FROM jobs{hint}"
    " WHERE status IN ('completed', 'failed', 'canceled') AND created_at < ? AND updated_at < ?"
)
# Retention keeps a parent while a job that waits for it lives (CONTRACT section 15).
KEEP_PARENTS = (
    " AND NOT EXISTS (SELECT 1 FROM job_parents AS d JOIN jobs AS c ON c.id = d.job_id"
    " WHERE d.parent_id = jobs.id AND c.status IN ('pending', 'running'))"
)
DEPENDENCIES_SCHEMA = 10  # the schema that has the columns and table of dependencies
_INSERTED = (*(name.strip() for name in COLUMNS.split(",")), "ready")  # a `_row`'s columns
_PLACES = range(len(_INSERTED))
_TYPE, _CONCURRENCY_KEY = _INSERTED.index("type"), _INSERTED.index("concurrency_key")
_NULLS = (None,) * len(_INSERTED)
_progress_decoder = msgspec.json.Decoder(Progress)
# A status by its column's text: a dict look-up costs about a tenth of Status(text) (an
# Enum call, some 0.3 us a row read); Status(text) still says what is wrong with a bad one.
_STATUSES = {str(status): status for status in Status}
# Seconds a transaction waits for a lock another process holds before StoreBusy: short,
# so that the supervisor's loop regains control and says the store is busy.
LOCK_WAIT = 1.0
# Seconds a migration waits for the lock at start.
MIGRATION_LOCK_WAIT = 10.0
# Seconds between looks at the WAL's size (a stat), after a commit.
WAL_CHECK_INTERVAL = 1.0
WAL_MAX_BYTES = 8 * 1024 * 1024  # about twice the 4 MiB that auto-checkpoints keep it at


# A row of the jobs table in COLUMNS' order, as SQLite returns it (and PostgreSQL,
# whose cancel_requested is a boolean): payload and result as JSON bytes, progress
# as msgspec JSON, cancel_requested as 0 or 1.
JobRow = tuple[
    str, str, bytes, str, int, int, float | None, int, float, float, float, str | None,
    bytes | None, bytes | None, int | None, int, float | None, int, str, str | None,
    str | None, float | None, str | None, str | None, str | None, str | None, float | None,
    str | None, str | None, str | None,
]  # fmt: skip
# A row of the runs table in RUN_COLUMNS' order.
RunRow = tuple[
    str, str, int, int, int | None, float | None, float, str, str | None, str | None
]  # fmt: skip


def _job(row: JobRow) -> Job:
    (
        job_id, job_type, payload, status, attempts, max_attempts, timeout, priority,
        run_at, created_at, updated_at, last_error, result, progress, worker_pid, lease,
        started_at, cancel_requested, digest, retry_of, concurrency_key, expires_at,
        schedule, scheduled_for, unique_key, unique_while, checkpoint_at,
        after_ids, after_failure, canceled_by,
    ) = row  # fmt: skip
    return Job(
        id=job_id,
        type=job_type,
        payload=payload,
        status=_STATUSES.get(status) or Status(status),
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
        retry_of=retry_of,
        concurrency_key=concurrency_key,
        expires_at=expires_at,
        schedule=schedule,
        scheduled_for=scheduled_for,
        unique_key=unique_key,
        unique_while=unique_while,
        checkpoint_at=checkpoint_at,
        after=() if after_ids is None else tuple(after_ids.split(" ")),
        after_failure=after_failure or "cancel",
        canceled_by=canceled_by,
    )


def _run(row: RunRow) -> Run:
    job_id, job_type, lease, attempt, pid, started, ended, outcome, error, exit_signal = row
    return Run(
        job_id=job_id, type=job_type, lease=lease, attempt=attempt, worker_pid=pid,
        started_at=started, ended_at=ended, outcome=outcome, error=error, exit_signal=exit_signal,
    )  # fmt: skip


HELD = 2  # `ready` of a job that waits for its parents (migration 8)


def _is_ready(job: Job) -> int:
    """Whether a pending job was due when it was last written (the `ready` column)."""
    return int(job.run_at <= job.updated_at)


def _row(job: Job) -> tuple[*JobRow, int]:
    """The row that insert writes: the job's, then `ready`."""
    return (
        job.id, job.type, job.payload, str(job.status), job.attempts, job.max_attempts,
        job.timeout, job.priority, job.run_at, job.created_at, job.updated_at, job.last_error,
        job.result, None if job.progress is None else msgspec.json.encode(job.progress),
        job.worker_pid, job.lease, job.started_at, int(job.cancel_requested), job.digest,
        job.retry_of, job.concurrency_key, job.expires_at, job.schedule, job.scheduled_for,
        job.unique_key, job.unique_while, job.checkpoint_at, _after_ids(job),
        job.after_failure, job.canceled_by,
        HELD if job.after else _is_ready(job),
    )  # fmt: skip


@lru_cache(maxsize=64)
def _insert(given: tuple[int, ...]) -> str:
    """The INSERT of the columns at these places of a `_row`; the others are null."""
    names = ", ".join(_INSERTED[n] for n in given)
    return f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(given))})"


def _after_ids(job: Job) -> str | None:
    """`after` as its column holds it: the ids joined by spaces (an id holds none)."""
    return " ".join(job.after) if job.after else None


def _progress_column(progress: Progress | None) -> bytes | None:
    return None if progress is None else msgspec.json.encode(progress)


# The fields that a column holds converted, and how; the others it holds as they are.
_CONVERTED: dict[str, Callable[[Any], object]] = {
    "progress": _progress_column, "status": str, "cancel_requested": int,
}  # fmt: skip


# An UPDATE of save_many: its SQL, what reads a job's fields and id, and which of its
# values are converted (their places in a row, how).
_Update = tuple[str, Callable[[Job], tuple[object, ...]], list[tuple[int, Callable[[Any], object]]]]


def _column_value(job: Job, name: str) -> object:
    if name == "after_ids":
        return _after_ids(job)
    value = getattr(job, name)
    convert = _CONVERTED.get(name)
    return value if convert is None else convert(value)


def _identity(path: str) -> tuple[int, int] | None:
    """The file's device and inode, None if it is gone."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the store has schema version {version}; this procpool knows up to {SCHEMA_VERSION}",
            version,
            SCHEMA_VERSION,
        )
    for number in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[number].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {number + 1}")
        db.execute("COMMIT")


class SqliteJobStore(ScheduleMethods):
    """The writer. Used by the supervisor only."""

    shared = False  # one daemon per file: the supervisor is the only writer

    def __init__(
        self, path: Path, *, synchronous: str = "FULL", wal_max_bytes: int = WAL_MAX_BYTES
    ) -> None:
        """Open (create, migrate) the store at `path`.

        Raises:
            UnsafeHomeFile: the file, its -wal or its -shm is a link or not a regular
                file (SQLite would follow a link), or the file is another user's.
            SchemaTooNew: written by a newer procpool.
            sqlite3.Error: the file cannot be opened or is not a database.
        """
        self.path = path
        check_plain(path)
        for suffix in ("-wal", "-shm"):
            # Any owner's: a reader (a producer of the home's group) makes them when it
            # opens the store while no daemon has it open.
            check_plain(path.with_name(path.name + suffix), any_owner=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        try:
            # Takes effect only on a new, empty file: retention frees pages incrementally.
            self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {synchronous}")
            self._db.execute(f"PRAGMA busy_timeout = {int(MIGRATION_LOCK_WAIT * 1000)}")
            # 32 MiB of page cache (default 2 MiB): inserts into six b-trees at once stay in
            # memory.
            self._db.execute("PRAGMA cache_size = -32768")
            self._db.execute(f"PRAGMA journal_size_limit = {int(wal_max_bytes)}")
            _migrate(self._db)
        except BaseException:
            self._db.close()  # a store refused (SchemaTooNew) leaves no connection open
            raise
        self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT * 1000)}")
        self._path = os.fspath(path)  # stat'ed each turn: a str spares a Path's conversion
        self._identity = _identity(self._path)
        self._wal = path.with_name(path.name + "-wal")
        self._wal_max_bytes = wal_max_bytes
        self._next_wal_check = 0.0  # monotonic
        # save_many's UPDATEs by the columns they set, each with how it reads a job's
        # values (kept: made per call, they cost a save of one job about 0.3 us).
        self._updates: dict[tuple[str, ...], _Update] = {}
        # What the due query can find, known from what this process wrote since its last
        # look: no ready job (skip the SELECT), the earliest scheduled run_at (skip the
        # promotion until then; inf: none). None: not known, look.
        self._none_ready = False
        self._earliest_scheduled: float | None = None
        self._limits = NO_LIMITS
        self._served: tuple[str, ...] = ()
        # The limited claim's SELECTs, by how many keys and ids they leave out.
        self._by_type: dict[tuple[int, int], str] = {}
        self._publish = False  # the limits changed: write them for readers
        # The pauses as stored: this process is the only writer, so they are read once
        # (here, and after a rollback) and kept up to date by its own writes.
        self._pauses: dict[str, Pause] | None = None
        self._pause_end: float | None = None  # the next `until` that `due` saw
        self._stored_pauses()
        self._schedule_rows = ScheduleRows(self._read, "schedules", "schedule_skips", "?")
        # Whether any job names a parent: with none, an ended job has no dependent to
        # look up (one SELECT per job saved). This process is the only writer, so its
        # own inserts keep it true; a rolled-back one leaves it true, which costs only
        # the lookups.
        self._has_edges = (
            self._db.execute("SELECT 1 FROM job_parents LIMIT 1").fetchone() is not None
        )
        self._transaction = Block(self._begin, self._commit, self._roll_back)

    def serve(self, serving: Serving) -> None:
        """See JobStore.serve. The limits are published for readers by the next
        transaction; the defaults are not: a client of a SQLite home hands its jobs to
        the daemon."""
        self._limits, self._served = serving.limits, serving.types
        self._publish = True

    def _publish_limits(self) -> None:
        self._publish = False
        self._db.execute("DELETE FROM limits")
        self._db.executemany("INSERT INTO limits VALUES (?, ?, ?)", as_rows(self._limits))

    def transaction(self) -> Block:
        """See JobStore.transaction. Raises StoreBusy on entry, StoreReplaced if the file
        was deleted or replaced, sqlite3.Error for a store that fails."""
        return self._transaction

    def _begin(self) -> None:
        # A stat per turn (about 2 us hot; 9-14 us in a turn, cold, by profile_turn)
        # rather than every few turns: a turn committed into a deleted file would have
        # its inbox files removed after it.
        if _identity(self._path) != self._identity:
            raise StoreReplaced(
                f"the store {self.path} was deleted or replaced while the daemon ran"
            )
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                raise StoreBusy(f"{error} (another process holds {self.path.name})") from error
            raise
        if self._publish:
            try:
                self._publish_limits()
            except BaseException:
                self._roll_back()
                raise

    def _roll_back(self) -> None:
        self._db.execute("ROLLBACK")
        # What was noted of the writes undone no longer holds: look again.
        self._none_ready = False
        self._earliest_scheduled = None
        self._publish = True  # if they were written, that was undone too
        self._pauses = None

    def _commit(self) -> None:
        self._db.execute("COMMIT")
        now = time.monotonic()
        if now >= self._next_wal_check:
            self._next_wal_check = now + WAL_CHECK_INTERVAL
            self._bound_wal()

    def _bound_wal(self) -> None:
        """Empty a WAL past `wal_max_bytes` if no reader holds its frames; never waits."""
        try:
            size = os.stat(self._wal).st_size
        except FileNotFoundError:
            return
        if size <= self._wal_max_bytes:
            return
        self._db.execute("PRAGMA busy_timeout = 0")
        try:
            # A reader still on old frames makes it return busy at once (no exception).
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {int(LOCK_WAIT * 1000)}")

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def _by_id(self, column: str, job_ids: Sequence[str]) -> dict[str, str]:
        """A text column of the jobs found, by id."""
        found: dict[str, str] = {}
        if len(job_ids) == 1:  # the common case of one submission: no IN list to build
            found.update(self._db.execute(f"SELECT id, {column} FROM jobs WHERE id = ?", job_ids))
            return found
        for start in range(0, len(job_ids), 500):
            chunk = job_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            found.update(
                self._db.execute(f"SELECT id, {column} FROM jobs WHERE id IN ({marks})", chunk)
            )
        return found

    def digests(self, job_ids: Sequence[str]) -> dict[str, str]:
        return self._by_id("digest", job_ids)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Status]:
        return {job_id: Status(status) for job_id, status in self._by_id("status", job_ids).items()}

    def insert(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        rows = [_row(job) for job in jobs]
        # sqlite3 binds a None through its adapter look-ups, about 0.3 us each, and a new
        # job has some 15 of them: the columns null in every row are left out of the
        # statement (their value, null, is the column's default).
        if len(rows) == 1:  # one submit: no columns to build
            given = tuple(compress(_PLACES, map(is_not, rows[0], _NULLS)))
        else:
            columns = enumerate(zip(*rows, strict=True))
            given = tuple(n for n, column in columns if column.count(None) < len(column))
        # The NOT NULL columns at least: several, so that itemgetter gives tuples.
        self._db.executemany(_insert(given), map(itemgetter(*given), rows))
        for row in rows:
            self._noted(row[3], row[8], row[-1])
        edges = [(job.id, parent) for job in jobs for parent in job.after]
        if edges:
            self._db.executemany("INSERT INTO job_parents (job_id, parent_id) VALUES (?, ?)", edges)
            self._has_edges = True

    def dependents(self, parent_id: str, after: str, limit: int) -> list[str]:
        """See JobStore.dependents."""
        if not self._has_edges:
            return []
        rows = self._db.execute(
            "SELECT job_id FROM job_parents INDEXED BY job_parents_parent"
            " WHERE parent_id = ? AND job_id > ? ORDER BY job_id LIMIT ?",
            (parent_id, after, limit),
        )
        return [row[0] for row in rows]

    def held_ids(self, after: str, limit: int) -> list[str]:
        """See JobStore.held_ids."""
        rows = self._db.execute(
            # ready = 2 (HELD) written out: the partial index is known to serve it.
            "SELECT id FROM jobs INDEXED BY jobs_held WHERE status = 'pending' AND ready = 2"
            " AND id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [row[0] for row in rows]

    def held(
        self, job_ids: Sequence[str], arrived: bool = False
    ) -> list[tuple[Job, dict[str, Status]]]:
        """See JobStore.held: 500 jobs, and their parents, per pair of statements."""
        found: list[tuple[Job, dict[str, Status]]] = []
        for start in range(0, len(job_ids), 500):
            chunk = list(job_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            # `+`: by id, not through the status index (every pending job).
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE id IN ({marks}) AND +status = 'pending'"
                " AND +ready = ?",
                (*chunk, HELD),
            ).fetchall()
            if not rows:
                continue
            held = [_job(row) for row in rows]
            parents: dict[str, dict[str, Status]] = {job.id: {} for job in held}
            for job_id, parent, status in self._db.execute(
                "SELECT d.job_id, p.id, p.status FROM job_parents AS d"
                f" JOIN jobs AS p ON p.id = d.parent_id WHERE d.job_id IN ({marks})",
                chunk,
            ):
                if job_id in parents:
                    parents[job_id][parent] = Status(status)
            found.extend((job, parents[job.id]) for job in held)
        return found

    def release(self, job_ids: Sequence[str]) -> None:
        """See JobStore.release: the jobs join the scheduled ones, which the next `due`
        promotes once their run_at has come."""
        self._db.executemany(
            "UPDATE jobs SET ready = 0 WHERE id = ? AND status = 'pending' AND ready = ?",
            [(job_id, HELD) for job_id in job_ids],
        )
        if job_ids:
            self._earliest_scheduled = None

    def save(
        self,
        job: Job,
        *,
        expected: Status,
        expected_lease: int,
        fields: Sequence[str] = MUTABLE_FIELDS,
    ) -> bool:
        return self.save_many([(job, expected, expected_lease)], fields) == 1

    def save_many(self, saves: Sequence[tuple[Job, Status, int]], fields: Sequence[str]) -> int:
        """See JobStore.save_many: one prepared UPDATE run over every job."""
        # Naming only the columns that changed spares SQLite the upkeep of indexes
        # over the others (run_at, priority, created_at are in the pending indexes).
        names = tuple(fields)
        ready = "run_at" in names or "status" in names  # `ready` follows them
        update = self._updates.get(names)
        if update is None:
            # `ready` first, then the fields, then the id: a row's values in that order.
            sets = (["ready = ?"] if ready else []) + [f"{name} = ?" for name in names]
            sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND status = ? AND lease = ?"
            # A job's fields read by one attrgetter call, then the few that their columns
            # hold converted (`_CONVERTED`) converted in place: `_column_value` per value (a
            # call, its comparisons of the name) cost a start's save (four fields) about
            # 0.4 us more, some 7 % of its save_many.
            first = 1 if ready else 0
            converted = [
                (first + n, _CONVERTED[name]) for n, name in enumerate(names) if name in _CONVERTED
            ]
            update = self._updates[names] = (sql, attrgetter(*names, "id"), converted)
        sql, fields_and_id, converted = update
        rows: list[list[object]] = []
        for job, expected, expected_lease in saves:
            row: list[object] = [_is_ready(job)] if ready else []
            row += fields_and_id(job)
            row += (str(expected), expected_lease)
            for n, convert in converted:
                row[n] = convert(row[n])
            rows.append(row)
        written = self._db.executemany(sql, rows).rowcount
        for job, _, _ in saves:
            if job.status is Status.PENDING:
                self._noted("pending", job.run_at, _is_ready(job))
        return written

    def _noted(self, status: str, run_at: float, ready: int) -> None:
        """A pending job was written: the due query may find it, or, if it is scheduled,
        it may be the next to become due."""
        if status != "pending":
            return
        if ready:
            self._none_ready = False
        elif self._earliest_scheduled is not None and run_at < self._earliest_scheduled:
            self._earliest_scheduled = run_at

    def _scheduled_from(self, after: float) -> float | None:
        earliest: float | None
        (earliest,) = self._db.execute(
            "SELECT min(run_at) FROM jobs INDEXED BY jobs_scheduled"
            " WHERE status = 'pending' AND ready = 0 AND run_at > ?",
            (after,),
        ).fetchone()
        return earliest

    def _stored_pauses(self) -> dict[str, Pause]:
        if self._pauses is None:
            rows = self._db.execute("SELECT type, until, since FROM pauses").fetchall()
            self._pauses = {row[0]: Pause(*row) for row in rows}
        return self._pauses

    def pause(self, pause: Pause) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO pauses (type, until, since) VALUES (?, ?, ?)",
            (pause.type, pause.until, pause.since),
        )
        self._stored_pauses()[pause.type] = pause

    def resume(self, types: Sequence[str]) -> list[str]:
        stored = self._stored_pauses()
        lifted = [job_type for job_type in types if job_type in stored]
        self._db.executemany("DELETE FROM pauses WHERE type = ?", [(t,) for t in lifted])
        for job_type in lifted:
            del stored[job_type]
        return lifted

    def pauses(self) -> list[Pause]:
        return sorted(self._stored_pauses().values(), key=lambda pause: pause.type)

    def _paused(self, now: float) -> frozenset[str]:
        """The types paused at `now`; the pauses whose `until` has come are removed
        (`pause.ended`), in this transaction."""
        stored = self._stored_pauses()
        if not stored:
            self._pause_end = None
            return frozenset()
        for pause in ended(stored.values(), now):
            self.resume([pause.type])
            emit(
                "INFO", "pause.ended", f"the pause of {pause.type} ended at its until",
                type=pause.type, until=rfc3339(pause.until or now),
            )  # fmt: skip
        self._pause_end = next_end(stored.values(), now)
        return in_force(stored.values(), now)

    def due(self, now: float, limit: int) -> list[Job]:
        paused = self._paused(now)
        # Scheduled jobs whose time has come join the ready ones first: then the most
        # urgent due jobs are the head of one index, whatever the number of priority
        # levels or of jobs scheduled for later. What this process wrote tells when
        # neither query can find anything: the supervisor is the only writer.
        if self._earliest_scheduled is None or self._earliest_scheduled <= now:
            self._db.execute(
                "UPDATE jobs INDEXED BY jobs_scheduled SET ready = 1"
                " WHERE status = 'pending' AND ready = 0 AND run_at <= ?",
                (now,),
            )
            self._earliest_scheduled = self._scheduled_from(now) or math.inf
            self._none_ready = False
        if self._none_ready:
            return []
        rows = self._db.execute(
            f"SELECT {COLUMNS} FROM jobs INDEXED BY jobs_ready_order"
            " WHERE status = 'pending' AND ready = 1 ORDER BY priority DESC, run_at LIMIT ?",
            (limit,),
        ).fetchall()
        self._none_ready = not rows
        # The rows are looked at before they are made Jobs: with a limited or paused job
        # among them, `_due_limited` reads the jobs again, and these would be thrown away.
        limits = self._limits
        for row in rows:
            job_type = row[_TYPE]
            if row[_CONCURRENCY_KEY] is not None or job_type in limits.types or job_type in paused:
                return self._due_limited(limit, paused)
        return [_job(row) for row in rows]

    def _due_limited(self, limit: int, paused: frozenset[str]) -> list[Job]:
        """`due` when the head of the queue holds a limited or paused job: the running
        jobs counted
        in this transaction (the writer's lock is held; a row read per running job),
        then, for each type served with a slot left, its most urgent due jobs whose key
        has a slot left, from the index that starts with the type. A full type costs no
        row read; a full key costs the index entries of its jobs ahead of the first
        admitted one (the key is in the index: no table read). A paused type is not
        sought at all, as a full one. See `limits.admit`."""
        counts = self._db.execute(
            "SELECT type, concurrency_key, count(*) FROM jobs INDEXED BY jobs_status_created"
            " WHERE status = 'running' GROUP BY type, concurrency_key"
        ).fetchall()
        running = Running.of(counts)
        claimed: list[Job] = []
        for job_type in self._served:
            if job_type not in paused:
                claimed.extend(self._claim_type(job_type, limit, running))
        claimed.sort(key=lambda job: (-job.priority, job.run_at))
        return claimed[:limit]

    def _claim_type(self, job_type: str, want: int, running: Running) -> list[Job]:
        """Up to `want` due jobs of one type that may start, most urgent first. Each
        round admits at least its first row (its key is not full); a later round is
        needed only when a key filled within this claim."""
        limits = self._limits
        admitted: list[Job] = []
        while len(admitted) < want and job_type not in running.full_types(limits):
            full = [key for kind, key in running.full_keys(limits) if kind == job_type]
            taken = [job.id for job in admitted]
            shape = (len(full), len(taken))
            sql = self._by_type.get(shape)
            if sql is None:
                sql = (
                    f"SELECT {COLUMNS} FROM jobs INDEXED BY jobs_ready_type"
                    " WHERE status = 'pending' AND ready = 1 AND type = ?"
                    " AND (concurrency_key IS NULL OR concurrency_key NOT IN"
                    f" ({','.join('?' * len(full))})) AND id NOT IN ({','.join('?' * len(taken))})"
                    " ORDER BY priority DESC, run_at LIMIT ?"
                )
                self._by_type[shape] = sql
            page = want - len(admitted)
            rows = self._db.execute(sql, (job_type, *full, *taken, page)).fetchall()
            more = admit([_job(row) for row in rows], running, limits, page)
            admitted.extend(more)
            if len(rows) < page or not more:
                break
        return admitted

    def _read(self, sql: str, parameters: Sequence[object]) -> list[tuple[object, ...]]:
        return self._db.execute(sql, parameters).fetchall()

    def limit_figures(self, now: float) -> list[tuple[str, int, int, int]]:
        return limit_figures(self._limits, now, self._read, "jobs", "?")

    def pause_figures(self, now: float) -> list[tuple[Pause, int]]:
        return pause_figures(self.pauses(), now, self._read, "jobs", "?")

    def key_limit_figures(self, now: float) -> list[tuple[str, int, int, int, int]]:
        return key_limit_figures(self._limits, now, self._read, "jobs", "?")

    def expired(self, now: float, limit: int) -> list[Job]:
        rows = self._db.execute(
            f"SELECT {COLUMNS} FROM jobs INDEXED BY jobs_expiry WHERE status = 'pending'"
            " AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [_job(row) for row in rows]

    def next_expiry(self) -> float | None:
        earliest: float | None = self._db.execute(
            "SELECT min(expires_at) FROM jobs INDEXED BY jobs_expiry"
            " WHERE status = 'pending' AND expires_at IS NOT NULL"
        ).fetchone()[0]
        return earliest

    def next_run_at(self, after: float) -> float | None:
        known = self._earliest_scheduled
        if known is not None and known > after:
            scheduled = None if known == math.inf else known
        else:
            scheduled = self._scheduled_from(after)
        return first_wake(scheduled, self._pause_end, after)

    def left_running(self) -> list[Job]:
        return self.with_status(Status.RUNNING)

    def with_status(self, status: Status) -> list[Job]:
        rows = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE status = ?", (str(status),))
        return [_job(row) for row in rows]

    def max_lease(self) -> int:
        highest: int = self._db.execute("SELECT coalesce(max(lease), 0) FROM jobs").fetchone()[0]
        return highest

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

    def update_workers(self, reports: Sequence[WorkerReport]) -> None:
        self._db.executemany(
            "UPDATE workers SET state = ?, current_job = ?, jobs_done = ?, updated_at = ?"
            " WHERE pid = ?",
            [(w.state, w.current_job, w.jobs_done, w.updated_at, w.pid) for w in reports],
        )

    def record_runs(self, runs: Sequence[Run]) -> None:
        self._db.executemany(
            f"INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES ({','.join('?' * 10)})",
            [
                (r.job_id, r.type, r.lease, r.attempt, r.worker_pid, r.started_at, r.ended_at,
                 r.outcome, r.error, r.exit_signal)
                for r in runs
            ],
        )  # fmt: skip

    def counts(self) -> dict[tuple[str, Status], int]:
        rows = self._db.execute("SELECT type, status, count(*) FROM jobs GROUP BY type, status")
        return {(job_type, Status(status)): count for job_type, status, count in rows}

    def oldest_pending_created(self) -> float | None:
        row = self._db.execute(
            "SELECT created_at FROM jobs INDEXED BY jobs_status_created"
            " WHERE status = 'pending' ORDER BY created_at LIMIT 1"
        ).fetchone()
        return None if row is None else row[0]

    def delete_finished_before(self, cutoff: float, limit: int) -> list[tuple[str, Status]]:
        rows = self._db.execute(
            FINISHED_BEFORE.format(what="id, type, status", hint=" INDEXED BY jobs_status_created")
            + KEEP_PARENTS
            + " LIMIT ?",
            (cutoff, cutoff, limit),
        ).fetchall()
        ids = [(job_id,) for job_id, _, _ in rows]
        self._db.executemany("DELETE FROM runs WHERE job_id = ?", ids)
        self._db.executemany("DELETE FROM checkpoints WHERE job_id = ?", ids)
        self._db.executemany("DELETE FROM job_parents WHERE job_id = ?", ids)
        self._db.executemany("DELETE FROM jobs WHERE id = ?", ids)
        return [(job_type, Status(status)) for _, job_type, status in rows]

    def vacuum_step(self, pages: int) -> None:
        self._db.execute(f"PRAGMA incremental_vacuum({int(pages)})").fetchall()

    def files_in_progress(self) -> dict[str, FileProgress]:
        rows = self._db.execute(
            "SELECT key, version, byte_offset, line, entries, accepted, rejected"
            " FROM inbox_progress"
        )
        return {row[0]: FileProgress(*row) for row in rows}

    def save_progress(self, progress: FileProgress, errors: Sequence[LineError]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO inbox_progress"
            " (key, version, byte_offset, line, entries, accepted, rejected)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                progress.key, progress.version, progress.offset, progress.line,
                progress.entries, progress.accepted, progress.rejected,
            ),
        )  # fmt: skip
        self._db.executemany(
            "INSERT OR REPLACE INTO inbox_line_errors (key, line, error) VALUES (?, ?, ?)",
            [(progress.key, e.line, e.error) for e in errors],
        )

    def line_errors(self, key: str) -> list[LineError]:
        rows = self._db.execute(
            "SELECT line, error FROM inbox_line_errors WHERE key = ? ORDER BY line", (key,)
        )
        return [LineError(line, error) for line, error in rows]

    def forget_progress(self, key: str) -> None:
        self._db.execute("DELETE FROM inbox_progress WHERE key = ?", (key,))
        self._db.execute("DELETE FROM inbox_line_errors WHERE key = ?", (key,))

    # ------------------------------------------------------------- section 16

    def insert_unique(self, jobs: Sequence[Job]) -> dict[str, str]:
        """See JobStore.insert_unique. The supervisor is the only writer: a look into the
        unique index, then the insert, in its transaction, cannot be raced."""
        taken: dict[str, str] = {}
        for job in jobs:
            row = self._db.execute(
                f"SELECT id FROM jobs INDEXED BY jobs_unique_key"
                f" WHERE type = ? AND unique_key = ? AND {UNIQUE_HELD}",
                (job.type, job.unique_key),
            ).fetchone()
            if row is None:
                self.insert([job])
            else:
                taken[job.id] = row[0]
        return taken

    def write_checkpoint(self, job_id: str, lease: int, value: bytes, now: float) -> bool:
        """See JobStore.write_checkpoint."""
        updated = self._db.execute(
            "UPDATE jobs SET checkpoint_at = ? WHERE id = ? AND status = 'running' AND lease = ?",
            (now, job_id, lease),
        ).rowcount
        if updated != 1:
            return False
        self._db.execute(
            "INSERT OR REPLACE INTO checkpoints (job_id, value) VALUES (?, ?)", (job_id, value)
        )
        return True

    def checkpoints(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """See JobStore.checkpoints."""
        found: dict[str, bytes] = {}
        for job_id in job_ids:
            row = self._db.execute(
                "SELECT value FROM checkpoints WHERE job_id = ?", (job_id,)
            ).fetchone()
            if row is not None:
                found[job_id] = row[0]
        return found

    def copy_checkpoint(self, source: str, target: str) -> None:
        """See JobStore.copy_checkpoint."""
        copied = self._db.execute(
            "INSERT OR REPLACE INTO checkpoints (job_id, value)"
            " SELECT ?, value FROM checkpoints WHERE job_id = ?",
            (target, source),
        ).rowcount
        if copied:
            self._db.execute(
                "UPDATE jobs SET checkpoint_at = (SELECT checkpoint_at FROM jobs WHERE id = ?)"
                " WHERE id = ?",
                (source, target),
            )

    def close(self) -> None:
        self._db.close()
