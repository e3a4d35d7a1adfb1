"""The JobStore contract, run against the SQLite store and the in-memory one alike,
then what only SQLite promises: WAL, synchronous=FULL, the schema version, the index
behind the dispatcher's query, and read-only readers."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from procpool.adapters.stores.memory import MemoryJobStore
from procpool.adapters.stores.sqlite import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SqliteJobStore,
)
from procpool.adapters.stores.sqlite_reader import StoreReader
from procpool.application.ports import (
    FileProgress,
    JobStore,
    LineError,
    SchemaTooNew,
    WorkerRecord,
)
from procpool.domain import job as jobs
from procpool.domain import schedules
from procpool.domain.job import Job, Progress, Status
from procpool.domain.schedules import Schedule

try:
    from psycopg.errors import UniqueViolation
except ImportError:  # without psycopg the PostgreSQL cases skip
    UniqueViolation = KeyError  # type: ignore[assignment, misc]

NOW = 1_800_000_000.0


def a_job(job_id: str, *, priority: int = 0, run_at: float = NOW, **changes: object) -> Job:
    job = Job(
        id=job_id,
        type="echo",
        payload=b'{"n":1}',
        priority=priority,
        run_at=run_at,
        created_at=NOW,
        updated_at=NOW,
        digest=f"digest-{job_id}",
    )
    return msgspec.structs.replace(job, **changes)


@pytest.fixture(params=["sqlite", "memory", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    opened: JobStore
    if request.param == "postgresql":
        from procpool.adapters.stores.postgres import PostgresJobStore  # noqa: PLC0415

        opened = PostgresJobStore(request.getfixturevalue("pg_url"), tmp_path)
    elif request.param == "sqlite":
        opened = SqliteJobStore(tmp_path / "db")
    else:
        opened = MemoryJobStore()
    yield opened
    opened.close()


def add(store: JobStore, *new: Job) -> None:
    with store.transaction():
        store.insert(list(new))


def started(store: JobStore, job_id: str, lease: int) -> Job:
    job = store.get(job_id)
    assert job is not None
    running = jobs.start(job, lease=lease, worker_pid=4242, now=NOW + 1)
    with store.transaction():
        assert store.save(running, expected=Status.PENDING, expected_lease=job.lease)
    return running


# ------------------------------------------------------------------ the contract


def test_insert_then_get_returns_the_same_job(store: JobStore) -> None:
    job = a_job("full", max_attempts=5, timeout=2.5, priority=-3, last_error="e", retry_of="older")
    add(store, job, a_job("other"))
    assert store.get("full") == job
    assert store.get("absent") is None


def test_an_existing_id_cannot_be_inserted_again(store: JobStore) -> None:
    add(store, a_job("once"))
    with pytest.raises((sqlite3.IntegrityError, KeyError, UniqueViolation)), store.transaction():
        store.insert([a_job("once", priority=9)])
    assert store.get("once") == a_job("once")


def test_digests_of_the_ids_that_exist(store: JobStore) -> None:
    add(store, *(a_job(f"j{n}") for n in range(1200)))
    asked = [f"j{n}" for n in range(0, 1200, 2)] + ["nope"]
    found = store.digests(asked)
    assert found == {f"j{n}": f"digest-j{n}" for n in range(0, 1200, 2)}
    assert store.digests([]) == {}


def test_save_is_a_compare_and_set(store: JobStore) -> None:
    add(store, a_job("cas"))
    running = started(store, "cas", lease=1)
    assert store.get("cas") == running
    done = jobs.complete(running, result=b'"ok"', now=NOW + 2)
    with store.transaction():
        assert not store.save(done, expected=Status.PENDING, expected_lease=1), "wrong status"
        assert not store.save(done, expected=Status.RUNNING, expected_lease=2), "wrong lease"
        assert not store.save(
            a_job("ghost", status=Status.RUNNING), expected=Status.PENDING, expected_lease=0
        )
    assert store.get("cas") == running
    assert store.get("ghost") is None
    with store.transaction():
        assert store.save(done, expected=Status.RUNNING, expected_lease=1)
    assert store.get("cas") == done


def test_save_many_is_a_compare_and_set_of_each_job(store: JobStore) -> None:
    """One statement for a turn's changes of the same columns (issue 25): each job is
    still written only if it holds the status and lease expected, and the count of
    those written tells that one was not."""
    add(store, *(a_job(f"m{n}") for n in range(4)))
    running = [jobs.start(a_job(f"m{n}"), lease=n + 1, worker_pid=7, now=NOW + 1) for n in range(4)]
    taken = started(store, "m3", lease=99)  # another claim got there first
    fields = jobs.changed_fields(a_job("m0"), running[0])
    with store.transaction():
        assert store.save_many([(job, Status.PENDING, 0) for job in running], fields) == 3
        assert store.save_many([], fields) == 0
    assert [store.get(f"m{n}") for n in range(3)] == running[:3]
    assert store.get("m3") == taken
    done = [jobs.complete(job, result=b"null", now=NOW + 2) for job in running[:3]]
    fields = jobs.changed_fields(running[0], done[0])
    with store.transaction():
        assert store.save_many([(job, Status.RUNNING, job.lease) for job in done], fields) == 3
    assert [store.get(f"m{n}") for n in range(3)] == done


def test_retention_deletes_the_jobs_that_finished_before_the_cutoff(store: JobStore) -> None:
    add(store, a_job("old"), a_job("running"), a_job("new"))
    for job_id, ended_at in (("old", NOW + 2), ("new", NOW + 100)):
        running = started(store, job_id, lease=1)
        with store.transaction():
            done = jobs.complete(running, result=b'"ok"', now=ended_at)
            assert store.save(done, expected=Status.RUNNING, expected_lease=1)
    started(store, "running", lease=2)
    with store.transaction():
        assert store.delete_finished_before(NOW + 50, 10) == [("echo", Status.COMPLETED)]
    assert store.get("old") is None
    assert store.get("new") is not None and store.get("running") is not None


def test_save_keeps_every_changing_field(store: JobStore) -> None:
    add(store, a_job("f"))
    running = started(store, "f", lease=4)
    changed = jobs.report_progress(
        jobs.request_cancel(running, now=NOW + 2), Progress(0.25, "a quarter"), now=NOW + 3
    )
    with store.transaction():
        assert store.save(changed, expected=Status.RUNNING, expected_lease=4)
    retried = jobs.fail_attempt(changed, error="boom", now=NOW + 4, retry_at=NOW + 9)
    with store.transaction():
        assert store.save(retried, expected=Status.RUNNING, expected_lease=4)
    assert store.get("f") == retried
    assert retried.progress == Progress(0.25, "a quarter")
    assert (retried.attempts, retried.last_error, retried.run_at) == (1, "boom", NOW + 9)


def test_due_orders_by_priority_then_run_at(store: JobStore) -> None:
    add(
        store,
        a_job("low-old", priority=0, run_at=NOW - 30),
        a_job("high-new", priority=5, run_at=NOW - 1),
        a_job("high-old", priority=5, run_at=NOW - 20),
        a_job("negative", priority=-2, run_at=NOW - 100),
        a_job("low-new", priority=0, run_at=NOW - 10),
        a_job("now", priority=1, run_at=NOW),
    )
    order = ["high-old", "high-new", "now", "low-old", "low-new", "negative"]
    assert [j.id for j in store.due(NOW, 100)] == order
    assert [j.id for j in store.due(NOW, 2)] == order[:2]


def test_due_skips_future_and_non_pending_jobs(store: JobStore) -> None:
    add(
        store,
        a_job("ready", run_at=NOW - 1),
        a_job("later", priority=100, run_at=NOW + 0.001),
        a_job("taken", priority=50, run_at=NOW - 5),
        a_job("done", priority=50, run_at=NOW - 5, status=Status.COMPLETED),
        a_job("gone", priority=50, run_at=NOW - 5, status=Status.CANCELED),
    )
    started(store, "taken", lease=1)
    assert [j.id for j in store.due(NOW, 10)] == ["ready"]
    assert [j.id for j in store.due(NOW + 1, 10)] == ["later", "ready"]


def test_next_run_at_is_the_earliest_future_pending(store: JobStore) -> None:
    assert store.next_run_at(NOW) is None
    add(
        store,
        a_job("soon", run_at=NOW + 5),
        a_job("later", run_at=NOW + 50),
        a_job("finished", run_at=NOW - 50, status=Status.FAILED),
        a_job("earliest", run_at=NOW + 1),
    )
    assert store.next_run_at(NOW) == NOW + 1
    assert store.next_run_at(NOW + 1) == NOW + 5  # only what is still to come
    started(store, "earliest", lease=1)
    assert store.next_run_at(NOW) == NOW + 5


def test_with_status(store: JobStore) -> None:
    add(store, a_job("p1"), a_job("p2"), a_job("c", status=Status.COMPLETED))
    started(store, "p2", lease=3)
    assert {j.id for j in store.with_status(Status.PENDING)} == {"p1"}
    assert {j.id for j in store.with_status(Status.RUNNING)} == {"p2"}
    assert {j.id for j in store.with_status(Status.COMPLETED)} == {"c"}
    assert store.with_status(Status.CANCELED) == []


def test_max_lease(store: JobStore) -> None:
    assert store.max_lease() == 0
    add(store, a_job("a"), a_job("b"), a_job("c"))
    started(store, "b", lease=17)
    started(store, "a", lease=5)
    assert store.max_lease() == 17


def test_worker_records(store: JobStore) -> None:
    assert store.workers() == []
    with store.transaction():
        store.add_worker(WorkerRecord(101, 1.5))
        store.add_worker(WorkerRecord(102, 2.5))
        store.add_worker(WorkerRecord(101, 3.5))  # the pid was reused: the newer one counts
    assert sorted(store.workers(), key=lambda w: w.pid) == [
        WorkerRecord(101, 3.5),
        WorkerRecord(102, 2.5),
    ]
    with store.transaction():
        store.remove_worker(101)
        store.remove_worker(999)
    assert store.workers() == [WorkerRecord(102, 2.5)]


def test_a_transaction_rolls_back_on_an_exception(store: JobStore) -> None:
    add(store, a_job("kept"))
    with pytest.raises(RuntimeError, match="mid-turn"), store.transaction():
        store.insert([a_job("lost")])
        kept = store.get("kept")
        assert kept is not None
        running = jobs.start(kept, lease=1, worker_pid=1, now=NOW)
        assert store.save(running, expected=Status.PENDING, expected_lease=0)
        store.add_worker(WorkerRecord(7, 1.0))
        raise RuntimeError("mid-turn")
    assert store.get("lost") is None
    assert store.get("kept") == a_job("kept")
    assert store.workers() == []


def test_the_progress_of_files_read_in_parts(store: JobStore) -> None:
    """Kept with the jobs of the turn (or rolled back with them), replaced per key, and
    forgotten with its bad lines; the bad lines come back in order of their numbers."""
    first = FileProgress("big.jsonl", "1:2:300:4", 100, 10, 9, 8, 1)
    with store.transaction():
        store.save_progress(first, [LineError(7, "bad")])
        store.save_progress(FileProgress("other.jsonl", "5:6:7:8", 1, 1, 1, 1, 0), [])
    later = FileProgress("big.jsonl", "1:2:300:4", 200, 21, 20, 18, 2)
    with pytest.raises(RuntimeError), store.transaction():
        store.save_progress(later, [LineError(15, "lost with its turn")])
        raise RuntimeError("mid-turn")
    assert store.files_in_progress()["big.jsonl"] == first
    assert store.line_errors("big.jsonl") == [LineError(7, "bad")]
    with store.transaction():
        store.save_progress(later, [LineError(19, "worse"), LineError(12, "also")])
    assert store.files_in_progress()["big.jsonl"] == later
    assert store.line_errors("big.jsonl") == [
        LineError(7, "bad"), LineError(12, "also"), LineError(19, "worse"),
    ]  # fmt: skip
    with store.transaction():
        store.forget_progress("big.jsonl")
    assert list(store.files_in_progress()) == ["other.jsonl"]
    assert store.line_errors("big.jsonl") == []


# ------------------------------------------------------------------ schedules


def a_schedule(name: str = "tick", every: int = 10, **fields: object) -> Schedule:
    return schedules.check({"name": name, "every": every, "job": {"type": "echo"}, **fields})


def test_applied_schedules_start_at_the_apply_and_an_edit_keeps_the_cursor(
    store: JobStore,
) -> None:
    a, b = a_schedule("a"), a_schedule("b")
    with store.transaction():
        store.write_schedules(schedules.diff(store.schedule_definitions(), [a, b]), NOW)
    assert [(s.schedule, s.cursor, s.paused) for s in store.schedules()] == [
        (a, NOW, False), (b, NOW, False),
    ]  # fmt: skip
    assert schedules.diff(store.schedule_definitions(), [a, b]).none
    with store.transaction():
        assert store.advance_schedule("a", NOW, schedules.Advance(NOW + 50))
    a2 = a_schedule("a", every=20)
    changes = schedules.diff(store.schedule_definitions(), [a2])
    assert (changes.changed, changes.removed) == ([a2], ["b"])
    with store.transaction():
        store.write_schedules(changes, NOW + 10)
    (stored,) = store.schedules()
    assert (stored.schedule, stored.cursor) == (a2, NOW + 50), "the cursor kept, not moved back"
    with store.transaction():
        store.write_schedules(schedules.diff(store.schedule_definitions(), [a2]), NOW + 99)
        store.write_schedules(schedules.Changes([], [a_schedule("a", every=5)], []), NOW + 99)
    assert store.schedules()[0].cursor == NOW + 99, "an edit never fires for what it missed"


def test_an_occurrence_is_inserted_once_by_compare_and_set(store: JobStore) -> None:
    with store.transaction():
        store.write_schedules(schedules.Changes([a_schedule()], [], []), NOW)
    job = a_job("tick.20270115T080010Z")
    skip = schedules.Skip(NOW + 5, "missed")
    advance = schedules.Advance(NOW + 10, (job,), (skip,), run=NOW + 10)
    with store.transaction():
        taken = store.take_schedule("tick")
        assert taken is not None and taken.cursor == NOW
        assert store.advance_schedule("tick", NOW, advance)
    # A second daemon, or the same after a restart, that planned from the old cursor:
    other = schedules.Advance(NOW + 10, (a_job(job.id, priority=5),), (skip,), run=NOW + 10)
    with store.transaction():
        assert not store.advance_schedule("tick", NOW, other)
    assert store.get(job.id) == job
    (stored,) = store.schedules()
    assert (stored.cursor, stored.last_job, stored.last_run) == (NOW + 10, job.id, NOW + 10)
    assert stored.last_skip == skip
    assert store.schedule_skips() == {"missed": 1}
    # An id that exists (a job submitted by hand under it) is left alone.
    with store.transaction():
        assert store.advance_schedule("tick", NOW + 10, schedules.Advance(NOW + 20, (job,)))
    assert store.get(job.id) == job


def test_a_rolled_back_advance_leaves_the_cursor(store: JobStore) -> None:
    with store.transaction():
        store.write_schedules(schedules.Changes([a_schedule()], [], []), NOW)
    with pytest.raises(RuntimeError), store.transaction():
        store.advance_schedule("tick", NOW, schedules.Advance(NOW + 10, (a_job("tick.x"),)))
        raise RuntimeError("the turn failed")
    assert store.schedules()[0].cursor == NOW
    assert store.get("tick.x") is None


def test_pause_resume_trigger_and_retention_keeps_schedules(store: JobStore) -> None:
    with store.transaction():
        store.write_schedules(schedules.Changes([a_schedule()], [], []), NOW)
        assert store.pause_schedule("tick", True, NOW + 1)
        assert not store.pause_schedule("nope", True, NOW + 1)
    assert store.schedules()[0].paused
    with store.transaction():
        assert store.pause_schedule("tick", False, NOW + 30)
    stored = store.schedules()[0]
    assert (stored.paused, stored.cursor) == (False, NOW + 30), "resume does not catch up"
    manual = a_job("tick.manual-20270115T080000Z")
    with store.transaction():
        assert store.trigger_schedule("tick", manual)
        assert not store.trigger_schedule("tick", manual)
    assert store.schedules()[0].last_job == manual.id
    done = jobs.complete(started(store, manual.id, lease=1), result=b"1", now=NOW + 2)
    with store.transaction():
        store.save(done, expected=Status.RUNNING, expected_lease=1)
        store.delete_finished_before(NOW + 1000, 100)
    assert store.get(manual.id) is None
    assert store.schedules()[0].cursor == NOW + 30, "retention keeps the cursor"


# ------------------------------------------------------------------ section 16


def keyed(job_id: str, key: str = "k", **changes: object) -> Job:
    return a_job(job_id, **{"unique_key": key, "unique_while": "active", **changes})


def test_a_unique_key_is_held_by_one_live_job_of_its_type(store: JobStore) -> None:
    with store.transaction():
        # Within one call too: the first of two with one key holds it.
        assert store.insert_unique([keyed("a"), keyed("b"), keyed("other-key", "k2")]) == {"b": "a"}
        assert store.insert_unique([keyed("c", type="sleep")]) == {}, "scoped to the type"
    assert store.get("b") is None
    assert store.get("a") == keyed("a")
    started(store, "a", lease=1)
    with store.transaction():
        assert store.insert_unique([keyed("d")]) == {"d": "a"}, "running still holds it"


@pytest.mark.parametrize("end", ["completed", "failed", "canceled", "canceled-pending"])
def test_the_key_is_free_the_moment_its_job_is_terminal(store: JobStore, end: str) -> None:
    add(store, keyed("a", max_attempts=1))
    job = store.get("a")
    assert job is not None
    if end == "canceled-pending":
        ended = jobs.cancel(job, now=NOW + 2)
    else:
        job = started(store, "a", lease=1)
        ended = {
            "completed": jobs.complete(job, result=b"1", now=NOW + 2),
            "failed": jobs.fail_attempt(job, error="boom", now=NOW + 2, retry_at=NOW + 3),
            "canceled": jobs.cancel(job, now=NOW + 2),
        }[end]
    assert str(ended.status) == end.split("-", maxsplit=1)[0]
    with store.transaction():
        assert store.save(ended, expected=job.status, expected_lease=job.lease)
        assert store.insert_unique([keyed("b")]) == {}
    with store.transaction():
        assert store.insert_unique([keyed("c")]) == {"c": "b"}


def test_a_pending_key_is_held_until_the_job_is_first_handed_out(store: JobStore) -> None:
    add(store, keyed("a", unique_while="pending"))
    with store.transaction():
        assert store.insert_unique([keyed("b")]) == {"b": "a"}
    running = started(store, "a", lease=1)
    with store.transaction():
        assert store.insert_unique([keyed("b")]) == {}, "a started: the key is free"
    # Back to pending for a retry, it does not take the key back from b.
    retried = jobs.fail_attempt(running, error="boom", now=NOW + 2, retry_at=NOW + 3)
    with store.transaction():
        assert store.save(retried, expected=Status.RUNNING, expected_lease=1)
        assert store.insert_unique([keyed("c")]) == {"c": "b"}


def test_a_checkpoint_is_stored_only_for_the_attempt_that_runs(store: JobStore) -> None:
    add(store, a_job("cp"), a_job("other"))
    with store.transaction():
        assert not store.write_checkpoint("cp", 0, b"0", NOW), "pending: no attempt runs"
    running = started(store, "cp", lease=3)
    with store.transaction():
        assert not store.write_checkpoint("cp", 2, b"2", NOW + 2), "another attempt's lease"
        assert not store.write_checkpoint("absent", 3, b"2", NOW + 2)
        assert store.write_checkpoint("cp", 3, b'{"i":1}', NOW + 2)
        assert store.write_checkpoint("cp", 3, b'{"i":2}', NOW + 3)
    assert store.checkpoints(["cp", "other", "absent"]) == {"cp": b'{"i":2}'}
    stored = store.get("cp")
    assert stored is not None and stored.checkpoint_at == NOW + 3
    # A transition written from the supervisor's copy (checkpoint_at unknown to it)
    # keeps the checkpoint and its time.
    retried = jobs.fail_attempt(running, error="boom", now=NOW + 4, retry_at=NOW + 5)
    with store.transaction():
        assert store.save(retried, expected=Status.RUNNING, expected_lease=3)
    after = store.get("cp")
    assert after is not None and after.checkpoint_at == NOW + 3
    assert store.checkpoints(["cp"]) == {"cp": b'{"i":2}'}
    with store.transaction():
        assert not store.write_checkpoint("cp", 3, b"9", NOW + 6), "no longer running"
    assert store.checkpoints(["cp"]) == {"cp": b'{"i":2}'}


def test_a_checkpoint_rolls_back_with_its_transaction(store: JobStore) -> None:
    add(store, a_job("cp"))
    started(store, "cp", lease=1)
    with pytest.raises(RuntimeError), store.transaction():
        assert store.write_checkpoint("cp", 1, b"1", NOW + 2)
        raise RuntimeError("the turn fails")
    assert store.checkpoints(["cp"]) == {}
    stored = store.get("cp")
    assert stored is not None and stored.checkpoint_at is None


def test_a_fenced_or_replaced_postgresql_daemon_cannot_checkpoint(
    pg_url: str, tmp_path: Path
) -> None:
    """On a shared store the attempt must also be this daemon's, and the daemon able to
    vouch for its lease: a daemon past its fence, or whose job another daemon took over
    (the owner changed, as a rescue does), stores nothing."""
    from procpool.adapters.stores.postgres import PostgresJobStore  # noqa: PLC0415

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    store = PostgresJobStore(pg_url, tmp_path / "a")
    other = PostgresJobStore(pg_url, tmp_path / "b")
    try:
        add(store, a_job("cp"), a_job("moved"))
        started(store, "cp", lease=1)
        renewed = store._renewed_at
        store._renewed_at = renewed - 3600  # frozen past its lease: fenced
        with store.transaction():
            assert not store.write_checkpoint("cp", 1, b"1", NOW + 2)
        store._renewed_at = renewed
        with store.transaction():
            assert store.write_checkpoint("cp", 1, b"2", NOW + 3)
        started(other, "moved", lease=2)  # owned by the other daemon, same lease number
        with store.transaction():
            assert not store.write_checkpoint("moved", 2, b"3", NOW + 4)
        assert store.checkpoints(["cp", "moved"]) == {"cp": b"2"}
    finally:
        other.close()
        store.close()


def test_retention_deletes_the_checkpoints_of_the_jobs_it_deletes(store: JobStore) -> None:
    add(store, a_job("old"))
    running = started(store, "old", lease=1)
    with store.transaction():
        assert store.write_checkpoint("old", 1, b"1", NOW + 2)
        assert store.save(
            jobs.complete(running, result=b"1", now=NOW + 3),
            expected=Status.RUNNING,
            expected_lease=1,
        )
    with store.transaction():
        assert store.delete_finished_before(NOW + 50, 10) == [("echo", Status.COMPLETED)]
    assert store.checkpoints(["old"]) == {}


# ------------------------------------------------------------------ SQLite only


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "procpool.db"


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[SqliteJobStore]:
    opened = SqliteJobStore(db_path)
    yield opened
    opened.close()


def test_wal_and_synchronous_full(sqlite_store: SqliteJobStore, db_path: Path) -> None:
    db = sqlite_store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    add(sqlite_store, a_job("w"))
    assert Path(f"{db_path}-wal").exists()


def test_the_schema_version(sqlite_store: SqliteJobStore, db_path: Path) -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_the_columns_an_insert_leaves_out_are_null(sqlite_store: SqliteJobStore) -> None:
    """insert names only the columns that some row gives a value (binding a None costs
    more than the rest of a column): every other column of jobs must default to null."""
    columns = sqlite_store._db.execute("PRAGMA table_info(jobs)").fetchall()
    assert [name for _, name, _, not_null, default, _ in columns if default and not not_null] == []
    full = a_job(
        "full", timeout=2.5, last_error="e", result=b"1", progress=Progress(0.5, "half"),
        worker_pid=7, started_at=NOW, retry_of="older", concurrency_key="k",
        expires_at=NOW + 9, schedule="s", scheduled_for="2027-01-01T00:00:00+00:00",
        unique_key="u", unique_while="active", checkpoint_at=NOW, canceled_by="p",
    )  # fmt: skip
    add(sqlite_store, full)  # a row alone
    other = msgspec.structs.replace(full, id="full2", unique_key="v")
    add(sqlite_store, a_job("plain"), other)  # a batch, its columns null in one row of two
    assert sqlite_store.get("full") == full
    assert sqlite_store.get("full2") == other
    assert sqlite_store.get("plain") == a_job("plain")


def test_reopening_an_existing_store(db_path: Path) -> None:
    first = SqliteJobStore(db_path)
    add(first, a_job("survives", priority=3))
    with first.transaction():
        first.add_worker(WorkerRecord(55, 5.0))
    first.close()
    second = SqliteJobStore(db_path)
    try:
        assert second.get("survives") == a_job("survives", priority=3)
        assert second.workers() == [WorkerRecord(55, 5.0)]
        assert second._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        second.close()


def test_an_old_schema_is_migrated_in_place(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO jobs VALUES ('old', 'echo', x'6e756c6c', 'pending', 0, 3, NULL, 0,"
            " ?, ?, ?, NULL, NULL, NULL, NULL, 0, NULL, 0, 'd')",
            (NOW, NOW, NOW),
        )
    db.close()
    store = SqliteJobStore(db_path)
    try:
        assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        job = store.get("old")
        assert job is not None
        assert (job.payload, job.retry_of, job.digest) == (b"null", None, "d")
    finally:
        store.close()


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match=str(SCHEMA_VERSION + 1)) as raised:
        SqliteJobStore(db_path)
    assert (raised.value.version, raised.value.known) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)


def test_the_due_query_is_served_by_its_index(sqlite_store: SqliteJobStore) -> None:
    """The dispatcher's queries read partial indexes in order: no scan of the table
    and no sort, however many finished or scheduled jobs the store holds, and as
    many statements for 300 priority levels as for one."""
    add(sqlite_store, *(a_job(f"j{n}", priority=n, run_at=NOW - n) for n in range(300)))
    add(sqlite_store, *(a_job(f"later{n}", priority=n, run_at=NOW + n) for n in range(300)))
    statements: list[str] = []
    sqlite_store._db.set_trace_callback(statements.append)
    try:
        sqlite_store.due(NOW, 10)
        first = len(statements)
        sqlite_store.due(NOW + 0.5, 10)
    finally:
        sqlite_store._db.set_trace_callback(None)
    # Mark the newly due jobs ready, learn when the next scheduled one comes, read the
    # head; until then (the store is the only writer), only the head is read again.
    assert first == 3
    assert len(statements) == 4 and statements[-1] == statements[2]
    for query in statements:
        plan = " | ".join(
            row[-1] for row in sqlite_store._db.execute(f"EXPLAIN QUERY PLAN {query}").fetchall()
        )
        assert "jobs_ready_order" in plan or "jobs_scheduled" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def test_the_reader_sees_what_the_writer_committed(
    sqlite_store: SqliteJobStore, db_path: Path
) -> None:
    reader = StoreReader(db_path)
    try:
        assert reader.get("r") is None
        with sqlite_store.transaction():
            sqlite_store.insert([a_job("r")])
            assert reader.get("r") is None, "a reader must not see an uncommitted turn"
        assert reader.get("r") == a_job("r")
        running = started(sqlite_store, "r", lease=2)
        assert reader.get("r") == running
        assert [j.id for j in reader.list()] == ["r"]
        assert reader.get_many(["r", "absent"]) == {"r": running}
    finally:
        reader.close()


def test_the_reader_cannot_write(sqlite_store: SqliteJobStore, db_path: Path) -> None:
    add(sqlite_store, a_job("safe"))
    reader = StoreReader(db_path)
    try:
        db = reader._connection()
        assert db is not None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("DELETE FROM jobs")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.execute("UPDATE jobs SET status = 'failed'")
    finally:
        reader.close()
    assert sqlite_store.get("safe") == a_job("safe")


def test_a_reader_of_a_store_that_does_not_exist_yet(tmp_path: Path) -> None:
    reader = StoreReader(tmp_path / "absent.db")
    assert not reader.exists()
    assert reader.get("x") is None
    assert reader.list() == []
    assert not (tmp_path / "absent.db").exists(), "reading must not create the store"


def test_what_the_due_query_skips_never_hides_a_job(sqlite_store: SqliteJobStore) -> None:
    """The store skips the due query's statements when what it wrote says they find
    nothing; every write that can make a job due undoes that."""
    store = sqlite_store
    with store.transaction():
        assert store.due(NOW, 10) == []
        assert store.next_run_at(NOW) is None
    add(store, a_job("later", run_at=NOW + 5))  # scheduled: the next wake-up moves
    with store.transaction():
        assert store.due(NOW, 10) == []
        assert store.next_run_at(NOW) == NOW + 5
        assert [j.id for j in store.due(NOW + 5, 10)] == ["later"]
    add(store, a_job("now", run_at=NOW + 5, updated_at=NOW + 5))  # ready at once
    with store.transaction():
        assert {j.id for j in store.due(NOW + 5, 10)} == {"later", "now"}
    # Back to pending by a save (a retry due at once) after a look found none ready.
    started(store, "later", 1)
    job = started(store, "now", 2)
    with store.transaction():
        assert store.due(NOW + 6, 10) == []
        store.save(
            msgspec.structs.replace(job, status=Status.PENDING, updated_at=NOW + 6),
            expected=Status.RUNNING, expected_lease=2,
        )  # fmt: skip
        assert [j.id for j in store.due(NOW + 6, 10)] == ["now"]
    # A rolled-back turn forgets what it noted.
    with pytest.raises(RuntimeError), store.transaction():
        add_inside = a_job("undone", run_at=NOW + 100)
        store.insert([add_inside])
        raise RuntimeError("the turn fails")
    with store.transaction():
        assert store.next_run_at(NOW + 6) is None


def test_a_lease_renewed_late_in_a_transaction_counts_from_the_renewal(
    pg_url: str, tmp_path: Path
) -> None:
    """A turn stopped between its BEGIN and its renewal (SIGSTOP, a long pause) must not
    write a lease counted from the BEGIN: the daemon counts its own from the renewal,
    and the others would rescue its jobs while it still runs them."""
    import psycopg  # noqa: PLC0415

    from procpool.adapters.stores.postgres import PostgresJobStore, Timing  # noqa: PLC0415

    # Lease 6 s: the pause stays under the margin (2 s), past which the server ends a
    # session idle in a transaction.
    store = PostgresJobStore(pg_url, tmp_path, Timing(lease=6.0))
    try:
        with store.transaction():
            time.sleep(1.5)  # the pause, after BEGIN
            assert not store.tick().lost  # the first tick renews
        with psycopg.connect(pg_url) as db:
            row = db.execute(
                "SELECT extract(epoch FROM expires_at - clock_timestamp())::float8"
                " FROM procpool_daemons WHERE id = %s",
                (store.daemon_id,),
            ).fetchone()
        assert row is not None and row[0] > 5.25, row  # counted from BEGIN: about 4.5
        assert store.fence_in() < row[0]  # the daemon fences itself before it expires
    finally:
        store.close()


def test_the_wal_is_emptied_once_no_reader_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past wal_max_bytes, a commit's look (at most once a second; every commit here)
    tries a TRUNCATE checkpoint that does not wait: it fails while a reader holds old
    frames, and empties the WAL once the reader lets go."""
    monkeypatch.setattr("procpool.adapters.stores.sqlite.WAL_CHECK_INTERVAL", 0.0)
    # A checkpoint that waited for the reader would wait this long, at every commit.
    monkeypatch.setattr("procpool.adapters.stores.sqlite.LOCK_WAIT", 30.0)
    path = tmp_path / "db"
    wal = tmp_path / "db-wal"
    store = SqliteJobStore(path, wal_max_bytes=64 * 1024)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM jobs").fetchone()
    started_at = time.monotonic()
    for n in range(100):
        with store.transaction():
            store.insert([a_job(f"j{n}", payload=b"x" * 2000)])
    assert time.monotonic() - started_at < 25, "a checkpoint waited for the reader"
    assert wal.stat().st_size > 64 * 1024
    reader.execute("COMMIT")
    reader.close()
    with store.transaction():
        store.insert([a_job("after")])
    assert wal.stat().st_size <= 64 * 1024
    assert len(store.with_status(Status.PENDING)) == 101
    store.close()


