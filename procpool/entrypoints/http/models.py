"""The HTTP API's bodies: msgspec structs, from which the OpenAPI document is made.

Jobs, attempts and stats are the very types the client and the CLI print
(`JobInfo`, `Attempt`, `Stats`); a request body is the job object of CONTRACT
section 2, made here from `JobSpec`'s own fields (without `retry_of`, which
only `POST /jobs/{id}/retry` sets), so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import msgspec

from procpool.client import JobInfo, PauseInfo
from procpool.domain.spec import JobSpec


class Created(msgspec.Struct, omit_defaults=True):
    """The id of the job submitted (or retried); a retry with `cascade`: also each old
    id -> its new id, the retried job's first (docs/dependencies.md)."""

    id: str
    renamed: dict[str, str] | None = None


class BatchCreated(msgspec.Struct):
    """The ids of the jobs submitted, in the order of the array."""

    ids: list[str]


class JobPage(msgspec.Struct):
    """One page of jobs, newest first; `next` is the cursor of the next page, or
    null on the last."""

    jobs: list[JobInfo]
    next: str | None


class Checkpoint(msgspec.Struct):
    """A job's last checkpoint: the JSON value its handler committed with
    `ctx.checkpoint`, and when (RFC 3339)."""

    job_id: str
    checkpoint: Any
    checkpoint_at: str


class Error(msgspec.Struct, omit_defaults=True):
    """What went wrong; `index` names the item of a batch at fault."""

    error: str
    index: int | None = None


class Health(msgspec.Struct):
    """`daemon` is "running" (with its pid) or "stopped"."""

    daemon: str
    pid: int | None


class PauseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Pause these job types (`procpool pause`): until `until` (RFC 3339), or for
    `duration` seconds, or (neither) until resumed; not both."""

    types: list[str]
    until: str | None = None
    duration: float | None = None


class PauseList(msgspec.Struct):
    """The pauses in force, by type."""

    pauses: list[PauseInfo]


def _job_request() -> type[msgspec.Struct]:
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(JobSpec):
        if field.name == "retry_of":
            continue
        if field.required:
            fields.append((field.name, field.type))
        else:
            fields.append((field.name, field.type, field.default))
    return msgspec.defstruct(
        "JobRequest", fields, kw_only=True, forbid_unknown_fields=True, module=__name__
    )


JobRequest = _job_request()
"""A job object of CONTRACT section 2: `type` required, the rest optional."""
