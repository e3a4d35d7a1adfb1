"""The Python client: enqueue and query jobs of a procpool home without shelling out.

It never writes the store. Two doors lead in (DESIGN decision 12): while the
daemon runs, the client submits, waits and cancels over the daemon's socket
(`HOME/procpool.sock`): a submit returns once the daemon has committed the job,
and a wait is told when the jobs are terminal. When the socket is absent or
refuses (no daemon runs, or it is busy), it drops files into the inbox as any
producer does; jobs submitted then start when the daemon starts. Either way, a
submit that returns has its jobs on disk. It reads the store through a
read-only connection.

A Client is cheap to make. Its read connection belongs to the thread that first
reads, so a threaded web server makes one per request or per thread; its socket
connections are one per thread.

Example:
    from procpool import Client

    with Client("/var/lib/procpool") as client:
        job_id = client.submit("thumbnail", {"path": "/data/a.png"}, priority=5)
        [job] = client.wait([job_id], timeout=60)
        print(job.status, job.result)
"""

from __future__ import annotations

import builtins
import enum
import math
import os
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from procpool.adapters.config import locate_home
from procpool.adapters.home.door_socket import DoorConnection, DoorUnavailable
from procpool.adapters.home.pidfile import running_pid
from procpool.adapters.inbox.lookup import InboxLookup
from procpool.adapters.inbox.rejections import RejectedFiles
from procpool.adapters.inbox.untrusted_files import read_regular
from procpool.adapters.reader_factory import open_reader
from procpool.adapters.stores.job_reader import JobQuery, JobReader, SharedJobStore
from procpool.application.wire import door_messages as wire
from procpool.domain import inbox_names, schedules, spec
from procpool.domain.errors import BatchJobRefused, DuplicateId, InvalidJobFile, ProcpoolError
from procpool.domain.job import Job, Run, Status
from procpool.domain.pauses import Pause, check_types, check_until
from procpool.domain.schedules import Stored, UnknownSchedule
from procpool.domain.timefmt import rfc3339, rfc3339_each

if TYPE_CHECKING:  # stats.py imports psutil, which only `stats` needs
    from procpool.adapters.stores.stats import Stats

# `X.retry-K`: the K-th job down the line of retries that starts at X.
_RETRY_SUFFIX = re.compile(r"^(?P<base>.+)\.retry-(?P<number>[1-9]\d*)$")
# Seconds a submit or cancel waits for the daemon's answer over the socket (a turn
# takes milliseconds) before it writes into the inbox instead: a daemon that is
# stopped (SIGSTOP) or wedged must not hold producers. Ids are idempotency keys, so a
# job committed meanwhile finds its file a duplicate. A batch gets more per job.
ANSWER_TIMEOUT = 5.0
ANSWER_TIMEOUT_PER_JOB = 0.0001
# A batch written into the inbox is one file: within the daemon's default
# max_file_bytes, or it would be rejected whole.
INBOX_BATCH_BYTES = 1024 * 1024
# Seconds `pause` and `resume` wait, by default, for the daemon to take their request.
PAUSE_TIMEOUT = 30.0
# Pending jobs read at a time by `list(waiting=...)`, which judges each (two queries a page).
WAITING_PAGE = 1000


def new_job_id() -> str:
    """A new job id: `job-`, 12 hex digits of the time in milliseconds since the epoch,
    then 16 random ones (64 bits, as unlikely to repeat as before the time was added).
    Ids made one after another sort together: each job's row and history go to the
    end of the store's b-trees, in the pages the last ones touched, instead of pages
    at random (one submit at a time: 7.5 WAL frames written a commit instead of 8.6)."""
    return f"job-{time.time_ns() // 1_000_000:012x}{secrets.randbits(64):016x}"


class UnknownJob(KeyError):
    """No job has this id, and no file in the inbox is waiting to become it."""


class JobRejected(UnknownJob, ProcpoolError):
    """No job has this id because the daemon rejected the file, or the line of a
    `.jsonl` file, that would have made it.

    It is an UnknownJob (and so a KeyError), so code that handles unknown ids
    handles it too. Attributes: `job_id`; `reason`, the rejection report's error
    (for a line: "line N of NAME.jsonl: ..."); `report`, the report's path
    (`HOME/rejected/NAME.error.json`); `line`, the line of a `.jsonl` file or None.
    """

    def __init__(self, job_id: str, reason: str, report: Path, line: int | None = None) -> None:
        super().__init__(job_id)
        self.job_id = job_id
        self.reason = reason
        self.report = report
        self.line = line

    def __str__(self) -> str:
        return f"job {self.job_id!r} was rejected: {self.reason} (rejected/{self.report.name})"


class JobNotTerminal(ProcpoolError):
    """Only a completed, failed or canceled job can be retried."""


class NoJobStore(ProcpoolError):
    """The home has no job store: no daemon has run with it, or it is the wrong path.

    The message names the directory and how it was chosen; `home` holds it.
    """

    def __init__(self, message: str, home: Path) -> None:
        super().__init__(message)
        self.home = home


class _Record(msgspec.Struct, kw_only=True):
    """What the client returns: a plain record that prints as JSON."""

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, as the CLI's --json prints them."""
        return msgspec.structs.asdict(self)


