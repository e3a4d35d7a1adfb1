"""Storms: cancels and kills at random moments; afterwards the pool is whole."""

from __future__ import annotations

import os
import random
import signal
import time

import psutil
from conftest import Daemon, wait_until


def _assert_pool_is_whole(daemon: Daemon, workers: int) -> None:
    daemon.client.submit("echo", "after", id="after-storm")
    assert daemon.wait_status("after-storm", "completed").result == "after"
    wait_until(lambda: len(daemon.worker_pids()) == workers, what=f"{workers} live workers")
    zombies = [
        c for c in psutil.Process(daemon.pid).children() if c.status() == psutil.STATUS_ZOMBIE
    ]
    assert not zombies


def test_cancel_storm(make_daemon) -> None:
    daemon = make_daemon()
    rng = random.Random(7)
    ids = [f"c{n}" for n in range(300)]
    # One request, due a moment later: the storm begins with every job still pending,
    # however slowly the test itself runs (submitted one at a time, the jobs could all
    # be done before the first cancel on a loaded machine).
    daemon.client.submit_many(
        {"type": "sleep", "payload": {"seconds": rng.choice([0.0, 0.005, 0.02])}, "id": job_id,
         "delay": 0.5}
        for job_id in ids
    )  # fmt: skip
    canceled: set[str] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = {j.id: j for j in daemon.client.list(limit=1000)}
        if len(jobs) == len(ids) and all(j.is_terminal for j in jobs.values()):
            break
        running = [j.id for j in jobs.values() if j.status == "running"]
        pending = [j.id for j in jobs.values() if j.status == "pending"]
        # Mostly hit jobs that are running, many of them just as they end.
        for job_id in rng.sample(running, min(len(running), 2)) + rng.sample(
            pending, min(len(pending), 1)
        ):
            if job_id not in canceled:
                daemon.client.cancel(job_id)
                canceled.add(job_id)
        time.sleep(rng.uniform(0, 0.01))
    jobs = {j.id: j for j in daemon.client.list(limit=1000)}
    assert sorted(jobs) == sorted(ids)
    for job in jobs.values():
        assert job.attempts == 0, job
        if job.id in canceled:
            assert job.status in ("canceled", "completed"), job
        else:
            assert job.status == "completed", job
        if job.status == "completed":
            assert job.result is not None
    assert any(jobs[i].status == "canceled" for i in canceled)
    _assert_pool_is_whole(daemon, 2)


def test_kill_storm(make_daemon) -> None:
    daemon = make_daemon()
    rng = random.Random(11)
    ids = [f"k{n}" for n in range(300)]
    daemon.client.submit_many(
        {"type": "sleep", "payload": {"seconds": 0.02}, "id": job_id, "max_attempts": 1000}
        for job_id in ids
    )
    wait_until(lambda: any(j.status == "running" for j in daemon.client.list(limit=1000)))
    kills = 0
    # Several seconds of kills, enough of them, and at least one that cut a run short,
    # even on a loaded machine (a kill that lands between two jobs charges nothing).
    storm_end = time.monotonic() + 4
    give_up = time.monotonic() + 30
    charged = False  # a kill cut a run short: some job was charged an attempt
    while time.monotonic() < give_up and not (
        time.monotonic() >= storm_end and kills >= 40 and charged
    ):
        pids = daemon.worker_pids()
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        if kills % 10 == 0 and not charged:
            charged = any(j.attempts > 0 for j in daemon.client.list(limit=1000))
        time.sleep(rng.uniform(0.002, 0.01))
    wait_until(
        lambda: all(j.status == "completed" for j in daemon.client.list(limit=1000)),
        timeout=90,
        what="every job completed",
    )
    jobs = daemon.client.list(limit=1000)
    assert len(jobs) == len(ids)
    assert kills >= 40
    assert any(j.attempts > 0 for j in jobs)
    _assert_pool_is_whole(daemon, 2)
