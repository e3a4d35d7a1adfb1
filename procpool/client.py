"""The Python client: enqueue and query jobs of a procpool home without shelling out.

It never writes the store: it drops files into the inbox, as any producer
does, and reads the store through a read-only connection. It works whether or
not the daemon runs; jobs submitted while it is down start when it starts.
A Client is cheap to make; its read connection belongs to the thread that
first reads, so a threaded web server makes one per request or per thread.

Example:
    from procpool import Client

    with Client("/var/lib/procpool") as client:
        job_id = client.submit("thumbnail", {"path": "/data/a.png"}, priority=5)
        [job] = client.wait([job_id], timeout=60)
        print(job.status, job.result)
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from procpool.domain import spec
from procpool.domain.errors import InvalidJobFile, ProcpoolError
from procpool.domain.job import Job, Run, Status
from procpool.domain.timefmt import rfc3339
from procpool.infrastructure.config import locate_home, shared_store
from procpool.infrastructure.pidfile import running_pid
from procpool.infrastructure.rejections import RejectedFiles
from procpool.infrastructure.stats import Stats, collect
from procpool.infrastructure.store_reader import StoreReader

# `X.retry-K`: the K-th job down the line of retries that starts at X.
_RETRY_SUFFIX = re.compile(r"^(?P<base>.+)\.retry-(?P<number>[1-9]\d*)$")


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


class JobInfo(msgspec.Struct, kw_only=True):
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

    @property
    def is_terminal(self) -> bool:
        return Status(self.status).is_terminal

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)

    @classmethod
    def from_job(cls, job: Job) -> JobInfo:
        return cls(
            id=job.id,
            type=job.type,
            payload=msgspec.json.decode(job.payload),
            status=str(job.status),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            last_error=job.last_error,
            created_at=rfc3339(job.created_at),
            updated_at=rfc3339(job.updated_at),
            run_at=rfc3339(job.run_at),
            priority=job.priority,
            timeout=job.timeout,
            result=None if job.result is None else msgspec.json.decode(job.result),
            progress=None
            if job.progress is None
            else {"fraction": job.progress.fraction, "message": job.progress.message},
            worker_pid=job.worker_pid,
            cancel_requested=job.cancel_requested,
            retry_of=job.retry_of,
        )


class Attempt(msgspec.Struct, kw_only=True):
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

    def to_dict(self) -> dict[str, Any]:
        return msgspec.structs.asdict(self)

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
        self._shared = shared_store(self.home, database_url)
        self._reader: Any = self._shared or StoreReader(self.home / "procpool.db")
        self._rejected = RejectedFiles(self.home)

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

    def _drop(self, stem: str, document: dict[str, Any]) -> None:
        """Write a file into the inbox atomically: a dot-file first, then a link to
        the final name, which never replaces a file already there."""
        try:
            data = msgspec.json.encode(document)
        except (TypeError, ValueError, OverflowError):  # UnicodeEncodeError is a ValueError
            raise InvalidJobFile(spec.unencodable(document.get("payload"), "payload")) from None
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.inbox.mkdir(mode=0o700, exist_ok=True)
        temporary = self.inbox / f".{stem}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            name = f"{stem}.json"
            while True:
                try:
                    os.link(temporary, self.inbox / name)
                    break
                except FileExistsError:
                    name = f"{stem}.{uuid.uuid4().hex[:8]}.json"
        finally:
            temporary.unlink()

    def _submit(self, job_spec: spec.JobSpec) -> str:
        spec.check(job_spec)
        assert job_spec.id is not None
        if self._shared is not None:
            self._shared.submit_spec(job_spec)
            return job_spec.id
        document = {
            key: value
            for key, value in msgspec.structs.asdict(job_spec).items()
            if value is not None or key == "payload"
        }
        self._drop(job_spec.id, document)
        return job_spec.id

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        id: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        priority: int = 0,
        delay: float | None = None,
        run_at: str | None = None,
    ) -> str:
        """Queue a job by writing a file into the inbox atomically.

        Submitting the very same job (id, type, payload and options) again is
        harmless: ids are idempotency keys.

        Args:
            type: the name of a registered handler.
            payload: any JSON value, handed to the handler as it is.
            id: the job's id (1-128 of `A-Z a-z 0-9 . _ -`); default a new random one.
            max_attempts: attempts that may fail before the job is `failed`;
                default the daemon's `max_attempts`.
            timeout: hard limit of one attempt, in seconds; default the daemon's.
            priority: higher runs first.
            delay: do not start before now + `delay` seconds.
            run_at: do not start before this RFC 3339 time (not with `delay`).

        Returns:
            The job's id.

        Raises:
            procpool.InvalidJobFile: a value is out of its bounds, or the payload is not
                JSON (a string that is not valid Unicode, an object of another type);
                nothing was written.
        """
        return self._submit(
            spec.JobSpec(
                type=type,
                payload=payload,
                id=id if id is not None else f"job-{uuid.uuid4().hex[:16]}",
                max_attempts=max_attempts,
                timeout=timeout,
                priority=priority,
                delay=delay,
                run_at=run_at,
            )
        )

    def cancel(self, job_id: str) -> None:
        """Ask the daemon to cancel a job, through the inbox; returns at once.

        A pending job becomes `canceled`; a running one is terminated (with the
        processes its handler started), then becomes `canceled`; a terminal one
        stays as it is. Follow it with `wait` to see the outcome.

        Raises:
            procpool.InvalidJobFile: `job_id` is not a valid id.
        """
        spec.check_id(job_id, "job id")
        if self._shared is not None and self._shared.cancel(job_id) is not None:
            return
        # Unknown to the database (or no database): its file may still wait in an inbox.
        self._drop(f"cancel-{job_id}", {"cancel": job_id})

    def retry(self, job_id: str) -> str:
        """Queue a new job that repeats a terminal one: same type, payload and options.

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
            )
        )

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
        """Retry every failed job (of one type) that has not been retried yet.

        A failed job counts as retried once a job names it as `retry_of`, so
        calling this twice does not queue the same work twice.

        Returns:
            The new jobs' ids, oldest failed job first.

        Raises:
            NoJobStore: the home has no store.
        """
        self.require_store()
        failed = self._reader.list([Status.FAILED], type, limit=2**62)
        in_inbox = self._retries_in_inbox()  # before the store, as in `_retry_id`
        done = in_inbox | self._reader.retried_ids()
        return [self.retry(job.id) for job in reversed(failed) if job.id not in done]

    def _retries_in_inbox(self) -> set[str]:
        sources = set()
        for file in self.inbox.glob("*.retry-*.json"):
            try:
                document = msgspec.json.decode(file.read_bytes())
            except (OSError, msgspec.DecodeError):
                continue  # taken by the daemon meanwhile, or not ours
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

    # ----------------------------------------------------------------- reading

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
        if not self.is_waiting_in_inbox(job_id):  # then a daemon that starts will take it
            self.require_store()
        job = self._reader.get(job_id)
        if job is None and (rejected := self._rejection(job_id)) is not None:
            raise rejected
        return None if job is None else JobInfo.from_job(job)

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
    ) -> list[JobInfo]:
        """Jobs, newest first.

        Args:
            status: one status or several; default all.
            type: only jobs of this type; default all.
            limit: at most this many jobs.

        Raises:
            NoJobStore: the home has no store.
        """
        self.require_store()
        return [JobInfo.from_job(j) for j in self._reader.list(_statuses(status), type, limit)]

    def attempts(self, job_id: str) -> list[Attempt]:
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
        self.require_store()
        return collect(self._reader, self.daemon_pid(), cpu_sample)

    def is_waiting_in_inbox(self, job_id: str) -> bool:
        """Whether a file named after this job still waits in the inbox."""
        return (self.inbox / f"{job_id}.json").exists() or any(self.inbox.glob(f"{job_id}.*.json"))

    def daemon_pid(self) -> int | None:
        """The pid of the daemon serving this home, or None if none runs."""
        return running_pid(self.home / "procpool.pid")

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        poll: float = 0.05,
        on_poll: Callable[[list[JobInfo | None]], None] | None = None,
    ) -> list[JobInfo]:
        """Block until every job is terminal.

        Args:
            job_ids: the jobs to wait for; a job still waiting in the inbox counts.
            timeout: give up after this many seconds; default never.
            poll: the longest pause between two looks at the store, in seconds.
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
        while True:
            found = self._reader.get_many(list(dict.fromkeys(job_ids)))
            missing = [i for i in job_ids if i not in found]
            for job_id in missing:
                # Checked in this order, a file taken by the daemon in between is in the store.
                if not self.is_waiting_in_inbox(job_id) and self._reader.get(job_id) is None:
                    self.require_store()
                    raise self._unknown(job_id)
            if on_poll is not None:
                on_poll([JobInfo.from_job(found[i]) if i in found else None for i in job_ids])
            if not missing and all(job.status.is_terminal for job in found.values()):
                return [JobInfo.from_job(found[i]) for i in job_ids]
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"jobs not finished after {timeout} s")
            sleep = (
                interval
                if deadline is None
                else min(interval, max(0.0, deadline - time.monotonic()))
            )
            time.sleep(sleep)
            interval = min(interval * 2, poll)

    def close(self) -> None:
        """Close the read connection (a later read opens a new one)."""
        self._reader.close()