class JobInfo(_Record):
    """A job as `procpool status ID --json` prints it (CONTRACT section 3)."""

    id: str
    type: str
    payload: Any
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: str
    updated_at: str
    run_at: str
    priority: int
    timeout: float | None
    result: Any
    progress: dict[str, Any] | None
    worker_pid: int | None
    cancel_requested: bool
    retry_of: str | None
    concurrency_key: str | None = None
    # Why a pending, due job has not started, when a limit holds it back, e.g.
    # {"reason": "limit", "limit": "render", "running": 2, "max": 2} (limits.waiting);
    # null otherwise. Computed when the job is read, from the running jobs then.
    waiting: dict[str, Any] | None = None
    expires_at: str | None = None  # RFC 3339: canceled as "expired" if still pending then
    schedule: str | None = None  # the schedule that made the job (CONTRACT section 14)
    scheduled_for: str | None = None  # its occurrence's nominal time in the schedule's zone
    unique_key: str | None = None  # one live job of its type holds it (CONTRACT section 16)
    unique_while: str | None = None  # "active" or "pending"
    checkpoint_at: str | None = None  # RFC 3339: when the last checkpoint was committed
    # Dependencies (CONTRACT section 15): the jobs this one waits for, what their failure
    # does to it ("cancel" or "run"), and the parent whose failure canceled it.
    after: list[str] | None = None
    after_failure: str | None = None
    canceled_by: str | None = None

    @property
    def is_terminal(self) -> bool:
        return Status(self.status).is_terminal

    @classmethod
    def from_job(cls, job: Job, waiting: dict[str, Any] | None = None) -> JobInfo:
        # The row's three times in one rfc3339_each: a call of rfc3339 each cost a
        # `Client.get` 1.3 us more of its 22 on the development machine.
        created_at, updated_at, run_at = rfc3339_each((job.created_at, job.updated_at, job.run_at))
        return cls(
            id=job.id,
            type=job.type,
            payload=msgspec.json.decode(job.payload),
            status=str(job.status),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            last_error=job.last_error,
            created_at=created_at,
            updated_at=updated_at,
            run_at=run_at,
            priority=job.priority,
            timeout=job.timeout,
            result=None if job.result is None else msgspec.json.decode(job.result),
            progress=None
            if job.progress is None
            else {"fraction": job.progress.fraction, "message": job.progress.message},
            worker_pid=job.worker_pid,
            cancel_requested=job.cancel_requested,
            retry_of=job.retry_of,
            concurrency_key=job.concurrency_key,
            waiting=waiting,
            expires_at=None if job.expires_at is None else rfc3339(job.expires_at),
            schedule=job.schedule,
            scheduled_for=job.scheduled_for,
            unique_key=job.unique_key,
            unique_while=job.unique_while,
            checkpoint_at=None if job.checkpoint_at is None else rfc3339(job.checkpoint_at),
            after=list(job.after) if job.after else None,
            after_failure=job.after_failure if job.after else None,
            canceled_by=job.canceled_by,
        )

    @classmethod
    def of_jobs(cls, jobs: Sequence[Job], reader: JobReader) -> list[JobInfo]:
        """The jobs, each with its `waiting` (one read of the running jobs for all)."""
        held = reader.waiting(jobs, time.time())
        return [cls.from_job(job, held.get(job.id)) for job in jobs]


class PauseInfo(_Record):
    """A paused type (`procpool pause`): `until` (RFC 3339) when the pause ends by itself,
    null: until resumed; `since` when it was set."""

    type: str
    until: str | None
    since: str

    @classmethod
    def of(cls, pause: Pause) -> PauseInfo:
        return cls(
            type=pause.type,
            until=None if pause.until is None else rfc3339(pause.until),
            since=rfc3339(pause.since),
        )


class ScheduleInfo(_Record):
    """A schedule as `procpool schedule show NAME --json` prints it (CONTRACT section 14):
    its definition as applied (`every` in seconds), whether it is paused, its `cursor`
    (the last occurrence handled), the next occurrence to come (`next_run`, null once
    ended), the latest one made a job (`last_run`, with `last_job`, the schedule's
    latest job) and the latest one skipped (`last_skip`: occurrence and reason).
    Times RFC 3339, UTC."""

    name: str
    type: str
    cron: str | None
    every: int | None
    tz: str
    overlap: str
    catchup: str
    grace: float
    start: str | None
    end: str | None
    job: dict[str, Any]
    paused: bool
    cursor: str
    next_run: str | None
    last_run: str | None
    last_job: str | None
    last_skip: dict[str, str] | None

    @classmethod
    def of(cls, stored: Stored, now: float) -> ScheduleInfo:
        schedule = stored.schedule
        upcoming = schedules.upcoming(schedule, max(now, stored.cursor), 1)
        skip = stored.last_skip
        return cls(
            name=schedule.name, type=schedule.type, cron=schedule.cron, every=schedule.every,
            tz=schedule.tz, overlap=schedule.overlap, catchup=schedule.catchup,
            grace=schedule.grace, start=schedule.start, end=schedule.end, job=schedule.job,
            paused=stored.paused, cursor=rfc3339(stored.cursor),
            next_run=rfc3339(upcoming[0]) if upcoming else None,
            last_run=None if stored.last_run is None else rfc3339(stored.last_run),
            last_job=stored.last_job,
            last_skip=None if skip is None
            else {"occurrence": rfc3339(skip.instant), "reason": skip.reason},
        )  # fmt: skip


