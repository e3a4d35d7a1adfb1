"""Counts in what procpool says, through the real daemon and CLI: "1 worker", not
"1 workers" (issue 12)."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import Daemon, run_cli, wait_until


def test_a_count_of_one_is_singular_in_the_log_and_reports(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workers=1)
    [started] = daemon.wait_events("daemon.started")
    assert started["msg"] == "procpool started with 1 worker"

    daemon.cli("submit", "fail", '{"message": "no"}', "--id", "once", "--max-attempts", "1")
    daemon.wait_status("once", "failed")
    [failed] = daemon.wait_events("job.failed", job_id="once")
    assert "failed for good after 1 attempt: " in failed["msg"], failed["msg"]

    daemon.drop("pair.jsonl", '{"type": "echo"}\n{"type": "nope"}\n')
    report = daemon.home / "rejected" / "pair.jsonl.error.json"
    wait_until(report.exists, what="the report of pair.jsonl")
    assert json.loads(report.read_text())["error"] == (
        "1 of 2 lines was rejected, the other 1 accepted"
    )
    daemon.drop("single.jsonl", '{"type": "nope"}\n')
    single = daemon.home / "rejected" / "single.jsonl.error.json"
    wait_until(single.exists, what="the report of single.jsonl")
    assert json.loads(single.read_text())["error"] == "its one line was rejected"


def test_a_stop_with_one_running_job_says_job(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(workers=1)
    daemon.cli("submit", "sleep", '{"seconds": 1}', "--id", "short")
    daemon.wait_started("short")
    assert daemon.stop() == 0
    [stopping] = daemon.events("daemon.stopping")
    assert stopping["msg"].endswith(": 1 running job gets 10 s to finish"), stopping["msg"]


def test_prune_says_day_for_one_day(tmp_path) -> None:
    result = run_cli(tmp_path / "home", "prune", "--older-than", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("prune of jobs older than 1 day requested"), result.stdout
