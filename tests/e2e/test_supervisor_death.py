"""The supervisor's own death, restarts and signals: nothing lost, nothing doubled."""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path

import psutil
import pytest
from conftest import FAULTS, alive, wait_until


def test_workers_die_with_the_supervisor_and_the_next_start_ends_their_children(
    make_daemon, tmp_path: Path
) -> None:
    """The kernel SIGKILLs a worker when its supervisor dies (no Python needs to run);
    what the worker's handler started is killed by the next start, found by the
    home's mark in its environment."""
    daemon = make_daemon(args=FAULTS)
    pid_files = [tmp_path / f"pids{n}" for n in range(2)]
    for n, pid_file in enumerate(pid_files):
        daemon.client.submit("spawn", {"pid_file": str(pid_file)}, id=f"s{n}")
    wait_until(lambda: all(p.exists() and " " in p.read_text() for p in pid_files))
    workers, children = zip(*(map(int, p.read_text().split()) for p in pid_files), strict=True)
    assert all(alive(pid) for pid in workers + children)
    daemon.kill()
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=3,
               what="every worker gone")  # fmt: skip
    restarted = make_daemon(args=FAULTS)
    wait_until(lambda: not any(alive(pid) for pid in children), timeout=10,
               what="every grandchild gone")  # fmt: skip
    assert {e["pid"] for e in restarted.events("process.killed_stale")} == set(children)


def test_kill_then_restart_completes_every_job(make_daemon) -> None:
    daemon = make_daemon(args=FAULTS)
    for n in range(20):
        daemon.client.submit("sleep", {"seconds": 0.3}, id=f"j{n}", max_attempts=5)
    wait_until(lambda: any(j.status == "running" for j in daemon.client.list()))
    daemon.kill()
    running = [j.id for j in daemon.client.list(status="running")]
    assert running
    restarted = make_daemon(args=FAULTS)
    for n in range(20):
        restarted.wait_status(f"j{n}", "completed")
    for job_id in running:
        job = restarted.job(job_id)
        assert job.attempts == 1
        assert job.last_error == "the daemon died while it ran"


def test_terminal_jobs_are_unchanged_across_a_crash(make_daemon) -> None:
    daemon = make_daemon(args=FAULTS)
    daemon.client.submit("echo", 1, id="done")
    daemon.client.submit("fail", None, id="broken", max_attempts=1)
    daemon.client.submit("echo", 1, id="gone", delay=3600)
    daemon.wait_status("done", "completed")
    daemon.wait_status("broken", "failed")
    assert daemon.cli("cancel", "gone").returncode == 0
    before = {j.id: j for j in daemon.client.list()}
    daemon.kill()
    restarted = make_daemon(args=FAULTS)
    restarted.client.submit("echo", 2, id="probe")
    restarted.wait_status("probe", "completed")
    after = {j.id: j for j in restarted.client.list()}
    for job_id in ("done", "broken", "gone"):
        assert after[job_id] == before[job_id]


def test_a_job_that_keeps_killing_the_daemon_exhausts_its_attempts(make_daemon) -> None:
    first = make_daemon(args=FAULTS)
    first.client.submit("kill_daemon", None, id="killer", max_attempts=2)
    assert first.wait_exit(30) == -signal.SIGKILL
    # The restart counts the first attempt, runs the second, and dies of it again.
    second = make_daemon(args=FAULTS, start=False)
    second.start(wait_ready=False)
    assert second.wait_exit(30) == -signal.SIGKILL
    third = make_daemon(args=FAULTS)
    job = third.wait_status("killer", "failed")
    assert job.attempts == 2
    assert job.last_error == "the daemon died while it ran"


