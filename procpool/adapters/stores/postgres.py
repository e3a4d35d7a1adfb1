"""The PostgreSQL job store: one database shared by several daemons (DESIGN decision 14).

    daemon A ─┐                    ┌─ procpool_daemons: one lease per daemon (database clock)
    daemon B ─┼─ one transaction ─▶│  procpool_jobs: owner + lease (the fencing token)
    client   ─┘   per turn         └─ procpool_runs, procpool_workers, inbox progress

What keeps "never twice at once" true with several writers:

- Claims: `due` takes pending rows `FOR UPDATE SKIP LOCKED` inside the turn's
  transaction, so another daemon's turn skips them; the rows started are committed
  `running` (owner, a lease from the sequence `procpool_lease`) before any is sent.
- Fencing: every write about an attempt is a compare-and-set on (status, lease), as
  with SQLite; the lease is unique across daemons. A lost compare-and-set means
  another daemon rescued or canceled the job: `shared = True` tells the ledger that
  this is normal.
- Liveness (`tick`): each daemon renews its row every `lease / 7.5` seconds, with
  `expires_at = clock_timestamp() + lease` on the database's clock (the time of the
  renewal itself, not of its transaction's BEGIN). It fences itself (the
  supervisor kills its workers) once `lease - margin` has passed on CLOCK_BOOTTIME
  since the last renewal that committed, with margin = lease / 3. Any daemon marks
  dead those whose lease ran out more than `margin` ago and takes their running jobs
  (SKIP LOCKED: one rescuer wins; a completion that committed first wins, since the
  rescue needs `status = 'running'`). A daemon that finds itself dead registers
  anew, under a new id from a sequence (ids are never reused).

Times of jobs (run_at, created_at, ...) are the daemons' wall clocks, as with SQLite:
a skew between hosts shifts ordering and backoff, never safety, which rests on the
leases alone.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from procpool.adapters.stores.job_reader import key_limit_figures, limit_figures, pause_figures
from procpool.adapters.stores.schedule_rows import ScheduleMethods, ScheduleRows
from procpool.adapters.stores.sqlite import (
    COLUMNS,
    RUN_COLUMNS,
    UNIQUE_HELD,
    _column_value,
    _job,
)
from procpool.application.events import emit
from procpool.application.ports import (
    FileProgress,
    LineError,
    SchemaTooNew,
    Serving,
    StoreBusy,
    StoreLost,
    Tick,
    WorkerRecord,
    WorkerReport,
)
from procpool.domain.errors import ProcpoolError
from procpool.domain.job import MUTABLE_FIELDS, Job, Run, Status
from procpool.domain.limits import NO_LIMITS, Running, admit, as_rows, limited
from procpool.domain.pauses import Pause, ended, first_wake, in_force, next_end
from procpool.domain.spec import NO_TYPE_DEFAULTS, TypeDefaults
from procpool.domain.timefmt import rfc3339

MIGRATIONS: list[str] = [
    # 1: jobs, their history, the daemons and their workers, inbox progress per home
    """
    CREATE SEQUENCE procpool_lease;
    CREATE TABLE procpool_daemons (
        id bigserial PRIMARY KEY,
        host text NOT NULL,
        home text NOT NULL,
        pid integer NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(),
        heartbeat_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        state text NOT NULL DEFAULT 'alive'
    );
    CREATE INDEX procpool_daemons_alive ON procpool_daemons (expires_at) WHERE state = 'alive';
    CREATE INDEX procpool_daemons_home ON procpool_daemons (host, home);
    -- No foreign key from owner to the daemons: see SCALE-OUT.md (procrastinate#1454).
    CREATE TABLE procpool_jobs (
        id text PRIMARY KEY,
        type text NOT NULL,
        payload bytea NOT NULL,
        status text NOT NULL,
        attempts integer NOT NULL,
        max_attempts integer NOT NULL,
        timeout double precision,
        priority integer NOT NULL,
        run_at double precision NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        last_error text,
        result bytea,
        progress bytea,
        worker_pid integer,
        lease bigint NOT NULL,
        started_at double precision,
        cancel_requested boolean NOT NULL,
        digest text NOT NULL,
        retry_of text,
        owner bigint
    ) WITH (fillfactor = 85, autovacuum_vacuum_scale_factor = 0.01,
            autovacuum_analyze_scale_factor = 0.02);
    CREATE INDEX procpool_jobs_pending ON procpool_jobs (priority DESC, run_at)
        WHERE status = 'pending';
    CREATE INDEX procpool_jobs_pending_run_at ON procpool_jobs (run_at) WHERE status = 'pending';
    CREATE INDEX procpool_jobs_pending_created ON procpool_jobs (created_at)
        WHERE status = 'pending';
    CREATE INDEX procpool_jobs_owner ON procpool_jobs (owner) WHERE status = 'running';
    CREATE INDEX procpool_jobs_finished ON procpool_jobs (updated_at)
        WHERE status IN ('completed', 'failed', 'canceled');
    CREATE INDEX procpool_jobs_created ON procpool_jobs (created_at);
    CREATE TABLE procpool_runs (
        job_id text NOT NULL REFERENCES procpool_jobs (id) ON DELETE CASCADE,
        lease bigint NOT NULL,
        type text NOT NULL,
        attempt integer NOT NULL,
        worker_pid integer,
        started_at double precision,
        ended_at double precision NOT NULL,
        outcome text NOT NULL,
        error text,
        exit_signal text,
        PRIMARY KEY (job_id, lease)
    );
    CREATE INDEX procpool_runs_ended ON procpool_runs (ended_at);
    CREATE TABLE procpool_workers (
        daemon_id bigint NOT NULL,
        pid integer NOT NULL,
        create_time double precision NOT NULL,
        state text,
        current_job text,
        jobs_done integer NOT NULL DEFAULT 0,
        updated_at double precision,
        PRIMARY KEY (daemon_id, pid)
    );
    CREATE TABLE procpool_inbox_progress (
        home text NOT NULL,
        key text NOT NULL,
        version text NOT NULL,
        byte_offset bigint NOT NULL,
        line bigint NOT NULL,
        entries bigint NOT NULL,
        accepted bigint NOT NULL,
        rejected bigint NOT NULL,
        PRIMARY KEY (home, key)
    );
    CREATE TABLE procpool_inbox_line_errors (
        home text NOT NULL,
        key text NOT NULL,
        line bigint NOT NULL,
        error text NOT NULL,
        PRIMARY KEY (home, key, line)
    );
    """,
    # 2: what only this machine has (`machine_identity`): an earlier run of "this host"
    # is one with the same, never one with the same hostname and home path.
    """
    ALTER TABLE procpool_daemons ADD COLUMN machine text;
    CREATE INDEX procpool_daemons_machine ON procpool_daemons (machine);
    """,
    # 3: retention finds finished jobs by finished_at, which only a status change
    # writes: no index holds updated_at any more, so a progress write changes no
    # indexed column and is a HOT update (its old version pruned in its page, no index
    # entry added).
    """
    ALTER TABLE procpool_jobs ADD COLUMN finished_at double precision;
    UPDATE procpool_jobs SET finished_at = updated_at
        WHERE status IN ('completed', 'failed', 'canceled');
    DROP INDEX procpool_jobs_finished;
    CREATE INDEX procpool_jobs_finished ON procpool_jobs (finished_at)
        WHERE status IN ('completed', 'failed', 'canceled');
    """,
    # 4: the job types each daemon has handlers for (NULL: a daemon that did not say,
    # taken to run any type); a daemon claims only its own.
    """
    ALTER TABLE procpool_daemons ADD COLUMN types text[];
    """,
    # 5: concurrency limits (CONTRACT section 13): the pending jobs sought by type
    # (`PostgresJobStore._due_limited`); the running ones are counted through
    # procpool_jobs_owner, which holds only them.
    """
    ALTER TABLE procpool_jobs ADD COLUMN concurrency_key text;
    ALTER TABLE procpool_jobs ADD COLUMN expires_at double precision;
    CREATE INDEX procpool_jobs_expiry ON procpool_jobs (expires_at)
        WHERE status = 'pending' AND expires_at IS NOT NULL;
    -- The limits the daemons apply (the last to start or reload wrote them), for
    -- readers to say why a job waits; the claim never reads them.
    CREATE TABLE procpool_limits (
        type text PRIMARY KEY,
        max_running integer,
        key_max integer
    );
    CREATE INDEX procpool_jobs_pending_type ON procpool_jobs (type, priority DESC, run_at)
        WHERE status = 'pending';
    """,
    # 6: per-type defaults (CONTRACT section 13): what @handler gives the jobs of its
    # type that leave a field out, published beside the limits for the clients that
    # write jobs themselves (PostgresClientStore.job_defaults); null: not set there.
    """
    ALTER TABLE procpool_limits ADD COLUMN timeout double precision,
        ADD COLUMN max_attempts integer, ADD COLUMN priority integer;
    """,
    # 7: pauses by type (CONTRACT section 13), shared by every daemon: each claim reads
    # them under a shared advisory lock that a writer of pauses takes exclusively
    # (`PostgresJobStore._paused`). The expired jobs are counted for `stats` from an
    # index that holds only them (created_at never changes: progress writes stay HOT).
    """
    CREATE TABLE procpool_pauses (
        type text PRIMARY KEY,
        until double precision,
        since double precision NOT NULL
    );
    CREATE INDEX procpool_jobs_expired ON procpool_jobs (created_at)
        WHERE status = 'canceled' AND last_error = 'expired';
    """,
    # 8: schedules (CONTRACT section 14), shared by every daemon: one row per schedule
    # with its cursor, moved by compare-and-set in the transaction that inserts the
    # occurrences' jobs (schedule_rows.py; a daemon planning one holds its row), and
    # the skips counted by reason. Retention never deletes them.
    """
    CREATE TABLE procpool_schedules (
        name text PRIMARY KEY,
        definition text NOT NULL,
        cursor double precision NOT NULL,
        paused boolean NOT NULL DEFAULT false,
        last_job text,
        last_run double precision,
        last_skip double precision,
        last_skip_reason text,
        updated_at double precision NOT NULL
    );
    CREATE TABLE procpool_schedule_skips (
        reason text PRIMARY KEY,
        count bigint NOT NULL
    );
    ALTER TABLE procpool_jobs ADD COLUMN schedule text, ADD COLUMN scheduled_for text;
    """,
    # 9: unique keys and checkpoints (CONTRACT section 16), as in SQLite's migration 9:
    # the unique index holds only the jobs that hold their key (UNIQUE_HELD), so the
    # write that ends a job frees it, and concurrent inserts of one key are decided by
    # the index, whichever daemon or client makes them. checkpoint_at is in no index:
    # a checkpoint's update of the job's row stays HOT.
    """
    ALTER TABLE procpool_jobs ADD COLUMN unique_key text, ADD COLUMN unique_while text,
        ADD COLUMN checkpoint_at double precision;
    CREATE UNIQUE INDEX procpool_jobs_unique_key ON procpool_jobs (type, unique_key)
        WHERE unique_key IS NOT NULL AND (status = 'running' AND unique_while = 'active'
            OR status = 'pending' AND (unique_while = 'active' OR lease = 0));
    CREATE TABLE procpool_checkpoints (
        job_id text PRIMARY KEY REFERENCES procpool_jobs (id) ON DELETE CASCADE,
        value bytea NOT NULL
    );
    """,
    # 10: dependencies (CONTRACT section 15). A job with `after` is inserted `held` and
    # released in the transaction that ends its last parent (`PostgresJobStore.release`);
    # the claim's indexes leave the held jobs out, so that any number of them costs the
    # claim nothing. One row per edge, found from either end.
    """
    ALTER TABLE procpool_jobs ADD COLUMN after_ids text, ADD COLUMN after_failure text,
        ADD COLUMN canceled_by text, ADD COLUMN held boolean NOT NULL DEFAULT false;
    CREATE TABLE procpool_job_parents (
        job_id text NOT NULL,
        parent_id text NOT NULL,
        PRIMARY KEY (job_id, parent_id)
    );
    CREATE INDEX procpool_job_parents_parent ON procpool_job_parents (parent_id, job_id);
    CREATE INDEX procpool_jobs_held ON procpool_jobs (id) WHERE status = 'pending' AND held;
    DROP INDEX procpool_jobs_pending;
    CREATE INDEX procpool_jobs_pending ON procpool_jobs (priority DESC, run_at)
        WHERE status = 'pending' AND NOT held;
    DROP INDEX procpool_jobs_pending_type;
    CREATE INDEX procpool_jobs_pending_type ON procpool_jobs (type, priority DESC, run_at)
        WHERE status = 'pending' AND NOT held;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
# One number for every procpool on a cluster: migrations take it, so two daemons that
# start at once do not both create the tables.
MIGRATION_LOCK = 0x70726F63  # "proc"
LEASE_BATCH = 64  # leases drawn from the sequence per round trip
CANCEL_CHANNEL = "procpool_cancel"
JOBS_CHANNEL = "procpool_jobs"
LISTEN_PAUSE_MIN = 0.1  # seconds before the first try to listen again
# Advisory locks of the intake (`lock_ids`): the first key says "procpool ids", the
# second is one of the stripes, a power of two.
ID_LOCK_CLASS = 0x70726F63
ID_LOCK_STRIPES = 64
# Advisory locks of limited claims (`PostgresJobStore._due_limited`): the first key says
# "procpool limits", the second is the type's hashtext. A hash collision only makes two
# types' claims take turns.
LIMIT_LOCK_CLASS = 0x706C6D74
# The advisory lock of the pauses ("ppau", 0): each claim holds it shared from its read of
# procpool_pauses to its commit; a writer of pauses takes it exclusively, so that once a
# pause has committed, no claim that read the pauses before it is still to commit.
PAUSE_LOCK = (0x70706175, 0)
# A lock another session holds (a row, an id stripe) is waited for in the turn, tried
# every BUSY_POLL seconds, logged once the wait passes BUSY_NOTICE, and given up
# BUSY_SPARE seconds before the daemon's fence (`PostgresJobStore._waiting`).
BUSY_POLL = 0.05
BUSY_NOTICE = 1.0
BUSY_SPARE = 1.0
T = TypeVar("T")
# An insert writes `held` too (JOB_COLUMNS, `inserted_row`): a job inserted free and
# held by an UPDATE after would leave a dead entry in the claim's index until vacuum.
JOB_COLUMNS = f"{COLUMNS}, held"
_MARKS = ",".join(["%s"] * len(JOB_COLUMNS.split(",")))
# A change of progress alone (a handler's ctx.progress) is written at most this often
# per job, in seconds: 4 jobs reporting 20 times a second made 2,000 dead rows a minute.
PROGRESS_WRITE_EVERY = 1.0
PROGRESS_FIELDS = frozenset({"progress", "updated_at"})
HOME_ID = "procpool.id"  # in the home: this home's part of `machine_identity`
BUSY_ERRORS = (
    psycopg.errors.QueryCanceled,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
)


@dataclass
class _KeptProgress:
    """A running job's progress writes: the latest change (`job`, to be written as a
    compare-and-set on `expected` and `lease`), and when one was last written."""

    job: Job
    expected: Status
    lease: int
    written_at: float = -math.inf  # boottime
    waiting: bool = False  # `job` holds a progress not written yet


@dataclass(frozen=True)
class Timing:
    """The liveness timings, in seconds, all derived from `lease` (config `daemon_lease`)."""

    lease: float = 15.0

    @property
    def renew_every(self) -> float:
        return self.lease / 7.5

    @property
    def margin(self) -> float:
        """Self-fence this long before the lease ends; rescue this long after it ended."""
        return self.lease / 3

    @property
    def rescue_every(self) -> float:
        return self.lease / 7.5


def boottime() -> float:
    """Seconds on a clock that goes on while the machine is suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def connect(
    url: str, statement_timeout: float, idle_in_transaction: float | None = None
) -> psycopg.Connection[Any]:
    """A connection whose every call is bounded: `connect_timeout`, TCP keepalives and
    user timeout (a half-open socket is found), `statement_timeout` and `lock_timeout`;
    with `idle_in_transaction` (seconds), the server ends the session once a transaction
    of it waited that long between two statements (its holder frozen), which frees the
    rows it locked.

    Raises:
        psycopg.OperationalError: the database cannot be reached.
    """
    milliseconds = max(1000, int(statement_timeout * 1000))
    options = f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}"
    if idle_in_transaction is not None:
        idle = max(1000, int(idle_in_transaction * 1000))
        options += f" -c idle_in_transaction_session_timeout={idle}"
    return psycopg.connect(
        url,
        autocommit=True,
        connect_timeout=max(2, int(statement_timeout)),
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=milliseconds,
        options=options,
        application_name="procpool",
    )


def migrate(db: psycopg.Connection[Any]) -> None:
    """Bring the schema up to SCHEMA_VERSION, one migration per transaction.

    Raises:
        SchemaTooNew: a newer procpool set the database up.
    """
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS procpool_schema (version integer NOT NULL)")
        row = db.execute("SELECT version FROM procpool_schema").fetchone()
        if row is None:
            db.execute("INSERT INTO procpool_schema VALUES (0)")
        version = 0 if row is None else row[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has procpool schema version {version};"
                f" this procpool knows up to {SCHEMA_VERSION}",
                version,
                SCHEMA_VERSION,
            )
        for number in range(version, SCHEMA_VERSION):
            db.execute(MIGRATIONS[number])
            db.execute("UPDATE procpool_schema SET version = %s", (number + 1,))


def lock_ids(db: psycopg.Connection[Any], job_ids: Sequence[str]) -> None:
    """Make the check-then-insert of these ids one step across daemons and clients:
    until the transaction ends, nobody else inserts any of them, and what was inserted
    before is committed and seen. Transaction-scoped advisory locks on ID_LOCK_STRIPES
    stripes of the id space (a bounded number per transaction, whatever the batch),
    always taken in ascending order, so two batches cannot deadlock."""
    if not job_ids:
        return
    db.execute(
        "SELECT pg_advisory_xact_lock(%s, stripe) FROM (SELECT DISTINCT hashtext(id) & %s"
        " AS stripe FROM unnest(%s::text[]) AS id ORDER BY stripe) AS stripes",
        (ID_LOCK_CLASS, ID_LOCK_STRIPES - 1, list(job_ids)),
    )


def try_lock_ids(db: psycopg.Connection[Any], job_ids: Sequence[str]) -> bool:
    """`lock_ids` without waiting: the stripes are taken in ascending order up to the
    first one another transaction holds (LIMIT 1 stops the walk there, so no stripe
    above it is taken and the order that rules out deadlocks holds). Returns whether
    all were taken; if not, call again later in the same transaction (those taken
    stay taken: advisory locks nest)."""
    if not job_ids:
        return True
    row = db.execute(
        "SELECT stripe FROM (SELECT DISTINCT hashtext(id) & %s AS stripe"
        " FROM unnest(%s::text[]) AS id ORDER BY stripe) AS stripes"
        " WHERE NOT pg_try_advisory_xact_lock(%s, stripe) LIMIT 1",
        (ID_LOCK_STRIPES - 1, list(job_ids), ID_LOCK_CLASS),
    ).fetchone()
    return row is None


def served_types(db: psycopg.Connection[Any]) -> set[str] | None:
    """The job types that the daemons alive on the database have handlers for; None when
    one of them did not record its types (an older procpool: it takes any)."""
    row = db.execute(
        "SELECT coalesce(bool_or(types IS NULL), false),"
        " coalesce(array_agg(DISTINCT t) FILTER (WHERE t IS NOT NULL), '{}')"
        " FROM procpool_daemons LEFT JOIN LATERAL unnest(types) AS t ON true"
        " WHERE state = 'alive'"
    ).fetchone()
    assert row is not None
    return None if row[0] else set(row[1])


def hold(db: psycopg.Connection[Any], jobs: Sequence[Job]) -> None:
    """Just inserted (held: `inserted_row`): the edges of the jobs with `after`."""
    edges = [(job.id, parent) for job in jobs for parent in job.after]
    if not edges:
        return
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO procpool_job_parents (job_id, parent_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            edges,
        )


def dependents_of(db: psycopg.Connection[Any], parent_id: str, after: str, limit: int) -> list[str]:
    """See JobStore.dependents."""
    rows = db.execute(
        "SELECT job_id FROM procpool_job_parents WHERE parent_id = %s AND job_id > %s"
        " ORDER BY job_id LIMIT %s",
        (parent_id, after, limit),
    ).fetchall()
    return [row[0] for row in rows]


def held_ids(db: psycopg.Connection[Any], after: str, limit: int) -> list[str]:
    """See JobStore.held_ids."""
    rows = db.execute(
        "SELECT id FROM procpool_jobs WHERE status = 'pending' AND held AND id > %s"
        " ORDER BY id LIMIT %s",
        (after, limit),
    ).fetchall()
    return [row[0] for row in rows]


def release_jobs(db: psycopg.Connection[Any], job_ids: Sequence[str]) -> None:
    """See JobStore.release; idle daemons are woken to claim them."""
    if job_ids:
        db.execute("UPDATE procpool_jobs SET held = false WHERE id = ANY(%s)", (list(job_ids),))
        db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))


def held_jobs(
    db: psycopg.Connection[Any], job_ids: Sequence[str], arrived: bool = False
) -> list[tuple[Job, dict[str, Status]]]:
    """Those of these jobs that are held, each with its parents' statuses (JobStore.held).

    The held jobs are locked (in the order of their ids, as every writer locks them)
    before their parents are read: two daemons that end two parents of one job at once
    take turns, and the second sees what the first committed (READ COMMITTED), so the
    last parent to end releases it. Jobs that `arrived` in this transaction are not
    seen by a parent's end that commits meanwhile (their edges are not committed yet):
    their parents are read FOR SHARE, so that such an end waits for this transaction
    and then finds them, or this read waits for the end and sees it. Only then: a
    parent's end that read its parents FOR SHARE could wait for another end that waits
    for the child it holds."""
    if not job_ids:
        return []
    rows = db.execute(
        f"SELECT {COLUMNS} FROM procpool_jobs WHERE id = ANY(%s) AND status = 'pending'"
        " AND held ORDER BY id FOR UPDATE",
        (sorted(job_ids),),
    ).fetchall()
    found = [_job(row) for row in rows]
    if not found:
        return []
    parents = db.execute(
        "SELECT d.job_id, p.id, p.status FROM procpool_job_parents AS d"
        " JOIN procpool_jobs AS p ON p.id = d.parent_id WHERE d.job_id = ANY(%s)"
        + (" ORDER BY p.id FOR SHARE OF p" if arrived else ""),
        ([job.id for job in found],),
    ).fetchall()
    statuses: dict[str, dict[str, Status]] = {job.id: {} for job in found}
    for job_id, parent, status in parents:
        statuses[job_id][parent] = Status(status)
    return [(job, statuses[job.id]) for job in found]


def lock_pauses(db: psycopg.Connection[Any]) -> None:
    """Take the pauses' lock exclusively until the transaction ends: it waits for the
    claims that read the pauses and have not committed (`PostgresJobStore._paused`)."""
    db.execute("SELECT pg_advisory_xact_lock(%s, %s)", PAUSE_LOCK)


def write_pause(db: psycopg.Connection[Any], pause: Pause) -> None:
    """Store a pause, replacing the type's earlier one (inside the caller's transaction,
    after `lock_pauses`)."""
    db.execute(
        "INSERT INTO procpool_pauses (type, until, since) VALUES (%s, %s, %s)"
        " ON CONFLICT (type) DO UPDATE SET until = excluded.until, since = excluded.since",
        (pause.type, pause.until, pause.since),
    )


def lift_pauses(db: psycopg.Connection[Any], types: Sequence[str]) -> list[str]:
    """Remove the pauses of these types; the types that had one, in the order given.
    Daemons are told (JOBS_CHANNEL) at the commit: the jobs may start at once."""
    rows = db.execute(
        "DELETE FROM procpool_pauses WHERE type = ANY(%s) RETURNING type", (list(types),)
    ).fetchall()
    gone = {row[0] for row in rows}
    if gone:
        db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
    return [job_type for job_type in types if job_type in gone]


def read_pauses(db: psycopg.Connection[Any]) -> list[Pause]:
    """Every stored pause, by type."""
    rows = db.execute("SELECT type, until, since FROM procpool_pauses ORDER BY type").fetchall()
    return [Pause(*row) for row in rows]


# A notification's payload on JOBS_CHANNEL that says the schedules changed (an apply, a
# pause): the daemons read them again.
SCHEDULES_CHANGED = "schedules"


def schedule_rows(rows: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]) -> ScheduleRows:
    """The schedules' statements (`rows` runs one); a turn's read of one row locks it,
    skipping a row another daemon holds (that one is planning the schedule)."""
    return ScheduleRows(
        rows, "procpool_schedules", "procpool_schedule_skips", "%s", " FOR UPDATE SKIP LOCKED"
    )


def notify_schedules(db: psycopg.Connection[Any]) -> None:
    """Tell the daemons, at the commit, that the schedules changed."""
    db.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, SCHEDULES_CHANGED))


def insert_unique_job(db: psycopg.Connection[Any], job: Job) -> dict[str, str]:
    """Insert one job that carries a unique_key, in the caller's transaction, unless a
    live job holds its key: then {job.id: the holder's id}, else {}."""
    while True:
        inserted = db.execute(
            f"INSERT INTO procpool_jobs ({JOB_COLUMNS}) VALUES ({_MARKS})"
            " ON CONFLICT DO NOTHING RETURNING id",
            inserted_row(job),
        ).fetchone()
        if inserted is not None:
            hold(db, [job])
            return {}
        holder = db.execute(
            f"SELECT id FROM procpool_jobs WHERE type = %s AND unique_key = %s AND {UNIQUE_HELD}",
            (job.type, job.unique_key),
        ).fetchone()
        if holder is not None and holder[0] != job.id:
            return {job.id: holder[0]}
        there = db.execute("SELECT 1 FROM procpool_jobs WHERE id = %s", (job.id,)).fetchone()
        if holder is not None or there is not None:
            return {}  # the id is there already: the caller's check of digests judges it
        # The holder ended between the two statements: the key is free; try again.


def copy_checkpoint(db: psycopg.Connection[Any], source: str, target: str) -> None:
    """JobStore.copy_checkpoint in the caller's transaction (a daemon's, or a client's)."""
    copied = db.execute(
        "INSERT INTO procpool_checkpoints (job_id, value) SELECT %s, value"
        " FROM procpool_checkpoints WHERE job_id = %s ON CONFLICT (job_id) DO NOTHING",
        (target, source),
    ).rowcount
    if copied:
        db.execute(
            "UPDATE procpool_jobs SET checkpoint_at ="
            " (SELECT checkpoint_at FROM procpool_jobs WHERE id = %s) WHERE id = %s",
            (source, target),
        )


def machine_identity(home: Path) -> str:
    """What tells an earlier run of this daemon from another host's: the id stored in the
    home (HOME/procpool.id, made at the first start: two containers with one hostname
    and home path have two), this machine's /etc/machine-id and its boot id (two VMs
    cloned from one image, home and machine id included, differ in it). A daemon of the
    same identity ran here, in this boot, so the pid file proves it dead; any other one
    is waited for like another host's, until its lease runs out. The boot id makes a
    restart after a reboot wait for the lease too."""
    path = home / HOME_ID
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        home_id = path.read_text().strip()
    else:
        home_id = uuid.uuid4().hex
        with os.fdopen(fd, "w") as file:
            file.write(home_id + "\n")
    parts = [home_id]
    for source in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            parts.append(Path(source).read_text().strip())
        except OSError:
            parts.append("")
    return ":".join(parts)


def _value(job: Job, name: str) -> object:
    """A field as its column holds it: SQLite's encoding, but a real boolean."""
    return job.cancel_requested if name == "cancel_requested" else _column_value(job, name)


def _row(job: Job) -> tuple[object, ...]:
    return tuple(_value(job, name) for name in COLUMNS.replace(" ", "").split(","))


def inserted_row(job: Job) -> tuple[object, ...]:
    """The row an insert writes, in JOB_COLUMNS' order: a job with `after` held."""
    return (*_row(job), bool(job.after))


def open_store(
    url: str, home: Path, lease: float, types: Sequence[str] | None = None
) -> PostgresJobStore:
    """The daemon's store on `url`, registered as a daemon of `home` that has handlers
    for `types` (None: any type).

    Raises:
        ProcpoolError: the database cannot be reached (the message names why, not the
            URL, which may hold a password); SchemaTooNew.
    """
    try:
        return PostgresJobStore(url, home, Timing(lease), types)
    except psycopg.OperationalError as error:
        raise ProcpoolError(
            f"cannot reach the PostgreSQL database of database_url: {error}"
        ) from None
    except psycopg.Error as error:
        raise ProcpoolError(f"the PostgreSQL database of database_url failed: {error}") from None


class PostgresJobStore(ScheduleMethods):
    """The store of one daemon on a shared database. `shared`: other writers exist."""

    shared = True

    def __init__(
        self,
        url: str,
        home: Path,
        timing: Timing | None = None,
        types: Sequence[str] | None = None,
    ) -> None:
        self.url = url
        self.types = None if types is None else sorted(types)  # None: claims any type
        self.timing = timing or Timing()
        self.host = socket.gethostname()
        self.home = str(home.resolve())
        self.machine = machine_identity(home)
        self._db = self._connect()
        migrate(self._db)
        self.daemon_id = self._register()
        self._renewed_at = boottime()  # the last renewal that committed (boottime)
        self._renewing: float | None = None  # a renewal in this transaction, sent then
        self._next_renewal = 0.0
        self._next_rescue = 0.0
        self._leases: list[int] = []
        self._progress: dict[str, _KeptProgress] = {}  # job id -> its progress writes
        self._limits = NO_LIMITS
        self._served: tuple[str, ...] = tuple(self.types or ())
        self._defaults: Mapping[str, TypeDefaults] = NO_TYPE_DEFAULTS
        self._schedule_rows = schedule_rows(self._rows)
        self._publish = False  # the limits changed: write them for readers
        self._pause_end: float | None = None  # the next `until` that `due` saw
        self._listening: psycopg.Connection[Any] | None = None
        self._listening_lost = False  # heard() found it broken: closed by listener()
        self._listen_again_at = 0.0  # boottime
        self._listen_pause = LISTEN_PAUSE_MIN

    # ------------------------------------------------------------- connection

    def _connect(self) -> psycopg.Connection[Any]:
        """A new session, its statements bounded by half the margin, and ended by the
        server if a transaction of it stays idle for a margin (this daemon frozen inside
        a turn: the rows that turn locked, its lease's row too, are freed for the rescue
        well before the lease plus margin after which the others take the jobs)."""
        return connect(self.url, self.timing.margin / 2, self.timing.margin)

    def _register(self) -> int:
        row = self._db.execute(
            "INSERT INTO procpool_daemons"
            " (host, home, machine, types, pid, heartbeat_at, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, clock_timestamp(),"
            " clock_timestamp() + make_interval(secs => %s)) RETURNING id",
            (self.host, self.home, self.machine, self.types, os.getpid(), self.timing.lease),
        ).fetchone()
        assert row is not None
        return int(row[0])

    def _reconnect(self) -> None:
        """A new session after the old one broke.

        Raises:
            StoreBusy: the database cannot be reached yet.
        """
        try:
            self._db.close()
            self._db = self._connect()
        except psycopg.OperationalError as error:
            raise StoreBusy(f"cannot reach PostgreSQL: {error}".strip()) from error

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """See JobStore.transaction. Raises StoreBusy on entry when the database cannot be
        reached (the turn then changed nothing); StoreLost when the connection breaks
        after that, the commit included (whether it happened is then unknown), or when a
        statement was canceled (BUSY_ERRORS); psycopg.Error for a statement that fails
        otherwise."""
        if self._db.closed or self._db.broken:
            self._reconnect()
        try:
            self._db.execute("BEGIN")
        except psycopg.OperationalError as error:
            self._reconnect()
            raise StoreBusy(f"lost the connection to PostgreSQL: {error}".strip()) from error
        try:
            if self._publish:
                self._publish_limits()
            yield
            self._db.execute("COMMIT")
        except BaseException as error:
            self._renewing = None
            self._publish = True  # if they were written, that was undone too
            if self._db.broken:
                raise StoreLost(f"lost the connection to PostgreSQL: {error}".strip()) from error
            try:
                self._db.execute("ROLLBACK")
            except psycopg.OperationalError as failed:
                # Ended inside a pipeline (executemany): psycopg leaves the connection
                # not broken but unable to send the rollback ("cannot exit pipeline mode
                # while busy"), which ended the daemon with exit 70. Lost all the same.
                self._db.close()
                raise StoreLost(f"lost the connection to PostgreSQL: {error}".strip()) from failed
            if isinstance(error, BUSY_ERRORS):
                # A statement canceled (statement_timeout on a server too slow), a lock
                # wait that timed out or a deadlock: the turn is rolled back, and what it
                # took in with it, so the daemon rebuilds its view from the store as
                # after a lost connection. Locks of other sessions do not end here: the
                # turn waits for them in place (`_waiting`).
                raise StoreLost(f"the store is busy, the turn was rolled back: {error}") from error
            raise
        if self._renewing is not None:
            self._renewed_at, self._renewing = self._renewing, None

    def _waiting(self, what: str, attempt: Callable[[], T | None]) -> T:
        """`attempt()` until it is not None, every BUSY_POLL seconds: None says another
        session holds a lock this turn needs. A wait longer than BUSY_NOTICE is logged
        (`store.busy`, then `store.available`). The wait ends while this daemon can still
        vouch for its lease (BUSY_SPARE before its fence): past that, the turn is given
        up as if the connection were lost.

        Raises:
            StoreLost: the lock was held until the fence came near.
        """
        result = attempt()
        if result is not None:
            return result
        began = boottime()
        noticed = False
        while result is None:
            if not noticed and boottime() - began >= BUSY_NOTICE:
                noticed = True
                emit(
                    "WARNING", "store.busy",
                    f"the store is busy: another session locks {what}; waiting for it,"
                    " nothing is lost",
                    error=f"another session locks {what}",
                )  # fmt: skip
            if self.fence_in() <= BUSY_SPARE:
                raise StoreLost(
                    f"another session locked {what} for {boottime() - began:.1f} s, until"
                    " this daemon's lease could no longer be vouched for"
                )
            time.sleep(BUSY_POLL)
            result = attempt()
        if noticed:
            waited = boottime() - began
            emit(
                "INFO", "store.available", f"the store is free again after {waited:.1f} s",
                waited_s=round(waited, 3),
            )  # fmt: skip
        return result

    def _rows(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, parameters).fetchall()

    # ------------------------------------------------------------- jobs

    def get(self, job_id: str) -> Job | None:
        rows = self._rows(f"SELECT {COLUMNS} FROM procpool_jobs WHERE id = %s", (job_id,))
        return _job(rows[0]) if rows else None

    def digests(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The digests of those ids that exist. The ids are locked until the turn ends
        (`lock_ids`): none of them appears before this turn's insert."""
        if not job_ids:
            return {}
        self._waiting("the ids being submitted", lambda: try_lock_ids(self._db, job_ids) or None)
        rows = self._rows(
            "SELECT id, digest FROM procpool_jobs WHERE id = ANY(%s)", (list(job_ids),)
        )
        return dict(rows)

    def digests_now(self, job_ids: Sequence[str]) -> dict[str, str] | None:
        """`digests`, or None at once if another transaction holds some of these ids'
        stripes (a producer's large `submit_many`): the inbox's files wait for a later
        scan rather than the turn for the producer."""
        if not try_lock_ids(self._db, job_ids):
            return None
        return self.digests(job_ids)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Status]:
        if not job_ids:
            return {}
        rows = self._rows(
            "SELECT id, status FROM procpool_jobs WHERE id = ANY(%s)", (list(job_ids),)
        )
        return {job_id: Status(status) for job_id, status in rows}

    def insert(self, jobs: Sequence[Job]) -> None:
        """The ids were checked with `digests` in this transaction, which locked them."""
        if not jobs:
            return
        with self._db.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO procpool_jobs ({JOB_COLUMNS}) VALUES ({_MARKS})",
                [inserted_row(job) for job in jobs],
            )
        hold(self._db, jobs)
        # One notification per transaction, not per job: each NOTIFY commit takes a
        # cluster-wide lock. Idle daemons wake up; busy ones will look anyway.
        self._db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))

    def dependents(self, parent_id: str, after: str, limit: int) -> list[str]:
        """See JobStore.dependents."""
        return dependents_of(self._db, parent_id, after, limit)

    def held_ids(self, after: str, limit: int) -> list[str]:
        """See JobStore.held_ids."""
        return held_ids(self._db, after, limit)

    def held(
        self, job_ids: Sequence[str], arrived: bool = False
    ) -> list[tuple[Job, dict[str, Status]]]:
        """See JobStore.held and `held_jobs`."""
        return held_jobs(self._db, job_ids, arrived)

    def release(self, job_ids: Sequence[str]) -> None:
        """See JobStore.release and `release_jobs`."""
        release_jobs(self._db, job_ids)

    def save(
        self,
        job: Job,
        *,
        expected: Status,
        expected_lease: int,
        fields: Sequence[str] = MUTABLE_FIELDS,
    ) -> bool:
        """See JobStore.save. A change of progress alone is written at most every
        PROGRESS_WRITE_EVERY seconds per job: the latest one waits here (True is
        returned for it), and is written by a later turn's `tick` or with the job's next
        other change, whichever comes first."""
        names = list(fields)
        kept = self._progress.get(job.id)
        if set(names) <= PROGRESS_FIELDS:
            if kept is None:
                kept = self._progress[job.id] = _KeptProgress(job, expected, expected_lease)
            kept.job, kept.expected, kept.lease = job, expected, expected_lease
            if boottime() - kept.written_at < PROGRESS_WRITE_EVERY:
                kept.waiting = True
                return True
            kept.written_at, kept.waiting = boottime(), False
        elif kept is not None:
            del self._progress[job.id]
            if kept.waiting and "progress" not in names:
                names.append("progress")  # `job` carries the latest progress
        return self._write(job, expected, expected_lease, names)

    def save_many(self, saves: Sequence[tuple[Job, Status, int]], fields: Sequence[str]) -> int:
        """See JobStore.save_many: each saved in turn (the supervisor of a shared store
        writes each change at once, to know a stale attempt at once)."""
        return sum(
            self.save(job, expected=status, expected_lease=lease, fields=fields)
            for job, status, lease in saves
        )

    def _write(self, job: Job, expected: Status, expected_lease: int, names: list[str]) -> bool:
        values: list[Any] = [_value(job, name) for name in names]
        if "status" in names:
            # The owner goes with `running` and is cleared when the job leaves it;
            # finished_at (retention's index) with a terminal status.
            names = [*names, "owner", "finished_at"]
            values.append(self.daemon_id if job.status is Status.RUNNING else None)
            values.append(job.updated_at if job.status.is_terminal else None)
        # The row is taken SKIP LOCKED: while another session holds it (an operator's
        # SELECT ... FOR UPDATE, a client's cancel), the turn waits here, in place and
        # without an error that would roll back what the turn took in.
        update = (
            f"UPDATE procpool_jobs SET {', '.join(f'{name} = %s' for name in names)}"
            " WHERE id = %s AND status = %s AND lease = %s AND id IN (SELECT id"
            " FROM procpool_jobs WHERE id = %s FOR NO KEY UPDATE SKIP LOCKED)"
        )
        parameters = (*values, job.id, str(expected), expected_lease, job.id)

        def attempt() -> bool | None:
            if self._db.execute(update, parameters).rowcount == 1:
                return True
            rows = self._rows("SELECT status, lease FROM procpool_jobs WHERE id = %s", (job.id,))
            held = bool(rows) and rows[0] == (str(expected), expected_lease)
            return None if held else False  # held: another session locks the row

        return self._waiting(f"job {job.id}", attempt)

    def _schedules_written(self) -> None:
        self._schedules_changed = True
        notify_schedules(self._db)

    def pause(self, pause: Pause) -> None:
        """(An inbox request on a shared store.) The pauses' lock is tried, as every
        lock of a turn, so that the turn never blocks past its fence."""
        self._lock_pauses()
        write_pause(self._db, pause)

    def resume(self, types: Sequence[str]) -> list[str]:
        self._lock_pauses()
        return lift_pauses(self._db, types)

    def _lock_pauses(self) -> None:
        alone = "SELECT 1 WHERE pg_try_advisory_xact_lock(%s, %s)"
        self._waiting("the pauses", lambda: self._rows(alone, PAUSE_LOCK) or None)

    def pauses(self) -> list[Pause]:
        return read_pauses(self._db)

    def _paused(self, now: float) -> frozenset[str]:
        """The types paused at `now`, read under the pauses' lock held shared until the
        turn commits (a writer of pauses waits for this claim, and this claim for a
        writer that began first: a pause committed before this read is honoured by this
        claim, and a pause that returned was committed before any claim still to come).
        The pauses whose `until` has come are removed by the first daemon to see them
        (`pause.ended`), skipping those another is removing."""
        shared = "SELECT 1 WHERE pg_try_advisory_xact_lock_shared(%s, %s)"
        self._waiting("the pauses", lambda: self._rows(shared, PAUSE_LOCK) or None)
        pauses = read_pauses(self._db)
        if ended(pauses, now):
            for job_type, until in self._rows(
                "DELETE FROM procpool_pauses WHERE type IN (SELECT type FROM procpool_pauses"
                " WHERE until <= %s FOR UPDATE SKIP LOCKED) RETURNING type, until",
                (now,),
            ):
                emit(
                    "INFO", "pause.ended", f"the pause of {job_type} ended at its until",
                    type=job_type, until=rfc3339(until),
                )  # fmt: skip
        self._pause_end = next_end(pauses, now)
        return in_force(pauses, now)

    def due(self, now: float, limit: int) -> list[Job]:
        paused = self._paused(now)
        # Locked until the turn commits: another daemon's claim skips these rows, and
        # those this turn does not start are free again after it.
        # Only the types this daemon has handlers for: another's wait for a daemon that has.
        rows = self._rows(
            f"SELECT {COLUMNS} FROM procpool_jobs WHERE status = 'pending' AND NOT held"
            " AND run_at <= %s AND (%s::text[] IS NULL OR type = ANY(%s::text[]))"
            " ORDER BY priority DESC, run_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (now, self.types, self.types, limit),
        )
        jobs = [_job(row) for row in rows]
        if any(limited(job, self._limits) or job.type in paused for job in jobs):
            return self._due_limited(now, limit, paused)
        return jobs

    def serve(self, serving: Serving) -> None:
        """See JobStore.serve. Published, with the handlers' defaults for the clients
        that write jobs themselves, by the next transaction."""
        self._limits, self._served, self._defaults = (
            serving.limits,
            serving.types,
            serving.defaults,
        )
        self._publish = True

    def _publish_limits(self) -> None:
        self._publish = False
        self._db.execute("DELETE FROM procpool_limits")
        limits = {job_type: (most, key_most) for job_type, most, key_most in as_rows(self._limits)}
        rows = []
        for job_type in sorted({*limits, *self._defaults}):
            own = self._defaults.get(job_type, TypeDefaults())
            most, key_most = limits.get(job_type, (None, None))
            rows.append((job_type, most, key_most, own.timeout, own.max_attempts, own.priority))
        if rows:
            with self._db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO procpool_limits (type, max_running, key_max, timeout,"
                    " max_attempts, priority) VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )

    def _due_limited(self, now: float, limit: int, paused: frozenset[str]) -> list[Job]:
        """`due` when the head of the queue holds a limited or paused job: for each type
        served and not paused, its most urgent due jobs that may start. Limits are
        global across daemons: the claim of a limited type, or of jobs with a
        concurrency_key, takes the type's transaction-scoped advisory lock before it
        counts the running jobs (each
        statement sees what other daemons committed: READ COMMITTED), so that two
        daemons never both take the last slot; the lock is only tried, and a type whose
        lock another daemon holds waits for a later turn, its keyless jobs of an
        unlimited type excepted. Unlimited types without keys take no lock."""
        claimed: list[Job] = []
        for job_type in self._served:
            if job_type not in paused:
                claimed.extend(self._claim_type(job_type, now, limit))
        claimed.sort(key=lambda job: (-job.priority, job.run_at))
        return claimed[:limit]

    def _claim_type(self, job_type: str, now: float, want: int) -> list[Job]:
        limits = self._limits
        first = self._pending_of(job_type, now, [], [], want)
        if job_type not in limits.types and all(j.concurrency_key is None for j in first):
            return first
        locked = self._rows(
            "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (LIMIT_LOCK_CLASS, job_type)
        )[0][0]
        if not locked:
            unlimited = job_type not in limits.types
            return [j for j in first if unlimited and j.concurrency_key is None]
        running = Running.of(
            self._rows(
                "SELECT type, concurrency_key, count(*) FROM procpool_jobs"
                " WHERE status = 'running' AND type = %s GROUP BY type, concurrency_key",
                (job_type,),
            )
        )
        admitted: list[Job] = []
        while len(admitted) < want and job_type not in running.full_types(limits):
            full = [key for kind, key in running.full_keys(limits) if kind == job_type]
            page = want - len(admitted)
            jobs = self._pending_of(job_type, now, full, [j.id for j in admitted], page)
            more = admit(jobs, running, limits, page)
            admitted.extend(more)
            if len(jobs) < page or not more:
                break
        return admitted

    def _pending_of(
        self, job_type: str, now: float, full: list[str], taken: list[str], limit: int
    ) -> list[Job]:
        """The most urgent due jobs of a type whose keys are not in `full`, but those of
        `taken`, locked as `due` locks them."""
        rows = self._rows(
            f"SELECT {COLUMNS} FROM procpool_jobs WHERE status = 'pending' AND NOT held"
            " AND type = %s AND run_at <= %s"
            " AND (concurrency_key IS NULL OR concurrency_key <> ALL(%s))"
            " AND id <> ALL(%s) ORDER BY priority DESC, run_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (job_type, now, full, taken, limit),
        )
        return [_job(row) for row in rows]

    def limit_figures(self, now: float) -> list[tuple[str, int, int, int]]:
        return limit_figures(self._limits, now, self._rows, "procpool_jobs", "%s")

    def pause_figures(self, now: float) -> list[tuple[Pause, int]]:
        return pause_figures(read_pauses(self._db), now, self._rows, "procpool_jobs", "%s")

    def key_limit_figures(self, now: float) -> list[tuple[str, int, int, int, int]]:
        return key_limit_figures(self._limits, now, self._rows, "procpool_jobs", "%s")

    def expired(self, now: float, limit: int) -> list[Job]:
        """Locked as `due` locks: another daemon's turn skips them."""
        rows = self._rows(
            f"SELECT {COLUMNS} FROM procpool_jobs WHERE status = 'pending'"
            " AND expires_at IS NOT NULL AND expires_at <= %s ORDER BY expires_at LIMIT %s"
            " FOR UPDATE SKIP LOCKED",
            (now, limit),
        )
        return [_job(row) for row in rows]

    def next_expiry(self) -> float | None:
        rows = self._rows(
            "SELECT min(expires_at) FROM procpool_jobs"
            " WHERE status = 'pending' AND expires_at IS NOT NULL"
        )
        earliest: float | None = rows[0][0]
        return earliest

    def served_types(self) -> set[str] | None:
        """The job types the live daemons have handlers for; None: any, while a live
        daemon did not record its types (an older procpool)."""
        return served_types(self._db)

    def new_lease(self) -> int:
        """A fencing token no other daemon will ever use."""
        if not self._leases:
            self._leases = [
                row[0]
                for row in self._rows(
                    "SELECT nextval('procpool_lease') FROM generate_series(1, %s)",
                    (LEASE_BATCH,),
                )
            ]
            self._leases.reverse()
        return self._leases.pop()

    def next_run_at(self, after: float) -> float | None:
        rows = self._rows(
            "SELECT min(run_at) FROM procpool_jobs WHERE status = 'pending' AND run_at > %s"
            " AND (%s::text[] IS NULL OR type = ANY(%s::text[]))",
            (after, self.types, self.types),
        )
        earliest: float | None = rows[0][0]
        return first_wake(earliest, self._pause_end, after)

    def with_status(self, status: Status) -> list[Job]:
        rows = self._rows(f"SELECT {COLUMNS} FROM procpool_jobs WHERE status = %s", (str(status),))
        return [_job(row) for row in rows]

    def left_running(self) -> list[Job]:
        """The running jobs of the earlier daemons of this home on this machine in this
        boot (`machine_identity`), which are now dead (the pid file proves it, and their
        stale workers were killed first): marked dead here, their jobs locked for this
        transaction. Those of a daemon that only shares the hostname and home path are
        not taken: its lease decides."""
        self._db.execute(
            "UPDATE procpool_daemons SET state = 'dead'"
            " WHERE machine = %s AND id <> %s AND state = 'alive'",
            (self.machine, self.daemon_id),
        )
        rows = self._rows(
            f"SELECT {COLUMNS} FROM procpool_jobs WHERE status = 'running' AND owner IN"
            " (SELECT id FROM procpool_daemons WHERE machine = %s AND id <> %s)"
            " FOR UPDATE SKIP LOCKED",
            (self.machine, self.daemon_id),
        )
        return [_job(row) for row in rows]

    def owned(self) -> list[Job]:
        rows = self._rows(
            f"SELECT {COLUMNS} FROM procpool_jobs WHERE status = 'running' AND owner = %s",
            (self.daemon_id,),
        )
        return [_job(row) for row in rows]

    def max_lease(self) -> int:
        return int(self._rows("SELECT coalesce(max(lease), 0) FROM procpool_jobs")[0][0])

    # ------------------------------------------------------------- workers and history

    def _this_home(self) -> str:
        return "SELECT id FROM procpool_daemons WHERE machine = %s"

    def add_worker(self, worker: WorkerRecord) -> None:
        self._db.execute(
            "INSERT INTO procpool_workers (daemon_id, pid, create_time) VALUES (%s, %s, %s)"
            " ON CONFLICT (daemon_id, pid) DO UPDATE SET create_time = excluded.create_time,"
            " state = NULL, current_job = NULL, jobs_done = 0, updated_at = NULL",
            (self.daemon_id, worker.pid, worker.create_time),
        )

    def remove_worker(self, pid: int) -> None:
        self._db.execute(
            f"DELETE FROM procpool_workers WHERE pid = %s AND daemon_id IN ({self._this_home()})",
            (pid, self.machine),
        )

    def workers(self) -> list[WorkerRecord]:
        """The workers this home's daemons on this machine recorded (`machine_identity`):
        after a restart, those that may have outlived the earlier daemon."""
        rows = self._rows(
            "SELECT pid, create_time FROM procpool_workers"
            f" WHERE daemon_id IN ({self._this_home()}) ORDER BY pid",
            (self.machine,),
        )
        return [WorkerRecord(pid, created) for pid, created in rows]

    def update_workers(self, reports: Sequence[WorkerReport]) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(
                "UPDATE procpool_workers SET state = %s, current_job = %s, jobs_done = %s,"
                " updated_at = %s WHERE daemon_id = %s AND pid = %s",
                [
                    (w.state, w.current_job, w.jobs_done, w.updated_at, self.daemon_id, w.pid)
                    for w in reports
                ],
            )

    def record_runs(self, runs: Sequence[Run]) -> None:
        if not runs:
            return
        with self._db.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO procpool_runs ({RUN_COLUMNS}) VALUES ({','.join(['%s'] * 10)})"
                " ON CONFLICT (job_id, lease) DO NOTHING",
                [
                    (r.job_id, r.type, r.lease, r.attempt, r.worker_pid, r.started_at,
                     r.ended_at, r.outcome, r.error, r.exit_signal)
                    for r in runs
                ],
            )  # fmt: skip

    def counts(self) -> dict[tuple[str, Status], int]:
        rows = self._rows("SELECT type, status, count(*) FROM procpool_jobs GROUP BY type, status")
        return {(job_type, Status(status)): count for job_type, status, count in rows}

    def oldest_pending_created(self) -> float | None:
        rows = self._rows("SELECT min(created_at) FROM procpool_jobs WHERE status = 'pending'")
        oldest: float | None = rows[0][0]
        return oldest

    def delete_finished_before(self, cutoff: float, limit: int) -> list[tuple[str, Status]]:
        # SKIP LOCKED: daemons pruning at once take disjoint batches.
        rows = self._rows(
            "DELETE FROM procpool_jobs WHERE id IN (SELECT id FROM procpool_jobs AS j"
            " WHERE status IN ('completed', 'failed', 'canceled') AND finished_at < %s"
            # A parent is kept while a job that waits for it lives (CONTRACT section 15).
            " AND NOT EXISTS (SELECT 1 FROM procpool_job_parents AS d JOIN procpool_jobs"
            " AS c ON c.id = d.job_id WHERE d.parent_id = j.id AND c.status IN"
            " ('pending', 'running'))"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, type, status",
            (cutoff, limit),
        )
        self._db.execute(
            "DELETE FROM procpool_job_parents WHERE job_id = ANY(%s)", ([r[0] for r in rows],)
        )
        rows = [row[1:] for row in rows]
        return [(job_type, Status(status)) for job_type, status in rows]

    def vacuum_step(self, pages: int) -> None:
        """Nothing: autovacuum gives the space back (its settings are in the migration)."""

    # ------------------------------------------------------------- inbox progress

    def files_in_progress(self) -> dict[str, FileProgress]:
        rows = self._rows(
            "SELECT key, version, byte_offset, line, entries, accepted, rejected"
            " FROM procpool_inbox_progress WHERE home = %s",
            (self.home,),
        )
        return {row[0]: FileProgress(*row) for row in rows}

    def save_progress(self, progress: FileProgress, errors: Sequence[LineError]) -> None:
        p = progress
        self._db.execute(
            "INSERT INTO procpool_inbox_progress"
            " (home, key, version, byte_offset, line, entries, accepted, rejected)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (home, key) DO UPDATE SET"
            " version = excluded.version, byte_offset = excluded.byte_offset,"
            " line = excluded.line, entries = excluded.entries,"
            " accepted = excluded.accepted, rejected = excluded.rejected",
            (self.home, p.key, p.version, p.offset, p.line, p.entries, p.accepted, p.rejected),
        )
        with self._db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO procpool_inbox_line_errors (home, key, line, error)"
                " VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (home, key, line) DO UPDATE SET error = excluded.error",
                [(self.home, p.key, e.line, e.error) for e in errors],
            )

    def line_errors(self, key: str) -> list[LineError]:
        rows = self._rows(
            "SELECT line, error FROM procpool_inbox_line_errors WHERE home = %s AND key = %s"
            " ORDER BY line",
            (self.home, key),
        )
        return [LineError(line, error) for line, error in rows]

    def forget_progress(self, key: str) -> None:
        for table in ("procpool_inbox_progress", "procpool_inbox_line_errors"):
            self._db.execute(
                f"DELETE FROM {table} WHERE home = %s AND key = %s",
                (self.home, key),
            )

    # ------------------------------------------------------------- liveness

    def fence_in(self) -> float:
        """Seconds until this daemon must have stopped its workers unless a renewal
        commits first (negative: past it)."""
        return self._renewed_at + self.timing.lease - self.timing.margin - boottime()

    def tick_in(self) -> float:
        """Seconds until `tick` (or `listener`, while it has none) has work to do."""
        due = min(self._next_renewal, self._next_rescue)
        for kept in self._progress.values():
            if kept.waiting:
                due = min(due, kept.written_at + PROGRESS_WRITE_EVERY)
        if self._listening is None:
            due = min(due, self._listen_again_at)
        return max(0.0, due - boottime())

    def tick(self) -> Tick:
        """In the turn's transaction: renew this daemon's lease when due, say which of its
        jobs another host asked to cancel, and take the running jobs of dead daemons when
        a rescue is due. `lost`: the others declared this daemon dead; it is registered
        again under a new id, and its runs are no longer its own."""
        tick = Tick(daemon_id=self.daemon_id)
        now = boottime()
        if now >= self._next_renewal:
            self._next_renewal = now + self.timing.renew_every
            sent = boottime()
            renewed = self._db.execute(
                # clock_timestamp(), not now(): now() is when the transaction began, and
                # a turn stopped (SIGSTOP, a pause) between its BEGIN and this renewal
                # would write a lease that ends before the one this daemon believes in
                # (counted from `sent`), and another daemon would rescue its running jobs
                # while they still run.
                "UPDATE procpool_daemons SET heartbeat_at = clock_timestamp(),"
                " expires_at = clock_timestamp() + make_interval(secs => %s)"
                " WHERE id = %s AND state = 'alive'",
                (self.timing.lease, self.daemon_id),
            ).rowcount
            if not renewed:
                tick.lost = True
                self.daemon_id = tick.daemon_id = self._register()
            self._renewing = sent
            tick.cancels = [
                row[0]
                for row in self._rows(
                    "SELECT id FROM procpool_jobs"
                    " WHERE owner = %s AND status = 'running' AND cancel_requested",
                    (self.daemon_id,),
                )
            ]
        for job_id, kept in list(self._progress.items()):
            if kept.waiting and now - kept.written_at >= PROGRESS_WRITE_EVERY:
                kept.written_at, kept.waiting = now, False
                if not self._write(kept.job, kept.expected, kept.lease, list(PROGRESS_FIELDS)):
                    del self._progress[job_id]  # the attempt is over: its end says so
        if now >= self._next_rescue:
            # Jittered, so that the daemons' rescues do not fall into step.
            self._next_rescue = now + self.timing.rescue_every * random.uniform(0.75, 1.25)
            tick.orphans = self._rescue(tick)
        return tick

    # ------------------------------------------------------------- notifications

    def listener(self) -> int | None:
        """The socket on which notifications arrive (new jobs; cancels of the jobs this
        daemon runs), for the supervisor's selector; None while there is none. A lost
        listening connection is opened again, the tries spaced from 0.1 s up to the
        renewal period; until then the polling of each renewal covers what nobody heard."""
        if self._listening is not None:
            if not (self._listening.broken or self._listening_lost):
                return self._listening.fileno()
            # Closed only now, after the supervisor took its descriptor out of the
            # selector: epoll keeps watching a socket that a forked worker still holds
            # a copy of, and a new listener given the same number was reported twice.
            self._listening.close()
            self._listening = None
            self._listening_lost = False
        now = boottime()
        if now < self._listen_again_at:
            return None
        try:
            listening = self._connect()
            listening.execute(f"LISTEN {JOBS_CHANNEL}")
            listening.execute(f"LISTEN {CANCEL_CHANNEL}")
        except psycopg.OperationalError:
            self._listen_again_at = now + self._listen_pause
            self._listen_pause = min(2 * self._listen_pause, self.timing.renew_every)
            return None
        self._listening = listening
        self._listen_pause = LISTEN_PAUSE_MIN
        self._next_renewal = 0.0  # what was said while nobody listened: poll it now
        return listening.fileno()

    def reachable(self) -> bool:
        """Whether a new connection can be opened now (it is closed at once)."""
        try:
            self._connect().close()
        except psycopg.OperationalError:
            return False
        return True

    def heard(self) -> bool:
        """Take the notifications that arrived. A cancel of a job this daemon runs makes
        the next tick poll the cancels at once; a new job needs nothing more: the turn
        that woke up for it dispatches. False: the connection broke; it is closed by the
        next call of `listener`, once the caller stopped watching its descriptor."""
        if self._listening is None:
            return False
        try:
            for notice in self._listening.notifies(timeout=0):
                owner = notice.payload.partition(":")[0]
                if notice.channel == CANCEL_CHANNEL and owner == str(self.daemon_id):
                    self._next_renewal = 0.0
                elif notice.payload == SCHEDULES_CHANGED:
                    self._schedules_changed = True
        except psycopg.OperationalError:
            self._listening_lost = True
            return False
        return True

    def _rescue(self, tick: Tick) -> list[Job]:
        buried = self._rows(
            "UPDATE procpool_daemons SET state = 'dead' WHERE id IN (SELECT id FROM"
            " procpool_daemons WHERE state = 'alive'"
            " AND expires_at < clock_timestamp() - make_interval(secs => %s)"
            " FOR UPDATE SKIP LOCKED) RETURNING id",
            (self.timing.margin,),
        )
        tick.buried = bool(buried)
        rows = self._rows(
            f"SELECT {COLUMNS} FROM procpool_jobs WHERE status = 'running' AND owner IN"
            " (SELECT id FROM procpool_daemons WHERE state = 'dead')"
            " ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED"
        )
        return [_job(row) for row in rows]

    # ------------------------------------------------------------- section 16

    def insert_unique(self, jobs: Sequence[Job]) -> dict[str, str]:
        """See JobStore.insert_unique: each job is inserted unless the unique index holds
        its key (ON CONFLICT waits for another session's insert of it to commit or roll
        back), then the holder is looked up; a holder that ended in between frees the
        key, and the insert is tried again. Keys are taken in one order (by type and
        key, stably), so two sessions cannot deadlock on them."""
        taken: dict[str, str] = {}
        for job in sorted(jobs, key=lambda j: (j.type, j.unique_key or "")):
            taken.update(insert_unique_job(self._db, job))
        if len(taken) < len(jobs):
            self._db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
        return taken

    def write_checkpoint(self, job_id: str, lease: int, value: bytes, now: float) -> bool:
        """See JobStore.write_checkpoint: only while this daemon can vouch for its lease,
        and the job's row still names this daemon and this attempt."""
        if self.fence_in() <= 0:
            return False
        updated = self._db.execute(
            "UPDATE procpool_jobs SET checkpoint_at = %s WHERE id = %s AND status = 'running'"
            " AND lease = %s AND owner = %s",
            (now, job_id, lease, self.daemon_id),
        ).rowcount
        if updated != 1:
            return False
        self._db.execute(
            "INSERT INTO procpool_checkpoints (job_id, value) VALUES (%s, %s)"
            " ON CONFLICT (job_id) DO UPDATE SET value = excluded.value",
            (job_id, value),
        )
        return True

    def checkpoints(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        """See JobStore.checkpoints."""
        if not job_ids:
            return {}
        rows = self._rows(
            "SELECT job_id, value FROM procpool_checkpoints WHERE job_id = ANY(%s)",
            (list(job_ids),),
        )
        return {job_id: bytes(value) for job_id, value in rows}

    def copy_checkpoint(self, source: str, target: str) -> None:
        """See JobStore.copy_checkpoint."""
        copy_checkpoint(self._db, source, target)

    def close(self) -> None:
        """Leave: the daemon's row is marked stopped (it holds no running job now)."""
        try:
            if not (self._db.closed or self._db.broken):
                self._db.execute(
                    "UPDATE procpool_daemons SET state = 'stopped' WHERE id = %s",
                    (self.daemon_id,),
                )
        except psycopg.Error:
            pass  # the lease runs out by itself; the others rescue what is left
        finally:
            self._db.close()
            if self._listening is not None:
                self._listening.close()
