"""Intake: what arrives from outside the pool, in one place.

Job files become jobs (through `ingest`), cancel requests reach the job
wherever it is (the store, a worker's queue, a running worker), and prune
requests ask retention to run sooner. Runs inside the supervisor's
transaction; its decisions about workers go back to the supervisor, which
carries them out with everything else of the turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from procpool.application.fleet import Decision, Fleet
from procpool.application.handlers import HandlerRegistry
from procpool.application.ingest import Rejection, ingest
from procpool.application.ledger import Ledger
from procpool.application.ports import InboxFile, JobStore
from procpool.domain.job import Job, Status
from procpool.domain.spec import JobDefaults
from procpool.domain.wording import plural

Log = Callable[..., None]  # (level, event, message, **fields)


@dataclass
class Received:
    """What one intake step asks of the rest of the turn."""

    decisions: list[Decision] = field(default_factory=list)
    accepted: list[InboxFile] = field(default_factory=list)  # to remove after the commit
    rejected: list[Rejection] = field(default_factory=list)  # to move after the commit
    prune_days: float | None = None  # the smallest age a prune request asked for


class Intake:
    def __init__(
        self, store: JobStore, ledger: Ledger, registry: HandlerRegistry, fleet: Fleet, log: Log
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.fleet = fleet
        self._log = log

    def files(
        self, files: list[InboxFile], defaults: JobDefaults, now: float, wall: float
    ) -> Received:
        """Judge inbox files: new jobs stored, duplicates noted, requests carried out."""
        received = Received()
        if not files:
            return received
        result = ingest(files, self.store, self.registry, self.registry.names(), defaults, wall)
        accepted: dict[str, list[Job]] = {}
        for job, file in result.jobs:
            accepted.setdefault(file.name, []).append(job)
            self.ledger.added(job)
        for name, new_jobs in accepted.items():
            first = new_jobs[0]
            if len(new_jobs) == 1:
                message = f"job {first.id} accepted from {name}"
            else:
                message = f"{len(new_jobs)} jobs accepted from {name}"
            self._log(
                "INFO", "file.accepted", message,
                file=name, jobs=len(new_jobs), job_id=first.id, type=first.type,
            )  # fmt: skip
        for job_id, file in result.duplicates:
            self._log(
                "INFO", "file.duplicate", f"job {job_id} from {file.name} already exists",
                job_id=job_id, file=file.name,
            )  # fmt: skip
        for job_id, file in result.cancels:
            received.decisions += self.cancel(job_id, now, wall, file=file.name)
        for days, file in result.prunes:
            asked = received.prune_days
            received.prune_days = days if asked is None else min(asked, days)
            self._log(
                "INFO", "prune.requested",
                f"prune of jobs older than {plural(days, 'day')} requested",
                days=days, file=file.name,
            )  # fmt: skip
        received.accepted = result.accepted
        received.rejected = result.rejected
        return received

    def cancel(self, job_id: str, now: float, wall: float, **where: Any) -> list[Decision]:
        """Cancel a job: a pending one at once; a running one once its worker ended it
        (or skipped it, if it had not started). The fate table makes it `canceled`."""
        job = self.store.get(job_id)
        if job is None:
            self._log(
                "WARNING", "cancel.unknown", f"cannot cancel {job_id}: no such job",
                job_id=job_id, **where,
            )  # fmt: skip
            return []
        if job.status.is_terminal:
            self._log(
                "INFO", "cancel.ignored", f"job {job_id} is already {job.status}",
                job_id=job_id, status=str(job.status), **where,
            )  # fmt: skip
            return []
        if job.status is Status.PENDING:
            self.ledger.cancel(job, wall, ran=False)
            return []
        if job.cancel_requested:
            return []
        requested = self.ledger.request_cancel(job, wall)
        worker = self.fleet.holder(job)
        return [] if worker is None else self.fleet.cancel(worker, requested, now)