class ScheduleChanges(_Record):
    """What `schedule_apply` changed, by name; `stored`: False while the request waits
    in the inbox of a home whose daemon is not running."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    stored: bool = True


class Attempt(_Record):
    """One run of a job, from the attempt history (`procpool show ID`).

    `outcome` is `completed`, `failed` (the job failed for good), `retry` (the
    attempt failed and the job will be tried again), `canceled`, `interrupted`
    (a shutdown stopped it; not counted as an attempt) or `running`.
    """

    attempt: int
    started_at: str | None
    ended_at: str | None
    duration: float | None
    outcome: str
    error: str | None
    worker_pid: int | None
    exit_signal: str | None

    @classmethod
    def from_run(cls, run: Run) -> Attempt:
        return cls(
            attempt=run.attempt,
            started_at=None if run.started_at is None else rfc3339(run.started_at),
            ended_at=rfc3339(run.ended_at),
            duration=None if run.started_at is None else round(run.ended_at - run.started_at, 6),
            outcome=run.outcome,
            error=run.error,
            worker_pid=run.worker_pid,
            exit_signal=run.exit_signal,
        )


def _statuses(status: str | Status | Iterable[str | Status] | None) -> list[Status]:
    if status is None:
        return []
    if isinstance(status, str):
        return [Status(status)]
    return [Status(s) for s in status]


class Client:
    """A handle on one procpool home (the same directory as `--home`).

    Submitting works on any directory (it is created); reading needs the store
    that the daemon creates when it starts, and raises NoJobStore without one, so
    that a mistyped home is not taken for an empty queue. Use it as a context
    manager, or call `close`, to close its read connection.

    Args:
        home: the daemon's home. Default: as the CLI finds it: $PROCPOOL_HOME, else
            the `home` of the config file named by $PROCPOOL_CONFIG, else
            `${XDG_STATE_HOME:-~/.local/state}/procpool`.
        home_source: how `home` was chosen, in words for an error message
            (default: "the home given to Client()", or worked out when `home` is None).
        database_url: the PostgreSQL store shared by the daemons (CONTRACT section 11);
            default: $PROCPOOL_DATABASE_URL, else the config file's `database_url`.
            With one, the client reads and writes that database instead of the home.

    Raises:
        procpool.ProcpoolError: no home given and the configuration is invalid.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        home_source: str | None = None,
        database_url: str | None = None,
    ) -> None:
        if home is None:
            choice = locate_home(None)
            self.home, chosen_by = choice.path, choice.chosen_by
        else:
            self.home, chosen_by = Path(home), "the home given to Client()"
        self.home_source = home_source or chosen_by
        self.inbox = self.home / "inbox"
        self._reader = open_reader(self.home, database_url)
        # A shared store is written by the client itself: the database is the store.
        self._shared = self._reader if isinstance(self._reader, SharedJobStore) else None
        self._rejected = RejectedFiles(self.home)
        self._local = threading.local()  # this thread's connection to the socket door
        self._doors: set[DoorConnection] = set()
        self._doors_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- writing

    # ----------------------------------------------------------------- the socket door

    def _door(self) -> DoorConnection | None:
        """This thread's connection to the daemon's socket; None when none answers."""
        door: DoorConnection | None = getattr(self._local, "door", None)
        if door is not None and door.pid == os.getpid():
            return door
        try:
            door = DoorConnection(self.home)
        except DoorUnavailable:
            return None
        self._local.door = door
        with self._doors_lock:
            self._doors.add(door)
        return door

    def _forget_door(self) -> None:
        door: DoorConnection | None = getattr(self._local, "door", None)
        self._local.door = None
        if door is not None:
            with self._doors_lock:
                self._doors.discard(door)
            if door.pid == os.getpid():
                door.close()

    def _ask(
        self, request: Callable[[int], wire.ToDaemon], timeout: float | None
    ) -> wire.ToClient | None:
        """Send a request over the socket and return the daemon's answer; None if no
        daemon answers within `timeout` (then use the inbox). Every request is
        idempotent, so one that met a connection the daemon had closed (it restarted)
        is sent again on a new one."""
        for _ in range(2):
            fresh = getattr(self._local, "door", None) is None
            door = self._door()
            if door is None:
                return None
            ref = door.next_ref()
            try:
                door.send(request(ref))
                answer = door.receive(ref, timeout)
            except DoorUnavailable:
                self._forget_door()
                if fresh:
                    return None
                continue
            except BaseException:  # interrupted mid-request: its answer must not be taken
                self._forget_door()  # for the next request's
                raise
            if answer is None:
                self._forget_door()
            return answer
        return None

    @staticmethod
    def _accepted(answer: wire.ToClient) -> list[str] | None:
        """The ids a Submit's answer gives; None for an answer that is not one."""
        if isinstance(answer, wire.Accepted):
            return answer.ids
        if isinstance(answer, wire.Refused):
            if answer.duplicate is not None:
                raise DuplicateId(answer.error, answer.duplicate)
            if answer.bad_job is not None:
                raise BatchJobRefused(answer.error, *answer.bad_job)
            raise InvalidJobFile(answer.error)
        return None

    # ----------------------------------------------------------------- writing

    @staticmethod
    def _encode(document: dict[str, Any], where: str = "payload") -> bytes:
        try:
            return msgspec.json.encode(document)
        except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
            if where == "payload":
                raise InvalidJobFile(spec.unencodable(document.get("payload"), "payload")) from None
            raise InvalidJobFile(spec.unencodable(document, where)) from None

    def _drop(self, stem: str, document: dict[str, Any] | bytes) -> Path:
        """Write a file into the inbox atomically: a dot-file first, then a link to
        the final name, which never replaces a file already there. Returns its path."""
        data = document if isinstance(document, bytes) else self._encode(document)
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.inbox.mkdir(mode=0o700, exist_ok=True)
        temporary = self.inbox / f".{stem}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            name = inbox_names.file_name(stem)
            while True:
                try:
                    os.link(temporary, self.inbox / name)
                    return self.inbox / name
                except FileExistsError:
                    name = inbox_names.file_name(stem, uuid.uuid4().hex[:8])
        finally:
            temporary.unlink()

    def _submit(self, job_spec: spec.JobSpec) -> str:
        spec.check(job_spec)
        spec.check_expiry(job_spec, time.time())  # judged again when the job is accepted
        assert job_spec.id is not None
        if self._shared is not None:
            return self._shared.submit_spec(job_spec)
        document = {
            key: value
            for key, value in msgspec.structs.asdict(job_spec).items()
            if value is not None or key == "payload"
        }
        data = self._encode(document)
        answer = self._ask(lambda ref: wire.Submit(ref, [data]), ANSWER_TIMEOUT)
        accepted = None if answer is None else self._accepted(answer)
        if accepted is not None:
            return accepted[0]  # a live job's that holds its unique_key, or its own
        if job_spec.unique_key is not None:
            # No daemon to judge it: a live holder now makes it a duplicate now; one
            # that comes before the daemon reads the file is found then (and logged).
            holder = self._reader.key_holder(job_spec.type, job_spec.unique_key)
            if holder is not None and holder != job_spec.id:
                return holder
        self._drop(job_spec.id, data)
        return job_spec.id

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        id: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        delay: float | None = None,
        run_at: str | None = None,
        concurrency_key: str | None = None,
        expires_at: str | None = None,
        expires_in: float | None = None,
        unique_key: str | None = None,
        unique_while: str | None = None,
        after: Sequence[str] | None = None,
        after_failure: str | None = None,
    ) -> str:
        """Queue a job by writing a file into the inbox atomically.

        While the daemon runs, the job goes over its socket and this returns once the
        daemon has committed it; otherwise it is written into the inbox. Submitting
        the very same job (id, type, payload and options) again is harmless: ids are
        idempotency keys.

        Args:
            type: the name of a registered handler.
            payload: any JSON value, handed to the handler as it is.
            id: the job's id (1-128 of `A-Z a-z 0-9 . _ -`); default a new random one.
            max_attempts: attempts that may fail before the job is `failed`;
                default the handler's (`@handler(..., max_attempts=)`), else the
                daemon's `max_attempts`.
            timeout: hard limit of one attempt, in seconds; default the handler's,
                else the daemon's.
            priority: higher runs first; default the handler's, else 0.
            delay: do not start before now + `delay` seconds.
            run_at: do not start before this RFC 3339 time (not with `delay`).
            concurrency_key: 1-128 characters; jobs of this type with the same key run
                at most `key_limit` at once (default 1). See docs/handlers.md.
            expires_at: an RFC 3339 time; a job still pending then is canceled with
                `last_error` "expired" (one that runs goes on). Not with `expires_in`.
            expires_in: the same, in seconds from when the job is accepted.
            unique_key: 1-128 characters; while a live job of this type holds the same
                key, this submission is a duplicate of it: nothing is added, and its id
                is returned (see docs/job-files.md).
            unique_while: what "live" means for the key: "active" (the default: pending
                or running) or "pending" (until the job is first handed to a worker).
            after: 1-256 ids of jobs (existing ones) that must complete before this one
                starts (docs/dependencies.md).
            after_failure: "cancel" (default): a parent that fails or is canceled
                cancels this job; "run": it runs once every parent is terminal.

        Returns:
            The job's id; for a duplicate of a unique_key, the id of the job that holds
            it (while no daemon runs: the one the store shows now; a holder that comes
            before the daemon reads the file is found then, and logged).

        Raises:
            procpool.InvalidJobFile: a value is out of its bounds, or the payload is not
                JSON (a string that is not valid Unicode, an object of another type);
                nothing was written. While the daemon runs, also a type it has no
                handler for, as the words of an inbox rejection.
            procpool.DuplicateId: (an InvalidJobFile; while the daemon runs) a job with
                this id exists with other content.
        """
        return self._submit(
            spec.JobSpec(
                type=type,
                payload=payload,
                id=id if id is not None else new_job_id(),
                max_attempts=max_attempts,
                timeout=timeout,
                priority=priority,
                delay=delay,
                run_at=run_at,
                concurrency_key=concurrency_key,
                expires_at=expires_at,
                expires_in=expires_in,
                unique_key=unique_key,
                unique_while=unique_while,
                after=None if after is None else list(after),
                after_failure=after_failure,
            )
        )

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[str]:
        """Queue several jobs at once, all or none.

        Each job is an object of a job file (CONTRACT section 2) as a dict: `type`,
        and optionally `payload`, `id`, `max_attempts`, `timeout`, `priority`,
        `delay`, `run_at`. A job without an id gets a new random one. While the
        daemon runs, the batch goes over its socket in one request, committed in one
        transaction; otherwise it is written into the inbox as one batch file
        (`{"batch": [...]}`), which the daemon accepts or rejects whole.

        Returns:
            The jobs' ids, in order.

        Raises:
            procpool.InvalidJobFile: a job is not valid ("job 3: unknown field ..."),
                or (no daemon running) the batch is over 1 MiB, too large for one
                inbox file; nothing was stored.
            procpool.DuplicateId: (while the daemon runs) a job's id exists with other
                content; nothing was stored.
        """
        encoded: list[bytes] = []
        ids: list[str] = []
        specs: list[spec.JobSpec] = []
        for number, job in enumerate(jobs, 1):
            data, job_spec = self._batch_job(number, job)
            encoded.append(data)
            specs.append(job_spec)
            ids.append(job_spec.id or "")
        if not encoded:
            return []
        if self._shared is not None:  # the database is the store: one transaction there
            now = time.time()
            defaults = self._shared.job_defaults()
            for number, job_spec in enumerate(specs, 1):
                try:
                    spec.check_expiry(job_spec, now)
                except InvalidJobFile as error:
                    raise InvalidJobFile(f"job {number}: {error}") from None
            taken = self._shared.submit(
                [spec.to_job(s, job_id=i, defaults=defaults, now=now) for s, i in zip(
                    specs, ids, strict=True)]
            )  # fmt: skip
            return [taken.get(i, i) for i in ids]
        size = sum(len(data) + 16 for data in encoded)
        if size > (most := wire.MAX_REQUEST_BYTES):
            raise InvalidJobFile(
                f"the batch is {size} bytes, over {most} bytes: submit it in parts"
            )
        timeout = ANSWER_TIMEOUT + ANSWER_TIMEOUT_PER_JOB * len(encoded)
        answer = self._ask(lambda ref: wire.Submit(ref, encoded), timeout)
        accepted = None if answer is None else self._accepted(answer)
        if accepted is not None:
            return accepted
        batch = b'{"batch":[' + b",".join(encoded) + b"]}"
        if len(batch) > INBOX_BATCH_BYTES:
            raise InvalidJobFile(
                f"no daemon runs, and the batch is {len(batch)} bytes, over the"
                f" {INBOX_BATCH_BYTES} bytes one inbox file may hold: start the daemon,"
                " or submit it in smaller batches"
            )
        self._drop(f"{ids[0]}.batch", batch)
        return ids

    def _batch_job(self, number: int, job: Mapping[str, Any]) -> tuple[bytes, spec.JobSpec]:
        """One job of a batch as the JSON of a job object, checked, and its spec (with
        its id)."""
        if not isinstance(job, Mapping):
            raise InvalidJobFile(
                f"job {number}: a job must be a mapping (a dict), got {type(job).__name__}"
            )
        document = dict(job)
        if document.get("id") is None:
            document["id"] = new_job_id()
        try:
            data = self._encode(document, "job")
            value = spec.decode(data)
        except InvalidJobFile as error:
            raise InvalidJobFile(f"job {number}: {error}") from None
        if not isinstance(value, spec.JobSpec):
            raise InvalidJobFile(f"job {number}: not a job (it has no type)")
        assert value.id is not None
        return data, value

    def cancel(self, job_id: str) -> None:
        """Ask the daemon to cancel a job.

        While the daemon runs, the request goes over its socket and this returns once
        the daemon has committed it; otherwise (or if the daemon does not know the id
        yet: its file may still wait in the inbox) it is written into the inbox.
        A pending job becomes `canceled`; a running one is terminated (with the
        processes its handler started), then becomes `canceled`; a terminal one
        stays as it is. Follow it with `wait` to see the outcome.

        Raises:
            procpool.InvalidJobFile: `job_id` is not a valid id.
        """
        spec.check_id(job_id, "job id")
        if self._shared is not None:
            if self._shared.cancel(job_id) is None:
                # Unknown to the database: its file may still wait in an inbox.
                self._drop(f"cancel-{job_id}", {"cancel": job_id})
            return
        answer = self._ask(lambda ref: wire.Cancel(ref, job_id), ANSWER_TIMEOUT)
        if not isinstance(answer, wire.CancelAnswer):
            self._drop(f"cancel-{job_id}", {"cancel": job_id})

    def retry(self, job_id: str, *, resume: bool = False) -> str:
        """Queue a new job that repeats a terminal one: same type, payload and options.
        With `resume`, the new job starts from the old one's last checkpoint (its
        handler finds it in `ctx.last_checkpoint`).

        The new job's id continues the line of retries: a retry of `X` is
        `X.retry-1`, of `X.retry-1` is `X.retry-2`, and so on. If that id is taken
        (the same job is retried again, or another job of the line holds it), the
        line forks: the retry is `ID.retry-N`, N the first number not taken (the
        second retry of `X` is `X.retry-2`; a retry of `X.retry-1` when `X.retry-2`
        exists is `X.retry-1.retry-1`). Its `retry_of` is `job_id`; the old job
        stays as it is.

        Returns:
            The new job's id.

        Raises:
            UnknownJob: no job has this id (JobRejected: its file was rejected).
            JobNotTerminal: the job is pending or running.
            NoJobStore: the home has no store.
        """
        self.require_store()
        job = self._reader.get(job_id)
        if job is None:
            raise self._unknown(job_id)
        if not job.status.is_terminal:
            raise JobNotTerminal(f"job {job_id} is {job.status}; only a finished job is retried")
        return self._submit(
            spec.JobSpec(
                type=job.type,
                payload=msgspec.json.decode(job.payload),
                id=self._retry_id(job_id),
                max_attempts=job.max_attempts,
                timeout=job.timeout,
                priority=job.priority,
                retry_of=job_id,
                concurrency_key=job.concurrency_key,
                unique_key=job.unique_key,
                unique_while=job.unique_while,
                from_checkpoint=True if resume else None,
            )
        )

    def retry_cascade(self, job_id: str) -> dict[str, str]:
        """`retry`, and re-create every job the old one canceled through its dependents
        (canceled_by, transitively), with `after` naming the new ids in place of the
        old ones; all or none (one `submit_many`). The old jobs stay as they are.

        Returns:
            Each old id -> its new id, the retried job first.

        Raises:
            UnknownJob, JobNotTerminal, NoJobStore: as `retry`.
        """
        self.require_store()
        root = self._reader.get(job_id)
        if root is None:
            raise self._unknown(job_id)
        if not root.status.is_terminal:
            raise JobNotTerminal(f"job {job_id} is {root.status}; only a finished job is retried")
        chain, queue = [root], [root.id]
        while queue:
            parent = queue.pop(0)
            for job in self._reader.list(JobQuery([Status.CANCELED], after=parent, limit=2**62)):
                if job.canceled_by == parent and all(job.id != j.id for j in chain):
                    chain.append(job)
                    queue.append(job.id)
        renamed = {job.id: self._retry_id(job.id) for job in chain}
        batch = [
            {
                "type": job.type, "payload": msgspec.json.decode(job.payload),
                "id": renamed[job.id], "max_attempts": job.max_attempts,
                "timeout": job.timeout, "priority": job.priority, "retry_of": job.id,
                "concurrency_key": job.concurrency_key,
                # The retried job waits for no one, as `retry` makes it.
                "after": [renamed.get(p, p) for p in job.after] if job is not root else None,
                "after_failure": job.after_failure if job.after and job is not root else None,
            }
            for job in chain
        ]  # fmt: skip
        self.submit_many([{k: v for k, v in job.items() if v is not None} for job in batch])
        return renamed

    def _retry_id(self, job_id: str) -> str:
        line = _RETRY_SUFFIX.match(job_id)
        base, number = (line["base"], int(line["number"]) + 1) if line else (job_id, 1)
        if not self._is_taken(f"{base}.retry-{number}"):
            return f"{base}.retry-{number}"
        number = 1
        while self._is_taken(f"{job_id}.retry-{number}"):
            number += 1
        return f"{job_id}.retry-{number}"

    def _is_taken(self, job_id: str) -> bool:
        # The inbox first: the daemon removes a file only after it committed its job,
        # so a file taken in between is found in the store.
        return self.is_waiting_in_inbox(job_id) or self._reader.get(job_id) is not None

    def retry_failed(self, type: str | None = None) -> list[str]:
        """Retry the failed work (of one type), never the same work twice.

        A job and every job that repeats it, directly or through another retry
        (`retry_of`), are one piece of work: a line of retries. Its tips are those
        of its jobs that nothing repeats yet; the newest tip is where the work
        stands. A line gets one retry, of its newest tip, when that tip failed and
        no job of the line is pending or running, in the store or in the inbox. So
        after `X` failed and `X.retry-1` and `X.retry-2` (both retries of `X`)
        failed, only `X.retry-2` is retried; calling this twice queues nothing more.

        Returns:
            The new jobs' ids, oldest failed job first.

        Raises:
            NoJobStore: the home has no store.
        """
        self.require_store()
        in_inbox = self._retries_in_inbox()  # before the store, as in `_retry_id`
        links = self._reader.retry_links()
        failed = self._reader.list(JobQuery([Status.FAILED], type, limit=2**62))
        repeats = {job_id: retry_of for job_id, retry_of, _, _ in links}
        retried = set(repeats.values())

        def line(job_id: str) -> str:
            """The line's first job: its original (or the oldest still named)."""
            seen = {job_id}
            while (earlier := repeats.get(job_id)) is not None and earlier not in seen:
                seen.add(earlier)
                job_id = earlier
            return job_id

        busy = {line(job_id) for job_id in in_inbox}
        busy.update(line(job_id) for job_id, _, status, _ in links if not status.is_terminal)
        newest: dict[str, tuple[float, str]] = {}
        tips = [(job_id, created) for job_id, _, _, created in links]
        tips += [(job.id, job.created_at) for job in failed]
        for job_id, created in tips:
            if job_id not in retried:
                first = line(job_id)
                newest[first] = max(newest.get(first, (created, job_id)), (created, job_id))
        return [
            self.retry(job.id)
            for job in reversed(failed)
            if newest.get(line(job.id), (0.0, ""))[1] == job.id and line(job.id) not in busy
        ]

    def _retries_in_inbox(self) -> set[str]:
        sources = set()
        for file in self.inbox.glob("*.retry-*.json"):
            data = read_regular(file)
            if data is None:
                continue  # taken by the daemon meanwhile, or no file to read
            try:
                document = msgspec.json.decode(data)
            except msgspec.DecodeError:
                continue  # not ours
            if isinstance(document, dict) and isinstance(document.get("retry_of"), str):
                sources.add(document["retry_of"])
        return sources

    def prune(self, older_than_days: float) -> None:
        """Ask the daemon to delete terminal jobs last changed more than this many days
        ago, with their attempt history; returns at once. Pending and running jobs
        are never deleted.

        Raises:
            procpool.InvalidJobFile: `older_than_days` is negative or not finite.
        """
        if not math.isfinite(older_than_days) or older_than_days < 0:
            raise InvalidJobFile(f"prune needs a number of days >= 0, got {older_than_days}")
        self._drop("prune", {"prune": older_than_days})

    # ----------------------------------------------------------------- pauses

    def pause(
        self,
        types: str | Sequence[str],
        until: str | None = None,
        *,
        duration: float | None = None,
        timeout: float | None = PAUSE_TIMEOUT,
    ) -> bool:
        """Start no job of these types until `until` (or `duration` seconds from now),
        or until `resume`; running jobs go on, pending ones wait with
        `waiting: {"reason": "paused"}`, cancels still work. Pausing a type again
        replaces its `until`. A type no daemon registers may be paused (one may come).

        With `database_url` the pause is committed in the database before this
        returns, and no daemon starts a job of these types after that. Otherwise it is
        an inbox request: while the daemon runs, this waits up to `timeout` seconds
        (None: as long as the daemon runs) for the daemon to commit it, after which no
        job of these types starts; with no daemon, the request waits in the inbox and
        takes effect before the daemon's first claim.

        Returns:
            True once the pause is stored; False if it waits in the inbox.

        Raises:
            procpool.InvalidJobFile: no type, an empty one; `until` not RFC 3339 or
                already passed; `duration` not > 0; both `until` and `duration`. The
                message names the field.
        """
        names = check_types([types] if isinstance(types, str) else list(types))
        now = time.time()
        if duration is not None:
            if until is not None:
                raise InvalidJobFile("until and duration cannot be given together")
            if not math.isfinite(duration) or not 0 < duration <= spec.MAX_SECONDS:
                raise InvalidJobFile(
                    f"duration must be a number of seconds > 0 and <= {spec.MAX_SECONDS:.0f},"
                    f" got {duration:g}"
                )
            end: float | None = now + duration
        else:
            end = None if until is None else spec.parse_time(until, "until")
        check_until(end, now)
        if self._shared is not None:
            self._shared.pause([Pause(name, end, now) for name in names])
            return True
        request = {"pause": names, "until": None if end is None else rfc3339(end)}
        return self._taken(self._drop(f"pause-{uuid.uuid4().hex[:12]}", request), timeout)

    def resume(self, types: str | Sequence[str], *, timeout: float | None = PAUSE_TIMEOUT) -> bool:
        """Lift the pauses of these types: their due jobs start at the next turn. A type
        not paused is no error. Waits as `pause` does; returns True once done, False
        if the request waits in the inbox.

        Raises:
            procpool.InvalidJobFile: no type, or an empty one.
        """
        names = check_types([types] if isinstance(types, str) else list(types))
        if self._shared is not None:
            self._shared.resume(names)
            return True
        return self._taken(
            self._drop(f"resume-{uuid.uuid4().hex[:12]}", {"resume": names}), timeout
        )

    def _taken(self, request: Path, timeout: float | None) -> bool:
        """Wait, while the daemon runs, until it has taken an inbox request (it removes
        the file after the commit that holds what it asked). False: still waiting.

        Raises:
            procpool.InvalidJobFile: the daemon rejected the request (the report's words).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        while request.exists():
            if self.daemon_pid() is None:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        report = self.home / "rejected" / (request.name + ".error.json")
        data = read_regular(report)
        if data is not None:
            error = msgspec.json.decode(data).get("error", "rejected")
            raise InvalidJobFile(f"the daemon rejected the request: {error}")
        return True

    def pauses(self) -> builtins.list[PauseInfo]:
        """The pauses in force now, by type (one past its `until` is not listed).

        Raises:
            NoJobStore: the home has no store.
        """
        self.require_store()
        now = time.time()
        return [PauseInfo.of(p) for p in self._reader.pauses() if p.in_force(now)]

    # ----------------------------------------------------------------- schedules

    def schedule_apply(
        self, data: bytes, *, json_file: bool = False, timeout: float | None = PAUSE_TIMEOUT
    ) -> ScheduleChanges:
        """Make the stored schedules be exactly those of a schedule file (TOML, or JSON
        with `json_file`): CONTRACT section 14. A new schedule starts now (it never fires
        for the past); an edited one keeps its cursor and fires nothing because of the
        edit; one not in the file is removed. Applying the same file again changes
        nothing. With `database_url` it is committed before this returns; otherwise it
        is an inbox request, waited for as `pause` waits.

        Raises:
            procpool.domain.schedules.ScheduleError (an InvalidJobFile): the file or a
                schedule is bad, or a template names a job type no daemon serves; the
                message names the schedule and the field. Nothing is changed then.
        """
        wanted = schedules.parse_file(data, json_file=json_file)
        if self._shared is not None:
            changes = self._shared.apply_schedules(wanted)
        else:
            stored = {s.schedule.name: s.schedule.encoded() for s in self._stored_schedules()}
            changes = schedules.diff(stored, wanted)
            if not changes.none:
                request = {"schedules": "apply", "definitions": [s.to_builtins() for s in wanted]}
                dropped = self._drop(f"schedules-{uuid.uuid4().hex[:12]}", request)
                if not self._taken(dropped, timeout):
                    return ScheduleChanges(
                        added=[s.name for s in changes.added],
                        changed=[s.name for s in changes.changed],
                        removed=changes.removed, stored=False,
                    )  # fmt: skip
        return ScheduleChanges(
            added=[s.name for s in changes.added],
            changed=[s.name for s in changes.changed],
            removed=changes.removed,
        )

    def _stored_schedules(self) -> builtins.list[Stored]:
        return self._reader.schedules() if self._reader.exists() else []

    def schedules(self) -> builtins.list[ScheduleInfo]:
        """Every schedule, by name, with its last run, next run and last skip."""
        now = time.time()
        return [ScheduleInfo.of(stored, now) for stored in self._stored_schedules()]

    def schedule(self, name: str) -> ScheduleInfo:
        """One schedule. Raises UnknownSchedule (a ProcpoolError) if there is none."""
        return ScheduleInfo.of(self._stored_schedule(name), time.time())

    def _stored_schedule(self, name: str) -> Stored:
        for stored in self._stored_schedules():
            if stored.schedule.name == name:
                return stored
        raise UnknownSchedule(name)

    def schedule_next(self, name: str, count: int = 5) -> builtins.list[tuple[str, str]]:
        """The next `count` occurrences of a schedule from now (or from its cursor, if
        later): each as (UTC, the schedule's local time), RFC 3339."""
        stored = self._stored_schedule(name)
        instants = schedules.upcoming(stored.schedule, max(time.time(), stored.cursor), count)
        return [
            (rfc3339(t)[:19] + "Z", schedules.scheduled_for(stored.schedule, t, local=True))
            for t in instants
        ]

    def schedule_change(
        self, name: str, action: str, *, timeout: float | None = PAUSE_TIMEOUT
    ) -> tuple[bool, str | None]:
        """`pause`, `resume`, `trigger` or `remove` a schedule. A paused schedule's
        occurrences are skipped (reason `paused`) and `resume` does not catch up; a
        trigger makes one job now, id NAME.manual-YYYYMMDDTHHMMSSZ, the cursor unmoved.
        Returns whether it is done (False: the request waits in the inbox) and the
        triggered job's id.

        Raises:
            UnknownSchedule: no such schedule.
        """
        self._stored_schedule(name)
        at = time.time()
        if self._shared is not None:
            return True, self._shared.change_schedule(name, action, at)
        made = schedules.manual_id(name, at) if action == "trigger" else None
        request = {"schedules": action, "name": name, "at": rfc3339(at)}
        dropped = self._drop(f"schedule-{action}-{uuid.uuid4().hex[:12]}", request)
        return self._taken(dropped, timeout), made

    # ----------------------------------------------------------------- reading

    @property
    def reader(self) -> JobReader:
        """The reader of the store this client reads (the home's SQLite store, read-only,
        or the PostgreSQL database of `database_url`), as domain `Job`s and `Run`s: for
        what `JobInfo` leaves out (a submission's digest, exact times for a cursor).
        It is this client's connection: same thread rules, closed by `close`."""
        return self._reader

    def require_store(self) -> None:
        """Raise NoJobStore unless a daemon has created this home's job store."""
        if self._reader.exists():
            return
        if not self.home.exists():
            fault = "the directory does not exist"
        elif not self.home.is_dir():
            fault = "it is not a directory"
        else:
            fault = "it has no job store (procpool.db), as no daemon has run with it"
        raise NoJobStore(
            f"{self.home} is not a procpool home: {fault} ({self.home_source})", self.home
        )

    def checkpoint(self, job_id: str) -> Any:
        """The last checkpoint a handler of this job committed (`ctx.checkpoint`), as the
        JSON value it stored; None if it has none (or no such job is stored)."""
        found = self._reader.checkpoint(job_id)
        return None if found is None else msgspec.json.decode(found[0])

    def get(self, job_id: str) -> JobInfo | None:
        """The job with this id.

        Returns:
            The job, or None if the store has none with this id (it may still
            wait in the inbox: see `is_waiting_in_inbox`).

        Raises:
            JobRejected: no job has this id, no file waits in the inbox to become
                it, and the file or line that would have made it was rejected.
                A job in the store wins over a rejection of the same id.
            NoJobStore: the home has no store, and no file for this id waits in its inbox.
        """
        # The store first: the inbox, which may hold a large backlog, is looked through
        # only for an id the store lacks.
        job = self._stored(job_id)
        if job is None and not self.is_waiting_in_inbox(job_id):
            # The daemon removes a file only after it committed its job: one taken since
            # the read above is in the store now.
            job = self._stored(job_id)
            if job is None:
                self.require_store()
        if job is not None:
            return JobInfo.of_jobs([job], self._reader)[0]
        if (rejected := self._rejection(job_id)) is not None:
            raise rejected
        return None

    def _stored(self, job_id: str) -> Job | None:
        """The job in the store; None if it has none, or if there is no store (yet)."""
        return self._reader.get(job_id) if self._reader.exists() else None

    def _rejection(self, job_id: str) -> JobRejected | None:
        """JobRejected for an id the store lacks whose file or line was rejected,
        unless a file in the inbox may still make the job."""
        # rejected/ first: it is small, while the inbox may hold a large backlog.
        found = self._rejected.find(job_id)
        # Checked in this order, a file accepted meanwhile is in the store.
        if found is None or self.is_waiting_in_inbox(job_id):
            return None
        if self._reader.get(job_id) is not None:
            return None
        return JobRejected(job_id, found.reason, found.report, found.line)

    def _unknown(self, job_id: str) -> UnknownJob:
        """The error for an id the store lacks: JobRejected if its file was rejected."""
        return self._rejection(job_id) or UnknownJob(job_id)

    def list(
        self,
        status: str | Status | Iterable[str | Status] | None = None,
        type: str | None = None,
        limit: int = 100,
        waiting: str | None = None,
        after: str | None = None,
    ) -> list[JobInfo]:
        """Jobs, newest first.

        Args:
            status: one status or several; default all.
            type: only jobs of this type; default all.
            limit: at most this many jobs.
            after: only the jobs that wait for this job (their `after` names it).
            waiting: only pending jobs held back for this reason (`limit`, `key_limit`,
                `paused`: the `reason` of their `waiting`); `status` is then not used.

        Raises:
            NoJobStore: the home has no store.
        """
        self.require_store()
        if waiting is None:
            query = JobQuery(_statuses(status), type, limit, after=after)
            return JobInfo.of_jobs(self._reader.list(query), self._reader)
        found: builtins.list[JobInfo] = []
        before: tuple[float, str] | None = None
        while len(found) < limit:
            page = self._reader.list(
                JobQuery([Status.PENDING], type, WAITING_PAGE, before, after=after)
            )
            held = JobInfo.of_jobs(page, self._reader)
            found.extend(job for job in held if job.waiting and job.waiting["reason"] == waiting)
            if len(page) < WAITING_PAGE:
                break
            before = (page[-1].created_at, page[-1].id)
        return found[:limit]

    def attempts(self, job_id: str) -> builtins.list[Attempt]:
        """Every run of a job, oldest first; a running job's current run comes last.

        Raises:
            UnknownJob: no job has this id (JobRejected: its file was rejected).
            NoJobStore: the home has no store.
        """
        self.require_store()
        job = self._reader.get(job_id)
        if job is None:
            raise self._unknown(job_id)
        runs = [Attempt.from_run(run) for run in self._reader.runs(job_id)]
        if job.status is Status.RUNNING:
            runs.append(
                Attempt(
                    attempt=job.attempt,
                    started_at=None if job.started_at is None else rfc3339(job.started_at),
                    ended_at=None,
                    duration=None,
                    outcome="running",
                    error=None,
                    worker_pid=job.worker_pid,
                    exit_signal=None,
                )
            )
        return runs

    def count_finished_before(self, cutoff: float) -> int:
        """Terminal jobs last changed before `cutoff` (seconds since the epoch); 0 on a
        home without a store, where a prune request waits for the daemon like a job."""
        return self._reader.count_finished_before(cutoff)

    def stats(self, cpu_sample: float = 0.25) -> Stats:
        """The figures of `procpool stats`; `cpu_sample` seconds go to measuring CPU.

        Raises:
            NoJobStore: the home has no store.
        """
        from procpool.adapters.stores.stats import collect  # noqa: PLC0415 (psutil)

        self.require_store()
        return collect(self._reader, self.daemon_pid(), cpu_sample)

    def is_waiting_in_inbox(self, job_id: str) -> bool:
        """Whether a regular file named after this job (`ID.json`, `ID.*.json`), or a
        batch file holding it, still waits in the inbox: looked up by name, the inbox
        listed only when it changed since the last look (adapters/inbox/lookup.py).
        An id that no job can have (CONTRACT 2; one too long for a file name) waits
        nowhere."""
        try:
            spec.check_id(job_id, "job id")
        except InvalidJobFile:
            return False
        return InboxLookup.of(self.inbox).waiting(job_id)

    def daemon_pid(self) -> int | None:
        """The pid of the daemon serving this home, or None if none runs."""
        return running_pid(self.home / "procpool.pid")

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        poll: float = 0.05,
        on_poll: Callable[[builtins.list[JobInfo | None]], None] | None = None,
    ) -> builtins.list[JobInfo]:
        """Block until every job is terminal.

        While the daemon runs, it says over its socket when the jobs are terminal (the
        store is read again then, not polled); otherwise the store is polled.

        Args:
            job_ids: the jobs to wait for; a job still waiting in the inbox counts.
            timeout: give up after this many seconds; default never.
            poll: the longest pause between two looks at the store, in seconds (with
                `on_poll`, also while the daemon is asked).
            on_poll: called after each look with the jobs in the order asked
                (None for a job still in the inbox), e.g. to show progress.

        Returns:
            The jobs, in the order asked, once all are terminal.

        Raises:
            TimeoutError: `timeout` seconds passed first.
            UnknownJob: an id is neither in the store nor waiting in the inbox.
            JobRejected: (an UnknownJob) such an id's file or line was rejected.
            NoJobStore: the home has no store, and an id is not waiting in the inbox.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(poll, 0.005)
        asking = _DoorWait(self)
        # A shared store's jobs end on any daemon, and this home's hears only of its own.
        asking.usable = self._shared is None
        unique = list(dict.fromkeys(job_ids))
        try:
            if on_poll is None and asking.usable:
                done = self._asked_first(asking, job_ids, unique, deadline)
                if done is not None:
                    return done
            while True:
                statuses, found = self._look(job_ids, unique, on_poll)
                missing = [i for i in job_ids if i not in statuses]
                left = [i for i, status in statuses.items() if not status.is_terminal]
                if not missing and not left:
                    if on_poll is None:
                        found = self._reader.get_many(unique)
                    # Read again if one went meanwhile (retention): the next look says so.
                    if len(found) == len(unique):
                        return [JobInfo.from_job(found[i]) for i in job_ids]
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"jobs not finished after {timeout} s")
                if not missing and asking.usable:
                    pause = None if deadline is None else max(0.0, deadline - time.monotonic())
                    if on_poll is not None:
                        pause = poll if pause is None else min(pause, poll)
                    answer = asking.ask(left, pause)
                    if answer is _Answer.UNKNOWN:  # pruned, or not stored yet: poll
                        asking.usable = False
                    if answer is not _Answer.UNAVAILABLE:
                        continue
                sleep = (
                    interval
                    if deadline is None
                    else min(interval, max(0.0, deadline - time.monotonic()))
                )
                time.sleep(sleep)
                interval = min(interval * 2, poll)
        finally:
            asking.give_up()

    def _asked_first(
        self,
        asking: _DoorWait,
        job_ids: Sequence[str],
        unique: builtins.list[str],
        deadline: float | None,
    ) -> builtins.list[JobInfo] | None:
        """`wait` asking the daemon before its first look at the store: the jobs once it
        says all are terminal; None for any other answer, which leaves it to the looks.

        The daemon reads the statuses anyway, and a look in between would take CPU from
        the job's turn and its worker just then (issue 25).
        """
        pause = None if deadline is None else max(0.0, deadline - time.monotonic())
        if asking.ask(unique, pause) is not _Answer.DONE:
            return None
        found = self._reader.get_many(unique)
        if len(found) < len(unique) or not all(j.status.is_terminal for j in found.values()):
            return None  # one went meanwhile (retention): the looks say which
        return [JobInfo.from_job(found[i]) for i in job_ids]

    def _look(
        self,
        job_ids: Sequence[str],
        unique: builtins.list[str],
        on_poll: Callable[[builtins.list[JobInfo | None]], None] | None,
    ) -> tuple[dict[str, Status], dict[str, Job]]:
        """One look of `wait`: the jobs' statuses, and with `on_poll` their rows (shown to
        it), else none.

        Raises:
            UnknownJob: an id is neither in the store nor waiting in the inbox.
            NoJobStore: the home has no store, and an id is not waiting in the inbox.
        """
        found: dict[str, Job] = {}
        if on_poll is None:
            # Until every job is done, their statuses are all a look needs: the whole
            # rows of 1,800 jobs cost 25 ms to read (issue 25).
            statuses = self._reader.statuses(unique)
        else:
            found = self._reader.get_many(unique)
            statuses = {i: job.status for i, job in found.items()}
        for job_id in unique:
            # Checked in this order, a file taken by the daemon in between is in the store.
            if (
                job_id not in statuses
                and not self.is_waiting_in_inbox(job_id)
                and self._reader.get(job_id) is None
            ):
                self.require_store()
                raise self._unknown(job_id)
        if on_poll is not None:
            on_poll([JobInfo.from_job(found[i]) if i in found else None for i in job_ids])
        return statuses, found

    def close(self) -> None:
        """Close the read connection and the socket connections (later calls open
        new ones)."""
        self._reader.close()
        with self._doors_lock:
            doors, self._doors = self._doors, set()
        for door in doors:
            if door.pid == os.getpid():
                door.close()
        self._local = threading.local()


class _Answer(enum.Enum):
    """What asking the daemon about a `wait`'s jobs came to."""

    DONE = "every job is terminal"
    UNKNOWN = "the daemon does not know a job: pruned, or not stored yet"
    PENDING = "no answer yet: the pause is over, the request stays asked"
    UNAVAILABLE = "no daemon answers: poll the store"


