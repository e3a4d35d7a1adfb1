"""Schedules (CONTRACT section 14) through real daemons: `every` of 1-2 s, the real
clock. Each occurrence becomes exactly one job (its instant either fired or was
skipped, once, across a kill -9 and a restart, and across two daemons on one
PostgreSQL database); apply is declarative (a second apply changes nothing); bad input
names the field and leaves the stored schedules as they were; overlap "skip" skips
while a long job runs; catchup "latest" after a daemon was down several periods makes
one job and logs the others missed."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, run_cli, wait_until
from http_helpers import Server

from procpool import Client
from procpool.client import JobInfo

HANDLERS = ("--handlers", "schedule_handlers")
OCCURRENCE_ID = re.compile(r"(?P<name>.+)\.(?P<stamp>\d{8}T\d{6}Z)")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def every(name: str, seconds: int, job: str = 'type = "when"', **fields: Any) -> str:
    extra = "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in fields.items())
    return f'[[schedule]]\nname = "{name}"\nevery = {seconds}\n{extra}job = {{{job}}}\n'


def instants(daemon: Daemon, name: str) -> Counter[str]:
    """How many times each occurrence of `name` was logged fired or skipped."""
    seen: Counter[str] = Counter()
    for event in ("schedule.fired", "schedule.skipped"):
        seen.update(line["occurrence"] for line in daemon.events(event, schedule=name))
    return seen


def epoch(moment: str) -> float:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


@pytest.mark.timeout(120)
def test_apply_makes_one_job_per_occurrence_and_a_second_apply_changes_nothing(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    daemon = make_daemon(2, env=store_env, args=HANDLERS)
    file = write(tmp_path / "s.toml", every("tick", 1, tz="Europe/Berlin"))
    first = run_cli(home, "schedule", "apply", str(file), env=store_env)
    assert (first.returncode, first.stdout) == (0, "added tick\n"), first.stderr
    again = run_cli(home, "schedule", "apply", str(file), env=store_env)
    assert (again.returncode, again.stdout) == (0, "no change\n"), again.stderr
    fired = daemon.wait_events("schedule.fired", count=3, timeout=30, schedule="tick")
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    try:
        job_id = fired[0]["job_id"]
        match = OCCURRENCE_ID.fullmatch(job_id)
        assert match is not None and match["name"] == "tick", job_id
        done = wait_until(lambda: (j := client.get(job_id)) and j.status == "completed" and j)
        assert done.schedule == "tick" and done.run_at == fired[0]["occurrence"]
        # every counts real time, ignoring tz: the handler is told the UTC instant.
        told = datetime.fromisoformat(done.result["scheduled_for"])
        assert told.timestamp() == epoch(fired[0]["occurrence"]) and told.utcoffset() is not None
        (listed,) = client.schedules()
        assert listed.last_run is not None and listed.next_run is not None
        assert epoch(listed.next_run) > epoch(listed.last_run)
    finally:
        client.close()
    shown = run_cli(home, "schedule", "list", env=store_env)
    assert shown.returncode == 0 and "tick" in shown.stdout and "every 1s" in shown.stdout
    # Removed by applying a file without it.
    removed = run_cli(home, "schedule", "apply", str(write(tmp_path / "e.toml", "")), env=store_env)
    assert (removed.returncode, removed.stdout) == (0, "removed tick\n"), removed.stderr


BAD = [
    ('name = "b"\nevery = 0.5\njob = {type = "when"}', "every", "at least 1 s"),
    (
        'name = "b"\nevery = 5\ntz = "Mars/Olympus"\njob = {type = "when"}',
        "tz",
        "unknown time zone",
    ),
    ('name = "b"\ncron = "61 * * * *"\njob = {type = "when"}', "cron minute", "0-59"),
    ('name = "b"\nevery = 5\njob = {type = "when", id = "x"}', "job.id", "not allowed"),
    ('name = "b"\nevery = 5\njob = {type = "no-such-type"}', "job.type", "unknown job type"),
]


@pytest.mark.timeout(120)
def test_bad_input_names_the_field_and_leaves_the_schedules_as_they_were(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    make_daemon(1, args=HANDLERS)
    good = every("kept", 60)
    assert run_cli(home, "schedule", "apply", str(write(tmp_path / "g.toml", good))).returncode == 0
    before = definition(run_cli(home, "schedule", "show", "kept", "--json").stdout)
    for n, (entry, field, words) in enumerate(BAD):
        bad = write(tmp_path / f"bad{n}.toml", good + "[[schedule]]\n" + entry + "\n")
        result = run_cli(home, "schedule", "apply", str(bad))
        assert result.returncode == 2, (entry, result.stdout, result.stderr)
        assert f'schedule "b": {field}' in result.stderr and words in result.stderr, result.stderr
    assert run_cli(home, "schedule", "list").stdout.count("\n") == 2  # the header and kept
    assert definition(run_cli(home, "schedule", "show", "kept", "--json").stdout) == before


def definition(shown: str) -> dict[str, Any]:
    """`schedule show --json` without its run state: "kept" fires at every minute's
    turn, which may fall while the bad files are applied."""
    return {
        key: value
        for key, value in json.loads(shown).items()
        if key not in ("cursor", "next_run", "last_run", "last_job", "last_skip")
    }


def occurrences(client: Client, name: str) -> list[float]:
    """The instants of the schedule's jobs in the store (from their ids: a run_at moves
    when a job cut short by a kill is put back), sorted. The store is the truth: a
    daemon killed between a commit and its log line leaves no line."""
    found = []
    for job in client.list(limit=1000):
        match = OCCURRENCE_ID.fullmatch(job.id)
        if job.schedule == name and match is not None:
            assert match["name"] == name
            stamp = datetime.strptime(match["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            found.append(stamp.timestamp())
    return sorted(found)


def contiguous(instants: list[float]) -> bool:
    return instants == [instants[0] + n for n in range(len(instants))]


@pytest.mark.timeout(120)
def test_exactly_one_job_per_occurrence_across_a_kill_9_and_a_restart(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """every = 1 s, overlap allow, grace 60 s: every occurrence, those of the few seconds
    the daemon is down included, must become exactly one job."""
    daemon = make_daemon(2, args=HANDLERS)
    file = write(tmp_path / "s.toml", every("tick", 1, overlap="allow"))
    assert run_cli(home, "schedule", "apply", str(file)).returncode == 0
    fired = daemon.wait_events("schedule.fired", count=2, timeout=30, schedule="tick")
    # kill -9 right after an occurrence was committed and logged.
    wait_until(lambda: len(daemon.events("schedule.fired", schedule="tick")) > len(fired), 10)
    daemon.kill()
    killed_at = time.time()
    again = make_daemon(2, args=HANDLERS)
    wait_until(lambda: (o := occurrences(again.client, "tick")) and o[-1] >= killed_at + 3, 30)
    made = occurrences(again.client, "tick")
    assert contiguous(made), made
    seen = instants(again, "tick")
    assert max(seen.values()) == 1, [moment for moment, n in seen.items() if n > 1]
    assert not again.events("schedule.skipped", schedule="tick")


@pytest.mark.timeout(120)
def test_overlap_skip_skips_while_a_long_job_runs_and_nothing_piles_up(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    daemon = make_daemon(2, args=HANDLERS)
    file = write(tmp_path / "s.toml", every("slow", 1, 'type = "hold", payload = {seconds = 3}'))
    assert run_cli(home, "schedule", "apply", str(file)).returncode == 0
    skipped = daemon.wait_events("schedule.skipped", count=2, timeout=30, schedule="slow")
    assert {line["reason"] for line in skipped} == {"overlap"}
    active = [job for job in daemon.client.list(["pending", "running"]) if job.schedule == "slow"]
    assert len(active) <= 1
    stats = json.loads(run_cli(home, "stats", "--json").stdout)
    assert stats["schedule_skips"]["overlap"] >= 2, stats["schedule_skips"]
    metrics = daemon.home / "metrics.prom"
    wait_until(
        lambda: (
            metrics.exists()
            and 'procpool_schedule_skipped_total{reason="overlap"}' in metrics.read_text()
        ),
        timeout=30,
        what="the skips in metrics.prom",
    )
    # Paused, its occurrences are skipped as such; none makes a job.
    assert run_cli(home, "schedule", "pause", "slow").returncode == 0
    jobs_before = {job.id for job in daemon.client.list(limit=1000)}
    daemon.wait_events("schedule.skipped", count=2, timeout=30, schedule="slow", reason="paused")
    made = {job.id for job in daemon.client.list(limit=1000)} - jobs_before
    assert not made, made


@pytest.mark.timeout(120)
def test_overlap_queue_keeps_one_job_waiting_behind_the_running_one(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """Two workers, a job of 2 s every second: each job made while another is active
    waits for it (after, run whatever its outcome), one at a time; the others overlap."""
    daemon = make_daemon(2, args=HANDLERS)
    job = 'type = "hold", payload = {seconds = 2}'
    file = write(tmp_path / "s.toml", every("queued", 1, job, overlap="queue"))
    assert run_cli(home, "schedule", "apply", str(file)).returncode == 0
    daemon.wait_events("schedule.fired", count=3, timeout=60, schedule="queued")
    skipped = daemon.wait_events("schedule.skipped", count=2, timeout=30, schedule="queued")
    assert {line["reason"] for line in skipped} == {"overlap"}
    assert run_cli(home, "schedule", "pause", "queued").returncode == 0
    client = daemon.client

    def made() -> list[JobInfo]:
        return sorted(
            (job for job in client.list(limit=1000) if job.schedule == "queued"),
            key=lambda job: job.id,
        )

    def settled() -> bool:
        jobs = made()
        waiting = [job for job in jobs if job.status == "pending"]
        assert len(waiting) <= 1, [(job.id, job.status, job.after) for job in jobs]
        return bool(jobs) and all(job.status == "completed" for job in jobs)

    wait_until(settled, timeout=60, what="the queued jobs to run")
    jobs = made()
    for earlier, later in itertools.pairwise(jobs):
        if later.after:
            assert later.after == [earlier.id] and later.after_failure == "run"
    assert any(job.after for job in jobs), [job.id for job in jobs]
    runs = sorted(
        (attempt.started_at or "", attempt.ended_at or "")
        for job in jobs
        for attempt in client.attempts(job.id)
    )
    for (_, ended), (started, _) in itertools.pairwise(runs):
        assert epoch(ended) <= epoch(started), runs  # never two at once


@pytest.mark.timeout(120)
def test_catchup_latest_after_the_daemon_was_down_for_several_periods(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    daemon = make_daemon(1, args=HANDLERS)
    file = write(tmp_path / "s.toml", every("two", 2, grace=1))
    assert run_cli(home, "schedule", "apply", str(file)).returncode == 0
    daemon.wait_events("schedule.fired", timeout=30, schedule="two")
    assert daemon.stop() == 0
    stopped = time.time()
    wait_until(lambda: time.time() >= stopped + 7, timeout=20)  # three periods and more
    again = make_daemon(1, args=HANDLERS)
    missed = again.wait_events("schedule.skipped", count=2, timeout=30, schedule="two")
    assert {line["reason"] for line in missed} == {"missed"}
    fired = again.wait_events("schedule.fired", count=2, timeout=30, schedule="two")
    caught = fired[1]
    assert epoch(caught["occurrence"]) > max(epoch(line["occurrence"]) for line in missed)
    assert max(instants(again, "two").values()) == 1


@pytest.mark.timeout(120)
def test_trigger_pause_resume_next_and_remove(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    make_daemon(1, env=store_env, args=HANDLERS)

    def cli(*args: str) -> Any:
        return run_cli(home, "schedule", *args, env=store_env)

    # Its first occurrence far ahead: none can come during the test and take the place
    # of the triggered job as the schedule's last (an hour boundary could, once in ~1,000).
    hourly = every("h", 3600, start="2099-01-01T00:00:00Z")
    assert cli("apply", str(write(tmp_path / "s.toml", hourly))).returncode == 0
    triggered = cli("trigger", "h")
    assert triggered.returncode == 0, triggered.stderr
    job_id = triggered.stdout.strip().rsplit(" ", 1)[-1]
    assert re.fullmatch(r"h\.manual-\d{8}T\d{6}Z", job_id), triggered.stdout
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    try:
        done = wait_until(lambda: (j := client.get(job_id)) and j.status == "completed" and j)
        assert done.schedule == "h"
        assert client.schedule("h").last_job == job_id
    finally:
        client.close()
    assert cli("pause", "h").stdout == "paused h\n"
    assert '"paused":true' in cli("show", "h", "--json").stdout
    assert cli("resume", "h").stdout == "resumed h\n"
    unknown = cli("pause", "nope")
    assert unknown.returncode == 1 and 'no schedule "nope"' in unknown.stderr
    upcoming = cli("next", "h", "-n", "2").stdout.splitlines()
    assert len(upcoming) == 2 and all(line.endswith("+00:00") for line in upcoming)
    cron = (
        '[[schedule]]\nname = "c"\ncron = "30 2 * * *"\ntz = "Europe/Berlin"\n'
        'job = {type = "when"}\n'
    )
    assert cli("apply", str(write(tmp_path / "c.toml", hourly + cron))).stdout == "added c\n"
    for line in cli("next", "c", "-n", "3").stdout.splitlines():
        utc, local = line.split()
        assert epoch(utc) == epoch(local) and local[11:16] in ("02:30", "03:00"), line
    assert cli("remove", "h").stdout == "removed h\n"
    assert cli("remove", "c").stdout == "removed c\n"
    assert cli("list").stdout == "no schedule\n"


@pytest.mark.timeout(120)
def test_two_daemons_on_postgresql_make_one_job_per_occurrence_one_killed_midway(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    env = {"PROCPOOL_DATABASE_URL": pg_url}
    daemons = [make_daemon(1, home=tmp_path / name, env=env, args=HANDLERS) for name in "ab"]
    file = write(tmp_path / "s.toml", every("pg", 1, overlap="allow"))
    assert run_cli(daemons[0].home, "schedule", "apply", str(file), env=env).returncode == 0
    client = Client(daemons[1].home, database_url=pg_url)
    try:
        wait_until(lambda: len(occurrences(client, "pg")) >= 3, timeout=30)
        daemons[0].kill()  # kill -9, perhaps inside the turn that holds the schedule
        killed_at = time.time()
        wait_until(lambda: occurrences(client, "pg")[-1] >= killed_at + 3, timeout=30)
        made = occurrences(client, "pg")
    finally:
        client.close()
    assert contiguous(made), made
    seen: Counter[str] = Counter()
    for daemon in daemons:
        seen.update(instants(daemon, "pg"))
    assert max(seen.values()) == 1, [moment for moment, n in seen.items() if n > 1]


@pytest.mark.timeout(120)
def test_the_http_api_applies_lists_and_steers_schedules(
    make_daemon: Callable[..., Daemon], home: Path
) -> None:
    daemon = make_daemon(1, args=HANDLERS)
    api = Server(home, "--bind", "127.0.0.1:0")
    try:
        entry = {"name": "web", "every": "1h", "job": {"type": "when"}}
        applied = api.post("/schedules", {"schedule": [entry]})
        assert (applied.status_code, applied.json()) == (
            200, {"added": ["web"], "changed": [], "removed": [], "stored": True},
        )  # fmt: skip
        again = api.post("/schedules", {"schedule": [entry]})
        assert again.json()["added"] == [] and again.json()["changed"] == []
        bad = api.post("/schedules", {"schedule": [{**entry, "tz": "Nowhere/City"}]})
        assert bad.status_code == 422 and 'schedule "web": tz' in bad.json()["error"], bad.text
        assert [s["name"] for s in api.get("/schedules").json()] == ["web"]
        assert api.get("/schedules/web").json()["every"] == 3600
        assert api.get("/schedules/nope").status_code == 404
        assert len(api.get("/schedules/web/next", params={"n": 3}).json()) == 3
        made = api.post("/schedules/web/trigger", {}).json()["job_id"]
        assert daemon.wait_status(made, "completed").schedule == "web"
        assert api.post("/schedules/web/pause", {}).status_code == 200
        assert api.get("/schedules/web").json()["paused"] is True
        assert api.client.delete("/schedules/web").status_code == 200
        assert api.get("/schedules").json() == []
    finally:
        api.kill()
