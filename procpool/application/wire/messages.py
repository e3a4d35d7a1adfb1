"""Typed messages between the supervisor and one worker, over that worker's own channel.

Every message about a job carries the job's id and the lease of its run, so the
supervisor can drop whatever comes from a run that is no longer current
(DESIGN decision 8). Payloads and results travel as JSON bytes, untouched.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# Bounds on what a worker may send (DESIGN decision 11): a message past them is
# not decoded but ends the worker as broken. The worker truncates its own text
# to well inside them (see worker/main.py); these catch a worker that does not.
JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Lease = Annotated[int, msgspec.Meta(ge=0)]
MAX_TEXT = 64 * 1024  # characters of a progress message, log line or output line
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
FieldName = Annotated[str, msgspec.Meta(max_length=128)]
FieldValue = Text | int | float | bool | None
MAX_FIELDS = 128


class _Message(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Every message: an array whose first item, `kind`, is its class's name."""


class _OfRun(_Message):
    """A message about one run of a job: the job's id and the run's lease first."""

    job_id: JobId
    lease: Lease


# supervisor -> worker


class RunJob(_OfRun):
    attempt: int
    type: str
    payload: bytes
    scheduled_for: str | None = None  # an occurrence of a schedule: its nominal time
    last_checkpoint: bytes | None = None  # JSON: the last one an earlier attempt committed
    # A job with `after`: {parent id: {"status", "result", "last_error"}} as JSON, read
    # when the attempt was handed out (ctx.parents); None: it waits for no job.
    parents: bytes | None = None


class Skip(_OfRun):
    """Do not start this queued job (canceled, or the daemon stops): answer Skipped."""


class CheckpointStored(_OfRun):
    """The answer to a Checkpoint, sent once the turn that wrote it has committed:
    `stored` false if this attempt no longer owns the job (nothing was written);
    `again`: the turn that wrote it was lost before its commit, send it again."""

    stored: bool
    again: bool = False


class Stop(_Message):
    """Exit once idle: the worker is retired or the daemon stops."""


# worker -> supervisor


class Ready(_Message):
    pid: int


class Started(_OfRun):
    """`at`: when the job began, on the worker's CLOCK_MONOTONIC (the machine's one
    clock, the supervisor's too): its timeout counts from there, even when the
    supervisor reads this late (it was paused)."""

    at: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0


class Skipped(_OfRun):
    """The answer to Skip: the job was not started."""


class Heartbeat(_OfRun):
    """The run goes on (sent every heartbeat_interval while a job runs)."""


class ProgressReport(_OfRun):
    fraction: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
    message: Text | None


class Checkpoint(_OfRun):
    """`ctx.checkpoint(value)`: `value` as JSON bytes, checked by the worker against
    max_checkpoint_bytes (and again by the supervisor). The handler waits for the
    answer, CheckpointStored."""

    value: bytes


class Finished(_OfRun):
    """The end of a started job: `result` (JSON bytes) or `error`. The result's size
    is bounded by the channel's frame limit and checked against max_result_bytes."""

    duration: Annotated[float, msgspec.Meta(ge=0.0)]
    result: bytes | None = None
    error: Text | None = None
    permanent: bool = False


class LogLine(_Message):
    """A handler's log record. `job_id` and `attempt` name the run it is bound to
    (None: logged outside any job); `fields` are the handler's own structured
    fields, kept apart from the daemon's so that no name can clash."""

    level: Annotated[
        str, msgspec.Meta(pattern="^(TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL)$")
    ]
    message: Text
    job_id: JobId | None
    attempt: Annotated[int, msgspec.Meta(ge=1)] | None
    fields: Annotated[dict[FieldName, FieldValue], msgspec.Meta(max_length=MAX_FIELDS)]


class OutputLine(_Message):
    """One line written to the worker's standard output or error (`stream` is
    "stdout" or "stderr") by the handler, or by any process it started; bound to
    the job that ran when the line was read (None: between jobs)."""

    job_id: JobId | None
    attempt: Annotated[int, msgspec.Meta(ge=1)] | None
    stream: Annotated[str, msgspec.Meta(pattern="^(stdout|stderr)$")]
    text: Text


ToWorker = RunJob | Skip | CheckpointStored | Stop
AboutWorker = Ready | LogLine | OutputLine  # what a worker says of itself
AboutRun = Started | Skipped | Heartbeat | ProgressReport | Checkpoint | Finished
ToSupervisor = AboutWorker | AboutRun
