"""Inbox files into jobs: one use case, run inside the supervisor's transaction.

Ids are idempotency keys (DESIGN decision 6): a file read again after a crash
finds its jobs already stored with the same digest and changes nothing. The
caller removes accepted files only after the transaction has committed.

A `.jsonl` file read in parts (ports.Part) is judged a part at a time: the jobs
of a part's good lines are stored at once, and where the file stands (how far
it was read, how many lines were good and bad, the bad lines themselves) is
stored with them (ports.FileProgress), in the same transaction. Only the part
that ends the file decides it, on all of its lines: accepted if none was bad,
else rejected with every bad line reported (the first MAX_REPORTED_LINES of
them by number; the count of all).
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import cast

from procpool.application.ports import (
    FileProgress,
    IdsBusy,
    InboxFile,
    JobStore,
    LineError,
    SharedStore,
)
from procpool.domain import inbox_names, schedules
from procpool.domain.dependencies import problems
from procpool.domain.errors import DuplicateId, InvalidJobFile
from procpool.domain.job import Job
from procpool.domain.schedules import Schedule
from procpool.domain.spec import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    CancelRequest,
    JobDefaults,
    JobSpec,
    PauseRequest,
    PruneRequest,
    ResumeRequest,
    ScheduleRequest,
    check_expiry,
    check_id,
    show,
    to_job,
)
from procpool.domain.wording import plural

# A report lists at most this many bad lines (the rest are counted in its `error`), so
# that judging a file of any size holds a bounded number of them.
MAX_REPORTED_LINES = 1000


@dataclass
class RejectedFile:
    """An inbox file (or a request over the socket) the intake refuses: `error` why,
    `lines` its bad lines or jobs, `duplicate` an id that exists with other content."""

    file: InboxFile
    error: str
    lines: list[LineError]
    duplicate: str | None = None  # an id that exists with other content
    bad_job: tuple[int, str] | None = None  # a batch of several: its first bad job, why


@dataclass
class IngestResult:
    jobs: list[tuple[Job, InboxFile]] = field(default_factory=list)
    cancels: list[tuple[str, InboxFile]] = field(default_factory=list)
    prunes: list[tuple[float, InboxFile]] = field(default_factory=list)
    pauses: list[tuple[PauseRequest | ResumeRequest, InboxFile]] = field(default_factory=list)
    # Schedule requests, with an apply's schedules checked (the handlers known).
    schedules: list[tuple[ScheduleRequest, list[Schedule], InboxFile]] = field(default_factory=list)
    duplicates: list[tuple[str, InboxFile]] = field(default_factory=list)
    # Jobs not stored because a live job holds their type's unique_key: (the id
    # submitted, the holder's id, the file).
    key_duplicates: list[tuple[str, str, InboxFile]] = field(default_factory=list)
    # `procpool retry --resume`: a new job's id -> the job whose checkpoint it starts from.
    resumes: dict[str, str] = field(default_factory=dict)
    accepted: list[InboxFile] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)
    # Each file read in parts (not whole), and where it stands after this part: its
    # totals so far, or, if the part ended it, for the whole file.
    progress: list[tuple[InboxFile, FileProgress]] = field(default_factory=list)


@dataclass
class _Candidate:
    job: Job
    file: InboxFile
    line: int | None


class _FileOutcome:
    def __init__(self, file: InboxFile, before: FileProgress | None) -> None:
        self.file = file
        self.before = before  # what earlier parts of the file came to
        self.error: str | None = file.error
        self.lines: list[LineError] = []
        self.new_jobs = 0
        self.duplicate: str | None = None  # an id that exists with other content
        # `after` names what cannot be a parent: none of the file's jobs is stored.
        self.bad_after = False
        self.first_bad_after: LineError | None = None  # of a .jsonl file: its first

    def fail(self, line: int | None, error: str) -> None:
        if line is None:
            self.error = error
        else:
            self.lines.append(LineError(line, error))


@lru_cache(maxsize=64)
def _numbered_ids_valid(stem: str) -> bool:
    """Whether `STEM-N` is a valid id for every N that keeps it within 128 characters:
    checked once per file, not once per line."""
    return ID_PATTERN.fullmatch(inbox_names.default_id(stem, 1)) is not None


def _job_id(spec: JobSpec, file: InboxFile, line: int | None) -> str:
    if spec.id is not None:
        return spec.id
    default = inbox_names.default_id(file.stem, line)
    if line is not None and len(default) <= MAX_ID_LENGTH and _numbered_ids_valid(file.stem):
        return default
    try:
        return check_id(default, "the id taken from the file name")
    except InvalidJobFile as error:
        raise InvalidJobFile(f"{error}; give the job an id field") from None


def _request(
    request: PauseRequest | ResumeRequest | ScheduleRequest,
    line: int | None,
    outcome: _FileOutcome,
    result: IngestResult,
    known_types: Container[str],
    type_names: Sequence[str],
) -> None:
    """A pause, resume or schedule request into `result`; an apply whose schedules are
    bad or name a job type with no handler fails the file instead."""
    if not isinstance(request, ScheduleRequest):
        result.pauses.append((request, outcome.file))
        return
    try:
        checked = schedules.check_request(request)
        for schedule in checked:
            if schedule.type not in known_types:
                raise schedules.ScheduleError(
                    schedule.name, "job.type",
                    f"unknown job type {show(schedule.type)}; registered: {', '.join(type_names)}",
                )  # fmt: skip
    except InvalidJobFile as error:
        outcome.fail(line, str(error))
        return
    result.schedules.append((request, checked, outcome.file))


def _read_entries(
    outcome: _FileOutcome,
    known_types: Container[str],
    type_names: Sequence[str],
    defaults: JobDefaults,
    now: float,
    result: IngestResult,
) -> list[_Candidate]:
    """The jobs a file offers; requests (cancel, prune, pause) go straight into `result`."""
    file = outcome.file
    if outcome.error is not None:
        return []
    candidates = []
    for entry in file.entries:
        value = entry.value
        if entry.error is not None or value is None:
            outcome.fail(entry.line, entry.error or "no job")
        # A job before the requests: nearly every entry is one, and the isinstance of a
        # union (the requests' last test) costs each entry that reaches it about 0.3 us.
        elif isinstance(value, JobSpec):
            if value.type not in known_types:
                outcome.fail(
                    entry.line,
                    f"unknown job type {show(value.type)}; registered: {', '.join(type_names)}",
                )
                continue
            try:
                job_id = _job_id(value, file, entry.line)
                check_expiry(value, now)
            except InvalidJobFile as error:
                outcome.fail(entry.line, str(error))
                continue
            job = to_job(value, job_id=job_id, defaults=defaults, now=now)
            candidates.append(_Candidate(job, file, entry.line))
            if value.from_checkpoint and value.retry_of is not None:
                result.resumes[job_id] = value.retry_of
        elif isinstance(value, CancelRequest):
            result.cancels.append((value.cancel, file))
        elif isinstance(value, PruneRequest):
            result.prunes.append((value.prune, file))
        else:
            _request(value, entry.line, outcome, result, known_types, type_names)
    return candidates


def _lines_summary(bad: int, total: int, listed: int) -> str:
    if bad == total:
        summary = "its one line was rejected" if total == 1 else f"all {total} lines were rejected"
    else:
        verb = "was" if bad == 1 else "were"
        summary = f"{bad} of {total} lines {verb} rejected, the other {total - bad} accepted"
    return summary if listed >= bad else f"{summary}; the first {listed} are listed"


def _before(file: InboxFile, progress: Mapping[str, FileProgress]) -> FileProgress | None:
    """What earlier parts of this file came to; None if this part starts it."""
    part = file.part
    if part is None or part.start == 0:
        return None
    known = progress.get(part.key)
    # The inbox goes on only from this very record: anything else would skip lines.
    if known is None or known.version != part.version or known.offset != part.start:
        raise ValueError(f"{file.name}: a part at byte {part.start} without its record")
    return known


def ingest(
    files: Sequence[InboxFile],
    store: JobStore,
    known_types: Container[str],
    type_names: Sequence[str],
    defaults: JobDefaults,
    now: float,
    progress: Mapping[str, FileProgress] | None = None,
    defer_busy: bool = False,
) -> IngestResult:
    """Judge `files` into jobs and store them; `progress` is what the store holds of files
    read in parts (`JobStore.files_in_progress`), and is brought up to date here.

    Raises:
        IdsBusy: with `defer_busy`, on a shared store, another writer holds some of the
            ids; nothing was written (the files wait where they are).

    A `whole` file (a batch, or a submission over the socket door) stores its jobs only
    if every one is good: one bad job rejects them all, and what they would have been
    counts for nothing in judging the files after it."""
    progress = progress or {}
    result = IngestResult()
    outcomes = [_FileOutcome(file, _before(file, progress)) for file in files]
    offered = [
        _read_entries(outcome, known_types, type_names, defaults, now, result)
        for outcome in outcomes
    ]
    ids = [c.job.id for candidates in offered for c in candidates]
    if defer_busy and store.shared:
        found = cast(SharedStore, store).digests_now(ids)
        if found is None:
            raise IdsBusy(f"another writer holds some of {plural(len(ids), 'id')}")
        stored: dict[str, str] = found
    else:
        stored = store.digests(ids)
    parents = sorted({p for candidates in offered for c in candidates for p in c.job.after})
    existing = set(store.statuses(parents)) if parents else set()
    seen: dict[str, str] = {}
    new_jobs: list[Job] = []
    for outcome, candidates in zip(outcomes, offered, strict=True):
        _judge(outcome, candidates, stored, seen, new_jobs, result, existing)
    if any(job.unique_key is not None for job in new_jobs):
        new_jobs = _insert_unique(new_jobs, store, outcomes, result)
    store.insert(new_jobs)
    if result.resumes:
        for job, _ in result.jobs:
            if job.id in result.resumes:
                store.copy_checkpoint(result.resumes[job.id], job.id)
    for outcome in outcomes:
        _conclude(outcome, store, progress, result)
    return result


def _judge(
    outcome: _FileOutcome,
    candidates: list[_Candidate],
    stored: Mapping[str, str],
    seen: dict[str, str],
    new_jobs: list[Job],
    result: IngestResult,
    existing: set[str],
) -> None:
    """Ids are idempotency keys: a job whose id exists (in the store, or earlier in this
    step) with the same digest is a duplicate, with another digest an error. Every
    parent a new job names (`after`) exists (`existing`: of the parents named, those
    stored) or is a job of the same file; else the file stores none of its jobs."""
    mine: dict[str, str] = {}
    fresh: list[_Candidate] = []
    duplicates: list[str] = []
    for candidate in candidates:
        job = candidate.job
        known_digest = mine.get(job.id) or seen.get(job.id) or stored.get(job.id)
        if known_digest is None:
            mine[job.id] = job.digest
            fresh.append(candidate)
        elif known_digest == job.digest:
            duplicates.append(job.id)
        else:
            outcome.fail(candidate.line, str(DuplicateId.of(job.id)))
            outcome.duplicate = outcome.duplicate or job.id
    if any(candidate.job.after for candidate in fresh):
        bad = _check_after(outcome, fresh, existing.union(seen, stored, duplicates))
        fresh = [candidate for candidate in fresh if candidate.job.id not in bad]
        for job_id in bad:
            del mine[job_id]
    if (outcome.file.whole or outcome.bad_after) and (outcome.lines or outcome.error is not None):
        return
    seen.update(mine)
    for candidate in fresh:
        new_jobs.append(candidate.job)
        result.jobs.append((candidate.job, candidate.file))
    outcome.new_jobs += len(fresh)
    if duplicates:  # seldom: no generator made for none
        result.duplicates.extend((job_id, outcome.file) for job_id in duplicates)


def _insert_unique(
    new_jobs: list[Job], store: JobStore, outcomes: list[_FileOutcome], result: IngestResult
) -> list[Job]:
    """Store the jobs with a unique_key (CONTRACT section 16); one whose key a live job
    holds is a duplicate of that job, not an error. Returns the other jobs."""
    taken = store.insert_unique([job for job in new_jobs if job.unique_key is not None])
    if taken:
        by_file = {id(outcome.file): outcome for outcome in outcomes}
        kept = []
        for job, file in result.jobs:
            holder = taken.get(job.id)
            if holder is None:
                kept.append((job, file))
            else:
                result.key_duplicates.append((job.id, holder, file))
                by_file[id(file)].new_jobs -= 1
        result.jobs = kept
    return [job for job in new_jobs if job.unique_key is None]


def _check_after(outcome: _FileOutcome, fresh: list[_Candidate], known: set[str]) -> set[str]:
    """Mark the file's jobs whose `after` names no job, the job itself, or a cycle: the
    file stores none of its jobs. A file read in parts (larger than a scan) has stored
    its earlier parts already: there only those lines are bad, as any bad line, and a
    job stored with a parent that never came is canceled as by a canceled one."""
    lines = {candidate.job.id: candidate.line for candidate in fresh}
    graph = {candidate.job.id: candidate.job.after for candidate in fresh}
    part = outcome.file.part
    in_parts = part is not None and not (part.start == 0 and part.complete)
    bad = set()
    for problem in problems(graph, known):
        line, message = lines[problem.job_id], f"job {problem.job_id}: {problem.message}"
        outcome.fail(line, message)
        bad.add(problem.job_id)
        if in_parts:
            continue
        outcome.bad_after = True
        if line is not None and outcome.first_bad_after is None:
            outcome.first_bad_after = LineError(line, message)
    return bad


def _conclude(
    outcome: _FileOutcome,
    store: JobStore,
    progress: Mapping[str, FileProgress],
    result: IngestResult,
) -> None:
    """Decide a file that is done; record how far a file read in parts has got."""
    file, part, before = outcome.file, outcome.file.part, outcome.before
    if len(outcome.lines) > 1:  # a duplicate id is found after the rest
        outcome.lines.sort(key=lambda e: e.line)
    if part is not None and before is None and part.key in progress:
        store.forget_progress(part.key)  # an earlier version of the file, read in part
    if part is None or (part.start == 0 and part.complete):
        _decide(outcome, len(file.entries), len(outcome.lines), outcome.lines, result)
        return
    done = FileProgress(
        key=part.key,
        version=part.version,
        offset=part.end,
        line=part.last_line,
        entries=(before.entries if before else 0) + len(file.entries),
        accepted=(before.accepted if before else 0) + outcome.new_jobs,
        rejected=(before.rejected if before else 0) + len(outcome.lines),
    )
    result.progress.append((file, done))
    if not part.complete:
        room = MAX_REPORTED_LINES - (before.rejected if before else 0)
        store.save_progress(done, outcome.lines[: max(room, 0)])
        return
    listed = (store.line_errors(part.key) if before else []) + outcome.lines
    store.forget_progress(part.key)
    _decide(outcome, done.entries, done.rejected, listed, result)


def _decide(
    outcome: _FileOutcome, entries: int, bad: int, lines: list[LineError], result: IngestResult
) -> None:
    """Accept a whole file, or reject it with what was wrong: `entries` and `bad` count
    all of its lines, `lines` the bad ones known (in order of their numbers)."""
    error = outcome.error
    bad_job = None
    if error is None and not entries:
        error = "the file holds no job"
    elif error is None and bad and outcome.file.whole:
        error, bad_job = _batch_summary(lines, entries)
    elif error is None and outcome.first_bad_after is not None:
        first = outcome.first_bad_after
        error = f"line {first.line}: {first.error}; none of the file's jobs was stored"
    elif error is None and bad:
        listed = min(len(lines), MAX_REPORTED_LINES)
        error = _lines_summary(bad, entries, listed)
    if error is None:
        result.accepted.append(outcome.file)
    else:
        result.rejected.append(
            RejectedFile(
                outcome.file, error, lines[:MAX_REPORTED_LINES], outcome.duplicate, bad_job
            )
        )


def _batch_summary(lines: list[LineError], entries: int) -> tuple[str, tuple[int, str] | None]:
    """Why a batch stored none of its jobs: its first bad job's error, numbered when
    the batch holds more than one; and then that number and the error unnumbered."""
    first = lines[0]
    if entries == 1:
        return first.error, None
    more = len(lines) - 1
    also = f" (and {more} more bad {'job' if more == 1 else 'jobs'})" if more else ""
    reason = f"{first.error}{also}; none of the batch was stored"
    return f"job {first.line} of {entries}: {reason}", (first.line, reason)
