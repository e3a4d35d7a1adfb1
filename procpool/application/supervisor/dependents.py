"""Jobs that wait for others (CONTRACT section 15): released or canceled as their
parents end, in the transaction that ends them.

    Ledger._write ─ a job became terminal ─▶ ended()    ┐
    Intake        ─ new jobs with `after` ─▶ arrived()  ├─▶ settle(): for each held job
    Ledger.load   ─ a start, a reconnect  ─▶ sweep()    ┘   concerned, domain.verdict:
                         wait │ ready: store.release │ cancel: Ledger._write, canceled_by

A cancel is itself a job that ended, so `settle` goes on down the graph until
nothing changes: no job is left waiting for a parent that can no longer complete.
The held jobs are read from the store, in the turn's transaction (no count kept
beside them that could drift).

One `settle` looks at BATCH held jobs at the most, so that a turn stays short
(on PostgreSQL, within its statement timeout and its lease) whatever the fan-out:
a parent with more dependents has the rest settled by the next turns (`backlog`,
which the supervisor's dispatch step works off before each claim, waking at once
while some is left). What is left when the daemon dies is found again by the
sweep of its next start, which looks at every held job, BATCH a turn.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec

from procpool.domain import job as jobs
from procpool.domain.dependencies import Decision, verdict
from procpool.domain.job import Job, Status

BATCH = 1000  # held jobs looked at per `settle` at the most
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

    def dependents(self, parent_id: str, after: str, limit: int) -> list[str]: ...

    def held_ids(self, after: str, limit: int) -> list[str]: ...

    def held(
        self, job_ids: Sequence[str], arrived: bool = False
    ) -> list[tuple[Job, dict[str, Status]]]: ...

    def release(self, job_ids: Sequence[str]) -> None: ...


class Dependents:
    """`write` must call `ended` for each job it makes terminal (the cancels made here
    included: that is how `settle` goes down the graph)."""

    def __init__(self, store: Graph, write: Write, log: Log) -> None:
        self.store = store
        self._write = write
        self._log = log
        # Jobs made terminal, whose dependents to look at: (id, the last dependent's id
        # looked at; "" for none yet).
        self._ended: deque[tuple[str, str]] = deque()
        self._arrived: list[str] = []  # new jobs with `after`, to look at themselves
        self._sweep: str | None = None  # the sweep's last held id looked at; None: none
        self._settling = False
        self._now = 0.0  # when the latest of them happened (seconds since the epoch)
        self.canceled = 0  # jobs canceled by a parent since the start

    @property
    def backlog(self) -> bool:
        """Whether a later `settle` has something to look at."""
        return bool(self._ended or self._arrived or self._sweep is not None)

    def ended(self, job_id: str, now: float) -> None:
        """The job became terminal at `now` (not yet settled: see `settle`)."""
        self._ended.append((job_id, ""))
        self._now = max(self._now, now)

    def arrived(self, new_jobs: Iterable[Job]) -> None:
        """These jobs were inserted (held, if they have `after`)."""
        for job in new_jobs:
            if job.after:
                self._arrived.append(job.id)
                self._now = max(self._now, job.created_at)

    def sweep(self) -> None:
        """Look at every held job (at a start: what an earlier run left unsettled)."""
        self._sweep = ""

    def forget(self) -> None:
        """The turn was rolled back: what was noted did not happen (the next `load`
        sweeps)."""
        self._ended.clear()
        self._arrived = []

    def settle(self, now: float | None = None) -> None:
        """Release or cancel the held jobs whose parents decide them now, down the
        graph, BATCH of them at the most; `now`: the time, if later than what was noted."""
        if now is not None:
            self._now = max(self._now, now)
        if self._settling or not self.backlog:
            return
        self._settling = True
        try:
            budget = BATCH
            while budget > 0 and self.backlog:
                budget -= self._step(budget)
        finally:
            self._settling = False

    def _step(self, budget: int) -> int:
        """Settle the next held jobs, `budget` at the most; how many were looked at (1 at
        least, so that a loop over it ends)."""
        if self._arrived:
            ids, self._arrived = self._arrived[:budget], self._arrived[budget:]
            self._decide(self.store.held(ids, arrived=True), self._now)
            return max(len(ids), 1)
        if self._ended:
            parent, after = self._ended.popleft()
            ids = self.store.dependents(parent, after, budget)
            if len(ids) == budget:  # maybe more: the next step goes on after the last
                self._ended.appendleft((parent, ids[-1]))
        else:
            ids = self.store.held_ids(self._sweep or "", budget)
            self._sweep = ids[-1] if len(ids) == budget else None
        if ids:
            self._decide(self.store.held(ids), self._now)
        return max(len(ids), 1)

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
