"""The JobReader contract, run against the SQLite reader and the PostgreSQL one alike.

Each case writes through the store a daemon writes with (SqliteJobStore, or
PostgresJobStore) and reads through the reader `open_reader` picks for the same
configuration, as the client, the CLI, `stats` and the HTTP API do.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from procpool.adapters.reader_factory import open_reader
from procpool.adapters.stores.job_reader import JobQuery, JobReader, SharedJobStore
from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.application.ports import JobStore, WorkerRecord, WorkerReport
from procpool.domain import job as jobs
from procpool.domain.errors import DuplicateId
from procpool.domain.job import Job, Run, Status

NOW = 1_800_000_000.0


@dataclass
class Pair:
    store: JobStore
    reader: JobReader


@pytest.fixture(params=["sqlite", "postgresql"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Pair]:
    monkeypatch.delenv("PROCPOOL_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROCPOOL_CONFIG", raising=False)
    store: JobStore
    if request.param == "postgresql":
        from procpool.adapters.stores.postgres import PostgresJobStore  # noqa: PLC0415

        url = request.getfixturevalue("pg_url")
        store = PostgresJobStore(url, tmp_path)
        reader = open_reader(tmp_path, url)
    else:
        store = SqliteJobStore(tmp_path / "procpool.db")
        reader = open_reader(tmp_path)
    yield Pair(store, reader)
    reader.close()
    store.close()


def a_job(job_id: str, *, created: float = NOW, **changes: object) -> Job:
    job = Job(
        id=job_id, type="echo", payload=b'{"n":1}', run_at=created, created_at=created,
        updated_at=created, digest=f"digest-{job_id}",
    )  # fmt: skip
    return msgspec.structs.replace(job, **changes)


def add(store: JobStore, *new: Job) -> None:
    with store.transaction():
        store.insert(list(new))


def finish(store: JobStore, job_id: str, lease: int, *, ok: bool, at: float) -> Job:
    """Run a job once (lease `lease`) and end it: completed, or failed for good."""
    job = store.get(job_id)
    assert job is not None
    running = jobs.start(job, lease=lease, worker_pid=4242, now=at - 1)
    status = Status.COMPLETED if ok else Status.FAILED
    ended = msgspec.structs.replace(
        running, status=status, updated_at=at, worker_pid=None, result=b"1" if ok else None,
        last_error=None if ok else "boom", attempts=0 if ok else 1,
    )  # fmt: skip
    run = Run(
        job_id=job_id, type=job.type, attempt=1, lease=lease, started_at=at - 1, ended_at=at,
        outcome="completed" if ok else "failed", error=None if ok else "boom", worker_pid=4242,
        exit_signal=None,
    )  # fmt: skip
    with store.transaction():
        assert store.save(running, expected=Status.PENDING, expected_lease=job.lease)
    with store.transaction():
        assert store.save(ended, expected=Status.RUNNING, expected_lease=lease)
        store.record_runs([run])
    return ended


def test_open_reader_picks_the_store_of_the_configuration(pair: Pair) -> None:
    assert pair.reader.exists()
    assert isinstance(pair.reader, SharedJobStore) == pair.store.shared


def test_get_and_get_many_see_what_the_writer_committed(pair: Pair) -> None:
    assert pair.reader.get("a") is None
    assert pair.reader.get_many(["a"]) == {}
    add(pair.store, a_job("a"), a_job("b", priority=3, retry_of="x"))
    assert pair.reader.get("a") == a_job("a")
    assert pair.reader.get("b") == a_job("b", priority=3, retry_of="x")
    assert pair.reader.get_many(["a", "absent", "b"]) == {
        "a": a_job("a"), "b": a_job("b", priority=3, retry_of="x"),
    }  # fmt: skip
    many = [f"m{n}" for n in range(1200)]  # past SQLite's chunk of 500 ids
    add(pair.store, *(a_job(job_id) for job_id in many))
    assert set(pair.reader.get_many(many)) == set(many)


def test_statuses_name_each_job_found_and_leave_out_the_rest(pair: Pair) -> None:
    assert pair.reader.statuses(["a"]) == {}
    add(pair.store, a_job("a"), a_job("b"))
    finish(pair.store, "b", 1, ok=False, at=NOW + 5)
    assert pair.reader.statuses(["a", "absent", "b"]) == {
        "a": Status.PENDING, "b": Status.FAILED,
    }  # fmt: skip
    many = [f"m{n}" for n in range(1200)]  # past a lookup's chunk of 500 ids
    add(pair.store, *(a_job(job_id) for job_id in many))
    assert pair.reader.statuses(many) == dict.fromkeys(many, Status.PENDING)


def test_list_is_newest_first_filtered_limited_and_paged(pair: Pair) -> None:
    add(
        pair.store,
        a_job("old", created=NOW),
        a_job("tie-a", created=NOW + 1),
        a_job("tie-b", created=NOW + 1),
        a_job("new", created=NOW + 2, type="cpu"),
    )
    finish(pair.store, "old", lease=1, ok=False, at=NOW + 10)
    assert [j.id for j in pair.reader.list()] == ["new", "tie-b", "tie-a", "old"]
    assert [j.id for j in pair.reader.list(JobQuery(limit=2))] == ["new", "tie-b"]
    assert [j.id for j in pair.reader.list(JobQuery(before=(NOW + 1, "tie-b")))] == [
        "tie-a",
        "old",
    ]
    assert [j.id for j in pair.reader.list(JobQuery(before=(NOW + 2, "new"), limit=1))] == ["tie-b"]
    assert [j.id for j in pair.reader.list(JobQuery([Status.FAILED]))] == ["old"]
    pending_or_failed = pair.reader.list(JobQuery([Status.PENDING, Status.FAILED]))
    assert [j.id for j in pending_or_failed] == ["new", "tie-b", "tie-a", "old"]
    assert [j.id for j in pair.reader.list(JobQuery(job_type="cpu"))] == ["new"]
    assert pair.reader.list(JobQuery([Status.COMPLETED])) == []


def test_counts_retention_retries_and_the_oldest_pending(pair: Pair) -> None:
    assert pair.reader.counts() == {}
    assert pair.reader.oldest_pending_age(NOW) is None
    add(
        pair.store,
        a_job("p1", created=NOW - 30),
        a_job("p2", created=NOW - 10, type="cpu"),
        a_job("done", created=NOW - 50),
        a_job("again", created=NOW - 5, retry_of="done"),
    )
    finish(pair.store, "done", lease=1, ok=True, at=NOW - 40)
    assert pair.reader.counts() == {"echo": {"pending": 2, "completed": 1}, "cpu": {"pending": 1}}
    assert pair.reader.oldest_pending_age(NOW) == pytest.approx(30.0)
    assert pair.reader.count_finished_before(NOW - 39) == 1
    assert pair.reader.count_finished_before(NOW - 41) == 0
    assert pair.reader.retry_links() == [("again", "done", Status.PENDING, NOW - 5)]


def test_runs_oldest_first_and_recent_runs(pair: Pair) -> None:
    add(pair.store, a_job("r"), a_job("s"))
    finish(pair.store, "r", lease=7, ok=False, at=NOW + 5)
    finish(pair.store, "s", lease=8, ok=True, at=NOW + 9)
    [run] = pair.reader.runs("r")
    assert (run.job_id, run.lease, run.outcome, run.error) == ("r", 7, "failed", "boom")
    assert (run.started_at, run.ended_at, run.worker_pid) == (NOW + 4, NOW + 5, 4242)
    assert pair.reader.runs("absent") == []
    assert sorted(r.job_id for r in pair.reader.recent_runs(NOW + 5)) == ["r", "s"]
    assert [r.job_id for r in pair.reader.recent_runs(NOW + 6)] == ["s"]


def test_worker_reports(pair: Pair) -> None:
    assert pair.reader.worker_reports() == []
    with pair.store.transaction():
        pair.store.add_worker(WorkerRecord(11, 100.5))
        pair.store.add_worker(WorkerRecord(12, 101.5))
    with pair.store.transaction():
        pair.store.update_workers([WorkerReport(12, "busy", "r", 3, NOW)])
    assert pair.reader.worker_reports() == [
        (WorkerRecord(11, 100.5), WorkerReport(11, "starting", None, 0, 0.0)),
        (WorkerRecord(12, 101.5), WorkerReport(12, "busy", "r", 3, NOW)),
    ]


def test_a_shared_store_names_the_taken_id_in_its_error(pair: Pair) -> None:
    """A submission whose id is taken by other content raises DuplicateId with the id
    as a field: nothing reads it back out of the message."""
    if not isinstance(pair.reader, SharedJobStore):
        pytest.skip("only a shared store is written by the client")
    add(pair.store, a_job("taken"))
    other = msgspec.structs.replace(a_job("taken"), digest="other")
    with pytest.raises(DuplicateId) as raised:
        pair.reader.submit([a_job("fresh"), other])
    assert raised.value.job_id == "taken"
    assert str(raised.value) == 'duplicate id "taken" with different content'
    assert pair.reader.get("fresh") is None  # all or none


def test_list_reads_one_snapshot_while_the_writer_moves_a_job(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that the daemon moves from one status to another while `list` reads (on
    SQLite between its seeks, one per status) is listed once, as it was when the list
    began: not twice, not missing."""
    add(pair.store, a_job("moving", created=NOW), a_job("still", created=NOW + 1))
    query = pair.reader._query  # type: ignore[attr-defined]
    moved: list[Job] = []

    def query_then_move(sql: str, parameters: object = ()) -> object:
        rows = query(sql, parameters)
        if not moved:
            moved.append(finish(pair.store, "moving", 1, ok=True, at=NOW + 5))
        return rows

    monkeypatch.setattr(pair.reader, "_query", query_then_move)
    listed = pair.reader.list()
    assert moved, "the job was moved while the list read"
    assert sorted(job.id for job in listed) == ["moving", "still"]
    assert {job.id: job.status for job in listed}["moving"] is Status.PENDING
