"""Pauses by job type (CONTRACT section 13): which types may start no job now.

A pause is a row of the store (one per type), written by `procpool pause` and
removed by `procpool resume`; with an `until`, it is in force until then and simply
not in force after it: no writer needs to run at that instant. The claim leaves out
the types in force (`in_force`) as it leaves out a full type; readers show a due
pending job of such a type as `{"reason": "paused"}` (`waiting`).

    procpool pause T ─▶ inbox request (SQLite) or the database (PostgreSQL) ─▶ pauses row
    claim (each turn) ─▶ in_force(pauses, now) ─▶ the types it seeks no job of
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from procpool.domain.errors import InvalidJobFile
from procpool.domain.job import Job, Status
from procpool.domain.timefmt import rfc3339

# A type is at most this long in a pause request: longer is no type anyone registers.
TYPE_MAX_CHARS = 200


@dataclass(frozen=True)
class Pause:
    """A paused type. `until`: seconds since the epoch when it ends by itself (None:
    until resumed); `since`: when it was set. Times are the store's clock (CONTRACT 12)."""

    type: str
    until: float | None
    since: float

    def in_force(self, now: float) -> bool:
        return self.until is None or now < self.until


def in_force(pauses: Iterable[Pause], now: float) -> frozenset[str]:
    """The types whose pause holds at `now`."""
    return frozenset(pause.type for pause in pauses if pause.in_force(now))


def ended(pauses: Iterable[Pause], now: float) -> list[Pause]:
    """The pauses whose `until` has come: not in force, left to be cleaned."""
    return [pause for pause in pauses if not pause.in_force(now)]


def next_end(pauses: Iterable[Pause], now: float) -> float | None:
    """The earliest `until` after `now`: when a paused type's jobs may become startable."""
    return min((p.until for p in pauses if p.until is not None and p.until > now), default=None)


def first_wake(scheduled: float | None, pause_end: float | None, after: float) -> float | None:
    """When a job may next become startable: a scheduled job's run_at, or the end of a
    pause (only one later than `after` counts), whichever comes first."""
    if pause_end is None or pause_end <= after:
        return scheduled
    return pause_end if scheduled is None else min(pause_end, scheduled)


def waiting(job: Job, pause: Pause | None, now: float) -> dict[str, object] | None:
    """Why a due pending job does not start, if its type is paused now:
    {"reason": "paused"}, with "until" (RFC 3339) when the pause ends by itself."""
    if pause is None or not pause.in_force(now):
        return None
    if job.status is not Status.PENDING or job.run_at > now:
        return None
    why: dict[str, object] = {"reason": "paused"}
    if pause.until is not None:
        why["until"] = rfc3339(pause.until)
    return why


def check_types(types: Sequence[str]) -> list[str]:
    """The types of a pause or resume request, checked, without repeats, in order.

    Raises:
        InvalidJobFile: no type, an empty one, one over TYPE_MAX_CHARS characters or not
            valid Unicode text; the message names the field `type`.
    """
    if not types:
        raise InvalidJobFile("type: name at least one job type")
    for job_type in types:
        if not isinstance(job_type, str) or not job_type:
            raise InvalidJobFile(f"type must be a non-empty string, got {job_type!r}")
        if len(job_type) > TYPE_MAX_CHARS:
            raise InvalidJobFile(
                f"type must be at most {TYPE_MAX_CHARS} characters, got {len(job_type)}"
            )
        try:
            job_type.encode()
        except UnicodeEncodeError:
            raise InvalidJobFile(f"type is not valid Unicode text, got {job_type!r}") from None
    return list(dict.fromkeys(types))


def check_until(until: float | None, now: float) -> None:
    """An `until` must be later than now: a pause that ended before it was set would
    pause nothing. Raises InvalidJobFile naming the field."""
    if until is not None and until <= now:
        raise InvalidJobFile(f"until {rfc3339(until)} has passed: the pause would end at once")