class _DoorWait:
    """One `Client.wait`'s request to the daemon: tell me when these jobs are terminal.

    The request stays asked across looks at the store (with `on_poll`, every `poll`
    seconds); an answer, or no daemon to ask, ends it.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self.usable = True  # False: no daemon answers, or it does not know a job: poll
        self._door: DoorConnection | None = None
        self._ref: int | None = None

    def ask(self, job_ids: list[str], pause: float | None) -> _Answer:
        """Ask (once) and wait up to `pause` seconds (None: no limit) for the answer."""
        try:
            if self._ref is None:
                self._door = self._client._door()
                if self._door is None:
                    self.usable = False
                    return _Answer.UNAVAILABLE
                self._ref = self._door.next_ref()
                self._door.send(wire.Wait(self._ref, job_ids))
            assert self._door is not None
            answer = self._door.receive(self._ref, pause)
        except DoorUnavailable:
            self._client._forget_door()
            self._ref = None
            self.usable = False
            return _Answer.UNAVAILABLE
        if answer is None:
            return _Answer.PENDING
        self._ref = None
        return _Answer.DONE if isinstance(answer, wire.Done) else _Answer.UNKNOWN

    def give_up(self) -> None:
        """The wait ends with its request unanswered: its answer must not be taken for
        another's, so the connection goes."""
        if self._ref is not None:
            self._client._forget_door()
            self._ref = None
