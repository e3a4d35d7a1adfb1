"""The daemon end to end: files and submit in, real workers, results in the store."""

from __future__ import annotations

import json

from conftest import Daemon, run_cli


def test_echo_through_a_dropped_file(daemon: Daemon) -> None:
    daemon.drop("hello.json", {"type": "echo", "payload": {"x": 1}})
    job = daemon.wait_status("hello", "completed")
    assert job.result == {"x": 1}
    assert job.attempts == 0
    assert not (daemon.home / "inbox" / "hello.json").exists()


def test_submit_and_wait(daemon: Daemon) -> None:
    submitted = daemon.cli("submit", "echo", '{"n": 2}')
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    waited = daemon.cli("wait", job_id, "--timeout", "20")
    assert waited.returncode == 0, waited.stderr
    status = daemon.cli("status", job_id, "--json")
    document = json.loads(status.stdout)
    assert document["status"] == "completed"
    assert document["result"] == {"n": 2}
    assert document["created_at"].endswith("Z")


def test_submit_while_down_then_start(home, make_daemon) -> None:
    submitted = run_cli(home, "submit", "echo", '"early"', "--id", "early")
    assert submitted.returncode == 0, submitted.stderr
    assert submitted.stdout.strip() == "early"
    daemon = make_daemon()
    assert daemon.wait_status("early", "completed").result == "early"


def test_retry_then_success(daemon: Daemon) -> None:
    daemon.cli("submit", "fail", '{"times": 2}', "--id", "flaky", "--max-attempts", "3")
    job = daemon.wait_status("flaky", "completed")
    assert job.attempts == 2
    assert job.result == {"succeeded_on_attempt": 3}
    assert "attempt 2" in job.last_error
    assert len(daemon.wait_events("job.failed", 2, job_id="flaky")) == 2
