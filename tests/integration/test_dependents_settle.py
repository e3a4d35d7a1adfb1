"""Dependents released and canceled by the supervisor's step (application/supervisor/
dependents.py) on each in-process store: BATCH held jobs per turn at the most, the rest
at the next turns, what a dead daemon left found by the sweep of the next start, and
the claim never handing out a held job."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import cast

import msgspec
import pytest

from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application.ports import JobStore, SharedStore, Tick
from procpool.application.supervisor.dependents import BATCH, Dependents
from procpool.application.supervisor.fleet import Fleet, Limits
from procpool.application.supervisor.ledger import Ledger
from procpool.application.supervisor.membership import apply_tick
from procpool.domain import job as jobs
from procpool.domain.job import Job, Status
from procpool.domain.retry import RetryPolicy

NOW = 1_800_000_000.0


def a_job(job_id: str, **changes: object) -> Job:
    job = Job(id=job_id, type="echo", run_at=NOW, created_at=NOW, updated_at=NOW, digest="d")
    return msgspec.structs.replace(job, **changes)


class Turns:
    """A Dependents with a compare-and-set as the ledger's, one transaction per turn."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.canceled: list[Job] = []
        self.dependents = Dependents(store, self.write, lambda *args, **fields: None)

    def write(self, new: Job, old: Job) -> bool:
        saved = self.store.save(new, expected=old.status, expected_lease=old.lease)
        if saved and new.status.is_terminal:
            self.canceled.append(new)
            self.dependents.ended(new.id, new.updated_at)
        return saved

    def end(self, job_id: str, status: Status) -> None:
        """Run the job and end it `status`, settling in its turn."""
        with self.store.transaction():
            job = self.store.get(job_id)
            assert job is not None
            running = jobs.start(job, lease=1, worker_pid=1, now=NOW)
            assert self.store.save(running, expected=job.status, expected_lease=job.lease)
            if status is Status.COMPLETED:
                ended = jobs.complete(running, result=b"1", now=NOW + 1)
            else:
                ended = jobs.fail_attempt(running, error="x", now=NOW + 1, retry_at=None)
            assert self.store.save(ended, expected=running.status, expected_lease=1)
            self.dependents.ended(job_id, NOW + 1)
            self.dependents.settle()

    def turn(self) -> None:
        with self.store.transaction():
            self.dependents.settle(NOW + 2)


def due_ids(store: JobStore) -> set[str]:
    with store.transaction():
        return {job.id for job in store.due(NOW + 10, 10**6)}


def test_a_fan_out_larger_than_a_batch_is_released_over_several_turns(
    claim_store: JobStore,
) -> None:
    store = claim_store
    children = [a_job(f"c{n:05d}", after=("p",)) for n in range(BATCH * 2 + 500)]
    with store.transaction():
        store.insert([a_job("p"), a_job("other"), *children])
    assert due_ids(store) == {"p", "other"}  # the held jobs are never claimed
    turns = Turns(store)
    turns.end("p", Status.COMPLETED)
    assert len(due_ids(store)) == 1 + BATCH and turns.dependents.backlog
    turns.turn()
    turns.turn()
    assert not turns.dependents.backlog
    assert due_ids(store) == {"other"} | {child.id for child in children}


def test_a_failure_cancels_down_the_graph_and_a_run_child_starts(claim_store: JobStore) -> None:
    store = claim_store
    with store.transaction():
        store.insert([
            a_job("a"), a_job("b", after=("a",)), a_job("c", after=("b",)),
            a_job("d", after=("c", "a")), a_job("cb", after=("a", "b"), after_failure="run"),
        ])  # fmt: skip
    turns = Turns(store)
    turns.end("a", Status.FAILED)
    by = {job.id: (job.canceled_by, job.last_error) for job in turns.canceled}
    assert by == {
        "b": ("a", "canceled: its parent a was failed"),
        "c": ("b", "canceled: its parent b was canceled"),
        "d": ("a", "canceled: its parent a was failed"),  # a's own dependent too
    }
    assert due_ids(store) == {"cb"}  # "run": both parents are terminal
    assert not turns.dependents.backlog


