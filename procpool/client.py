"""The Python client: enqueue and query jobs of a procpool home without shelling out.

It never writes the store: it drops files into the inbox, as any producer
does, and reads the store through a read-only connection. It works whether or
not the daemon runs; jobs submitted while it is down start when it starts.

Example:
    from procpool import Client

    client = Client("/var/lib/procpool")
    job_id = client.submit("thumbnail", {"path": "/data/a.png"}, priority=5)
    [job] = client.wait([job_id], timeout=60)
    print(job.status, job.result)
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from procpool.domain import spec
from procpool.domain.job import Job, Status
from procpool.domain.timefmt import rfc3339
from procpool.infrastructure.config import default_home
from procpool.infrastructure.pidfile import running_pid
from procpool.infrastructure.store_reader import StoreReader


class UnknownJob(KeyError):
    """No job has this id, and no file in the inbox is waiting to become it."""


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
        )


def _statuses(status: str | Status | Iterable[str | Status] | None) -> list[Status]:
    if status is None:
        return []
    if isinstance(status, str):
        return [Status(status)]
    return [Status(s) for s in status]


class Client:
    """A handle on one procpool home (the same directory as `--home`)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.inbox = self.home / "inbox"
        self._reader = StoreReader(self.home / "procpool.db")

    # ----------------------------------------------------------------- writing

    def _drop(self, stem: str, document: dict[str, Any]) -> None:
        """Write a file into the inbox atomically: a dot-file first, then a link to
        the final name, which never replaces a file already there."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.inbox.mkdir(mode=0o700, exist_ok=True)
        data = msgspec.json.encode(document)
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
        """Queue a job; returns its id (a new random one unless `id` is given).

        Raises:
            procpool.InvalidJobFile: an option is out of its bounds; nothing was written.
        """
        job_id = id if id is not None else f"job-{uuid.uuid4().hex[:16]}"
        job_spec = spec.check(
            spec.JobSpec(
                type=type,
                payload=payload,
                id=job_id,
                max_attempts=max_attempts,
                timeout=timeout,
                priority=priority,
                delay=delay,
                run_at=run_at,
            )
        )
        document = {
            key: value
            for key, value in msgspec.structs.asdict(job_spec).items()
            if value is not None or key == "payload"
        }
        self._drop(job_id, document)
        return job_id

    def cancel(self, job_id: str) -> None:
        """Ask the daemon to cancel a job, through the inbox; returns at once."""
        spec.check_id(job_id, "job id")
        self._drop(f"cancel-{job_id}", {"cancel": job_id})

    # ----------------------------------------------------------------- reading

    def get(self, job_id: str) -> JobInfo | None:
        """The job, or None if the store has no job with this id."""
        job = self._reader.get(job_id)
        return None if job is None else JobInfo.from_job(job)

    def list(
        self,
        status: str | Status | Iterable[str | Status] | None = None,
        type: str | None = None,
        limit: int = 100,
    ) -> list[JobInfo]:
        """Jobs, newest first, optionally of some statuses and one type."""
        return [JobInfo.from_job(j) for j in self._reader.list(_statuses(status), type, limit)]

    def is_waiting_in_inbox(self, job_id: str) -> bool:
        """Whether a file named after this job still waits in the inbox."""
        return (self.inbox / f"{job_id}.json").exists() or any(self.inbox.glob(f"{job_id}.*.json"))

    def daemon_pid(self) -> int | None:
        """The pid of the daemon serving this home, or None if none runs."""
        return running_pid(self.home / "procpool.pid")

    def wait(
        self, job_ids: Sequence[str], timeout: float | None = None, poll: float = 0.05
    ) -> list[JobInfo]:
        """Block until every job is terminal; returns them in the order asked.

        Raises:
            TimeoutError: `timeout` seconds passed first.
            UnknownJob: an id is neither in the store nor waiting in the inbox.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = min(poll, 0.005)
        while True:
            found = self._reader.get_many(list(dict.fromkeys(job_ids)))
            missing = [i for i in job_ids if i not in found]
            for job_id in missing:
                if not self.is_waiting_in_inbox(job_id) and job_id not in self._reader.get_many(
                    [job_id]
                ):
                    raise UnknownJob(job_id)
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
        self._reader.close()
