"""Every statement the SQLite store and its reader run is served by an index (no full
scan of the jobs table), and a home at the previous schema opens and is migrated.

The statements are not listed by hand: each of the store's and the reader's methods is
called with SQLite's trace callback on, and every statement traced is asked for its
plan (EXPLAIN QUERY PLAN, with the values it ran with). A method added later without
an index shows here as soon as it is called below.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import msgspec
import pytest

from procpool.adapters.stores.job_reader import JobQuery
from procpool.adapters.stores.sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteJobStore
from procpool.adapters.stores.sqlite_reader import StoreReader
from procpool.application.ports import FileProgress, LineError, Serving, WorkerRecord, WorkerReport
from procpool.domain import job as jobs
from procpool.domain import schedules
from procpool.domain.job import Job, Status
from procpool.domain.limits import ClaimLimits
from procpool.domain.pauses import Pause

NOW = 1_800_000_000.0
# The reads that take every row by design, each once per start or per explicit command:
# the counts per type and status (the ledger's at start, `stats`), the highest lease (a
# shared store's member at start), the retry links (`procpool retry` of failed jobs).
WHOLE_TABLE = (
    "SELECT type, status, count(*) FROM jobs GROUP BY type, status",
    "SELECT coalesce(max(lease), 0) FROM jobs",
    "SELECT id, retry_of, status, created_at FROM jobs WHERE retry_of IS NOT NULL",
)


def a_job(n: int, **changes: object) -> Job:
    job = Job(
        id=f"j{n:06d}", type=("echo", "limited")[n % 2], payload=b"{}",
        run_at=NOW + (1000 if n % 7 == 0 else 0), created_at=NOW + n * 0.001,
        updated_at=NOW + n * 0.001, digest=f"d{n}", concurrency_key=f"k{n % 3}",
        expires_at=NOW + 500 if n % 5 == 0 else None,
    )  # fmt: skip
    return msgspec.structs.replace(job, **changes)


@contextmanager
def traced(db: sqlite3.Connection, into: list[str]) -> Iterator[None]:
    db.set_trace_callback(into.append)
    try:
        yield
    finally:
        db.set_trace_callback(None)


def plans(db: sqlite3.Connection, statements: list[str]) -> dict[str, str]:
    """Each traced SELECT, UPDATE or DELETE of a table and its plan, one line."""
    found = {}
    for sql in statements:
        words = sql.lstrip().split(None, 1)
        if not words or words[0].upper() not in ("SELECT", "UPDATE", "DELETE"):
            continue
        rows = db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
        found[sql] = " | ".join(row[-1] for row in rows)
    return found


def scans_jobs(plan: str) -> bool:
    """Whether a plan reads the jobs table whole: a SCAN without an index, or a walk of
    its primary key that names no column (how SQLite words a full read of a table
    WITHOUT ROWID)."""
    return any(
        step.strip() in ("SCAN jobs", "SEARCH jobs USING PRIMARY KEY") for step in plan.split("|")
    )


def exercise_store(store: SqliteJobStore) -> None:
    """Every method of the writer, on a store that holds pending, scheduled, running,
    finished and expiring jobs of a limited type and an unlimited one."""
    with store.transaction():
        store.insert([a_job(n) for n in range(300)])
        # Dependents: some wait for one parent, some for two, one for a finished job.
        store.insert(
            [a_job(n, after=(f"j{n - 300:06d}", f"j{n - 299:06d}")) for n in range(300, 340)]
        )
    with store.transaction():
        store.dependents("j000001", "", 10)
        store.dependents("j000001", "j000300", 10)
        store.held_ids("", 10)
        store.held_ids("j000310", 10)
        store.held(["j000301", "j000302"])
        store.release(["j000303"])
        store.get("j000001")
        store.digests(["j000001"])
        store.statuses(["j000001", "j000002"])
        for job in store.due(NOW, 20):
            running = jobs.start(job, lease=job.lease + 1, worker_pid=7, now=NOW + 1)
            assert store.save(running, expected=job.status, expected_lease=job.lease,
                              fields=jobs.changed_fields(job, running))  # fmt: skip
            if int(job.id[1:]) % 3 == 0:
                done = jobs.complete(running, result=b"1", now=NOW + 2)
                store.save(done, expected=running.status, expected_lease=running.lease,
                           fields=jobs.changed_fields(running, done))  # fmt: skip
                store.record_runs([jobs.run_of(running, done, now=NOW + 2)])
        store.serve(
            Serving(ClaimLimits(types={"limited": 3}, keys={"echo": 1}), ("echo", "limited"))
        )
    with store.transaction():
        store.pause(Pause("limited", NOW + 60, NOW))
        store.pause(Pause("echo", None, NOW))
        store.resume(["echo"])
        store.pauses()
        store.due(NOW + 1, 20)
        store.next_run_at(NOW)
        store.expired(NOW + 600, 10)
        store.next_expiry()
        store.left_running()
        store.with_status(Status.COMPLETED)
        store.counts()
        store.oldest_pending_created()
        store.limit_figures(NOW + 1)
        store.max_lease()
        store.add_worker(WorkerRecord(7, NOW))
        store.update_workers([WorkerReport(7, "busy", "j000001", 3, NOW)])
        store.workers()
        store.remove_worker(7)
        store.save_progress(FileProgress("f", "v", 10, 2, 2, 1, 1), [LineError(2, "bad")])
        store.files_in_progress()
        store.line_errors("f")
        store.forget_progress("f")
        store.delete_finished_before(NOW + 3, 5)
    with store.transaction():  # section 16: unique keys, checkpoints
        store.insert_unique([a_job(900, unique_key="u", unique_while="active")])
        store.insert_unique([a_job(901, unique_key="u", unique_while="active")])
        held = store.get("j000900")
        assert held is not None
        running = jobs.start(held, lease=99, worker_pid=7, now=NOW + 1)
        store.save(running, expected=held.status, expected_lease=held.lease)
        store.write_checkpoint(held.id, 99, b"1", NOW + 2)
        store.checkpoints([held.id, "j000002"])
    exercise_schedules(store)


def exercise_schedules(store: SqliteJobStore) -> None:
    """The schedules' statements: each of one schedule by its name (the primary key);
    `schedules`, `schedule_definitions` and `schedule_skips` read their small tables
    whole, by design (at a change of the schedules, and for `stats`)."""
    tick = schedules.check({"name": "tick", "every": 10, "job": {"type": "echo"}})
    other = schedules.check({"name": "other", "every": 10, "job": {"type": "echo"}})
    with store.transaction():
        store.write_schedules(schedules.Changes([tick, other], [], []), NOW)
        store.write_schedules(schedules.Changes([], [tick], ["other"]), NOW + 1)
        store.take_schedule("tick")
        skip = schedules.Skip(NOW + 5, "missed")
        job = a_job(900_001, id="tick.20270115T080010Z")
        store.advance_schedule("tick", NOW + 1, schedules.Advance(NOW + 10, (job,), (skip,)))
        store.pause_schedule("tick", True, NOW + 2)
        store.pause_schedule("tick", False, NOW + 3)
        store.trigger_schedule("tick", a_job(900_002, id="tick.manual-20270115T080010Z"))
        store.schedules()
        store.schedule_definitions()
        store.schedule_skips()


def exercise_reader(reader: StoreReader) -> None:
    """Every read of the reader: what `list`, `status`, `stats`, `prune` and the HTTP
    API ask."""
    reader.get("j000002")
    reader.get_many(["j000002", "j000003"])
    newest = reader.list()
    reader.list(JobQuery([Status.PENDING]))
    reader.list(JobQuery([Status.PENDING, Status.RUNNING], "echo", 10))
    last = (newest[-1].created_at, newest[-1].id)
    reader.list(JobQuery([Status.PENDING], "limited", 10, last))
    reader.list(JobQuery(limit=10, before=last))
    reader.list(JobQuery(after="j000001"))
    reader.list(JobQuery([Status.PENDING], after="j000001"))
    reader.counts()
    reader.count_finished_before(NOW + 3)
    reader.retry_links()
    reader.oldest_pending_age(NOW + 5)
    reader.worker_reports()
    reader.runs("j000003")
    reader.recent_runs(NOW)
    reader.limit_figures(NOW + 1)
    reader.key_limit_figures(NOW + 1)
    reader.pauses()
    reader.pause_figures(NOW + 1)
    reader.expired_count()
    reader.dependency_counts()
    reader.waiting(reader.list(JobQuery([Status.PENDING], limit=20)), NOW + 1)
    reader.key_holder("echo", "u")
    reader.checkpoint("j000900")


def check(db: sqlite3.Connection, exercise: Callable[[], None]) -> dict[str, str]:
    statements: list[str] = []
    with traced(db, statements):
        exercise()
    found = plans(db, statements)
    assert found, "nothing was traced"
    return found


def test_every_statement_of_the_store_and_its_reader_is_indexed(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "db")
    reader = StoreReader(tmp_path / "db")
    try:
        written = check(store._db, lambda: exercise_store(store))
        reader.exists()
        reader.get("j000001")  # opens the reader's connection, to trace it
        assert reader._db is not None
        read = check(reader._db, lambda: exercise_reader(reader))
    finally:
        reader.close()
        store.close()
    whole = [sql for sql, plan in {**written, **read}.items() if scans_jobs(plan)]
    by_name = [sql for sql in written if "schedules" in sql and "WHERE name" in sql]
    assert len(by_name) >= 4, by_name
    assert all("USING PRIMARY KEY (name=?)" in written[sql] for sql in by_name), [
        (sql, written[sql]) for sql in by_name
    ]
    assert sorted(set(whole)) == sorted(set(whole) & set(WHOLE_TABLE)), [
        (sql, (written | read)[sql]) for sql in whole if sql not in WHOLE_TABLE
    ]
    # What each index is kept for is read through it.
    every_plan = " ".join([*written.values(), *read.values()])
    for index in ("jobs_status_created", "jobs_ready_order", "jobs_ready_type", "jobs_scheduled",
                  "jobs_expiry", "runs_ended", "jobs_unique_key"):  # fmt: skip
        assert index in every_plan, index


def test_retention_finds_the_jobs_by_status_and_creation(tmp_path: Path) -> None:
    """A job finished before the cutoff is found, one created before but finished after
    is not, whether the writer deletes or a reader counts."""
    store = SqliteJobStore(tmp_path / "db")
    reader = StoreReader(tmp_path / "db")
    old = a_job(1, status=Status.COMPLETED, created_at=NOW, updated_at=NOW + 10)
    late = a_job(3, status=Status.FAILED, created_at=NOW, updated_at=NOW + 100)
    new = a_job(5, status=Status.CANCELED, created_at=NOW + 50, updated_at=NOW + 60)
    try:
        with store.transaction():
            store.insert([old, late, new, a_job(7, created_at=NOW - 10, updated_at=NOW - 10)])
        assert reader.count_finished_before(NOW + 70) == 2
        with store.transaction():
            gone = store.delete_finished_before(NOW + 70, 10)
        assert sorted(gone) == [("limited", Status.CANCELED), ("limited", Status.COMPLETED)]
        assert reader.count_finished_before(NOW + 70) == 0
        assert store.get(late.id) is not None and store.get("j000007") is not None
    finally:
        reader.close()
        store.close()


@pytest.mark.parametrize("version", [SCHEMA_VERSION - 1])
def test_a_home_at_the_previous_schema_opens_and_is_migrated(tmp_path: Path, version: int) -> None:
    """A store left by the previous release, with jobs in every state, opens: the new
    indexes are built from its rows, the old ones are gone, and what it held is read as
    before."""
    path = tmp_path / "db"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        for migration in MIGRATIONS[:version]:
            db.executescript(migration)
        db.execute(f"PRAGMA user_version = {version}")
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executemany(
            "INSERT INTO jobs (id, type, payload, status, attempts, max_attempts, priority,"
            " run_at, created_at, updated_at, lease, cancel_requested, digest, ready)"
            " VALUES (?, 'echo', x'7b7d', ?, 0, 3, 0, ?, ?, ?, 0, 0, 'd', 1)",
            [
                ("p1", "pending", NOW, NOW + 1, NOW + 1),
                ("p2", "pending", NOW, NOW + 2, NOW + 2),
                ("r1", "running", NOW, NOW - 5, NOW + 3),
                ("c1", "completed", NOW, NOW - 9, NOW - 8),
            ],
        )
    reader = StoreReader(path)
    # A reader newer than the daemon that still runs on the home reads its old schema.
    assert reader.count_finished_before(NOW) == 1
    assert [job.id for job in reader.list()] == ["p2", "p1", "r1", "c1"]
    reader.close()
    store = SqliteJobStore(path)
    try:
        indexes = {
            name
            for (name,) in store._db.execute("SELECT name FROM sqlite_schema WHERE type = 'index'")
        }
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "jobs_status_created" in indexes
        assert not indexes & {"jobs_status_updated", "jobs_pending_created", "jobs_created"}
        assert store.oldest_pending_created() == NOW + 1
        assert [job.id for job in store.left_running()] == ["r1"]
        assert [job.id for job in store.due(NOW, 10)] == ["p1", "p2"]
        assert reader.count_finished_before(NOW) == 1
        assert reader.oldest_pending_age(NOW + 11) == 10
        assert [job.id for job in reader.list()] == ["p2", "p1", "r1", "c1"]
        with store.transaction():
            assert store.delete_finished_before(NOW, 10) == [("echo", Status.COMPLETED)]
    finally:
        reader.close()
        store.close()
