"""The claim filter of pauses (CONTRACT section 13), table-driven, on the memory store
and on the SQLite store, with a fake clock: which due jobs `due` returns given the
pauses stored, their `until`, what runs and the limits; and when the loop must wake."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from claim_fill import fill
from conftest import wait_until

from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.application.ports import JobStore, Serving
from procpool.domain import job as jobs
from procpool.domain.job import Job, Status
from procpool.domain.limits import ClaimLimits
from procpool.domain.pauses import Pause, ended, first_wake, in_force, next_end, waiting

NOW = 1_000_000.0  # the fake clock: every job below is due at NOW
SERVED = ("render", "echo", "sync")


def pending(job_id: str, job_type: str = "echo", key: str | None = None, *,
            priority: int = 0, age: float = 0.0) -> Job:  # fmt: skip
    return Job(id=job_id, type=job_type, concurrency_key=key, priority=priority,
               run_at=NOW - 1000 + age, created_at=NOW - 1000, updated_at=NOW - 1000)  # fmt: skip


def paused(job_type: str, until: float | None = None) -> Pause:
    return Pause(job_type, until, NOW - 100)


@dataclass
class Case:
    name: str
    waiting: list[Job]
    pauses: list[Pause]
    expected: list[str]
    running: list[Job] = field(default_factory=list)
    limits: ClaimLimits = field(default_factory=ClaimLimits)
    want: int = 5
    now: float = NOW


CASES = [
    Case("no pause: dispatch order", [pending("b", age=2), pending("a", age=1)], [], ["a", "b"]),
    Case("a paused type starts nothing, others go",
         [pending("r1", "render"), pending("e", age=1)], [paused("render")], ["e"]),
    Case("every type paused: nothing", [pending("r1", "render"), pending("e", age=1)],
         [paused("render"), paused("echo")], []),
    Case("a paused type ahead of many",
         [pending(f"r{n}", "render", priority=9, age=n) for n in range(200)]
         + [pending("e", age=500)], [paused("render")], ["e"], want=3),
    Case("until still ahead: in force", [pending("r1", "render")],
         [paused("render", until=NOW + 0.001)], []),
    Case("until come: over by itself", [pending("r1", "render")],
         [paused("render", until=NOW)], ["r1"]),
    Case("until long past", [pending("r1", "render")], [paused("render", NOW - 50)], ["r1"]),
    Case("the clock decides: before the until", [pending("r1", "render")],
         [paused("render", until=NOW + 10)], [], now=NOW + 9.9),
    Case("the clock decides: after the until", [pending("r1", "render")],
         [paused("render", until=NOW + 10)], ["r1"], now=NOW + 10.1),
    Case("a pause of a type no daemon serves changes nothing", [pending("e")],
         [paused("nobody")], ["e"]),
    Case("a pause and a limit: the limited type's free slot stays unused",
         [pending("r1", "render"), pending("s", "sync", age=1)], [paused("render")], ["s"],
         limits=ClaimLimits({"render": 2})),
    Case("a pause beside a full type: both skipped",
         [pending("r2", "render"), pending("s1", "sync", "k", age=1), pending("e", age=2)],
         [paused("sync")], ["e"], running=[pending("r1", "render")],
         limits=ClaimLimits({"render": 1})),
    Case("running jobs of a paused type do not count against others",
         [pending("e")], [paused("render")], ["e"], running=[pending("r1", "render")]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_due_leaves_paused_types_out(claim_store: JobStore, case: Case) -> None:
    fill(claim_store, case.running, case.waiting, case.pauses, started_at=NOW - 50)
    claim_store.serve(Serving(case.limits, SERVED))
    with claim_store.transaction():
        got = [job.id for job in claim_store.due(case.now, case.want)]
    assert got == case.expected


def test_a_pause_and_a_resume_count_from_the_claim_after_them(claim_store: JobStore) -> None:
    """Written in a transaction, obeyed by the claim of that very transaction (the
    intake comes before the dispatch in a turn); lifted, the jobs are claimed at once."""
    claim_store.serve(Serving(ClaimLimits(), SERVED))
    with claim_store.transaction():
        claim_store.insert([pending("r1", "render"), pending("e", age=1)])
        claim_store.pause(Pause("render", None, NOW))
        assert [job.id for job in claim_store.due(NOW, 5)] == ["e"]
    with claim_store.transaction():
        assert claim_store.resume(["render", "sync"]) == ["render"]  # sync was not paused
        assert [job.id for job in claim_store.due(NOW, 5)] == ["r1", "e"]


def test_a_rolled_back_pause_is_not_obeyed(claim_store: JobStore) -> None:
    claim_store.serve(Serving(ClaimLimits(), SERVED))
    with claim_store.transaction():
        claim_store.insert([pending("r1", "render")])
    with pytest.raises(RuntimeError), claim_store.transaction():
        claim_store.pause(Pause("render", None, NOW))
        raise RuntimeError("the turn failed")
    with claim_store.transaction():
        assert claim_store.pauses() == []
        assert [job.id for job in claim_store.due(NOW, 5)] == ["r1"]


def test_pausing_again_replaces_the_until(claim_store: JobStore) -> None:
    claim_store.serve(Serving(ClaimLimits(), SERVED))
    with claim_store.transaction():
        claim_store.insert([pending("r1", "render")])
        claim_store.pause(Pause("render", NOW + 5, NOW - 1))
        claim_store.pause(Pause("render", None, NOW))
        assert claim_store.pauses() == [Pause("render", None, NOW)]
        assert claim_store.due(NOW + 10, 5) == []


def test_the_loop_wakes_when_a_pause_ends(claim_store: JobStore) -> None:
    """`next_run_at` says when a paused type's due jobs may start: the earliest `until`
    the claim saw in force, or a scheduled job's run_at if that is earlier."""
    claim_store.serve(Serving(ClaimLimits(), SERVED))
    later = Job(id="later", type="echo", run_at=NOW + 60, created_at=NOW, updated_at=NOW)
    with claim_store.transaction():
        claim_store.insert([pending("r1", "render"), later])
        claim_store.pause(Pause("render", NOW + 30, NOW))
        claim_store.pause(Pause("sync", None, NOW))
        assert claim_store.due(NOW, 5) == []
        assert claim_store.next_run_at(NOW) == NOW + 30
    with claim_store.transaction():
        assert [job.id for job in claim_store.due(NOW + 30, 5)] == ["r1"]
        assert claim_store.next_run_at(NOW + 30) == NOW + 60


