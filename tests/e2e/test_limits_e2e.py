"""Concurrency limits through real daemons (CONTRACT section 13): each run writes start
and end marks (tests/limit_handlers.py), and "at once" is judged from them."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, alive, run_cli, wait_until
from limit_marks import most_at_once, spans

LIMITS = ("--handlers", "limit_handlers")


def _done(daemon: Daemon, ids: list[str]) -> bool:
    return all((job := daemon.job(i)) is not None and job.status == "completed" for i in ids)


@pytest.mark.timeout(180)
def test_a_type_limit_holds_and_other_types_pass(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """4 workers, 20 `render` jobs (limit=2 on the handler) and 20 `echo` jobs: never
    more than 2 renders alive at once, and the echo jobs finish while renders wait."""
    daemon = make_daemon(workers=4, args=LIMITS)
    payload = {"dir": str(tmp_path), "seconds": 0.3}
    renders = daemon.client.submit_many(
        [{"type": "render", "id": f"r{n:02}", "payload": payload} for n in range(20)]
    )
    echoes = daemon.client.submit_many(
        [{"type": "echo", "id": f"e{n:02}", "payload": n} for n in range(20)]
    )
    wait_until(lambda: _done(daemon, echoes), 60, what="the echo jobs")
    echoes_done = time.time()
    wait_until(lambda: _done(daemon, renders), 120, what="the render jobs")
    runs = spans(tmp_path)
    assert len(runs) == 20 and all(not math.isinf(s.end) for s in runs)
    assert most_at_once(runs) == 2  # the limit, and all of it
    # The echo jobs did not wait behind the renders: most renders had not begun yet.
    assert sum(s.start > echoes_done for s in runs) >= 10, [s.start - echoes_done for s in runs]
    for job_id in renders:  # held back, never charged an attempt
        job = daemon.job(job_id)
        assert job.attempts == 0 and job.status == "completed"


@pytest.mark.timeout(180)
def test_a_full_key_does_not_delay_another(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Keys `a` x 100 and `b` x 1, no key limit (a mutex): `b` starts at once, and no two
    `a` jobs ever run together."""
    daemon = make_daemon(workers=4, args=LIMITS)
    payload = {"dir": str(tmp_path), "seconds": 0.2}
    daemon.client.submit_many(
        [{"type": "keyed", "id": f"a{n:03}", "payload": payload, "concurrency_key": "a"}
         for n in range(100)]
    )  # fmt: skip
    daemon.client.submit("keyed", payload, id="b", concurrency_key="b")
    daemon.wait_status("b", "completed", timeout=30)
    runs = spans(tmp_path)
    b_start = next(s.start for s in runs if s.job_id == "b")
    a_runs = [s for s in runs if s.job_id.startswith("a")]
    assert sum(s.start < b_start for s in a_runs) <= 3, "b waited behind the full key a"
    assert most_at_once(a_runs) == 1
    waiting = daemon.job("a099")
    assert waiting.status == "pending" and waiting.attempts == 0
    assert json.loads(daemon.cli("status", "a099", "--json").stdout)["concurrency_key"] == "a"


