"""Issue 13 through real processes: fates decided by the supervisor's reason, a
deadline for every worker state, a loop that neither spins nor blocks, only
attempts that began are charged, fork hygiene, fenced progress."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import Daemon, clean_env, wait_until

FATES = ("--handlers", "fate_handlers")


def supervisor_cpu(daemon: Daemon, seconds: float = 3.0) -> float:
    """The daemon's own CPU use over `seconds`, as a fraction of one core."""
    process = psutil.Process(daemon.pid)
    before = process.cpu_times()
    start = time.monotonic()
    time.sleep(seconds)  # the measurement window itself, not a wait for an event
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return used / (time.monotonic() - start)


def started(daemon: Daemon, job_id: str) -> None:
    daemon.wait_events("job.started", job_id=job_id)


@pytest.mark.parametrize("handler", ["sigterm_raises", "sigterm_exits_0", "sigterm_returns"])
def test_cancel_wins_whatever_the_handler_does_with_sigterm(make_daemon, handler: str) -> None:
    daemon = make_daemon(workers=1, args=FATES)
    daemon.client.submit(handler, {}, id="stubborn", max_attempts=3)
    started(daemon, "stubborn")
    result = daemon.cli("cancel", "stubborn", "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    job = daemon.wait_status("stubborn", "canceled")
    assert job.attempts == 0
    assert len(daemon.events("job.started", job_id="stubborn")) == 1  # never run again
    daemon.client.submit("echo", 1, id="after")
    daemon.wait_status("after", "completed")


@pytest.mark.parametrize("handler", ["sigterm_raises", "sigterm_exits_0", "sigterm_returns"])
def test_a_stop_returns_the_job_unchanged_whatever_the_handler_does(
    make_daemon, handler: str
) -> None:
    daemon = make_daemon(workers=1, args=FATES, env={"PROCPOOL_SHUTDOWN_TIMEOUT": "0.5"})
    daemon.client.submit(handler, {}, id="stubborn", max_attempts=1)
    started(daemon, "stubborn")
    assert daemon.stop() == 0
    job = daemon.job("stubborn")
    assert (job.status, job.attempts) == ("pending", 0)


def test_the_loop_does_not_spin_while_every_worker_is_busy(make_daemon) -> None:
    """A due job waiting for a busy worker: the supervisor sleeps until something
    happens (it burned most of a core before)."""
    daemon = make_daemon(workers=1)
    daemon.client.submit("echo", 0, id="first")  # so that run times are known
    daemon.wait_status("first", "completed")
    daemon.client.submit("sleep", {"seconds": 60}, id="long")
    started(daemon, "long")
    daemon.client.submit("echo", 1, id="waiting")
    wait_until(lambda: daemon.job("waiting"))
    assert supervisor_cpu(daemon) < 0.10  # issue 13's target is 2 %: the bound is generous


def test_many_priority_levels_do_not_cost_a_turn(make_daemon) -> None:
    """20,000 scheduled jobs, each of its own priority: an idle daemon stays idle."""
    daemon = make_daemon(workers=1)
    lines = "\n".join(
        json.dumps({"type": "echo", "id": f"later{n}", "priority": n, "delay": 3600})
        for n in range(20_000)
    )
    daemon.drop("many.jsonl", lines)
    wait_until(lambda: daemon.job("later19999"), timeout=60)
    assert supervisor_cpu(daemon) < 0.10


def test_a_worker_that_cannot_read_does_not_stall_the_loop(make_daemon) -> None:
    """A worker holds the GIL in C for 8 s, so its channel reader cannot run, and is
    handed megabytes of prefetched jobs: the loop goes on serving (it blocked in the
    send for 5 s, then ended the worker as broken and failed its healthy job)."""
    daemon = make_daemon(workers=2, args=FATES)
    daemon.drop("warm.jsonl", "\n".join(json.dumps({"type": "echo", "id": f"w{n}"})
                                       for n in range(60)))  # fmt: skip
    wait_until(lambda: (j := daemon.job("w59")) and j.status == "completed")
    daemon.client.submit("sleep", {"seconds": 60}, id="other")  # the other worker: busy
    started(daemon, "other")
    big = "x" * 600_000
    lines = [json.dumps({"type": "hold_gil", "id": "gil", "payload": {"seconds": 8}})]
    # Due a moment after the GIL is taken: prefetched to its worker, the only one
    # whose job may end soon.
    lines += [json.dumps({"type": "echo", "id": f"big{n}", "payload": big, "delay": 0.1})
              for n in range(30)]  # fmt: skip
    daemon.drop("heavy.jsonl", "\n".join(lines))
    started(daemon, "gil")
    daemon.client.submit("echo", "later", id="probe", delay=3600)
    assert daemon.cli("cancel", "probe", "--timeout", "30").returncode == 0
    assert daemon.job("gil").status == "running"  # the loop answered while the GIL was held
    gil = daemon.wait_status("gil", "completed", "failed", timeout=60)
    assert (gil.status, gil.attempts) == ("completed", 0), gil.last_error
    for n in range(30):
        assert daemon.wait_status(f"big{n}", "completed", timeout=60).attempts == 0


def test_a_worker_stopped_before_it_starts_its_job_is_replaced(make_daemon) -> None:
    daemon = make_daemon(workers=1, env={"PROCPOOL_HEARTBEAT_TIMEOUT": "2"})
    [stopped] = daemon.worker_pids()
    psutil.Process(stopped).suspend()  # SIGSTOP: it never says Started
    daemon.client.submit("echo", 1, id="handed", max_attempts=1)
    job = daemon.wait_status("handed", "completed", timeout=30)
    assert job.attempts == 0
    assert stopped not in daemon.worker_pids()


@pytest.mark.parametrize("signals", [[signal.SIGTERM], [signal.SIGTERM, signal.SIGTERM],
                                     [signal.SIGQUIT]])  # fmt: skip
def test_every_stop_finishes_with_a_stopped_worker(make_daemon, signals: list[int]) -> None:
    daemon = make_daemon(workers=2, env={"PROCPOOL_SHUTDOWN_TIMEOUT": "2"})
    stopped = daemon.worker_pids()
    for pid in stopped:
        psutil.Process(pid).suspend()
    for signum in signals:
        daemon.signal(signum)
    assert daemon.wait_exit(30) == 0
    wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() !=
                               psutil.STATUS_ZOMBIE for p in stopped))  # fmt: skip


