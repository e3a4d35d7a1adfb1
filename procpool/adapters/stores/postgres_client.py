"""The client's side of a PostgreSQL store: reads, submissions and cancels, directly.

With `database_url` set, `Client` (and so the CLI and the HTTP API) uses this in
place of the read-only SQLite reader and the inbox: what it reads is every daemon's
jobs, a submission is committed when `submit` returns (idempotent by id and digest,
as ingestion is: CONTRACT section 2), and a cancel reaches the job wherever it runs:
a pending job is canceled at once; a running one gets `cancel_requested` and a
notification to the daemon that owns it, which also polls for it (a notification
is lost with a dropped connection).

It is a `JobReader` (adapters/stores/job_reader.py: the reads of the client, the CLI,
`stats` and the HTTP API, as `StoreReader` answers them on SQLite; the reads worded
alike are in sql_reads.py), plus `submit`, `cancel`, `pause`, `resume` and `daemons`.
"""

from __future__ import annotations

import builtins
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import psycopg

from procpool.adapters.stores.postgres import (
    CANCEL_CHANNEL,
    JOB_COLUMNS,
    JOBS_CHANNEL,
    connect,
    copy_checkpoint,
    dependents_of,
    held_ids,
    held_jobs,
    hold,
    insert_unique_job,
    inserted_row,
    lift_pauses,
    lock_ids,
    lock_pauses,
    migrate,
    notify_schedules,
    release_jobs,
    schedule_rows,
    served_types,
    write_pause,
)
from procpool.adapters.stores.schedule_rows import ScheduleRows
from procpool.adapters.stores.sql_reads import Rows, SqlReads, worker_pairs
from procpool.adapters.stores.sqlite import RUN_COLUMNS, _run
from procpool.adapters.stores.stats import DaemonOnDatabase
from procpool.application.ports import WorkerRecord, WorkerReport
from procpool.application.supervisor.dependents import Dependents
from procpool.domain.dependencies import problems
from procpool.domain.errors import BatchJobRefused, DuplicateId, InvalidJobFile, ProcpoolError
from procpool.domain.job import Job, Run, Status
from procpool.domain.pauses import Pause
from procpool.domain.schedules import (
    Changes,
    Schedule,
    ScheduleError,
    UnknownSchedule,
    diff,
    job_of,
)
from procpool.domain.spec import JobDefaults, JobSpec, TypeDefaults, check_expiry, show, to_job

STATEMENT_TIMEOUT = 30.0
T = TypeVar("T")


def _check_after(db: psycopg.Connection[Any], jobs: Sequence[Job]) -> None:
    """Every parent the jobs name exists or is one of them; none names itself; they
    form no cycle. Raises InvalidJobFile (BatchJobRefused, of several) naming the id."""
    parents = sorted({parent for job in jobs for parent in job.after})
    if not parents:
        return
    rows = db.execute("SELECT id FROM procpool_jobs WHERE id = ANY(%s)", (parents,)).fetchall()
    found = problems({job.id: job.after for job in jobs}, {row[0] for row in rows})
    if not found:
        return
    message = f"job {found[0].job_id}: {found[0].message}"
    if len(jobs) == 1:
        raise InvalidJobFile(message)
    number = next(n for n, job in enumerate(jobs, 1) if job.id == found[0].job_id)
    raise BatchJobRefused(
        f"job {number} of {len(jobs)}: {message}; none of the batch was stored", number, message
    )