def test_ingestion_survives_a_kill_at_any_moment(make_daemon) -> None:
    daemon = make_daemon(start=False, args=FAULTS)
    names = [f"file{n:04d}" for n in range(400)]
    for name in names:
        daemon.drop(f"{name}.json", {"type": "echo", "payload": name})
    daemon.start(wait_ready=False)
    rng = random.Random()
    wait_until(lambda: daemon.events("file.accepted") or daemon.process.poll() is not None)
    # Somewhere in the middle of the ingestion: after a random number of accepted files.
    target = rng.randint(1, 300)
    wait_until(lambda: len(daemon.events("file.accepted")) >= target or not any(
        (daemon.home / "inbox").glob("*.json")), timeout=30)  # fmt: skip
    daemon.kill()
    restarted = make_daemon(args=FAULTS)
    wait_until(lambda: not any((restarted.home / "inbox").glob("*.json")), timeout=60,
               what="the inbox to empty")  # fmt: skip
    jobs = {j.id: j for j in restarted.client.list(limit=10_000)}
    assert sorted(jobs) == names
    assert not any((restarted.home / "rejected").iterdir())
    for name in names:
        assert restarted.wait_status(name, "completed").result == name


def test_kill_restart_cycles_never_overlap_attempts(make_daemon, tmp_path: Path) -> None:
    spans = tmp_path / "spans"
    spans.mkdir()
    ids = [f"x{n}" for n in range(30)]
    daemon = make_daemon(args=FAULTS)
    for job_id in ids:
        daemon.client.submit("exclusive", {"dir": str(spans), "seconds": 0.1}, id=job_id,
                             max_attempts=20)  # fmt: skip
    rng = random.Random(5)
    for _ in range(4):
        wait_until(lambda d=daemon: d.events("job.started"), timeout=30)
        wait_until(lambda d=daemon: len(d.events("job.started")) >= rng.randint(1, 6), timeout=30)
        daemon.kill()
        daemon = make_daemon(args=FAULTS)
    for job_id in ids:
        daemon.wait_status(job_id, "completed", timeout=60)
    assert not (spans / "OVERLAP").exists()


def test_graceful_stop_returns_an_over_long_job_to_pending(make_daemon) -> None:
    daemon = make_daemon(env={"PROCPOOL_SHUTDOWN_TIMEOUT": "0.5"})
    daemon.client.submit("sleep", {"seconds": 60}, id="long")
    daemon.wait_started("long")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    job = daemon.job("long")
    assert job.status == "pending"
    assert job.attempts == 0
    assert job.worker_pid is None


def test_a_storm_of_stop_signals_stops_the_daemon_once(make_daemon) -> None:
    """An impatient operator, or a service manager that repeats its stop: signals that
    keep coming while the daemon stops, and while it exits, change neither its exit
    code (0, never killed by SIGTERM) nor its log (one line for all the repeats)."""
    daemon = make_daemon(env={"PROCPOOL_SHUTDOWN_TIMEOUT": "300"})
    daemon.client.submit("sleep", {"seconds": 60}, id="long")
    daemon.wait_started("long")
    sent = 0
    while daemon.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.process.pid, signal.SIGTERM)
            sent += 1
    assert daemon.wait_exit() == 0, f"after {sent} SIGTERMs"
    stopping = [e["msg"] for e in daemon.events("daemon.stopping")]
    assert len(stopping) == 2 and stopping[1].startswith("second stop signal"), stopping
    assert len(daemon.events("daemon.stopped")) == 1
    assert (daemon.job("long").status, daemon.job("long").attempts) == ("pending", 0)


def test_a_second_sigterm_skips_the_wait(make_daemon) -> None:
    daemon = make_daemon(env={"PROCPOOL_SHUTDOWN_TIMEOUT": "300"})
    daemon.client.submit("sleep", {"seconds": 60}, id="long")
    daemon.wait_started("long")
    daemon.signal(signal.SIGTERM)
    wait_until(lambda: daemon.events("daemon.stopping"))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(20) == 0
    assert daemon.job("long").status == "pending"
    assert daemon.job("long").attempts == 0


def test_sigquit_stops_at_once(make_daemon) -> None:
    daemon = make_daemon(env={"PROCPOOL_SHUTDOWN_TIMEOUT": "300"})
    daemon.client.submit("sleep", {"seconds": 60}, id="long")
    daemon.wait_started("long")
    daemon.signal(signal.SIGQUIT)
    assert daemon.wait_exit(20) == 0
    job = daemon.job("long")
    assert (job.status, job.attempts) == ("pending", 0)