def test_jobs_handed_over_but_never_started_are_not_charged_after_a_crash(make_daemon) -> None:
    first = make_daemon(workers=1)
    [worker] = first.worker_pids()
    psutil.Process(worker).suspend()
    for n in range(3):
        first.client.submit("echo", n, id=f"handed{n}", max_attempts=1)
    first.wait_status("handed0", "running")
    first.kill()
    second = make_daemon(workers=1)
    for n in range(3):
        job = second.wait_status(f"handed{n}", "completed", "failed")
        assert (job.status, job.attempts) == ("completed", 0), job.last_error


def test_import_time_output_is_written_once(tmp_path: Path) -> None:
    """Buffered stdout of the supervisor is flushed before each fork, not again by
    every worker when it exits."""
    home = tmp_path / "home"
    out = tmp_path / "stdout.txt"
    env = clean_env({"PROCPOOL_MAX_JOBS_PER_WORKER": "1"})
    with open(out, "wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "procpool", "run", "--home", str(home), "--workers", "1",
             *FATES], env=env, stdout=stdout, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            daemon = Daemon(home, 1)
            daemon.process = process
            wait_until(lambda: daemon.events("worker.started"))
            for n in range(3):  # three workers, each retired after one job
                daemon.client.submit("echo", n, id=f"e{n}")
                daemon.wait_status(f"e{n}", "completed")
            wait_until(lambda: len(daemon.events("worker.exited")) >= 3)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
            daemon.client.close()
    assert out.read_text().count("fate_handlers imported") == 1


def test_a_thread_left_by_one_job_cannot_report_into_the_next(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FATES)
    daemon.client.submit("leave_a_reporter", None, id="before")
    daemon.client.submit("report_and_sleep", {"seconds": 1.0}, id="after")
    seen = set()

    def after_done() -> bool:
        job = daemon.job("after")
        if job is not None and job.progress is not None:
            seen.add(job.progress["message"])
        return job is not None and job.status == "completed"

    wait_until(after_done, timeout=30, interval=0.01)
    assert seen <= {"my own progress"}, seen
