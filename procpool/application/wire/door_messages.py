"""Typed messages between a client and the daemon, over the socket door (door.py).

Framed as the workers' channels are (channel.py: a 4-byte length, then msgpack),
tagged by `kind`. Every request carries a `ref` that its answer repeats, so a
client can tell an answer from a late one. A job travels as the JSON bytes of
one job object of CONTRACT section 2, exactly what a file in the inbox would
hold, so that one intake judges both doors (DESIGN decision 12).

What a client sends is untrusted, as an inbox file is: each field is bounded
here, and a frame past MAX_REQUEST_BYTES or one that does not decode ends that
connection, never the daemon.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

# A request's frame at most; a batch too large for it is refused by the client
# before it is sent. Each job's JSON is bounded by max_file_bytes as an inbox line.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_BATCH = 1_000_000  # jobs in one Submit (the frame bounds it first)
MAX_WAIT_IDS = 100_000  # ids in one Wait
Ref = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
JobId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]

# client -> daemon


class Submit(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Store these jobs, all or none; answered after the commit that holds them."""

    ref: Ref
    jobs: Annotated[list[bytes], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class Wait(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Answer once every one of these jobs is terminal (Done), or name one the store
    lacks (Unknown)."""

    ref: Ref
    job_ids: Annotated[list[JobId], msgspec.Meta(min_length=1, max_length=MAX_WAIT_IDS)]


class Cancel(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Cancel a job; answered after the commit that holds the cancel (or Unknown)."""

    ref: Ref
    job_id: JobId


# daemon -> client


class Accepted(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """The jobs of a Submit are committed (new ones, or the very same submissions)."""

    ref: int
    ids: list[str]


class Refused(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Nothing of the request was stored: `error` says what is wrong, in the words of
    an inbox rejection; `duplicate` names an id that exists with other content;
    `bad_job`, for a batch of several, is its first bad job's number (from 1) and what
    is wrong with it (`error` without the words that number it)."""

    ref: int
    error: str
    duplicate: str | None = None
    bad_job: tuple[int, str] | None = None


class Done(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """Every job of a Wait is terminal, committed."""

    ref: int


class Unknown(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """The store has no job with this id (it may still wait in the inbox)."""

    ref: int
    job_id: str


class CancelAnswer(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """The cancel is committed; `status` is the job's status after it (`canceled`, or
    `running` while its worker is being ended, or the terminal status it had)."""

    ref: int
    status: str


class Busy(msgspec.Struct, tag=True, tag_field="kind", array_like=True):
    """The daemon serves no more connections now: use the inbox."""

    ref: int


ToDaemon = Submit | Wait | Cancel
ToClient = Accepted | Refused | Done | Unknown | CancelAnswer | Busy
