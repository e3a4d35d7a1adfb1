"""A real Supervisor on the memory store, turn by turn, with a fake clock.

The workers are real forked processes (the supervisor's own WorkerManager forks them);
the clock the loop reads is fake, so the test, not the machine's speed, says when a
deadline has passed. Each turn is the loop's own `Supervisor.turn`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from procpool.adapters.inbox.directory import FileInbox
from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application import events
from procpool.application.handlers import HandlerRegistry, JobContext
from procpool.application.supervisor import wait
from procpool.application.supervisor.loop import Supervisor
from procpool.application.supervisor.settings import Settings
from procpool.application.worker import pool, tree
from procpool.domain.job import Status
from procpool.domain.spec import JobDefaults

DEADLINE = 30.0  # real seconds a turn's news may take on a loaded machine


class FakeClock:
    """Starts at the machine's readings and moves only when told."""

    def __init__(self) -> None:
        self.now = time.monotonic()
        self.wall = time.time()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


class Events:
    """The event sink: every line the supervisor writes, as (event, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def write_event(self, level: str, event: str, message: str, fields: dict[str, Any]) -> None:
        self.lines.append((event, fields))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, fields in self.lines if name == event]


def echo(ctx: JobContext, payload: Any) -> Any:
    return payload


def hang(ctx: JobContext, payload: Any) -> Any:
    time.sleep(120)  # ended by its timeout, on the supervisor's fake clock


@pytest.fixture
def said() -> Iterator[Events]:
    sink = Events()
    events.configure(sink)
    yield sink
    events.configure(None)


@pytest.fixture
def supervisor(
    tmp_path: Path, said: Events, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Supervisor, FakeClock]]:
    # The test process must not stay the subreaper of every orphan after this test.
    monkeypatch.setattr(tree, "become_subreaper", lambda: None)
    handlers = {signum: signal.getsignal(signum) for signum in pool.HELD_ACROSS_FORK}
    registry = HandlerRegistry()
    registry.register("echo", echo)
    registry.register("hang", hang)
    settings = Settings(
        workers=1, heartbeat_timeout=60.0, poll_interval=0.05, shutdown_timeout=5.0,
        defaults=JobDefaults(max_attempts=1),
    )  # fmt: skip
    clock = FakeClock()
    inbox = FileInbox(tmp_path, settings.max_file_bytes)
    made = Supervisor(MemoryJobStore(), inbox, registry, settings, clock=clock)
    made.start()
    try:
        yield made, clock
    finally:
        made.abandon()
        made.close()
        for channel in made.workers.channels.values():
            channel.close()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        inbox.close_descriptors()


def turns_until(supervisor: Supervisor, done: Callable[[], bool]) -> int:
    """Run whole turns until `done()`; returns how many it took."""
    deadline = time.monotonic() + DEADLINE
    count = 0
    while not done():
        assert time.monotonic() < deadline, "the turns did not get there in time"
        supervisor.turn()
        count += 1
    return count


def submit(tmp_path: Path, job_id: str, job: dict[str, Any]) -> Path:
    """As a producer does: write aside, then rename into the inbox."""
    path = tmp_path / "inbox" / f"{job_id}.json"
    aside = tmp_path / "inbox" / f".{job_id}.tmp"
    aside.write_text(json.dumps(job))
    os.rename(aside, path)
    return path


def test_a_job_goes_through_whole_turns_and_its_effects_follow_the_commit(
    supervisor: tuple[Supervisor, FakeClock], tmp_path: Path, said: Events
) -> None:
    sup, _clock = supervisor
    store = sup.store
    assert isinstance(store, MemoryJobStore)
    turns_until(sup, lambda: any(w.state == "serving" for w in sup.fleet))
    file = submit(tmp_path, "j1", {"type": "echo", "payload": {"n": 7}})

    turns_until(
        sup, lambda: (job := store.get("j1")) is not None and job.status is Status.COMPLETED
    )

    job = store.get("j1")
    assert job is not None and json.loads(job.result or b"null") == {"n": 7}
    assert job.attempts == 0 and job.worker_pid is None
    # The effects came after the commits: the accepted file is gone, the lines are said.
    assert not file.exists()
    assert [f["file"] for f in said.named("file.accepted")] == ["j1.json"]
    assert [f["job_id"] for f in said.named("job.completed")] == ["j1"]
    assert len(store.runs("j1")) == 1
    worker = next(iter(sup.fleet))
    assert worker.jobs_done == 1 and store.workers()[0].pid == worker.pid

    # A stop signal, handled by its handler in the turn: the idle worker leaves, the
    # loop's condition to end holds.
    os.kill(os.getpid(), signal.SIGTERM)
    turns_until(sup, lambda: sup.stop.begun and not len(sup.fleet))
    assert [f["signal"] for f in said.named("daemon.stopping")] == ["SIGTERM"]


def test_the_fake_clock_ends_a_job_past_its_timeout_and_the_pool_is_refilled(
    supervisor: tuple[Supervisor, FakeClock], tmp_path: Path, said: Events
) -> None:
    sup, clock = supervisor
    store = sup.store
    turns_until(sup, lambda: any(w.state == "serving" for w in sup.fleet))
    submit(tmp_path, "slow", {"type": "hang", "payload": None, "timeout": 5})
    turns_until(sup, lambda: any(w.current == "slow" for w in sup.fleet))
    first = next(iter(sup.fleet)).pid

    # Real time does not end it: only the loop's clock counts.
    for _ in range(3):
        sup.turn()
    assert store.get("slow").status is Status.RUNNING  # type: ignore[union-attr]

    clock.advance(5.5)
    turns_until(sup, lambda: store.get("slow").status is Status.FAILED)  # type: ignore[union-attr]

    job = store.get("slow")
    assert job is not None and job.attempts == 1 and "timed out after 5 s" in (job.last_error or "")
    assert [f["job_id"] for f in said.named("job.failed")] == ["slow"]
    # Its worker was ended and reaped; a new one is forked in its place.
    turns_until(
        sup, lambda: [w.pid for w in sup.fleet if w.state == "serving"] not in ([], [first])
    )
    assert [record.pid for record in store.workers()] != [first]


def test_a_turns_job_changes_are_written_together(
    supervisor: tuple[Supervisor, FakeClock], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dispatch's starts and the ends read from the workers are written by the turn's
    `save_many` (one per set of columns, issue 25): no start or end is a statement of
    its own, and every job is done."""
    sup, _clock = supervisor
    store = sup.store
    turns_until(sup, lambda: any(w.state == "serving" for w in sup.fleet))
    alone: list[str] = []
    together: list[int] = []
    save, save_many = store.save, getattr(store, "save_many", None)

    def counted_save(job: Any, **given: Any) -> bool:
        alone.append(job.id)
        return save(job, **given)

    def counted_save_many(saves: Any, fields: Any) -> int:
        together.append(len(saves))
        assert save_many is not None
        return save_many(saves, fields)

    monkeypatch.setattr(store, "save", counted_save)
    # raising=False: on a store without save_many the assertions below say what is wrong
    monkeypatch.setattr(store, "save_many", counted_save_many, raising=False)
    lines = "".join(json.dumps({"type": "echo", "payload": {"n": n}}) + "\n" for n in range(6))
    aside = tmp_path / "inbox" / ".six.tmp"
    aside.write_text(lines)
    os.rename(aside, tmp_path / "inbox" / "six.jsonl")

    turns_until(sup, lambda: store.counts().get(("echo", Status.COMPLETED), 0) == 6)
    assert alone == []
    assert sum(together) >= 12  # a start and an end each, at the least


