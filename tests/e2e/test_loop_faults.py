"""What the machine and the people around the daemon do to its loop: a pause of the
supervisor (SIGSTOP, Ctrl-Z), exhausted descriptors. Time the daemon did not see is
not its workers' fault, and a resource that runs out degrades service, never ends it."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest
from conftest import FAULTS, Daemon, wait_until

BEAT = {"PROCPOOL_HEARTBEAT_INTERVAL": "0.2", "PROCPOOL_HEARTBEAT_TIMEOUT": "2"}


def _pause(daemon: Daemon, seconds: float) -> None:
    """SIGSTOP the supervisor while it waits in its select (where a pause hurt), keep it
    stopped for `seconds` (the length of the pause is the condition under test), then
    SIGCONT it."""
    process = psutil.Process(daemon.pid)
    wait_until(lambda: process.status() == psutil.STATUS_SLEEPING, what="the loop to wait")
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: process.status() == psutil.STATUS_STOPPED, what="the stop")
        time.sleep(seconds)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)


@pytest.mark.timeout(180)
def test_a_paused_supervisor_charges_no_job_and_keeps_its_workers(make_daemon) -> None:
    daemon = make_daemon(args=FAULTS, env=BEAT)
    workers = sorted(daemon.worker_pids())
    for n in range(2):
        daemon.client.submit("quiet", {"seconds": 10}, id=f"q{n}", max_attempts=1)
    for n in range(2):
        daemon.wait_started(f"q{n}")
    _pause(daemon, 6.0)  # 3x heartbeat_timeout
    for n in range(2):
        job = daemon.wait_status(f"q{n}", "completed", "failed", "pending", timeout=60)
        assert job.status == "completed", job.last_error
        assert job.attempts == 0  # no attempt failed: none was charged
        assert len(daemon.events("job.started", job_id=f"q{n}")) == 1  # none restarted
    assert daemon.events("worker.exited") == []
    assert daemon.events("job.failed") == []
    assert sorted(daemon.worker_pids()) == workers
    assert daemon.process is not None and daemon.process.poll() is None


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


@pytest.mark.timeout(180)
def test_out_of_descriptors_the_daemon_degrades_and_comes_back(make_daemon) -> None:
    """`ulimit -n` reached by a client that leaks connections, while a job's timeout
    fires: no spin, no flood, no crash; the jobs it has keep their fates, and service
    comes back once the connections close."""
    daemon = make_daemon(args=FAULTS)
    daemon.client.submit("sleep", {"seconds": 60}, id="slow", timeout=6, max_attempts=1)
    daemon.client.submit("quiet", {"seconds": 8}, id="steady", max_attempts=1)
    daemon.wait_started("slow")
    daemon.wait_started("steady")
    supervisor = psutil.Process(daemon.pid)
    limit = supervisor.num_fds() + 3
    supervisor.rlimit(psutil.RLIMIT_NOFILE, (limit, limit))
    leaked = []
    try:
        for _ in range(45):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(daemon.home / "procpool.sock"))
            leaked.append(sock)
        daemon.wait_events("socket.accept_failed")
        lines_before, cpu_before, wall_before = (
            len(daemon.log()),
            _cpu_seconds(daemon.pid),
            time.monotonic(),
        )
        wait_until(
            lambda: daemon.process.poll() is not None or daemon.job("slow").status == "failed",  # type: ignore[union-attr]
            timeout=60,
            what="the timeout to end job slow",
        )
        assert daemon.process.poll() is None, daemon.stderr()[-3000:]  # type: ignore[union-attr]
        steady = daemon.wait_status("steady", "completed", "failed", timeout=60)
        cpu = _cpu_seconds(daemon.pid) - cpu_before
        wall = time.monotonic() - wall_before
        print(f"supervisor CPU over the episode: {cpu:.2f} s in {wall:.2f} s")
        assert cpu < 0.3 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s"
        assert len(daemon.log()) - lines_before < 50
        assert len(daemon.events("socket.accept_failed")) == 1
        assert len(daemon.events("worker.spawn_failed")) <= 1
        # Said once per spell: a descriptor freed (the timed-out job's worker ended)
        # may let the inbox open once and be taken again before it is listed.
        spells = [e["event"] for e in daemon.log() if e.get("event", "").startswith("inbox.")]
        assert spells.count("inbox.unusable") <= 3, spells
        assert "inbox.unusable,inbox.unusable" not in ",".join(spells), spells
        slow = daemon.job("slow")
        assert (slow.status, slow.attempts) == ("failed", 1)
        assert slow.last_error == "timed out after 6 s"
        assert (steady.status, steady.attempts, steady.result) == ("completed", 0, "slept")
    finally:
        for sock in leaked:
            sock.close()
    daemon.wait_events("socket.accept_resumed")
    wait_until(lambda: len(daemon.worker_pids()) == 2, timeout=30, what="the pool refilled")
    daemon.client.submit("echo", "back", id="back")
    assert daemon.wait_status("back", "completed").result == "back"
    assert daemon.process.poll() is None  # type: ignore[union-attr]