def test_the_claim_removes_a_pause_past_its_until(claim_store: JobStore) -> None:
    """No writer runs at the `until`; the first claim after it removes the row."""
    claim_store.serve(Serving(ClaimLimits(), SERVED))
    with claim_store.transaction():
        claim_store.pause(Pause("render", NOW + 1, NOW))
        claim_store.pause(Pause("sync", None, NOW))
        claim_store.due(NOW, 5)
        assert [p.type for p in claim_store.pauses()] == ["render", "sync"]
    with claim_store.transaction():
        claim_store.due(NOW + 2, 5)
    if isinstance(claim_store, SqliteJobStore):  # the memory store keeps it, not in force
        assert [p.type for p in claim_store.pauses()] == ["sync"]


@pytest.mark.parametrize(
    ("pause", "now", "held"),
    [
        (None, NOW, None),
        (Pause("echo", None, NOW - 5), NOW, {"reason": "paused"}),
        (Pause("echo", NOW + 1, NOW - 5), NOW, {"reason": "paused",
                                                 "until": "1970-01-12T13:46:41.000000Z"}),
        (Pause("echo", NOW, NOW - 5), NOW, None),  # ended at its until
    ],
)  # fmt: skip
def test_waiting_says_paused_while_in_force(
    pause: Pause | None, now: float, held: dict[str, object] | None
) -> None:
    assert waiting(pending("e"), pause, now) == held


def test_waiting_only_for_a_due_pending_job() -> None:
    pause = Pause("echo", None, NOW)
    not_due = Job(id="n", type="echo", run_at=NOW + 5, created_at=NOW, updated_at=NOW)
    assert waiting(not_due, pause, NOW) is None
    running = jobs.start(pending("r"), lease=1, worker_pid=5, now=NOW)
    assert running.status is Status.RUNNING
    assert waiting(running, pause, NOW) is None


def test_in_force_ended_and_next_end_by_the_clock() -> None:
    pauses = [Pause("a", None, 0), Pause("b", NOW + 5, 0), Pause("c", NOW - 5, 0),
              Pause("d", NOW + 2, 0)]  # fmt: skip
    assert in_force(pauses, NOW) == {"a", "b", "d"}
    assert [p.type for p in ended(pauses, NOW)] == ["c"]
    assert next_end(pauses, NOW) == NOW + 2
    assert next_end(pauses, NOW + 2) == NOW + 5
    assert next_end(pauses, NOW + 5) is None


@pytest.mark.parametrize(
    ("scheduled", "pause_end", "after", "wake"),
    [
        (None, None, NOW, None),
        (NOW + 5, None, NOW, NOW + 5),
        (None, NOW + 5, NOW, NOW + 5),
        (NOW + 5, NOW + 3, NOW, NOW + 3),
        (NOW + 3, NOW + 5, NOW, NOW + 3),
        (NOW + 5, NOW, NOW, NOW + 5),  # a pause that ended is no reason to wake
    ],
)
def test_first_wake(
    scheduled: float | None, pause_end: float | None, after: float, wake: float | None
) -> None:
    assert first_wake(scheduled, pause_end, after) == wake


@pytest.mark.timeout(120)
def test_a_pause_on_postgresql_waits_for_the_claims_that_missed_it(
    pg_url: str, tmp_path: Path
) -> None:
    """A claim holds the pauses' lock shared from its read of the pauses to its commit;
    a client's pause waits for it. So when `pause` returns, no claim that read the
    pauses before it is still to commit (what `Client.pause` promises)."""
    import psycopg  # noqa: PLC0415 (the PostgreSQL tests only)

    from procpool.adapters.stores.postgres import PostgresJobStore  # noqa: PLC0415
    from procpool.adapters.stores.postgres_client import PostgresClientStore  # noqa: PLC0415
    from procpool.domain.spec import JobDefaults  # noqa: PLC0415

    daemon = PostgresJobStore(pg_url, tmp_path, types=list(SERVED))
    client = PostgresClientStore(pg_url, JobDefaults())
    watcher = psycopg.connect(pg_url, autocommit=True)
    daemon.serve(Serving(ClaimLimits(), SERVED))
    with daemon.transaction():
        daemon.insert([pending("r1", "render")])
    done = threading.Event()
    writer = threading.Thread(
        target=lambda: (client.pause([Pause("render", None, NOW)]), done.set()), daemon=True
    )
    try:
        with daemon.transaction():
            assert [job.id for job in daemon.due(NOW, 5)] == ["r1"]  # the pause is not there
            writer.start()
            wait_until(
                lambda: watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()[0] == 1,
                30,
                what="the pause to wait for the claim's lock",
            )  # fmt: skip
            assert not done.is_set()
        writer.join(30)
        assert done.is_set()
        with daemon.transaction():
            assert daemon.due(NOW, 5) == []  # r1, left pending above, is paused now
    finally:
        writer.join(30)
        watcher.close()
        client.close()
        daemon.close()