class _Graph:
    """The dependencies of a client's transaction: the jobs it submits or cancels
    release or cancel the jobs that wait for them, as a daemon's turn would
    (application/supervisor/dependents.py), in the same transaction."""

    def __init__(self, db: psycopg.Connection[Any]) -> None:
        self.db = db
        self.settle = Dependents(self, self._cancel, lambda *args, **fields: None)

    def dependents(self, parent_id: str, after: str, limit: int) -> builtins.list[str]:
        return dependents_of(self.db, parent_id, after, limit)

    def held_ids(self, after: str, limit: int) -> builtins.list[str]:
        return held_ids(self.db, after, limit)

    def settle_all(self) -> None:
        """Settle what the transaction changed, to its end (no turn to go on later)."""
        while self.settle.backlog:
            self.settle.settle()

    def held(
        self, job_ids: Sequence[str], arrived: bool = False
    ) -> builtins.list[tuple[Job, dict[str, Status]]]:
        return held_jobs(self.db, job_ids, arrived)

    def release(self, job_ids: Sequence[str]) -> None:
        release_jobs(self.db, job_ids)

    def _cancel(self, new: Job, old: Job) -> bool:
        """A held job canceled by its parent (`job.cancel_by_parent`), as a compare-and-set."""
        assert new.status is Status.CANCELED and old.status is Status.PENDING
        done = self.db.execute(
            "UPDATE procpool_jobs SET status = 'canceled', updated_at = %s, finished_at = %s,"
            " last_error = %s, canceled_by = %s WHERE id = %s AND status = 'pending'",
            (new.updated_at, new.updated_at, new.last_error, new.canceled_by, new.id),
        ).rowcount
        if done:
            self.settle.ended(new.id, new.updated_at)
        return bool(done)


