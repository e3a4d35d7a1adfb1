"""Typed messages between the supervisor and one worker, over that worker's own channel.

Every message about a job carries the job's id and the lease of its run, so the
supervisor can drop whatever comes from a run that is no longer current
(DESIGN decision 8). Payloads and results travel as JSON bytes, untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec

# supervisor -> worker


class RunJob(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    job_id: str
    lease: int
    attempt: int
    type: str
    payload: bytes


class Skip(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Do not start this queued job (canceled, or the daemon stops): answer Skipped."""

    job_id: str
    lease: int


class Stop(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Exit once idle: the worker is retired or the daemon stops."""


# worker -> supervisor


class Ready(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    pid: int


class Started(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    job_id: str
    lease: int


class Skipped(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    job_id: str
    lease: int


class Heartbeat(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    job_id: str
    lease: int


class ProgressReport(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    job_id: str
    lease: int
    fraction: float
    message: str | None


class Finished(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    job_id: str
    lease: int
    duration: float
    result: bytes | None = None
    error: str | None = None
    permanent: bool = False


class LogLine(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """A handler's log record. `job_id` and `attempt` name the run it is bound to
    (None: logged outside any job); `fields` are the handler's own structured
    fields, kept apart from the daemon's so that no name can clash."""

    level: str
    message: str
    job_id: str | None
    attempt: int | None
    fields: dict[str, Any]


class OutputLine(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """One line written to the worker's standard output or error (`stream` is
    "stdout" or "stderr") by the handler, or by any process it started; bound to
    the job that ran when the line was read (None: between jobs)."""

    job_id: str | None
    attempt: int | None
    stream: str
    text: str


ToWorker = RunJob | Skip | Stop
ToSupervisor = (
    Ready | Started | Skipped | Heartbeat | ProgressReport | Finished | LogLine | OutputLine
)
