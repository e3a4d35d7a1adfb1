"""What the HTTP API does, apart from HTTP: a client of the home like the CLI.

It never writes the store (DESIGN decision 1): it submits, cancels, retries
and reads through the Python client only, so it reads the store the client
reads (the home's SQLite file, or the PostgreSQL database of `database_url`:
adapters/stores/job_reader.py). Each thread gets its own Client (a SQLite
connection belongs to the thread that opened it).

Submitting, while the daemon runs, waits until the daemon has decided: the
job committed (201), or its file rejected (422, or 409 for an id taken by
another job). With no daemon running, the file in the inbox is the answer
(201): jobs start when the daemon does. A handler type that no daemon
registers is found only by the daemon, so with none running it is not refused
here. On a PostgreSQL store the client commits the job in the database itself:
201 at once, and a type no daemon registers fails the job when a daemon runs it.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from procpool.adapters.inbox.lookup import InboxLookup
from procpool.adapters.inbox.rejections import RejectedFiles
from procpool.adapters.inbox.untrusted_files import read_regular
from procpool.adapters.stores.job_reader import JobQuery
from procpool.client import (
    Attempt,
    Client,
    JobInfo,
    JobNotTerminal,
    JobRejected,
    NoJobStore,
    PauseInfo,
    UnknownJob,
    new_job_id,
)
from procpool.domain import inbox_names, spec
from procpool.domain.errors import BatchJobRefused, DuplicateId, InvalidJobFile, ProcpoolError
from procpool.domain.job import Job, Status
from procpool.domain.timefmt import rfc3339
from procpool.entrypoints.http.models import Checkpoint, PauseRequest

T = TypeVar("T")

# How long a submit waits for a running daemon to take its file: it takes files
# within milliseconds (inotify); past this the file stays queued and 201 is said.
ACK_WAIT = 5.0
CANCEL_ACK_WAIT = 2.0
# Polling the store while a submit waits: from the first pause, doubling, to the last.
POLL_FIRST = 0.002
POLL_LAST = 0.05


class Problem(ProcpoolError):
    """A request that cannot be carried out: `status` is its HTTP status, `index`
    the item of a batch at fault (or None)."""

    def __init__(self, status: int, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.index = index


class Outcome(Enum):
    CREATED = 201
    SAME = 200  # the very same submission was there already


@dataclass(frozen=True)
class _Reading:
    client: Client
    rejected: RejectedFiles


def not_found(job_id: str) -> Problem:
    return Problem(404, f"no job {job_id!r}")


def decode_job(data: bytes, index: int | None = None) -> spec.JobSpec:
    """A POSTed job object (item `index` of a batch) as a checked JobSpec with an id,
    in the inbox's own words.

    Raises:
        Problem: 422, naming the field or value at fault (and the item).
    """
    where = "" if index is None else f"item {index}: "
    try:
        decoded = spec.decode(data)
    except InvalidJobFile as error:
        raise Problem(422, f"{where}{error}", index) from None
    if not isinstance(decoded, spec.JobSpec):
        raise Problem(422, f'{where}missing required field "type": a job needs its type', index)
    if decoded.retry_of is not None:
        retry = 'unknown field "retry_of"; POST /jobs/ID/retry makes retries'
        raise Problem(422, f"{where}{retry}", index)
    if decoded.id is None:
        decoded = msgspec.structs.replace(decoded, id=new_job_id())
    return decoded


def fingerprint(job_spec: spec.JobSpec) -> str:
    """The digest the daemon stores for this submission (spec.to_job), to tell the
    same submission from another one under the same id."""
    assert job_spec.id is not None
    return spec.to_job(
        job_spec, job_id=job_spec.id, defaults=spec.JobDefaults(), now=time.time()
    ).digest


# ----------------------------------------------------------------- cursors


def encode_cursor(job: Job) -> str:
    """An opaque, stable cursor: where the next page starts in the newest-first order
    (created_at, then id). New jobs come before it, so they never shift a page."""
    raw = msgspec.json.encode([job.created_at, job.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    """Raises Problem (400) for a cursor this server did not make."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created_at, job_id = msgspec.json.decode(raw, type=tuple[float, str])
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise Problem(400, f"cursor {spec.show(text)} is not one this API gave out") from None
    return created_at, job_id