class PostgresClientStore(SqlReads):
    """A client's connection to the shared store, opened at first use.

    Raises (from every method): ProcpoolError when the database cannot be reached.
    """

    JOBS = "procpool_jobs"
    MARK = "%s"
    LOOKUP_CHUNK = sys.maxsize  # one statement: ANY(%s) takes one array, of any length
    PARENTS = "procpool_job_parents"
    HELD = "status = 'pending' AND held"
    LIMITS = "procpool_limits"
    PAUSES = "procpool_pauses"
    SCHEDULES = "procpool_schedules"
    SCHEDULE_SKIPS = "procpool_schedule_skips"
    CHECKPOINTS = "procpool_checkpoints"

    def __init__(self, url: str, defaults: JobDefaults) -> None:
        self.url = url
        self.defaults = defaults  # the configuration's max_attempts and timeout
        self._db: psycopg.Connection[Any] | None = None
        self._staged: psycopg.Connection[Any] | None = None  # has procpool_staged (_insert)

    def _connection(self) -> psycopg.Connection[Any]:
        if self._db is None or self._db.closed or self._db.broken:
            if self._db is not None:
                self._db.close()  # a broken one: its socket, else left to the collector
            try:
                self._db = connect(self.url, STATEMENT_TIMEOUT)
                # The client may come first: the tables exist before it reads or writes.
                migrate(self._db)
            except psycopg.OperationalError as error:
                raise ProcpoolError(
                    f"cannot reach the PostgreSQL database of database_url: {error}"
                ) from None
        return self._db

    def _retried(self, operation: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`operation` on the connection; once more on a new one if the old one broke
        (the database restarted, a proxy dropped it). Every operation here may run twice:
        reads, and writes that are idempotent (a submission by id and digest, a cancel).
        """
        try:
            return operation(self._connection())
        except psycopg.OperationalError as error:
            if self._db is None or not self._db.broken:
                raise ProcpoolError(f"the PostgreSQL database failed: {error}") from None
        try:
            return operation(self._connection())
        except psycopg.OperationalError as error:
            raise ProcpoolError(f"the PostgreSQL database failed: {error}") from None

    def _query(self, sql: str, parameters: Sequence[Any] = ()) -> Rows:
        return self._retried(lambda db: db.execute(sql, parameters).fetchall())

    def exists(self) -> bool:
        return True  # the database is the store: created on first use

    # ------------------------------------------------------------- writing

    def job_defaults(self) -> JobDefaults:
        """What a job that leaves a field out gets, as a daemon would give it: the
        handlers' defaults that the daemons publish beside the limits (the last one to
        start or reload wrote them; none before a daemon has run), over the
        configuration's."""
        rows = self._query(
            "SELECT type, timeout, max_attempts, priority FROM procpool_limits"
            " WHERE timeout IS NOT NULL OR max_attempts IS NOT NULL OR priority IS NOT NULL"
        )
        types = {row[0]: TypeDefaults(row[1], row[2], row[3]) for row in rows}
        return JobDefaults(self.defaults.max_attempts, self.defaults.timeout, types)

    def submit_spec(self, job_spec: JobSpec) -> str:
        """Submit one checked job (its id set), as a daemon would ingest its file; returns
        its id, or that of the live job that holds its unique_key."""
        assert job_spec.id is not None
        now = time.time()
        check_expiry(job_spec, now)
        defaults = self.job_defaults()
        job = to_job(job_spec, job_id=job_spec.id, defaults=defaults, now=now)
        source = job_spec.retry_of if job_spec.from_checkpoint else None
        taken = self.submit([job], None if source is None else {job.id: source})
        return taken.get(job_spec.id, job_spec.id)

    def submit(
        self, jobs: Sequence[Job], resumes: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Insert the jobs, all or none, in one transaction; an id that exists with the
        same digest is the same submission (nothing changes). A job whose unique_key a
        live job holds is not inserted: returns those, new id -> the holder's id.
        `resumes`: new id -> the job whose last checkpoint it starts from.

        Raises:
            DuplicateId: an id exists with different content; nothing was inserted.
            BatchJobRefused: (of several jobs) one has a type no daemon alive serves.
            InvalidJobFile: the one job has such a type.
        """
        return self._retried(lambda db: self._insert(db, jobs, resumes or {}))

    def _insert(
        self, db: psycopg.Connection[Any], jobs: Sequence[Job], resumes: Mapping[str, str]
    ) -> dict[str, str]:
        served = served_types(db)
        # Empty: no daemon is alive to judge the types; the jobs wait for one, as a file
        # waits in an inbox whose daemon is down.
        if served:
            unknown = sorted({job.type for job in jobs} - served)
            if unknown:
                message = (
                    f"unknown job type {show(unknown[0])}; no daemon alive on the database"
                    f" has its handler; registered: {', '.join(sorted(served))}"
                )
                if len(jobs) == 1:
                    raise InvalidJobFile(message)
                number = next(n for n, job in enumerate(jobs, 1) if job.type == unknown[0])
                raise BatchJobRefused(
                    f"job {number} of {len(jobs)}: {message}; none of the batch was stored",
                    number,
                    message,
                )
        with db.transaction():
            _check_after(db, jobs)
            # The rows go to a table of this session first, with no lock that a daemon
            # waits for; the ids' stripes (`lock_ids`) are taken only for the statement
            # that moves them, so a daemon that ingests meanwhile waits for that
            # statement and the commit, not for the whole transfer (about a quarter of
            # it). The table is made once a session and emptied at each commit: made at
            # each submit (ON COMMIT DROP), its catalog rows were a third of a one-job
            # submit's time (2.3 of 6.8 ms). IF NOT EXISTS: a pooler's session may have it.
            if self._staged is not db:
                db.execute(
                    "CREATE TEMPORARY TABLE IF NOT EXISTS procpool_staged"
                    " (LIKE procpool_jobs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
            with db.cursor().copy(f"COPY procpool_staged ({JOB_COLUMNS}) FROM STDIN") as copy:
                for job in jobs:
                    copy.write_row(inserted_row(job))
            lock_ids(db, [job.id for job in jobs])
            taken: dict[str, str] = {}
            for job in sorted(jobs, key=lambda j: (j.type, j.unique_key or "")):
                if job.unique_key is not None:
                    taken.update(insert_unique_job(db, job))
            if taken:
                db.execute("DELETE FROM procpool_staged WHERE id = ANY(%s)", (list(taken),))
            inserted = {
                row[0]
                for row in db.execute(
                    f"INSERT INTO procpool_jobs ({JOB_COLUMNS}) SELECT {JOB_COLUMNS}"
                    " FROM procpool_staged"
                    " ON CONFLICT (id) DO NOTHING RETURNING id"
                )
            }
            differ = db.execute(
                "SELECT s.id FROM procpool_staged s LEFT JOIN procpool_jobs j ON j.id = s.id"
                " WHERE j.digest IS DISTINCT FROM s.digest LIMIT 1"
            ).fetchone()
            if differ is not None:
                raise DuplicateId.of(differ[0])
            for target, source in resumes.items():
                if target not in taken:
                    copy_checkpoint(db, source, target)
            # Keyed jobs were inserted one by one above (with their edges), the others
            # here: every job of the submission not taken as a duplicate may wait.
            inserted |= {job.id for job in jobs if job.unique_key is not None} - set(taken)
            waiting = [job for job in jobs if job.after and job.id in inserted]
            if waiting:
                hold(db, [job for job in waiting if job.unique_key is None])
                graph = _Graph(db)
                graph.settle.arrived(waiting)
                graph.settle_all()
            db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
        self._staged = db  # committed: a rollback would have taken the table with it
        return taken

    def cancel(self, job_id: str) -> Status | None:
        """Cancel a job in one transaction: a pending one becomes `canceled`, a running
        one gets `cancel_requested` and its daemon a notification. Returns the job's
        status after it (the running one is canceled by its daemon), None if unknown."""
        return self._retried(lambda db: self._cancel(db, job_id))

    @staticmethod
    def _cancel(db: psycopg.Connection[Any], job_id: str) -> Status | None:
        now = time.time()
        with db.transaction():
            row = db.execute(
                "UPDATE procpool_jobs SET"
                " status = CASE WHEN status = 'pending' THEN 'canceled' ELSE status END,"
                " cancel_requested = cancel_requested OR status = 'running',"
                " updated_at = CASE WHEN status = 'pending'"
                "   THEN %s ELSE updated_at END,"
                " finished_at = CASE WHEN status = 'pending' THEN %s ELSE finished_at END"
                " WHERE id = %s RETURNING status, owner",
                (now, now, job_id),
            ).fetchone()
            if row is None:
                return None
            status, owner = row
            if status == "canceled":
                graph = _Graph(db)
                graph.settle.ended(job_id, now)
                graph.settle_all()
            if status == "running" and owner is not None:
                db.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, f"{owner}:{job_id}"))
        return Status(status)

    def pause(self, pauses: Sequence[Pause]) -> None:
        """Store these pauses in one transaction. It waits for the daemons' claims that
        read the pauses before it (`PostgresJobStore._paused`): once it returns, no
        daemon starts a job of these types until they end."""

        def write(db: psycopg.Connection[Any]) -> None:
            with db.transaction():
                lock_pauses(db)
                for pause in pauses:
                    write_pause(db, pause)

        self._retried(write)

    def resume(self, types: Sequence[str]) -> builtins.list[str]:
        """Remove the pauses of these types; the types that had one. The daemons are
        told, and claim their jobs at once."""

        def lift(db: psycopg.Connection[Any]) -> builtins.list[str]:
            with db.transaction():
                lock_pauses(db)
                return lift_pauses(db, types)

        return self._retried(lift)

    def apply_schedules(self, wanted: Sequence[Schedule]) -> Changes:
        """See SharedJobStore.apply_schedules: one transaction, the daemons told at its
        commit. A new schedule's cursor is now (it never fires for the past)."""

        def write(db: psycopg.Connection[Any]) -> Changes:
            with db.transaction():
                served = served_types(db)
                for schedule in wanted:
                    if served and schedule.type not in served:
                        raise ScheduleError(
                            schedule.name, "job.type",
                            f"unknown job type {show(schedule.type)}; the live daemons serve"
                            f" {', '.join(sorted(served))}",
                        )  # fmt: skip
                rows = self._schedules_on(db)
                changes = diff(rows.definitions(), wanted)
                if not changes.none:
                    rows.write(changes, time.time())
                    notify_schedules(db)
                return changes

        return self._retried(write)

    def change_schedule(self, name: str, action: str, at: float) -> str | None:
        """See SharedJobStore.change_schedule."""

        def change(db: psycopg.Connection[Any]) -> str | None:
            with db.transaction():
                rows = self._schedules_on(db)
                stored = next((s for s in rows.all() if s.schedule.name == name), None)
                if stored is None:
                    raise UnknownSchedule(name)
                made = None
                if action == "trigger":
                    job = job_of(stored.schedule, at, self.job_defaults(), time.time(), manual=True)
                    lock_ids(db, [job.id])
                    marks = ", ".join(["%s"] * len(JOB_COLUMNS.split(",")))
                    db.execute(f"INSERT INTO procpool_jobs ({JOB_COLUMNS}) VALUES ({marks})"
                               " ON CONFLICT (id) DO NOTHING", inserted_row(job))  # fmt: skip
                    db.execute("SELECT pg_notify(%s, '')", (JOBS_CHANNEL,))
                    rows.triggered(name, job.id)
                    made = job.id
                elif action == "remove":
                    rows.write(Changes([], [], [name]), time.time())
                else:
                    rows.set_paused(name, action == "pause", time.time())
                notify_schedules(db)
                return made

        return self._retried(change)

    @staticmethod
    def _schedules_on(db: psycopg.Connection[Any]) -> ScheduleRows:
        return schedule_rows(lambda sql, parameters: db.execute(sql, parameters).fetchall())

    # ------------------------------------------------------------- reading

    def _any_of(self, column: str, values: Sequence[str]) -> tuple[str, builtins.list[object]]:
        return f"{column} = ANY(%s)", [[*values]]

    def _before(self, before: tuple[float, str]) -> tuple[str, builtins.list[object]]:
        return "(created_at, id) < (%s, %s)", [*before]

    def worker_reports(self) -> builtins.list[tuple[WorkerRecord, WorkerReport]]:
        """The workers of the daemons alive, on every host."""
        return worker_pairs(
            self._query(
                "SELECT w.pid, w.create_time, w.state, w.current_job, w.jobs_done, w.updated_at"
                " FROM procpool_workers w JOIN procpool_daemons d ON d.id = w.daemon_id"
                " WHERE d.state = 'alive' ORDER BY d.id, w.pid"
            )
        )

    def runs(self, job_id: str) -> builtins.list[Run]:
        rows = self._query(
            f"SELECT {RUN_COLUMNS} FROM procpool_runs WHERE job_id = %s ORDER BY ended_at, lease",
            (job_id,),
        )
        return [_run(row) for row in rows]

    def recent_runs(self, since: float) -> builtins.list[Run]:
        rows = self._query(
            f"SELECT {RUN_COLUMNS} FROM procpool_runs WHERE ended_at >= %s", (since,)
        )
        return [_run(row) for row in rows]

    def daemons(self) -> builtins.list[DaemonOnDatabase]:
        """The daemons registered and not known dead: those alive, and those whose lease
        ran out and whose jobs are about to be rescued (state `expired`)."""
        rows = self._query(
            "SELECT d.id, d.host, d.home, d.pid,"
            " CASE WHEN d.expires_at < now() THEN 'expired' ELSE 'alive' END,"
            " round(extract(epoch FROM now() - d.heartbeat_at)::numeric, 3)::float8,"
            " round(extract(epoch FROM d.expires_at - now())::numeric, 3)::float8,"
            " (SELECT count(*) FROM procpool_jobs j WHERE j.owner = d.id"
            "  AND j.status = 'running')"
            " FROM procpool_daemons d WHERE d.state = 'alive' ORDER BY d.id"
        )
        return [DaemonOnDatabase(*row) for row in rows]

    def health(self) -> dict[str, Any]:
        """What to watch on the database: the age of the oldest open snapshot (seconds;
        an old one keeps dead rows that every claim walks) and the jobs table's dead
        rows."""
        (sees_all,) = self._query(
            "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')"
            " OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
        )[0]
        oldest = self._query(
            "SELECT extract(epoch FROM now() - min(xact_start))::float8 FROM pg_stat_activity"
            " WHERE backend_xid IS NOT NULL OR backend_xmin IS NOT NULL"
        )[0][0]
        dead = self._query(
            "SELECT coalesce(n_dead_tup, 0), coalesce(n_live_tup, 0) FROM pg_stat_user_tables"
            " WHERE relname = 'procpool_jobs'"
        )
        return {
            "oldest_snapshot_age": None if oldest is None else round(max(0.0, oldest), 3),
            "jobs_dead_tuples": dead[0][0] if dead else 0,
            "jobs_live_tuples": dead[0][1] if dead else 0,
            # Without pg_read_all_stats, pg_stat_activity hides the snapshots of other
            # roles' sessions (analytics, an operator's psql): the age is then this
            # role's alone, and says so.
            "snapshots_hidden": None
            if sees_all
            else "other roles' sessions are hidden from this role:"
            " GRANT pg_read_all_stats TO it to see their snapshots",
        }

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
