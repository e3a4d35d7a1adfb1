"""Schedules (CONTRACT section 14) when the daemon's wall clock steps, through a real
daemon on SQLite: the daemon reads its wall clock with the offset of a file
(PROCPOOL_TEST_CLOCK_OFFSET_FILE, docs/development.md), which a test rewrites.

A step back makes no occurrence twice and the schedule fires again once the clock
has passed its cursor; a step forward catches up as `catchup` says (100 jobs at most
for "all", one for "latest", none for "none"); a pruned occurrence's job is not made
again, even when the clock comes back to its instant; an edited schedule makes no job
because of the edit. Each instant of a schedule is handled once: made a job or
skipped, never both, never twice, and none left out."""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, run_cli, wait_until

from procpool.adapters.testing_clock import VARIABLE

HANDLERS = ("--handlers", "schedule_handlers")
OCCURRENCE_ID = re.compile(r"(?P<name>.+)\.(?P<stamp>\d{8}T\d{6}Z)")


def epoch(moment: str) -> float:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


class SteppedClock:
    """The offset file of a daemon's clock: `step(seconds)` sets the offset from the
    real clock (not from the previous offset)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.step(0)

    @property
    def env(self) -> dict[str, str]:
        return {VARIABLE: str(self.path)}

    def step(self, seconds: float) -> None:
        new = self.path.with_name(self.path.name + ".new")
        new.write_text(repr(float(seconds)))
        os.replace(new, self.path)  # whole: the daemon never reads half an offset


@pytest.fixture
def clock(tmp_path: Path) -> SteppedClock:
    return SteppedClock(tmp_path / "clock-offset")


def apply(home: Path, path: Path, text: str) -> None:
    path.write_text(text)
    result = run_cli(home, "schedule", "apply", str(path))
    assert result.returncode == 0, result.stderr


def every(name: str, seconds: int, **fields: Any) -> str:
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in fields.items())
    return f'[[schedule]]\nname = "{name}"\nevery = {seconds}\n{extra}job = {{type = "when"}}\n'


def handled(daemon: Daemon, name: str) -> tuple[list[float], list[float], Counter[float]]:
    """The instants of `name` the log says were made jobs and skipped (sorted), and how
    many times each instant was handled either way."""
    fired = [epoch(line["occurrence"]) for line in daemon.events("schedule.fired", schedule=name)]
    skipped = [
        epoch(line["occurrence"]) for line in daemon.events("schedule.skipped", schedule=name)
    ]
    return sorted(fired), sorted(skipped), Counter(fired + skipped)


def jobs_of(daemon: Daemon, name: str) -> dict[float, Any]:
    """The schedule's jobs in the store, by instant (from their ids). The store's ids
    are unique, so the log's counts are what shows an instant made twice."""
    found: dict[float, Any] = {}
    for job in daemon.client.list(limit=10_000):
        match = OCCURRENCE_ID.fullmatch(job.id)
        if job.schedule == name and match is not None:
            stamp = datetime.strptime(match["stamp"] + "+0000", "%Y%m%dT%H%M%SZ%z")
            found[stamp.timestamp()] = job
    return found


