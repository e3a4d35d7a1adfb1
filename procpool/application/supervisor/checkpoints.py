"""Checkpoints (CONTRACT section 16): a handler's `ctx.checkpoint(value)`, stored in the
turn's transaction and answered after its commit.

    worker ─Checkpoint─▶ fleet.received ─CheckpointAsked (owned?)─▶ Effects.apply
        ─▶ take: store.write_checkpoint (fenced: running, this lease; PostgreSQL: this
           daemon's, its lease valid) ─▶ Send(CheckpointStored) ─▶ after the commit ─▶ worker

The answer waits with the turn's other sends, so a handler's checkpoint returns only
once the store holds it, group-committed with whatever else the turn wrote.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from procpool.application.ports import JobStore
from procpool.application.supervisor.fleet import CheckpointAsked, Send
from procpool.application.wire.messages import CheckpointStored, RunJob
from procpool.domain.job import Job

Log = Callable[..., None]  # (level, event, message, **fields)


def take(store: JobStore, asked: CheckpointAsked, wall: float, log: Log) -> CheckpointStored:
    """Write the checkpoint if its run still owns the job; the answer for its worker."""
    job = asked.job
    stored = asked.owned and store.write_checkpoint(job.id, job.lease, asked.value, wall)
    if not stored:
        log(
            "WARNING", "checkpoint.refused",
            f"job {job.id}: a checkpoint from attempt {job.attempt}, which no longer owns"
            " the job, was not stored",
            job_id=job.id, attempt=job.attempt, lease=job.lease, worker_pid=asked.worker_pid,
        )  # fmt: skip
    return CheckpointStored(job.id, job.lease, stored)


def with_last(send: Send, job: Job, store: JobStore) -> Send:
    """A job handed out with the last checkpoint an earlier attempt committed (read only
    for a job that has one: `checkpoint_at` says so)."""
    if job.checkpoint_at is None or not isinstance(send.message, RunJob):
        return send
    value = store.checkpoints([job.id]).get(job.id)
    return Send(send.pid, msgspec.structs.replace(send.message, last_checkpoint=value))


def lost(answer: CheckpointStored) -> CheckpointStored:
    """The answer of a turn that was rolled back: what it wrote is gone, so the worker
    is told to send the checkpoint again (membership.reconcile)."""
    return msgspec.structs.replace(answer, stored=False, again=True)
