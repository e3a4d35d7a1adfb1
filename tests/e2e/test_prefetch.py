"""Prefetch through the real daemon: a busy worker may hold its next job, but never
keeps it behind a long job while another worker is free, nor ahead of a more urgent job."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import Daemon, wait_until


def _warm(daemon: Daemon) -> None:
    """Finish two short jobs, so the daemon knows jobs here take about 50 ms."""
    for job_id in ("warm-1", "warm-2"):
        daemon.client.submit("sleep", {"seconds": 0.05}, id=job_id)
    for job_id in ("warm-1", "warm-2"):
        daemon.wait_status(job_id, "completed")


def _drop_lines(daemon: Daemon, name: str, jobs: list[dict[str, object]]) -> None:
    daemon.drop(name, "".join(json.dumps(job) + "\n" for job in jobs))


def test_no_job_waits_behind_a_long_one_while_a_worker_is_free(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workers=2, args=("--log-level", "DEBUG"))
    _warm(daemon)
    short = [f"short-{n}" for n in range(6)]
    # The long job computes in Python: the worker's reader thread must still answer.
    _drop_lines(daemon, "mix.jsonl", [
        {"type": "cpu", "payload": {"seconds": 30}, "id": "long", "priority": 1},
        *({"type": "sleep", "payload": {"seconds": 0.05}, "id": i} for i in short),
    ])  # fmt: skip
    for job_id in short:
        daemon.wait_status(job_id, "completed")
    assert daemon.job("long").status == "running"
    # One short job was queued behind the long one (prefetch) and taken back unstarted.
    taken_back = {e["job_id"] for e in daemon.events("job.requeued")}
    assert taken_back and taken_back <= set(short)
    started = [e["job_id"] for e in daemon.events("job.started") if e["job_id"] in short]
    assert sorted(started) == sorted(short)  # each started once
    for job_id in short:
        assert daemon.job(job_id).attempts == 0
    daemon.client.cancel("long")
    daemon.wait_status("long", "canceled")


def test_a_queued_job_does_not_run_ahead_of_a_more_urgent_one(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workers=2)
    _warm(daemon)
    _drop_lines(daemon, "busy.jsonl", [
        {"type": "cpu", "payload": {"seconds": 1}, "id": "long-1", "priority": 1},
        {"type": "cpu", "payload": {"seconds": 1}, "id": "long-2", "priority": 1},
        {"type": "echo", "payload": 1, "id": "filler-1"},
        {"type": "echo", "payload": 2, "id": "filler-2"},
    ])  # fmt: skip
    wait_until(
        lambda: all(
            (job := daemon.job(i)) is not None and job.status != "pending"
            for i in ("long-1", "long-2")
        ),
        what="both long jobs handed out",
    )
    daemon.client.submit("echo", "first", id="urgent", priority=5)
    for job_id in ("urgent", "filler-1", "filler-2", "long-1", "long-2"):
        daemon.wait_status(job_id, "completed")
    starts = [e["job_id"] for e in daemon.wait_events("job.started", 7)]
    later = [i for i in starts if i in ("urgent", "filler-1", "filler-2")]
    assert later[0] == "urgent", starts


def test_while_the_loop_lets_results_gather_clients_are_served_at_once(
    make_daemon: Callable[..., Daemon],
) -> None:
    """Group commit: with every worker's queue full of short jobs the loop waits for
    their ends to gather (supervisor.LINGER); a client's submit and cancels are
    served meanwhile, an urgent job overtakes the queue, and each job runs once."""
    daemon = make_daemon(workers=2)
    for job_id in ("warm-1", "warm-2"):
        daemon.client.submit("sleep", {"seconds": 0.005}, id=job_id)
    for job_id in ("warm-1", "warm-2"):
        daemon.wait_status(job_id, "completed")
    batch = [f"b-{n}" for n in range(600)]
    _drop_lines(daemon, "batch.jsonl", [
        {"type": "sleep", "payload": {"seconds": 0.005}, "id": job_id} for job_id in batch
    ])  # fmt: skip
    daemon.wait_events("job.started", job_id="b-20")
    canceled = batch[-40:]
    for job_id in canceled:
        daemon.client.cancel(job_id)
    urgent = daemon.client.submit("echo", "urgent", id="urgent", priority=5)
    assert daemon.client.wait([urgent], timeout=30)[0].status == "completed"
    # It overtook the batch: most of the batch still waited when it was done.
    assert sum(daemon.job(job_id).status == "pending" for job_id in batch) > 100
    for job_id in batch:
        daemon.wait_status(job_id, "completed", "canceled")
    assert {daemon.job(job_id).status for job_id in canceled} == {"canceled"}
    started = [e["job_id"] for e in daemon.events("job.started")]
    assert len(started) == len(set(started))  # none ran twice
    assert set(started) >= set(batch) - set(canceled)
