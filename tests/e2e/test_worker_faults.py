"""Cancellation, timeouts, heartbeats and worker deaths: a kill never wedges the pool."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from conftest import FAULTS, Daemon, alive, wait_until


def _zombies(daemon: Daemon) -> list[psutil.Process]:
    try:
        children = psutil.Process(daemon.pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if c.status() == psutil.STATUS_ZOMBIE]


def _pool_serves(daemon: Daemon, job_id: str) -> None:
    daemon.client.submit("echo", job_id, id=job_id)
    assert daemon.wait_status(job_id, "completed").result == job_id


@pytest.fixture
def faulty(make_daemon) -> Daemon:
    return make_daemon(args=FAULTS)


def test_cancel_pending(faulty: Daemon) -> None:
    faulty.client.submit("echo", 1, id="later", delay=3600)
    faulty.wait_status("later", "pending")
    result = faulty.cli("cancel", "later", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    job = faulty.wait_status("later", "canceled")
    assert job.attempts == 0


def test_cancel_running_kills_the_group_and_the_pool_goes_on(
    faulty: Daemon, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    faulty.client.submit("spawn", {"pid_file": str(pid_file)}, id="victim")
    wait_until(lambda: pid_file.exists() and pid_file.read_text().count(" ") == 1)
    worker_pid, grandchild_pid = map(int, pid_file.read_text().split())
    result = faulty.cli("cancel", "victim", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    job = faulty.job("victim")
    assert job.status == "canceled"
    assert job.attempts == 0
    wait_until(lambda: not alive(worker_pid) and not alive(grandchild_pid), timeout=3,
               what="the worker and its child to be gone")  # fmt: skip
    _pool_serves(faulty, "after-cancel")
    wait_until(lambda: len(faulty.worker_pids()) == 2, what="a fresh worker")
    faulty.wait_events("job.canceled", job_id="victim")


def test_cancel_by_file(faulty: Daemon) -> None:
    faulty.client.submit("sleep", {"seconds": 60}, id="long")
    faulty.wait_started("long")
    faulty.drop("stop-long.json", {"cancel": "long"})
    assert faulty.wait_status("long", "canceled").attempts == 0
    assert not (faulty.home / "inbox" / "stop-long.json").exists()


def test_cancel_of_a_terminal_job_changes_nothing(faulty: Daemon) -> None:
    _pool_serves(faulty, "done")
    before = faulty.job("done")
    result = faulty.cli("cancel", "done")
    assert result.returncode == 1
    assert "already completed" in result.stderr
    assert "Traceback" not in result.stderr
    assert faulty.job("done") == before
    unknown = faulty.cli("cancel", "no-such-job")
    assert unknown.returncode == 1
    assert "no job" in unknown.stderr


def test_timeout_fails_the_attempt_and_retries(faulty: Daemon) -> None:
    faulty.client.submit("sleep", {"seconds": 60}, id="slow", timeout=0.3, max_attempts=2)
    job = faulty.wait_status("slow", "failed")
    assert job.attempts == 2
    assert job.last_error == "timed out after 0.3 s"
    assert len(faulty.wait_events("job.failed", 2, job_id="slow")) == 2
    _pool_serves(faulty, "after-timeout")


def test_no_zombies_after_a_series_of_timeouts(faulty: Daemon, tmp_path: Path) -> None:
    for n in range(6):
        faulty.client.submit("sleep", {"seconds": 60}, id=f"t{n}", timeout=0.2, max_attempts=1)
    for n in range(6):
        faulty.wait_status(f"t{n}", "failed")
    _pool_serves(faulty, "after-timeouts")
    wait_until(lambda: len(faulty.worker_pids()) == 2 and not _zombies(faulty),
               what="two live workers and no zombie")  # fmt: skip


def test_a_hung_worker_is_detected_by_its_heartbeat(make_daemon) -> None:
    daemon = make_daemon(
        args=FAULTS,
        env={"PROCPOOL_HEARTBEAT_INTERVAL": "0.1", "PROCPOOL_HEARTBEAT_TIMEOUT": "1"},
    )
    daemon.client.submit("hang", None, id="stuck", max_attempts=1)
    job = daemon.wait_status("stuck", "failed")
    assert job.last_error.startswith("no heartbeat for 1 s")
    _pool_serves(daemon, "after-hang")


def test_sigkill_of_a_worker_mid_job_then_retry_to_success(faulty: Daemon) -> None:
    faulty.client.submit("sleep", {"seconds": 1}, id="interrupted", max_attempts=3)
    job = faulty.wait_started("interrupted")
    os.kill(job.worker_pid, signal.SIGKILL)
    done = faulty.wait_status("interrupted", "completed")
    assert done.attempts == 1
    assert "SIGKILL" in done.last_error
    assert "out of memory" in done.last_error
    wait_until(lambda: len(faulty.worker_pids()) == 2, what="a replacement worker")


def test_a_handler_that_kills_itself_on_its_first_attempt(faulty: Daemon) -> None:
    faulty.client.submit("kill_self", {"times": 1}, id="phoenix")
    job = faulty.wait_status("phoenix", "completed")
    assert job.attempts == 1
    assert job.result == "survived"


def test_a_handler_that_always_exits(faulty: Daemon) -> None:
    faulty.client.submit("exit", {"code": 7}, id="quitter", max_attempts=3)
    job = faulty.wait_status("quitter", "failed")
    assert job.attempts == 3
    assert job.last_error == "the worker exited with code 7"
    _pool_serves(faulty, "after-exits")


def test_an_idle_worker_that_dies_is_replaced(faulty: Daemon) -> None:
    victim = faulty.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in faulty.worker_pids() and len(faulty.worker_pids()) == 2,
               what="a replacement worker")  # fmt: skip
    wait_until(lambda: faulty.events("worker.exited", worker_pid=victim))
    _pool_serves(faulty, "after-idle-death")


def test_progress_is_visible_while_the_job_runs(faulty: Daemon) -> None:
    faulty.client.submit("progress", {"steps": 40, "pause": 0.1}, id="watched")
    seen = wait_until(
        lambda: (j := faulty.job("watched")) is not None and j.progress is not None and j.progress,
        what="a progress report",
    )
    assert 0.0 <= seen["fraction"] < 1.0
    assert seen["message"].startswith("step ")
    status = faulty.cli("status", "watched")
    assert "step" in status.stdout
    faulty.wait_status("watched", "completed")


def test_an_unserializable_result_fails_the_attempt_cleanly(faulty: Daemon) -> None:
    faulty.client.submit("unserializable", None, id="odd", max_attempts=1)
    job = faulty.wait_status("odd", "failed")
    assert job.last_error == "result: object is not a JSON value"
    _pool_serves(faulty, "after-odd")


def test_memory_limit_terminates_a_job_that_passes_twice_the_limit(make_daemon) -> None:
    daemon = make_daemon(args=FAULTS, env={"PROCPOOL_MAX_MEMORY_MB": "100"})
    daemon.client.submit("hog", {"mb": 400, "seconds": 30}, id="greedy", max_attempts=1)
    job = daemon.wait_status("greedy", "failed")
    assert "memory" in job.last_error
    _pool_serves(daemon, "after-hog")


def test_a_worker_over_the_memory_limit_after_a_job_is_replaced(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS, env={"PROCPOOL_MAX_MEMORY_MB": "60"})
    first = daemon.worker_pids()[0]
    daemon.client.submit("hog", {"mb": 70, "leak": True}, id="fat")
    daemon.wait_status("fat", "completed")
    wait_until(lambda: first not in daemon.worker_pids() and len(daemon.worker_pids()) == 1,
               what="the worker to be recycled")  # fmt: skip


def test_recycling_after_n_jobs(make_daemon) -> None:
    daemon = make_daemon(workers=1, env={"PROCPOOL_MAX_JOBS_PER_WORKER": "3"})
    pids = set()
    for n in range(7):
        daemon.client.submit("echo", n, id=f"r{n}")
        job = daemon.wait_status(f"r{n}", "completed")
        pids.add(job.worker_pid)
    started = daemon.events("job.started")
    by_worker: dict[int, int] = {}
    for event in started:
        by_worker[event["worker_pid"]] = by_worker.get(event["worker_pid"], 0) + 1
    assert len(by_worker) == 3
    assert sorted(by_worker.values()) == [1, 3, 3]