def assert_each_instant_once(daemon: Daemon, name: str, period: int = 1) -> None:
    """Every instant (`period` seconds apart) from the first handled to the last handled
    exactly once."""
    _, _, counts = handled(daemon, name)
    twice = sorted(instant for instant, n in counts.items() if n > 1)
    assert not twice, f"{name}: handled twice: {twice}"
    first, last = min(counts), max(counts)
    assert sorted(counts) == [first + n * period for n in range(int(last - first) // period + 1)]


def assert_stopped_alive(daemon: Daemon) -> None:
    """The daemon was still serving; stopped now, so that its store and log are at rest."""
    assert daemon.process is not None and daemon.process.poll() is None, daemon.stderr()
    assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_a_step_back_makes_nothing_twice_and_fires_again_once_past_the_cursor(
    clock: SteppedClock, make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    daemon = make_daemon(1, env=clock.env, args=HANDLERS)
    apply(home, tmp_path / "s.toml", every("tick", 1, overlap="allow"))
    daemon.wait_events("schedule.fired", count=2, timeout=30, schedule="tick")
    clock.step(-4)
    stepped = time.time()
    # The cursor is at most the instant after `stepped` (a turn may be under way): the
    # clock, 4 s behind, passes it again 3 s from now at the earliest.
    wait_until(lambda: handled(daemon, "tick")[0][-1] >= stepped + 1, timeout=30)
    fired = [
        line for line in daemon.events("schedule.fired", schedule="tick")
        if epoch(line["occurrence"]) >= stepped + 1
    ]  # fmt: skip
    first_after = datetime.fromisoformat(fired[0]["ts"]).timestamp()
    assert first_after >= stepped + 2.5, "a job was made before the clock passed the cursor"
    daemon.wait_events("schedule.fired", count=len(handled(daemon, "tick")[0]) + 2, timeout=30)
    assert_stopped_alive(daemon)
    assert_each_instant_once(daemon, "tick")
    fired_at, skipped, _ = handled(daemon, "tick")
    assert not skipped
    assert sorted(jobs_of(daemon, "tick")) == fired_at


@pytest.mark.timeout(120)
def test_a_step_forward_catches_up_as_catchup_says(
    clock: SteppedClock, make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """grace 0: every occurrence is late, so that the step's turn has no on-time one
    (which "latest" and "none" would make)."""
    daemon = make_daemon(2, env=clock.env, args=HANDLERS)
    text = (
        every("all", 1, catchup="all", overlap="allow", grace=0)
        + every("latest", 1, catchup="latest", overlap="allow", grace=0)
        + every("none", 1, catchup="none", overlap="allow", grace=0)
    )
    apply(home, tmp_path / "s.toml", text)
    for name in ("all", "latest", "none"):  # each one's cursor set, and planned since
        wait_until(lambda name=name: handled(daemon, name)[2], timeout=30)
    before = {name: max(handled(daemon, name)[2]) for name in ("all", "latest", "none")}
    clock.step(300)
    stepped = time.time()
    for name in ("all", "latest", "none"):
        wait_until(lambda name=name: max(handled(daemon, name)[2]) >= stepped + 299, timeout=30)
    assert_stopped_alive(daemon)  # what follows reads a store and a log at rest
    for name in ("all", "latest", "none"):
        assert_each_instant_once(daemon, name)

    # "all": the 100 oldest missed occurrences made, oldest first; the rest skipped.
    fired, skipped, _ = handled(daemon, "all")
    jobs = jobs_of(daemon, "all")
    assert sorted(jobs) == fired
    caught = [t for t in fired if epoch(jobs[t].created_at) - t > 60]
    assert caught == [caught[0] + n for n in range(100)], caught
    assert before["all"] < caught[0] and caught[-1] + 1 == skipped[0], (before, skipped[:3])
    assert len(skipped) >= 190 and max(skipped) <= stepped + 301, skipped[-3:]
    # "latest": one job, the most recent missed occurrence; the others skipped.
    fired, skipped, _ = handled(daemon, "latest")
    run = [t for t in skipped if t > before["latest"]]
    assert len(run) >= 290 and run[-1] + 1 in fired, run[-3:]
    jobs = jobs_of(daemon, "latest")
    assert sorted(jobs) == fired
    assert [t for t in fired if before["latest"] < t < run[-1]] == []
    # "none": never a job (grace 0: every occurrence is missed).
    fired, skipped, _ = handled(daemon, "none")
    assert fired == [] and jobs_of(daemon, "none") == {}
    assert len([t for t in skipped if t > before["none"]]) >= 290
    names = ("all", "latest", "none")
    missed = sum(len(daemon.events("schedule.skipped", schedule=n, reason="missed")) for n in names)
    assert missed == sum(len(daemon.events("schedule.skipped", schedule=n)) for n in names)
    stats = json.loads(run_cli(home, "stats", "--json").stdout)
    assert stats["schedule_skips"] == {"missed": missed}, stats["schedule_skips"]


@pytest.mark.timeout(120)
def test_a_pruned_occurrence_is_not_made_again_when_the_clock_comes_back_to_it(
    clock: SteppedClock, make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """Retention shorter than the period: the occurrence's job is gone, its instant
    comes again (the clock stepped back, a daemon started afresh); the cursor holds."""
    daemon = make_daemon(1, env=clock.env, args=HANDLERS)
    apply(home, tmp_path / "s.toml", every("r", 2))
    first = daemon.wait_events("schedule.fired", timeout=30, schedule="r")[0]
    pruned, instant = first["job_id"], epoch(first["occurrence"])
    daemon.wait_status(pruned, "completed")
    result = run_cli(home, "prune", "--older-than", "0")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: daemon.client.get(pruned) is None, timeout=30, what="the prune")
    assert daemon.stop() == 0
    cursor = max(handled(daemon, "r")[2])
    stepped = time.time()
    clock.step(instant - 5 - stepped)  # the clock 5 s before the pruned instant
    again = make_daemon(1, env=clock.env, args=HANDLERS)
    wait_until(lambda: max(handled(again, "r")[2]) > cursor, timeout=30)
    # The clock was back before the pruned instant: it passed the cursor only then.
    first_again = next(
        line for line in again.events("schedule.fired", schedule="r")
        if epoch(line["occurrence"]) > cursor
    )  # fmt: skip
    assert epoch(first_again["ts"]) >= stepped + 5 + cursor - instant, first_again
    assert_stopped_alive(again)
    assert again.client.get(pruned) is None
    fired, skipped, _ = handled(again, "r")
    assert instant not in jobs_of(again, "r") and not skipped
    assert set(jobs_of(again, "r")) == set(fired) - {instant}
    assert_each_instant_once(again, "r", period=2)


@pytest.mark.timeout(120)
def test_editing_a_schedule_fires_no_job_for_the_edit(
    make_daemon: Callable[..., Daemon], home: Path, tmp_path: Path
) -> None:
    """An edit to `every = 1` with every catch-up: the occurrences the new expression
    puts between the schedule's cursor and the edit are not made, nor skipped."""
    daemon = make_daemon(1, args=HANDLERS)
    path = tmp_path / "s.toml"
    apply(home, path, '[[schedule]]\nname = "e"\ncron = "0 0 29 2 *"\njob = {type = "when"}\n')
    daemon.wait_events("schedule.applied", timeout=30)
    taken = time.time()
    wait_until(lambda: time.time() >= taken + 3, timeout=10)  # three seconds of the new rule
    edited = time.time()
    apply(home, path, every("e", 1, catchup="all", overlap="allow"))
    daemon.wait_events("schedule.applied", count=2, timeout=30)
    daemon.wait_events("schedule.fired", count=2, timeout=30, schedule="e")
    assert_stopped_alive(daemon)
    fired, skipped, _ = handled(daemon, "e")
    assert fired[0] > edited and not skipped, (edited, fired[:3], skipped)
    assert_each_instant_once(daemon, "e")
    assert sorted(jobs_of(daemon, "e")) == fired
