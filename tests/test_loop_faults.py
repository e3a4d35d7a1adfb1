"""What the machine and the people around the daemon do to its loop: a pause of the
supervisor (SIGSTOP, Ctrl-Z), exhausted descriptors. Time the daemon did not see is
not its workers' fault, and a resource that runs out degrades service, never ends it."""

from __future__ import annotations

import os
import signal
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
