"""Inbox files into jobs: one use case, run inside the supervisor's transaction.

Ids are idempotency keys (DESIGN decision 6): a file read again after a crash
finds its jobs already stored with the same digest and changes nothing. The
caller removes accepted files only after the transaction has committed.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass, field

from procpool.application.ports import InboxFile, JobStore, LineError
from procpool.domain.errors import InvalidJobFile
from procpool.domain.job import Job
from procpool.domain.spec import (
    CancelRequest,
    JobDefaults,
    JobSpec,
    PruneRequest,
    check_id,
    show,
    to_job,
)


@dataclass
class Rejection:
    file: InboxFile
    error: str
    lines: list[LineError]


@dataclass
class IngestResult:
    jobs: list[tuple[Job, InboxFile]] = field(default_factory=list)
    cancels: list[tuple[str, InboxFile]] = field(default_factory=list)
    prunes: list[tuple[float, InboxFile]] = field(default_factory=list)
    duplicates: list[tuple[str, InboxFile]] = field(default_factory=list)
    accepted: list[InboxFile] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class _Candidate:
    job: Job
    file: InboxFile
    line: int | None


class _FileOutcome:
    def __init__(self, file: InboxFile) -> None:
        self.file = file
        self.error: str | None = file.error
        self.lines: list[LineError] = []

    def fail(self, line: int | None, error: str) -> None:
        if line is None:
            self.error = error
        else:
            self.lines.append(LineError(line, error))


def _job_id(spec: JobSpec, file: InboxFile, line: int | None) -> str:
    if spec.id is not None:
        return spec.id
    default = file.stem if line is None else f"{file.stem}-{line}"
    try:
        return check_id(default, "the id taken from the file name")
    except InvalidJobFile as error:
        raise InvalidJobFile(f"{error}; give the job an id field") from None


def _read_entries(
    outcome: _FileOutcome,
    known_types: Container[str],
    type_names: Sequence[str],
    defaults: JobDefaults,
    now: float,
    result: IngestResult,
) -> list[_Candidate]:
    """The jobs a file offers; cancel requests go straight into `result`."""
    file = outcome.file
    if outcome.error is not None:
        return []
    if not file.entries:
        outcome.fail(None, "the file holds no job")
        return []
    candidates = []
    for entry in file.entries:
        if entry.error is not None or entry.value is None:
            outcome.fail(entry.line, entry.error or "no job")
        elif isinstance(entry.value, CancelRequest):
            result.cancels.append((entry.value.cancel, file))
        elif isinstance(entry.value, PruneRequest):
            result.prunes.append((entry.value.prune, file))
        elif entry.value.type not in known_types:
            outcome.fail(
                entry.line,
                f"unknown job type {show(entry.value.type)}; registered: {', '.join(type_names)}",
            )
        else:
            try:
                job_id = _job_id(entry.value, file, entry.line)
            except InvalidJobFile as error:
                outcome.fail(entry.line, str(error))
                continue
            job = to_job(entry.value, job_id=job_id, defaults=defaults, now=now)
            candidates.append(_Candidate(job, file, entry.line))
    return candidates


def _lines_summary(bad: int, total: int) -> str:
    if bad == total:
        return "its one line was rejected" if total == 1 else f"all {total} lines were rejected"
    verb = "was" if bad == 1 else "were"
    return f"{bad} of {total} lines {verb} rejected, the other {total - bad} accepted"


def ingest(
    files: Sequence[InboxFile],
    store: JobStore,
    known_types: Container[str],
    type_names: Sequence[str],
    defaults: JobDefaults,
    now: float,
) -> IngestResult:
    result = IngestResult()
    outcomes = {id(file): _FileOutcome(file) for file in files}
    candidates = [
        candidate
        for outcome in outcomes.values()
        for candidate in _read_entries(outcome, known_types, type_names, defaults, now, result)
    ]
    stored = store.digests([c.job.id for c in candidates])
    seen: dict[str, str] = {}
    new_jobs: list[Job] = []
    for candidate in candidates:
        job = candidate.job
        known_digest = seen.get(job.id) or stored.get(job.id)
        if known_digest is None:
            seen[job.id] = job.digest
            new_jobs.append(job)
            result.jobs.append((job, candidate.file))
        elif known_digest == job.digest:
            result.duplicates.append((job.id, candidate.file))
        else:
            outcomes[id(candidate.file)].fail(
                candidate.line, f'duplicate id "{job.id}" with different content'
            )
    store.insert(new_jobs)

    for outcome in outcomes.values():
        if outcome.error is None and not outcome.lines:
            result.accepted.append(outcome.file)
        else:
            error = outcome.error or _lines_summary(len(outcome.lines), len(outcome.file.entries))
            result.rejected.append(Rejection(outcome.file, error, outcome.lines))
    return result