@pytest.mark.parametrize("grow", [True, False], ids=["grow", "shrink"])
def test_sighup_resizes_the_pool_without_disturbing_running_jobs(
    make_daemon, tmp_path, grow
) -> None:
    config = tmp_path / "procpool.toml"
    before, after = (1, 3) if grow else (3, 1)
    config.write_text(f"workers = {before}\n")
    daemon = make_daemon(workers=None, args=("--config", str(config)))
    wait_until(lambda: len(daemon.worker_pids()) == before)
    daemon.client.submit("sleep", {"seconds": 1.5}, id="steady")
    daemon.wait_status("steady", "running")
    config.write_text(f'workers = {after}\nlog_level = "DEBUG"\n')
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.events("config.reloaded"))
    job = daemon.wait_status("steady", "completed")
    assert job.attempts == 0
    wait_until(lambda: len(daemon.worker_pids()) == after, what=f"{after} workers")
    for n in range(6):
        daemon.client.submit("echo", n, id=f"after{n}")
    for n in range(6):
        daemon.wait_status(f"after{n}", "completed")
    assert any(e["level"] == "DEBUG" for e in daemon.events("job.progress", job_id="steady"))


def test_a_bad_config_on_sighup_keeps_the_old_one(make_daemon, tmp_path) -> None:
    config = tmp_path / "procpool.toml"
    config.write_text("workers = 2\n")
    daemon = make_daemon(workers=None, args=("--config", str(config)))
    config.write_text("workers = 'many'\n")
    daemon.signal(signal.SIGHUP)
    failure = wait_until(lambda: daemon.events("config.reload_failed"))
    assert "workers" in failure[0]["msg"]
    daemon.client.submit("echo", 1, id="still")
    daemon.wait_status("still", "completed")
    assert len(daemon.worker_pids()) == 2


def test_sighup_with_other_handlers_says_they_need_a_restart(make_daemon, tmp_path) -> None:
    config = tmp_path / "procpool.toml"
    config.write_text("workers = 1\n")
    daemon = make_daemon(workers=None, args=("--config", str(config)))
    config.write_text('workers = 1\nhandlers = ["fault_handlers"]\n')
    daemon.signal(signal.SIGHUP)
    [warning] = daemon.wait_events("config.restart_needed")
    assert warning["configured"] == ["fault_handlers"]
    assert "next start" in warning["msg"]
    daemon.client.submit("echo", 1, id="still")
    daemon.wait_status("still", "completed")


def test_a_stale_pid_file_is_taken_over(make_daemon, home: Path) -> None:
    home.mkdir(mode=0o700, parents=True)
    dead = psutil.Popen(["true"])
    dead.wait()
    (home / "procpool.pid").write_text(f"{dead.pid}\n")
    daemon = make_daemon()
    assert daemon.events("daemon.stale_pid")
    assert (home / "procpool.pid").read_text().strip() == str(daemon.pid)


def test_a_stale_worker_of_an_earlier_run_is_killed_on_start(make_daemon, tmp_path: Path) -> None:
    """A worker that survived its supervisor (its death signal unset, and stopped, so
    that it cannot notice its parent is gone) is killed by the next daemon before
    that daemon runs anything."""
    daemon = make_daemon(args=FAULTS)
    pid_file = tmp_path / "pids"
    payload = {"pid_file": str(pid_file), "outlive_daemon": True}
    daemon.client.submit("spawn", payload, id="survivor", max_attempts=3)
    wait_until(lambda: pid_file.exists() and " " in pid_file.read_text())
    worker, grandchild = map(int, pid_file.read_text().split())
    os.kill(worker, signal.SIGSTOP)
    daemon.kill()
    assert alive(worker)
    restarted = make_daemon(args=FAULTS)
    wait_until(lambda: not alive(worker) and not alive(grandchild), timeout=10)
    assert restarted.events("worker.killed_stale", worker_pid=worker)
    job = restarted.job("survivor")
    assert job.attempts >= 1
    assert job.last_error == "the daemon died while it ran"
