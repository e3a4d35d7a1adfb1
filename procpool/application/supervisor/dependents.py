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

from collections.abc import Callable, Iterable

from procpool.application.ports import JobStore
from procpool.domain import job as jobs
from procpool.domain.dependencies import Decision, verdict
from procpool.domain.job import Job, Status

Log = Callable[..., None]  # (level, event, message, **fields)
Write = Callable[[Job, Job], bool]  # (new, old): the ledger's compare-and-set


class Dependents:
    def __init__(self, store: JobStore, write: Write, log: Log) -> None:
        self.store = store
        self._write = write
        self._log = log
        self._ended: list[str] = []  # jobs made terminal, whose dependents to look at
        self._arrived: list[str] = []  # new jobs with `after`, to look at themselves
        self._settling = False
        self._now = 0.0  # when the latest of them happened (seconds since the epoch)
        self.canceled = 0  # jobs canceled by a parent since the start

    def ended(self, job: Job) -> None:
        """`job` became terminal (not yet settled: see `settle`)."""
        self._ended.append(job.id)
        self._now = max(self._now, job.updated_at)

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
