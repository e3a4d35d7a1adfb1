"""The fence of a daemon on a shared store ends its runs without the supervisor and
without the GIL (DESIGN 16, application/fence.py), judged on a real cluster by the
start and end marks each run writes (tests/pg_handlers.py): a run without an end mark
ended when its pid was first seen gone."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import Daemon, alive, wait_until
from test_postgres_daemons import running_now, spans_of

from procpool import Client

LEASE = 3.0


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("payload", "env"),
    [
        # One C call holding the GIL: the worker's own fence thread cannot run.
        ({"sum": 10**11}, {}),
        # The GIL free, but worker heartbeats (and once the fence checks) 4x the lease apart.
        (
            {"first_seconds": 120},
            {"PROCPOOL_HEARTBEAT_INTERVAL": "12", "PROCPOOL_HEARTBEAT_TIMEOUT": "60"},
        ),
    ],
    ids=["gil-held", "heartbeat-12s"],
)
def test_a_stopped_supervisors_run_ends_before_another_daemon_starts_the_job_again(
    pg_url: str,
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    spans: Path,
    payload: dict[str, object],
    env: dict[str, str],
) -> None:
    def start(name: str) -> Daemon:
        return make_daemon(
            1,
            home=tmp_path / name,
            env={"PROCPOOL_DATABASE_URL": pg_url, "PROCPOOL_DAEMON_LEASE": str(LEASE), **env},
            args=("--handlers", "pg_handlers"),
        )

    a = start("a")
    with Client(a.home, database_url=pg_url) as jobs:
        jobs.submit("span", {"dir": str(spans), **payload}, id="long", max_attempts=3)
        wait_until(lambda: running_now(spans) == {"long"}, 30, what="the job to start on a")
        b = start("b")
        b.wait_events("daemon.started", timeout=30)
        [runner] = [int(s[2]) for s in spans_of(spans) if s[3] == "start"]
        # The supervisor alone: its worker (a session of its own) runs on.
        a.signal(signal.SIGSTOP)
        stopped_at = time.time()
        gone_at: list[float] = []

        def second_attempt_started() -> list[float]:
            # b's run marks "overlap" instead of "start" if it finds a's still running.
            if not gone_at and not alive(runner):
                gone_at.append(time.time())
            return [
                float(s[4]) for s in spans_of(spans) if s[1] == "2" and s[3] in ("start", "overlap")
            ]

        try:
            [restarted_at] = wait_until(
                second_attempt_started, 60, interval=0.005, what="b to run the job again"
            )
            assert gone_at, f"a's run (pid {runner}) still ran when b started the job again"
            assert gone_at[0] <= restarted_at
            # The fence came before the lease could run out, not merely before b.
            assert gone_at[0] - stopped_at < LEASE
        finally:
            a.signal(signal.SIGCONT)
        [done] = jobs.wait(["long"], timeout=60)
        assert done.status == "completed"
        assert [s[1] for s in spans_of(spans) if s[3] == "start"] == ["1", "2"]
        assert not (spans / "OVERLAP").exists()
        # a comes back, learns it was declared dead, and serves again.
        a.wait_events("daemon.lease_lost", timeout=30)
        # It says the fence killed its worker, not that the worker ran out of memory.
        [exited] = a.wait_events("worker.exited", timeout=30, worker_pid=runner)
        assert exited["signal"] == "SIGKILL" and "the fence ended its runs" in exited["msg"]
        more = jobs.submit("span", {"dir": str(spans), "seconds": 0}, id="after")
        assert jobs.wait([more], timeout=30)[0].status == "completed"
    assert a.stop() == 0 and b.stop() == 0


def test_a_killed_watchdog_is_started_again(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path, spans: Path
) -> None:
    a = make_daemon(
        1,
        home=tmp_path / "a",
        env={"PROCPOOL_DATABASE_URL": pg_url, "PROCPOOL_DAEMON_LEASE": str(LEASE)},
        args=("--handlers", "pg_handlers"),
    )

    def watchdogs() -> set[int]:
        workers = {event["worker_pid"] for event in a.events("worker.started")}
        children = {child.pid for child in psutil.Process(a.pid).children()}
        return children - workers

    a.wait_events("worker.started", timeout=30)
    [first] = wait_until(watchdogs, 30, what="the watchdog")
    os.kill(first, signal.SIGKILL)
    a.wait_events("fence.watchdog_exited", timeout=30)
    [second] = wait_until(lambda: watchdogs() - {first}, 30, what="another watchdog")
    assert os.getsid(second) == second  # a session of its own: no terminal signal reaches it
    with Client(a.home, database_url=pg_url) as jobs:
        jobs.submit("span", {"dir": str(spans), "seconds": 0}, id="after")
        assert jobs.wait(["after"], timeout=30)[0].status == "completed"
    assert a.stop() == 0
    assert not alive(second)