@pytest.mark.timeout(240)
def test_kill_9_with_limited_jobs_running_never_overlaps_after_the_restart(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """`kill -9` of the daemon while 2 renders (limit 2) run: after the restart, runs of
    the killed daemon (ended when their processes were seen gone) and new ones are never
    more than 2 at once."""
    daemon = make_daemon(workers=4, args=LIMITS)
    payload = {"dir": str(tmp_path), "seconds": 1.0}
    ids = daemon.client.submit_many(
        [{"type": "render", "id": f"r{n}", "payload": payload} for n in range(6)]
    )
    wait_until(lambda: len(spans(tmp_path)) >= 2, 30, what="two renders running")
    daemon.kill()
    killed = {s.pid for s in spans(tmp_path) if math.isinf(s.end)}
    wait_until(lambda: not any(alive(pid) for pid in killed), 30, what="the runs to die")
    gone = time.time()
    again = make_daemon(workers=4, args=LIMITS)
    wait_until(lambda: _done(again, ids), 120, what="every render")
    runs = spans(tmp_path)
    for run in runs:
        if run.pid in killed and math.isinf(run.end):
            run.end = gone
    assert most_at_once(runs) <= 2
    assert all(not math.isinf(s.end) for s in runs)


@pytest.mark.timeout(180)
def test_cancel_frees_the_slot_only_once_the_old_run_is_gone(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A limit of 1 (config), a running job canceled: the next starts only after the
    canceled run's process is gone (its worker is replaced, so its pid ends)."""
    (home := tmp_path / "home").mkdir(mode=0o700)
    (home / "procpool.toml").write_text("[limits]\ncapped = 1\n")
    daemon = make_daemon(workers=2, args=LIMITS)
    payload = {"dir": str(tmp_path), "seconds": 60}
    daemon.client.submit_many(
        [{"type": "capped", "id": f"c{n}", "payload": payload} for n in range(2)]
    )
    first = wait_until(lambda: spans(tmp_path), 30, what="the first run")[0]
    assert daemon.cli("cancel", first.job_id).returncode == 0
    second = wait_until(lambda: spans(tmp_path)[1:], 30, what="the second run")[0]
    assert not alive(first.pid)  # gone before the second run could start
    assert daemon.job(second.job_id).status == "running"
    ended = daemon.events("job.canceled", job_id=first.job_id)
    assert ended, "the cancel was recorded"
    started = daemon.events("job.started", job_id=second.job_id)
    assert started and started[0]["ts"] >= ended[0]["ts"]


@pytest.mark.timeout(180)
def test_sighup_lowering_a_limit_stops_nothing_then_holds(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """[limits] capped = 2, two running; lowered to 1 by SIGHUP: both go on, and every
    later run starts alone."""
    (home := tmp_path / "home").mkdir(mode=0o700)
    config = home / "procpool.toml"
    config.write_text("[limits]\ncapped = 2\n")
    daemon = make_daemon(workers=4, args=LIMITS)
    payload = {"dir": str(tmp_path), "seconds": 60, "gate": "open"}
    ids = daemon.client.submit_many(
        [{"type": "capped", "id": f"c{n}", "payload": payload} for n in range(6)]
    )
    first = wait_until(lambda: len(spans(tmp_path)) >= 2 and spans(tmp_path), 30, what="two runs")
    config.write_text("[limits]\ncapped = 1\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_events("limits.set", 2)
    daemon.wait_events("config.reloaded")
    assert all(alive(s.pid) for s in first)
    assert [daemon.job(s.job_id).status for s in first] == ["running", "running"]
    (tmp_path / "open").write_text("")
    wait_until(lambda: _done(daemon, ids), 60, what="every job")
    runs = spans(tmp_path)
    old = {s.job_id for s in first}
    for run in runs:
        if run.job_id not in old:  # started after the reload: alone
            others = [s for s in runs if s is not run and s.start < run.start < s.end]
            assert not others, (run, others)


def test_bad_limits_are_refused_naming_the_key(tmp_path: Path) -> None:
    """A limit for a type no handler registers, or below 1: the daemon does not start,
    and says which key."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    for text, words in [
        ("[limits]\nrendr = 2\n", "config key 'limits.rendr': no handler registers job type"
         " 'rendr' (did you mean 'render'?)"),
        ("[limits]\nrender = 0\n", "config key 'limits.render' must be >= 1, got 0"),
        ("[key_limits]\nkeyed = -1\n", "config key 'key_limits.keyed' must be >= 1, got -1"),
    ]:  # fmt: skip
        (home / "procpool.toml").write_text(text)
        result = run_cli(home, "run", "--workers", "1", *LIMITS, timeout=60)
        assert result.returncode != 0
        assert words in result.stderr, result.stderr


def test_a_concurrency_key_over_128_characters_is_rejected(daemon: Daemon, tmp_path: Path) -> None:
    """A job file's key out of bounds: the file goes to rejected/ with an error naming the
    field, its bytes kept; `procpool submit` says so too."""
    content = json.dumps({"type": "echo", "concurrency_key": "k" * 129})
    daemon.drop("long.json", content)
    report = daemon.home / "rejected" / "long.json.error.json"
    wait_until(report.exists, 30, what="the rejection")
    assert "concurrency_key must be 1-128 characters, got 129" in report.read_text()
    assert (daemon.home / "rejected" / "long.json").read_text() == content
    result = daemon.cli("submit", "echo", "--concurrency-key", "k" * 129)
    assert result.returncode != 0 and "concurrency_key must be 1-128" in result.stderr
    result = daemon.cli("submit", "echo", "--concurrency-key", "")
    assert result.returncode != 0 and "concurrency_key must be 1-128" in result.stderr
    assert os.listdir(daemon.home / "inbox") == []
