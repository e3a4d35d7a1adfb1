"""Jobs that wait for others (CONTRACT section 15): released or canceled as their
parents end, in the transaction that ends them.

    Ledger._write ─ a job became terminal ─▶ ended()    ┐
    Intake        ─ new jobs with `after` ─▶ arrived()  ├─▶ settle(): for each held job
                                                        ┘   concerned, domain.verdict:
                         wait │ ready: store.release │ cancel: Ledger._write, canceled_by

A cancel is itself a job that ended, so `settle` goes on down the graph until
nothing changes: no job is left waiting for a parent that can no longer complete.
The held jobs are read from the store, in the turn's transaction (no count kept
beside them that could drift).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec

from procpool.domain import job as jobs
from procpool.domain.dependencies import Decision, verdict
from procpool.domain.job import Job, Status

Log = Callable[..., None]  # (level, event, message, **fields)
Write = Callable[[Job, Job], bool]  # (new, old): a compare-and-set, as the ledger's


class _Jobs(Protocol):
    def get(self, job_id: str) -> Job | None: ...


def parents_of(store: _Jobs, job: Job) -> bytes:
    """What the attempt of `job` is handed as ctx.parents, read now (in the claim's
    transaction): {parent id: {"status", "result", "last_error"}} as JSON; a parent no
    longer stored is left out."""
    found: dict[str, Any] = {}
    for parent_id in job.after:
        parent = store.get(parent_id)
        if parent is not None:
            found[parent_id] = {
                "status": str(parent.status),
                "result": msgspec.Raw(parent.result or b"null"),
                "last_error": parent.last_error,
            }
    return msgspec.json.encode(found)


class Graph(Protocol):
    """What `Dependents` reads and writes of a store (JobStore has it: see there)."""

    def dependents(self, parent_ids: Sequence[str]) -> list[tuple[Job, dict[str, Status]]]: ...

    def held(self, job_ids: Sequence[str]) -> list[tuple[Job, dict[str, Status]]]: ...

    def release(self, job_ids: Sequence[str]) -> None: ...


class Dependents:
    """`write` must call `ended` for each job it makes terminal (the cancels made here
    included: that is how `settle` goes down the graph)."""

    def __init__(self, store: Graph, write: Write, log: Log) -> None:
        self.store = store
        self._write = write
        self._log = log
        self._ended: list[str] = []  # jobs made terminal, whose dependents to look at
        self._arrived: list[str] = []  # new jobs with `after`, to look at themselves
        self._settling = False
        self._now = 0.0  # when the latest of them happened (seconds since the epoch)
        self.canceled = 0  # jobs canceled by a parent since the start

    def ended(self, job_id: str, now: float) -> None:
        """The job became terminal at `now` (not yet settled: see `settle`)."""
        self._ended.append(job_id)
        self._now = max(self._now, now)

    def arrived(self, new_jobs: Iterable[Job]) -> None:
        """These jobs were inserted (held, if they have `after`)."""
        for job in new_jobs:
            if job.after:
                self._arrived.append(job.id)
                self._now = max(self._now, job.created_at)

    def forget(self) -> None:
        """The turn was rolled back: what was noted did not happen."""
        self._ended, self._arrived = [], []

    def settle(self) -> None:
        """Release or cancel every held job whose parents decide it now, down the graph."""
        if self._settling or not (self._ended or self._arrived):
            return  # a cancel made below: the loop that made it looks at it
        self._settling = True
        try:
            while self._ended or self._arrived:
                parents, self._ended = self._ended, []
                arrived, self._arrived = self._arrived, []
                found = self.store.dependents(parents) if parents else []
                found += self.store.held(arrived) if arrived else []
                self._decide(found, self._now)
        finally:
            self._settling = False

    def _decide(self, found: list[tuple[Job, dict[str, Status]]], now: float) -> None:
        ready: list[str] = []
        seen: set[str] = set()
        for job, statuses in found:
            if job.id in seen:
                continue
            seen.add(job.id)
            decided = verdict(job.after_failure, job.after, statuses)
            if decided.decision is Decision.READY:
                ready.append(job.id)
            elif decided.decision is Decision.CANCEL:
                self._cancel(job, decided.parent or "", decided.parent_status, now)
        if ready:
            self.store.release(ready)
            self._log(
                "DEBUG", "job.released",
                f"job {ready[0]} may start: its parents allow it" if len(ready) == 1
                else f"{len(ready)} jobs may start: their parents allow them",
                job_id=ready[0], jobs=len(ready),
            )  # fmt: skip

    def _cancel(self, job: Job, parent: str, status: Status | None, now: float) -> None:
        canceled = jobs.cancel_by_parent(
            job, parent=parent, parent_status=status or Status.CANCELED, now=now
        )
        if not self._write(canceled, job):
            return
        self.canceled += 1
        self._log(
            "INFO", "job.canceled", f"job {job.id} canceled: {canceled.last_error}",
            job_id=job.id, type=job.type, canceled_by=parent, error=canceled.last_error,
        )  # fmt: skip