def test_a_short_jobs_start_and_end_are_one_turns_commit(
    supervisor: tuple[Supervisor, FakeClock],
    tmp_path: Path,
    said: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once jobs are known to be short, the turn that reads a job's Started waits (here on
    the fake clock, which does not move, until it comes) for its Finished: no turn ends
    with the job begun and not ended, so its start is no durable commit of its own.
    The loop does not linger before its turns, as when a client waits for a job."""
    monkeypatch.setattr(wait, "LINGER", 0.0)
    sup, _clock = supervisor
    store = sup.store
    turns_until(sup, lambda: any(w.state == "serving" for w in sup.fleet))
    submit(tmp_path, "first", {"type": "echo", "payload": 1})
    turns_until(sup, lambda: (job := store.get("first")) is not None and job.status.is_terminal)
    assert sup.fleet.batch.mean is not None and sup.fleet.batch.mean < 0.0005

    submit(tmp_path, "short", {"type": "echo", "payload": 2})
    begun_alone: list[int] = []

    def done() -> bool:
        if any(w.current == "short" for w in sup.fleet):
            begun_alone.append(1)
        job = store.get("short")
        return job is not None and job.status is Status.COMPLETED

    turns_until(sup, done)
    assert begun_alone == [], "a turn ended with the job begun and not ended"
    assert [f["job_id"] for f in said.named("job.completed")] == ["first", "short"]
