"""A global concurrency limit across daemons on one PostgreSQL store (CONTRACT sections
11 and 13): `capped` limited to 1 by PROCPOOL_LIMITS, judged by the start and end marks
of each run (tests/limit_handlers.py); a run without an end mark ends when its process
was seen gone."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, alive, wait_until
from limit_marks import Span, most_at_once, spans

from procpool import Client

LEASE = 3.0


@pytest.fixture
def start(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> Callable[[str], Daemon]:
    def start_one(name: str) -> Daemon:
        return make_daemon(
            2,
            home=tmp_path / name,
            env={"PROCPOOL_DATABASE_URL": pg_url, "PROCPOOL_DAEMON_LEASE": str(LEASE),
                 "PROCPOOL_LIMITS": "capped=1"},
            args=("--handlers", "limit_handlers"),
        )  # fmt: skip

    return start_one


def _end_open_runs(directory: Path, gone: dict[tuple[str, int], float]) -> None:
    """Wait until every run without an end mark has ended: by its end mark, or with its
    process gone (noted, with when). A run on a daemon left alive ends by its mark and
    its worker lives on to run the next job."""

    def ended(run: Span) -> bool:
        if not alive(run.pid):
            gone.setdefault((run.job_id, run.pid), time.time())
            return True
        now = {(r.job_id, r.pid): r for r in spans(directory)}
        return not math.isinf(now[run.job_id, run.pid].end)

    for run in spans(directory):
        if math.isinf(run.end) and (run.job_id, run.pid) not in gone:
            wait_until(lambda run=run: ended(run), 30, what=f"run {run.job_id} to end")


def _running_one(daemons: list[Daemon], directory: Path) -> Daemon:
    """The daemon whose worker runs a job now (its start marked, its end not)."""

    def found() -> Daemon | None:
        open_pids = {run.pid for run in spans(directory) if math.isinf(run.end)}
        return next(
            (d for d in daemons for e in d.events("job.started") if e["worker_pid"] in open_pids),
            None,
        )

    return wait_until(found, 60, what="a daemon running a job")


def _judged(directory: Path, gone: dict[tuple[str, int], float]) -> list[Span]:
    runs = spans(directory)
    for run in runs:
        if math.isinf(run.end):
            run.end = gone.get((run.job_id, run.pid), math.inf)
    return runs


@pytest.mark.timeout(240)
def test_two_daemons_never_run_two_at_once(
    start: Callable[[str], Daemon], pg_url: str, tmp_path: Path
) -> None:
    marks = tmp_path / "marks-dir"
    marks.mkdir()
    a, b = start("a"), start("b")
    with Client(a.home, database_url=pg_url) as client:
        ids = client.submit_many(
            [{"type": "capped", "id": f"c{n:02}", "payload": {"dir": str(marks), "seconds": 0.1}}
             for n in range(30)]
        )  # fmt: skip
        done = client.wait(ids, timeout=150)
    assert {job.status for job in done} == {"completed"}
    runs = spans(marks)
    assert len(runs) == 30
    # Never two at once. Which daemon takes the next job is not promised: the one whose
    # worker freed the slot usually does, at the turn that records the end.
    assert most_at_once(runs) == 1
    assert len(a.events("job.started")) + len(b.events("job.started")) == 30


@pytest.mark.timeout(300)
def test_three_daemons_one_killed_one_frozen_never_two_at_once(
    start: Callable[[str], Daemon], pg_url: str, tmp_path: Path
) -> None:
    """50 jobs, a global limit of 1; along the way one daemon is killed -9 and another
    frozen past its lease: never two runs at once."""
    marks = tmp_path / "marks-dir"
    marks.mkdir()
    daemons = [start(name) for name in ("a", "b", "c")]
    gone: dict[tuple[str, int], float] = {}
    with Client(daemons[0].home, database_url=pg_url) as client:
        ids = client.submit_many(
            [{"type": "capped", "id": f"c{n:02}", "payload": {"dir": str(marks), "seconds": 0.3}}
             for n in range(50)]
        )  # fmt: skip
        wait_until(lambda: len(spans(marks)) >= 5, 60, what="five runs")
        victim = _running_one(daemons, marks)
        victim.kill()
        _end_open_runs(marks, gone)
        wait_until(lambda: len(spans(marks)) >= 15, 90, what="fifteen runs")
        frozen = _running_one([d for d in daemons if d is not victim], marks)
        frozen.signal(signal.SIGSTOP)
        try:
            _end_open_runs(marks, gone)  # its run's worker fences itself
            time.sleep(LEASE * 2)  # past the lease: the others rescue and go on
        finally:
            frozen.signal(signal.SIGCONT)
        done = client.wait(ids, timeout=200)
    assert {job.status for job in done} == {"completed"}
    runs = _judged(marks, gone)
    assert len({run.job_id for run in runs}) == 50
    assert most_at_once(runs) == 1, [(r.job_id, r.start, r.end) for r in runs]