# ----------------------------------------------------------------- the service


class Service:
    """The API's operations on one home; methods are safe to call from any thread.

    Args:
        home: the daemon's home.
        max_file_bytes: the largest job file the inbox takes (the config's).
        database_url: the PostgreSQL store of the configuration, or None: the home's.
    """

    def __init__(self, home: Path, max_file_bytes: int, database_url: str | None = None) -> None:
        self.home = home
        self.max_file_bytes = max_file_bytes
        self.database_url = database_url
        self._local = threading.local()

    def _reading(self) -> _Reading:
        reading: _Reading | None = getattr(self._local, "reading", None)
        if reading is None:
            reading = _Reading(
                Client(
                    self.home,
                    home_source="the home given to procpool serve",
                    database_url=self.database_url,
                ),
                RejectedFiles(self.home),
            )
            self._local.reading = reading
        return reading

    @property
    def client(self) -> Client:
        return self._reading().client

    def close(self) -> None:
        """Close the calling thread's connections (at the server's exit; those of the
        worker threads end with the process: SQLite lets only their own thread close
        them)."""
        reading: _Reading | None = getattr(self._local, "reading", None)
        if reading is not None:
            reading.client.close()
            self._local.reading = None

    def daemon_pid(self) -> int | None:
        return self.client.daemon_pid()

    # ------------------------------------------------------------- reading

    def get(self, job_id: str) -> JobInfo:
        """Raises Problem: 404 unknown or rejected; 503 only in the inbox, or no store."""
        _require_possible_id(job_id)
        try:
            job = self.client.get(job_id)
        except JobRejected as rejected:
            raise Problem(404, str(rejected)) from None
        except NoJobStore as error:
            raise Problem(503, str(error)) from None
        if job is not None:
            return job
        if self.client.is_waiting_in_inbox(job_id):
            raise Problem(503, f"job {job_id} waits in the inbox: no daemon has taken it yet")
        raise not_found(job_id)

    def page(
        self,
        statuses: Sequence[Status],
        job_type: str | None,
        limit: int,
        cursor: str | None,
        after: str | None = None,
    ) -> tuple[list[JobInfo], str | None]:
        """One page of jobs, newest first, and the cursor of the next (None: the last);
        `after`: only the jobs that wait for that job."""
        before = decode_cursor(cursor) if cursor else None
        self._require_store()
        jobs = self.client.reader.list(JobQuery(statuses, job_type, limit + 1, before, after))
        following = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
        return JobInfo.of_jobs(jobs[:limit], self.client.reader), following

    def _require_store(self) -> None:
        try:
            self.client.require_store()
        except NoJobStore as error:
            raise Problem(503, str(error)) from None

    def attempts(self, job_id: str) -> list[Attempt]:
        self.get(job_id)  # 404 and 503 as for the job itself
        try:
            return list(self.client.attempts(job_id))
        except KeyError:  # deleted (pruned) in between
            raise not_found(job_id) from None

    def checkpoint(self, job_id: str) -> Checkpoint:
        """Raises Problem: 404 no such job, or it has no checkpoint; 503 no store."""
        self.get(job_id)  # 404 and 503 as for the job itself
        found = self.client.reader.checkpoint(job_id)
        if found is None:
            raise Problem(404, f"job {job_id!r} has no checkpoint")
        value, at = found
        return Checkpoint(job_id=job_id, checkpoint=msgspec.json.decode(value),
                          checkpoint_at=rfc3339(at))  # fmt: skip

    # ------------------------------------------------------------- writing

    def submit(self, body: bytes) -> tuple[Outcome, str]:
        """Submit one job (a POSTed job object).

        Raises:
            Problem: 422 a bad field or value, or a type the daemon does not know;
                409 the id is taken by a job with other content.
        """
        job_spec = decode_job(body)
        assert job_spec.id is not None
        mine = fingerprint(job_spec)
        known = self._known(job_spec.id)
        if known is not None:
            if known != mine:
                raise Problem(409, f"job {job_spec.id} exists with other content")
            return Outcome.SAME, job_spec.id
        since = time.time_ns()
        try:
            job_id = self.client.submit(**_arguments(job_spec))
        except DuplicateId as error:  # taken between the look-up above and the submit
            raise Problem(409, str(error)) from None
        except InvalidJobFile as error:
            raise Problem(422, str(error)) from None
        if job_id != job_spec.id:  # a live job holds its unique_key: that one is the answer
            return Outcome.SAME, job_id
        self._await_intake([(job_spec.id, mine)], since)
        return Outcome.CREATED, job_spec.id

    def submit_batch(self, body: bytes) -> list[str]:
        """Submit a JSON array of job objects, all or none.

        Every item is decoded and checked, and its id looked up, before any is
        written; then all go to the daemon at once (`_queue_all`), which stores
        them or refuses them whole. A type no handler registers is found only by
        the daemon (see the module's docstring).

        Raises:
            Problem: 422 naming the index and field at fault; 409 an id taken by a
                job with other content.
        """
        try:
            items = spec.parse_json(body)
        except InvalidJobFile as error:
            raise Problem(422, str(error)) from None
        if not isinstance(items, list) or not items:
            raise Problem(422, "the body must be a non-empty JSON array of job objects")
        specs: dict[str, tuple[int, spec.JobSpec, str]] = {}
        for index, item in enumerate(items):
            job_spec = decode_job(_encode_item(item, index), index)
            assert job_spec.id is not None
            mine = fingerprint(job_spec)
            if job_spec.id in specs and specs[job_spec.id][2] != mine:
                raise Problem(
                    422,
                    f"item {index}: id {spec.show(job_spec.id)} is also the id of item"
                    f" {specs[job_spec.id][0]}, with other content",
                    index,
                )
            specs.setdefault(job_spec.id, (index, job_spec, mine))
        fresh = []
        for job_id, (index, job_spec, mine) in specs.items():
            known = self._known(job_id)
            if known is not None and known != mine:
                raise Problem(409, f"item {index}: job {job_id} exists with other content", index)
            if known is None:
                fresh.append((index, job_spec, mine))
        given: dict[str, str] = {}
        if fresh:
            since = time.time_ns()
            given = self._queue_all(fresh)
            stored = [(s.id or "", mine) for _, s, mine in fresh if given.get(s.id or "") == s.id]
            self._await_intake(stored, since, fresh)
        return [given.get(job_id, job_id) for job_id in specs]

    def _queue_all(self, fresh: list[tuple[int, spec.JobSpec, str]]) -> dict[str, str]:
        """Write every job at once, all or none: `Client.submit_many` sends the batch
        in one request that the daemon judges whole (while none runs, one batch file
        it will accept or reject whole), so a job it refuses, an unknown type say,
        refuses them all. Returns each id submitted -> the id the client gave back: its
        own, or that of the live job that holds its unique_key.

        Raises:
            Problem: 409 an id taken by a job with other content; 422 a job the
                daemon refused, naming its item.
        """
        index_of = {s.id: index for index, s, _ in fresh}
        try:
            ids = self.client.submit_many([_document(s) for _, s, _ in fresh])
        except DuplicateId as error:
            raise _with_index(409, str(error), error.job_id, index_of) from None
        except BatchJobRefused as error:
            index = fresh[error.number - 1][0]
            raise Problem(422, f"item {index}: {error.reason}", index) from None
        except InvalidJobFile as error:
            raise _item_problem(str(error), fresh) from None
        return {s.id or "": given for (_, s, _), given in zip(fresh, ids, strict=True)}

    def _known(self, job_id: str) -> str | None:
        """The digest of the job with this id: in the store, else in a file waiting in
        the inbox; None if neither has it."""
        job = self.client.reader.get(job_id)
        if job is not None:
            return job.digest
        for path in InboxLookup.of(self.client.inbox).named(job_id):
            data = read_regular(path, self.max_file_bytes)
            if data is None:
                continue  # taken by the daemon meanwhile, too big, or no file to read
            try:
                waiting = spec.decode(data)
            except InvalidJobFile:
                continue  # not a job we can judge
            if isinstance(waiting, spec.JobSpec):
                if waiting.id is None:
                    waiting = msgspec.structs.replace(waiting, id=inbox_names.stem(path.name))
                if waiting.id == job_id:
                    return fingerprint(waiting)
        return None

    def _await_intake(
        self,
        jobs: list[tuple[str, str]],
        since_ns: int,
        items: list[tuple[int, spec.JobSpec, str]] | None = None,
    ) -> None:
        """While the daemon runs, wait until it has stored or rejected every job.

        Raises:
            Problem: a job's file was rejected (422; 409 for an id of another job),
                or a job of another content holds the id.
        """
        reading = self._reading()
        deadline = time.monotonic() + ACK_WAIT
        pause = POLL_FIRST
        waiting = dict(jobs)
        index_of = {s.id: index for index, s, _ in items or []}
        while waiting:
            stored = reading.client.reader.get_many(list(waiting))
            for job_id, job in stored.items():
                if job.digest != waiting.pop(job_id):
                    raise _with_index(409, f"job {job_id} exists with other content", job_id,
                                      index_of)  # fmt: skip
            for job_id in list(waiting):
                rejection = reading.rejected.find(job_id)
                if rejection is not None and _newer(rejection.report, since_ns):
                    status = 409 if rejection.duplicate else 422
                    raise _with_index(status, rejection.reason, job_id, index_of)
            if not waiting or time.monotonic() >= deadline or self.daemon_pid() is None:
                return
            time.sleep(pause)
            pause = min(2 * pause, POLL_LAST)

    def cancel(self, job_id: str, wait: Callable[[float], None] | None = None) -> JobInfo:
        """Ask for the cancel of a job that is not terminal; return it as it is once the
        daemon took the request (or at once when none runs).

        Raises:
            Problem: 404 unknown; 409 already terminal; 503 only in the inbox.
        """
        job = self.get(job_id)
        if job.is_terminal:
            raise Problem(409, f"job {job_id} is already {job.status}; nothing to cancel")
        self.client.cancel(job_id)
        deadline = time.monotonic() + CANCEL_ACK_WAIT
        pause = POLL_FIRST
        while self.daemon_pid() is not None and time.monotonic() < deadline:
            job = self.get(job_id)
            if job.cancel_requested or job.is_terminal:
                break
            time.sleep(pause)
            pause = min(2 * pause, POLL_LAST)
        return job

    # ------------------------------------------------------------- pauses

    def pauses(self) -> list[PauseInfo]:
        """The pauses in force. Raises Problem: 503 no store."""
        try:
            return self.client.pauses()
        except NoJobStore as error:
            raise Problem(503, str(error)) from None

    def pause(self, body: bytes) -> tuple[bool, list[PauseInfo]]:
        """Pause the types of a POSTed PauseRequest; whether the pause is stored (False:
        its request waits in the inbox), and the pauses in force then.

        Raises:
            Problem: 422 naming the field at fault.
        """
        try:
            asked = msgspec.json.decode(body, type=PauseRequest)
            stored = self.client.pause(
                asked.types, asked.until, duration=asked.duration, timeout=ACK_WAIT
            )
        except msgspec.ValidationError as error:
            raise Problem(422, _field_error(str(error))) from None
        except msgspec.DecodeError as error:
            raise Problem(400, f"the body is not JSON: {error}") from None
        except InvalidJobFile as error:
            raise Problem(422, str(error)) from None
        return stored, self._pauses_if_stored()

    def resume(self, job_type: str) -> tuple[bool, list[PauseInfo]]:
        """Lift the pause of a type; whether it is done (False: waits in the inbox), and
        the pauses in force then.

        Raises:
            Problem: 404 the type is not paused; 422 an empty type.
        """
        if job_type not in {p.type for p in self._pauses_if_stored()}:
            raise Problem(404, f"type {job_type!r} is not paused")
        try:
            done = self.client.resume(job_type, timeout=ACK_WAIT)
        except InvalidJobFile as error:
            raise Problem(422, str(error)) from None
        return done, self._pauses_if_stored()

    def _pauses_if_stored(self) -> list[PauseInfo]:
        """The pauses in force; none on a home without a store yet."""
        try:
            return self.client.pauses()
        except NoJobStore:
            return []

    def retry(self, job_id: str, resume: bool = False) -> str:
        """Raises Problem: 404 unknown; 409 not terminal."""
        return self._retrying(job_id, lambda old: self.client.retry(old, resume=resume))

    def retry_cascade(self, job_id: str) -> dict[str, str]:
        """`Client.retry_cascade`. Raises Problem: 404 unknown; 409 not terminal."""
        return self._retrying(job_id, self.client.retry_cascade)

    def _retrying(self, job_id: str, retry: Callable[[str], T]) -> T:
        _require_possible_id(job_id)
        try:
            return retry(job_id)
        except JobRejected as rejected:
            raise Problem(404, str(rejected)) from None
        except UnknownJob:
            raise not_found(job_id) from None
        except JobNotTerminal as error:
            raise Problem(409, str(error)) from None
        except NoJobStore as error:
            raise Problem(503, str(error)) from None