def test_the_sweep_of_a_start_settles_what_a_dead_daemon_left(claim_store: JobStore) -> None:
    """The parents ended in a committed turn whose settling never ran (the daemon died
    with its backlog): the next start's sweep finds every held job they decide."""
    store = claim_store
    with store.transaction():
        store.insert([a_job("done"), a_job("broke"), a_job("open")])
        store.insert([a_job(f"w{n:05d}", after=("done",)) for n in range(BATCH + 10)])
        store.insert([a_job("x", after=("broke",)), a_job("y", after=("open", "done"))])
    gone = Turns(store)
    gone.dependents.ended = lambda job_id, now: None  # type: ignore[method-assign]
    gone.end("done", Status.COMPLETED)
    gone.end("broke", Status.FAILED)
    assert due_ids(store) == {"open"}
    started = Turns(store)
    started.dependents.sweep()
    while started.dependents.backlog:
        started.turn()
    assert due_ids(store) == {"open"} | {f"w{n:05d}" for n in range(BATCH + 10)}
    assert [(job.id, job.canceled_by) for job in started.canceled] == [("x", "broke")]
    with store.transaction():
        assert [job.id for job, _ in store.held(["y", "x"])] == ["y"]


@pytest.mark.timeout(60)
def test_on_postgresql_two_daemons_ending_both_parents_at_once_release_the_child(
    pg_url: str, tmp_path: Path
) -> None:
    """Daemon A ends parent p and has looked at the child (q still running) but not
    committed when daemon B ends q: B's look at the child waits for A's commit, then
    sees p completed and releases it. A look that did not wait would see p running and
    leave the child held forever."""
    from procpool.adapters.stores.postgres import PostgresJobStore  # noqa: PLC0415

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = PostgresJobStore(pg_url, tmp_path / "a")
    second = PostgresJobStore(pg_url, tmp_path / "b")
    try:
        with first.transaction():
            first.insert([a_job("p"), a_job("q"), a_job("child", after=("p", "q"))])
        running = {}
        with first.transaction():
            for job in first.due(NOW + 10, 10):
                running[job.id] = jobs.start(job, lease=first.new_lease(), worker_pid=1, now=NOW)
                assert first.save(running[job.id], expected=job.status, expected_lease=0)
        assert set(running) == {"p", "q"}
        looked = threading.Event()
        go_on = threading.Event()
        errors: list[BaseException] = []

        def end(store: PostgresJobStore, job_id: str, pause: bool) -> None:
            try:
                turns = Turns(store)
                with store.transaction():
                    job = running[job_id]
                    done = jobs.complete(job, result=b"1", now=NOW + 1)
                    assert store.save(done, expected=job.status, expected_lease=job.lease)
                    turns.dependents.ended(job_id, NOW + 1)
                    turns.dependents.settle()
                    if pause:
                        looked.set()
                        assert go_on.wait(20)
            except BaseException as error:
                errors.append(error)

        a = threading.Thread(target=end, args=(first, "p", True))
        a.start()
        assert looked.wait(20)
        b = threading.Thread(target=end, args=(second, "q", False))
        b.start()
        b.join(1.0)
        assert b.is_alive(), "B's look at the child must wait for A's commit"
        go_on.set()
        a.join(20)
        b.join(20)
        assert not errors, errors
        with first.transaction():
            assert [job.id for job in first.due(NOW + 10, 10)] == ["child"]
    finally:
        first.close()
        second.close()


def test_a_daemon_that_buries_another_sweeps_for_what_it_left() -> None:
    """On a shared store, a daemon that dies with dependents still to settle leaves
    them to the others: the one that declares it dead sweeps the held jobs."""
    store = MemoryJobStore()
    ledger = Ledger(store, RetryPolicy(), lambda *args, **fields: None)
    with store.transaction():
        store.insert([a_job("gone"), a_job("w", after=("gone",))])
        job = store.get("gone")
        assert job is not None
        running = jobs.start(job, lease=1, worker_pid=1, now=NOW)
        store.save(running, expected=job.status, expected_lease=0)
        done = jobs.complete(running, result=b"1", now=NOW + 1)
        store.save(done, expected=running.status, expected_lease=1)  # its daemon died
    shared = cast(SharedStore, store)
    with store.transaction():
        apply_tick(Tick(), shared, Fleet(Limits()), ledger, lambda *a, **f: None, 0.0, NOW)
        ledger.dependents.settle(NOW + 2)
    assert due_ids(store) == set()
    with store.transaction():
        apply_tick(Tick(buried=True), shared, Fleet(Limits()), ledger, lambda *a, **f: None,
                   0.0, NOW)  # fmt: skip
        ledger.dependents.settle(NOW + 2)
    assert due_ids(store) == {"w"}