def test_a_postgresql_turn_frozen_inside_its_transaction_frees_its_rows_within_the_margin(
    pg_url: str, tmp_path: Path
) -> None:
    """A daemon stopped between two statements of a turn (SIGSTOP, a paused VM) holds the
    rows the turn locked: the server ends its session once it stayed idle in the
    transaction for a margin (a third of the lease), so the rows are free for the
    others' rescue well before it comes due (lease + margin after the last renewal)."""
    import psycopg  # noqa: PLC0415

    from procpool.adapters.stores.postgres import PostgresJobStore, Timing  # noqa: PLC0415
    from procpool.application.ports import StoreLost  # noqa: PLC0415

    store = PostgresJobStore(pg_url, tmp_path, Timing(lease=3.0))  # margin 1 s
    other = psycopg.connect(pg_url, autocommit=True)
    try:
        add(store, a_job("held"))
        frozen_at = time.monotonic()
        with pytest.raises(StoreLost), store.transaction():
            assert [job.id for job in store.due(NOW, 10)] == ["held"]  # locked by this turn
            freed = None
            while freed is None and time.monotonic() - frozen_at < 20:
                rows = other.execute(
                    "SELECT id FROM procpool_jobs WHERE id = 'held' FOR UPDATE SKIP LOCKED"
                ).fetchall()
                freed = time.monotonic() if rows else None
                time.sleep(0.05)
        assert freed is not None and freed - frozen_at < store.timing.lease
    finally:
        other.close()
        with contextlib.suppress(Exception):
            store.close()