def _with_index(status: int, message: str, job_id: str, index_of: dict[str | None, int]) -> Problem:
    index = index_of.get(job_id)
    if index is None:
        return Problem(status, message)
    return Problem(status, f"item {index}: {message}", index)


def _field_error(message: str) -> str:
    """msgspec's "Expected `array`, got `str` - at `$.types`" as "types: expected ..."."""
    text, _, where = message.partition(" - at `$.")
    if not where:
        return message
    return f"{where.rstrip('`')}: {text[0].lower()}{text[1:]}"


def _require_possible_id(job_id: str) -> None:
    """A 404 for what cannot be a job's id (CONTRACT 2): no job has it, and it must
    not reach a file name (a 300-character id is longer than any name may be)."""
    try:
        spec.check_id(job_id, "job id")
    except InvalidJobFile:
        raise not_found(job_id) from None


def _item_problem(message: str, fresh: list[tuple[int, spec.JobSpec, str]]) -> Problem:
    """A 422 for a batch refused as a whole, not for one of its jobs: told as the item
    of the request's body when it sent one job."""
    if len(fresh) != 1:
        return Problem(422, message)
    index = fresh[0][0]
    return Problem(422, f"item {index}: {message}", index)


def _newer(report: Path, since_ns: int) -> bool:
    try:
        return report.stat().st_mtime_ns >= since_ns
    except OSError:
        return False


def _encode_item(item: object, index: int) -> bytes:
    try:
        return msgspec.json.encode(item)
    except (TypeError, ValueError) as error:  # parsed JSON always encodes; kept for safety
        raise Problem(422, f"item {index}: {error}", index) from None


def _document(job_spec: spec.JobSpec) -> dict[str, object]:
    """A spec as the job object the inbox reads: unset options left out."""
    return {
        key: value
        for key, value in msgspec.structs.asdict(job_spec).items()
        if value is not None or key == "payload"
    }


# Client.submit's arguments: the spec's fields but those only `procpool retry` sets
# (decode_job refuses retry_of; from_checkpoint means nothing without it). Read by name,
# so that a field both gain is never left out again (concurrency_key, expires_at and
# expires_in once were): tests/unit/test_http_submit.py holds the two lists together.
SUBMIT_FIELDS = tuple(
    name for name in spec.JobSpec.__struct_fields__ if name not in ("retry_of", "from_checkpoint")
)


def _arguments(job_spec: spec.JobSpec) -> dict[str, Any]:
    """Client.submit's arguments for a spec."""
    return {name: getattr(job_spec, name) for name in SUBMIT_FIELDS}
