"""Intake: what arrives from outside the pool, in one place.

Job files become jobs (through `ingest`), cancel requests reach the job
wherever it is (the store, a worker's queue, a running worker), prune
requests ask retention to run sooner, and pause and resume requests are
stored for this turn's claim to obey. Runs inside the supervisor's
transaction; its decisions about workers go back to the supervisor, which
carries them out with everything else of the turn.

A `.jsonl` file read in parts is logged twice, not once per part: `file.reading`
when its first part is read (or when this daemon goes on with a file an earlier
one had begun, or begins one again that changed while it was read), and
`file.accepted` with the file's total when its last part is (then it is removed);
or `file.rejected` as any file. Duplicates are logged once per file and turn.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from procpool.application.handlers import HandlerRegistry
from procpool.application.ports import (
    FileProgress,
    IdsBusy,
    InboxEntry,
    InboxFile,
    JobStore,
    SharedStore,
)
from procpool.application.supervisor import schedule_requests
from procpool.application.supervisor.fleet import Decision, Fleet
from procpool.application.supervisor.ingest import IngestResult, RejectedFile, ingest
from procpool.application.supervisor.ledger import Ledger
from procpool.domain import spec
from procpool.domain.errors import InvalidJobFile
from procpool.domain.job import Job, Status
from procpool.domain.pauses import Pause
from procpool.domain.spec import JobDefaults, JobSpec
from procpool.domain.timefmt import rfc3339
from procpool.domain.wording import plural

Log = Callable[..., None]  # (level, event, message, **fields)


@dataclass
class Received:
    """What one intake step asks of the rest of the turn."""

    decisions: list[Decision] = field(default_factory=list)
    accepted: list[InboxFile] = field(default_factory=list)  # to remove after the commit
    rejected: list[RejectedFile] = field(default_factory=list)  # to move after the commit
    prune_days: float | None = None  # the smallest age a prune request asked for


@dataclass
class Verdict:
    """What became of one submission over the socket door: its jobs' ids once stored
    (new or the very same submissions), or why none of them was."""

    ids: list[str] | None = None
    error: str | None = None
    duplicate: str | None = None  # an id that exists with other content
    bad_job: tuple[int, str] | None = None  # a batch of several: its first bad job, why


def submission_entry(number: int, data: bytes, max_bytes: int) -> InboxEntry:
    """One job of a submission over the socket, judged as a line of an inbox file is
    (`number` counts from 1); the socket has no file name to take an id from."""
    if len(data) > max_bytes:
        return InboxEntry(number, None, f"job is {len(data)} bytes, limit is {max_bytes} bytes")
    try:
        value = spec.decode(data)
    except InvalidJobFile as error:
        return InboxEntry(number, None, str(error))
    if isinstance(value, spec.BatchRequest):
        return InboxEntry(number, None, "a batch is sent as the jobs of one submission")
    if not isinstance(value, JobSpec):
        return InboxEntry(number, None, "not a job: cancel and prune have requests of their own")
    if value.id is None:
        return InboxEntry(number, None, 'missing field "id": a job sent over the socket names it')
    return InboxEntry(number, value)


class _AnyType:
    """Every type: a live daemon of the fleet did not record which it has."""

    def __contains__(self, item: object) -> bool:
        return True


class Intake:
    def __init__(
        self, store: JobStore, ledger: Ledger, registry: HandlerRegistry, fleet: Fleet, log: Log
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.registry = registry
        self.fleet = fleet
        self._log = log
        self._reading: set[str] = set()  # keys of the files this daemon is reading in parts

    def files(
        self,
        files: list[InboxFile],
        defaults: JobDefaults,
        now: float,
        wall: float,
        progress: Mapping[str, FileProgress] | None = None,
    ) -> Received:
        """Judge inbox files: new jobs stored, duplicates noted, requests carried out.
        `progress`: what the store holds of files read in parts, as given to the scan."""
        received = Received()
        if not files:
            return received
        known, names = self._types()
        try:
            result = ingest(files, self.store, known, names, defaults, wall, progress, True)
        except IdsBusy as busy:
            # A producer's large submission holds some of these ids: the files stay in
            # the inbox for a later scan, and the turn goes on without waiting for it.
            self._log(
                "DEBUG", "inbox.deferred",
                f"{plural(len(files), 'file')} left for a later scan: {busy}",
                files=len(files), error=str(busy),
            )  # fmt: skip
            return received
        new_jobs: dict[int, list[Job]] = {}
        for job, file in result.jobs:
            new_jobs.setdefault(id(file), []).append(job)
        self.ledger.added_many(job for job, _ in result.jobs)
        parts = {id(file): done for file, done in result.progress}
        duplicates: dict[int, list[str]] = {}
        for job_id, file in result.duplicates:
            duplicates.setdefault(id(file), []).append(job_id)
        self._key_duplicates(result)
        for file in files:
            done = parts.get(id(file))
            if done is None:
                self._accepted(file, new_jobs.get(id(file), []))
            else:
                self._progressed(file, done, new_jobs.get(id(file), []))
            if id(file) in duplicates:
                self._duplicates(file, duplicates[id(file)])
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
        for request, file in result.pauses:
            self._pause(request, wall, file.name)
        for wanted, checked, file in result.schedules:
            schedule_requests.carry_out(
                wanted, checked, self.store, self.ledger, self._log, defaults, wall, file.name
            )
        received.accepted = result.accepted
        received.rejected = result.rejected
        return received

    def _pause(
        self, request: spec.PauseRequest | spec.ResumeRequest, wall: float, file: str
    ) -> None:
        """Store or lift pauses, in this turn's transaction: this turn's claim obeys them.
        A type no live daemon registers is paused all the same (one may come), and said."""
        known, _ = self._types()
        if isinstance(request, spec.ResumeRequest):
            for job_type in self.store.resume(request.resume):
                self._log(
                    "INFO", "pause.lifted", f"{job_type} resumed: its jobs may start",
                    type=job_type, file=file,
                )  # fmt: skip
            return
        until = None if request.until is None else spec.parse_time(request.until, "until")
        for job_type in request.pause:
            self.store.pause(Pause(job_type, until, wall))
            ends = "until resumed" if until is None else f"until {rfc3339(until)}"
            unknown = "" if job_type in known else " (no live daemon registers this type)"
            self._log(
                "INFO", "pause.set", f"{job_type} paused {ends}{unknown}: none of its jobs starts",
                type=job_type, until=None if until is None else rfc3339(until),
                registered=job_type in known, file=file,
            )  # fmt: skip

    def submissions(
        self, batches: list[list[bytes]], defaults: JobDefaults, wall: float, max_bytes: int
    ) -> list[Verdict]:
        """Judge submissions over the socket door, each all or none, with the code that
        judges inbox files: the same ids, idempotency and error words. `batches` holds
        each submission's jobs as JSON bytes of job objects."""
        files = []
        for jobs in batches:
            entries = [submission_entry(n, data, max_bytes) for n, data in enumerate(jobs, 1)]
            files.append(InboxFile("socket", "", is_lines=False, whole=True, entries=entries))
        known, names = self._types()
        result = ingest(files, self.store, known, names, defaults, wall)
        self.ledger.added_many(job for job, _ in result.jobs)
        held = self._key_duplicates(result)
        refused = {id(rejection.file): rejection for rejection in result.rejected}
        verdicts = []
        for file in files:
            rejection = refused.get(id(file))
            if rejection is not None:
                self._log(
                    "WARNING", "submit.refused", f"refused a submission: {rejection.error}",
                    error=rejection.error, jobs=len(file.entries),
                )  # fmt: skip
                verdicts.append(
                    Verdict(
                        error=rejection.error,
                        duplicate=rejection.duplicate,
                        bad_job=rejection.bad_job,
                    )
                )
                continue
            ids = [entry.value.id for entry in file.entries if isinstance(entry.value, JobSpec)]
            first = file.entries[0].value
            self._log(
                "INFO", "job.submitted",
                f"job {ids[0]} submitted" if len(ids) == 1 else f"{len(ids)} jobs submitted",
                job_id=ids[0], type=getattr(first, "type", None), jobs=len(ids), via="socket",
            )  # fmt: skip
            verdicts.append(Verdict(ids=[held.get(i, i) for i in ids if i is not None]))
        return verdicts

    def _types(self) -> tuple[Container[str], list[str]]:
        """The job types a submission may have, and their names for an error: this
        daemon's handlers; on a shared store, those of every live daemon (a job waits
        for one that has its handler), or any type while a live daemon did not say
        which it has (an older procpool)."""
        names = self.registry.names()
        if not self.store.shared:
            return self.registry.types(), names  # a live view: no set to build
        served = cast(SharedStore, self.store).served_types()
        if served is None:
            return _AnyType(), names
        names = sorted(set(names) | served)
        return set(names), names

    def vanished(self, keys: list[str], progress: Mapping[str, FileProgress]) -> None:
        """Files read in part that left the inbox before their end (deleted, renamed):
        forget how far they got. The jobs of their lines read so far stay."""
        for key in keys:
            self.store.forget_progress(key)
            self._reading.discard(key)
            done = progress[key]
            self._log(
                "WARNING", "file.vanished",
                f"{key} left the inbox before it was read to its end;"
                f" {plural(done.accepted, 'job')} came from its first"
                f" {plural(done.line, 'line')}",
                file=key, jobs=done.accepted, lines=done.line,
            )  # fmt: skip

    def _accepted(self, file: InboxFile, new_jobs: list[Job]) -> None:
        if file.part is not None:
            self._reading.discard(file.part.key)
        if not new_jobs:
            return
        first = new_jobs[0]
        if len(new_jobs) == 1:
            message = f"job {first.id} accepted from {file.name}"
        else:
            message = f"{len(new_jobs)} jobs accepted from {file.name}"
        self._log(
            "INFO", "file.accepted", message,
            file=file.name, jobs=len(new_jobs), job_id=first.id, type=first.type,
        )  # fmt: skip

    def _progressed(self, file: InboxFile, done: FileProgress, new_jobs: list[Job]) -> None:
        """A part of a file read in parts: say when it begins and when it is done."""
        part = file.part
        assert part is not None
        if part.complete:
            self._reading.discard(part.key)
            if done.accepted:
                self._log(
                    "INFO", "file.accepted",
                    f"{plural(done.accepted, 'job')} accepted from {file.name}",
                    file=file.name, jobs=done.accepted, lines=done.line,
                )  # fmt: skip
            return
        size = f"{part.size / 2**20:.1f} MiB"
        if part.start == 0 and part.key in self._reading:
            message = f"{file.name} changed while it was read: reading it again from the start"
        elif part.start == 0:
            message = f"reading {file.name} ({size}) in parts"
        elif part.key not in self._reading:
            message = f"going on with {file.name} ({size}) from line {part.first_line}"
        else:
            return
        self._reading.add(part.key)
        self._log(
            "INFO", "file.reading", message,
            file=file.name, bytes=part.size, line=part.first_line, jobs=len(new_jobs),
        )  # fmt: skip

    def _key_duplicates(self, result: IngestResult) -> dict[str, str]:
        """Log each job not stored because a live job holds its unique_key; returns
        them, the id submitted -> the holder's id."""
        held: dict[str, str] = {}
        self.ledger.duplicate_keys += len(result.key_duplicates)
        for job_id, holder, file in result.key_duplicates:
            held[job_id] = holder
            self._log(
                "INFO", "file.duplicate_key",
                f"job {job_id} from {file.name} not added: job {holder} holds its unique_key",
                job_id=job_id, existing_id=holder, file=file.name,
            )  # fmt: skip
        return held

    def _duplicates(self, file: InboxFile, job_ids: list[str]) -> None:
        first = job_ids[0]
        if len(job_ids) == 1:
            message = f"job {first} from {file.name} already exists"
        else:
            message = f"{len(job_ids)} jobs from {file.name} already exist"
        self._log(
            "INFO", "file.duplicate", message, job_id=first, file=file.name, jobs=len(job_ids)
        )

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
