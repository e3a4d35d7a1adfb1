"""Schedules (CONTRACT section 14): what a schedule file says, and which jobs a
schedule's due occurrences become. Pure code: no clock, no store.

    schedule file (TOML or JSON) ─parse_file─▶ [Schedule] ─diff─▶ added/changed/removed
    Schedule + cursor + now + facts ─plan─▶ Plan: instants to create, skips, new cursor, wake

A schedule's occurrences come from an occurrence source: `Every` (real-time
seconds, aligned to `start` or to the epoch, ignoring `tz`) or a cron expression
in the schedule's zone (`CronSource`, over procpool.domain.cron). Each occurrence
is identified by its instant in UTC: its job's id is `NAME.YYYYMMDDTHHMMSSZ`.

The cursor is the last instant handled: every occurrence at or before it has
been created or skipped. The store advances it by compare-and-set in the
transaction that inserts the occurrences' jobs, so that any number of daemons
create each occurrence once (`plan` only says what to do). Times are seconds
since the epoch (floats) on the store's clock.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from procpool.domain.cron import CronError, CronExpression
from procpool.domain.errors import InvalidJobFile, ProcpoolError
from procpool.domain.job import Job
from procpool.domain.spec import (
    ID_PATTERN,
    MAX_SECONDS,
    JobDefaults,
    JobSpec,
    ScheduleRequest,
    decode,
    encode_json,
    parse_time,
    show,
    to_job,
)

NAME_MAX_CHARS = 100
OVERLAPS = ("skip", "queue", "allow")
CATCHUPS = ("latest", "all", "none")
# Skip reasons, as `schedule.skipped` and the counters name them.
REASONS = ("missed", "overlap", "paused", "ended", "no_handler")
DEFAULT_GRACE = 60.0
# catchup = "all" creates at most this many missed occurrences.
CATCHUP_ALL_MAX = 100
# Occurrences one plan looks at: a schedule missed for longer is worked through in
# several plans (turns), so that one turn stays short.
SCAN_MAX = 10_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"([0-9]+)\s*([smhd])", re.ASCII)
# Fields of the job file that a template may not hold: each occurrence sets them.
_NOT_IN_TEMPLATE = {
    "id": "each occurrence gets the id NAME.YYYYMMDDTHHMMSSZ",
    "run_at": "each occurrence runs at its instant",
    "retry_of": "it is set by procpool retry only",
    "from_checkpoint": "it is set by procpool retry --resume only",
    "after": "every occurrence would wait for the same jobs, which end once",
    "after_failure": "it goes with after",
}
_FIELDS = (
    "name", "cron", "every", "tz", "overlap", "catchup", "grace", "start", "end", "job",
)  # fmt: skip


class ScheduleError(InvalidJobFile):
    """A schedule that cannot be: `schedule` names it (None: the file as a whole),
    `field` the field at fault (`job.type` for one of its template)."""

    def __init__(self, schedule: str | None, field: str, reason: str) -> None:
        where = f"schedule {show(schedule)}: " if schedule is not None else ""
        super().__init__(f"{where}{field}: {reason}")
        self.schedule = schedule
        self.field = field


class UnknownSchedule(ProcpoolError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule {show(name)}")
        self.name = name


class OccurrenceSource(Protocol):
    """Where a schedule's instants come from."""

    def next_after(self, after: float) -> float:
        """The first instant strictly after `after` (seconds since the epoch)."""
        ...


@dataclass(frozen=True, slots=True)
class Every:
    """Every `seconds` of real time, from `anchor` (whole seconds since the epoch)."""

    seconds: int
    anchor: int = 0

    def next_after(self, after: float) -> float:
        if after < self.anchor:
            return float(self.anchor)
        periods = math.floor((after - self.anchor) / self.seconds) + 1
        return float(self.anchor + periods * self.seconds)


@dataclass(frozen=True, slots=True)
class CronSource:
    """A cron expression's instants in a zone (the daylight-saving rules are the
    expression's own: procpool.domain.cron)."""

    expression: CronExpression
    zone: ZoneInfo

    def next_after(self, after: float) -> float:
        moment = datetime.fromtimestamp(after, UTC)
        return self.expression.next_after(moment, self.zone).timestamp()


def parse_cron(text: str) -> CronExpression:
    """A cron expression that can match some date.

    Raises:
        CronError: naming the field at fault ("cron" for one that never matches).
    """
    expression = CronExpression.parse(text)
    if not expression.can_match:
        raise CronError("cron", f"cron expression '{text}' can never match: none of its days"
                        " of month exists in its months")  # fmt: skip
    return expression


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A checked schedule: what the store keeps as its definition. `every` in whole
    seconds; `start` and `end` as given (RFC 3339); `job` the template as written."""

    name: str
    cron: str | None = None
    every: int | None = None
    tz: str = "UTC"
    overlap: str = "skip"
    catchup: str = "latest"
    grace: float = DEFAULT_GRACE
    start: str | None = None
    end: str | None = None
    job: dict[str, Any]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def starts(self) -> float | None:
        return None if self.start is None else parse_time(self.start, "start")

    @property
    def ends(self) -> float | None:
        return None if self.end is None else parse_time(self.end, "end")

    @property
    def type(self) -> str:
        job_type: str = self.job["type"]
        return job_type

    def source(self) -> OccurrenceSource:
        if self.every is not None:
            starts = self.starts
            return Every(self.every, 0 if starts is None else math.ceil(starts))
        assert self.cron is not None
        return CronSource(parse_cron(self.cron), self.zone)

    def template(self) -> JobSpec:
        spec = decode(encode_json(self.job))
        assert isinstance(spec, JobSpec)  # checked by `check`
        return spec

    def to_builtins(self) -> dict[str, Any]:
        """The definition as a schedule file's entry (JSON values)."""
        value: dict[str, Any] = msgspec.to_builtins(self)
        return value

    def encoded(self) -> bytes:
        """The definition as canonical JSON: equal definitions, equal bytes."""
        return encode_json(self)


_decoder = msgspec.json.Decoder(Schedule)


def from_stored(definition: bytes) -> Schedule:
    """A definition as `Schedule.encoded` wrote it (checked when it was applied)."""
    return _decoder.decode(definition)


# ----------------------------------------------------------------- checking


def _every(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ScheduleError(
            name, "every", f'must be seconds or a duration such as "15m", got {show(value)}'
        )
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ScheduleError(
                name,
                "every",
                f'must be a number and a unit (s, m, h, d) such as "15m", got {show(value)}',
            )
        seconds: float = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        seconds = value
    if not math.isfinite(seconds) or seconds < 1:
        raise ScheduleError(name, "every", f"must be at least 1 s, got {show(value)}")
    if seconds > MAX_SECONDS:
        raise ScheduleError(name, "every", f"must be at most ten years, got {show(value)}")
    if seconds != int(seconds):
        raise ScheduleError(name, "every", f"must be a whole number of seconds, got {show(value)}")
    return int(seconds)


def _choice(name: str, field: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        listed = ", ".join(f'"{choice}"' for choice in choices)
        raise ScheduleError(name, field, f"must be one of {listed}, got {show(value)}")
    assert isinstance(value, str)
    return value


def _text(name: str | None, field: str, value: object) -> str:
    if not isinstance(value, str):
        raise ScheduleError(name, field, f"must be a string, got {show(value)}")
    return value


def _time(name: str, field: str, value: object) -> str:
    text = _text(name, field, value)
    try:
        parse_time(text, field)
    except InvalidJobFile as error:
        raise ScheduleError(name, field, str(error).removeprefix(f"{field} ")) from None
    return text


def _cron(name: str, value: object) -> str:
    """A cron expression's text, parsed; errors name the cron field at fault."""
    text = _text(name, "cron", value)
    try:
        parse_cron(text)
    except CronError as error:
        field = "cron" if error.field == "cron" else f"cron {error.field}"
        reason = str(error)
        for said in (f"cron field {error.field}: ", "cron: "):
            reason = reason.removeprefix(said)
        raise ScheduleError(name, field, reason) from None
    return text


def _template(name: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScheduleError(name, "job", f"must be a table of job-file fields, got {show(value)}")
    for field, why in _NOT_IN_TEMPLATE.items():
        if field in value:
            raise ScheduleError(name, f"job.{field}", f"not allowed in a schedule's job: {why}")
    if "type" not in value:
        raise ScheduleError(name, "job.type", "missing: name the handler that runs the jobs")
    try:
        spec = decode(encode_json(value))
    except (InvalidJobFile, TypeError, ValueError) as error:
        raise ScheduleError(name, "job", str(error)) from None
    if not isinstance(spec, JobSpec):
        raise ScheduleError(name, "job", "is not a job")
    return value


def check(value: object) -> Schedule:
    """One schedule of a file (a table or object), checked field by field.

    Raises:
        ScheduleError: naming the schedule (when it has a name) and the field: an
            unknown field, a name outside the job-id alphabet or over 100 characters,
            neither or both of cron and every, an invalid cron field (`cron`, with the
            part at fault), every under 1 s, an unknown zone (`tz`), an overlap or
            catchup not listed, a negative grace,
            a start or end that is not RFC 3339 or an end before the start, a job
            template that is not a valid job file, or holds id or run_at.
    """
    if not isinstance(value, dict):
        raise ScheduleError(None, "schedule", f"must be a table, got {show(value)}")
    raw = value.get("name")
    if raw is None:
        raise ScheduleError(None, "name", "missing: each schedule needs a name")
    name = _text(None, "name", raw)
    if len(name) > NAME_MAX_CHARS or not ID_PATTERN.fullmatch(name):
        raise ScheduleError(
            None,
            "name",
            f"must be 1-{NAME_MAX_CHARS} characters of A-Z a-z 0-9 . _ -, not starting"
            f' with "." or "-", got {show(name)}',
        )
    for field in value:
        if field not in _FIELDS:
            raise ScheduleError(name, str(field), "unknown field")
    cron, every = value.get("cron"), value.get("every")
    if (cron is None) == (every is None):
        raise ScheduleError(name, "cron", "give either cron or every, not both or neither")
    tz = _text(name, "tz", value.get("tz", "UTC"))
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            name, "tz", f"unknown time zone {show(tz)} (an IANA name such as Europe/Berlin)"
        ) from None
    if cron is not None:
        cron = _cron(name, cron)
    overlap = _choice(name, "overlap", value.get("overlap", "skip"), OVERLAPS)
    grace = value.get("grace", DEFAULT_GRACE)
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or not 0 <= grace <= MAX_SECONDS
    ):
        raise ScheduleError(
            name, "grace", f"must be a number of seconds from 0 to ten years, got {show(grace)}"
        )
    start = None if value.get("start") is None else _time(name, "start", value["start"])
    end = None if value.get("end") is None else _time(name, "end", value["end"])
    if (
        start is not None
        and end is not None
        and parse_time(end, "end") <= parse_time(start, "start")
    ):
        raise ScheduleError(name, "end", f"must be later than start, got {show(end)}")
    return Schedule(
        name=name,
        cron=cron,
        every=None if every is None else _every(name, every),
        tz=tz,
        overlap=overlap,
        catchup=_choice(name, "catchup", value.get("catchup", "latest"), CATCHUPS),
        grace=float(grace),
        start=start,
        end=end,
        job=_template(name, value.get("job")),
    )


def parse_file(data: bytes, *, json_file: bool = False) -> list[Schedule]:
    """The schedules of a schedule file: TOML, or JSON of the same shape
    (`{"schedule": [...]}`), each checked (`check`), names unique.

    Raises:
        ScheduleError: the file is not TOML (JSON), has no `schedule` array, or a
            schedule is bad (its name and field named); nothing of it counts then.
    """
    try:
        text = data.decode("utf-8")
        document = json.loads(text) if json_file else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as error:
        kind = "JSON" if json_file else "TOML"
        raise ScheduleError(None, "file", f"not valid {kind}: {error}") from None
    if not isinstance(document, dict):
        raise ScheduleError(None, "file", "must hold a schedule array")
    extra = next((key for key in document if key != "schedule"), None)
    if extra is not None:
        raise ScheduleError(
            None, str(extra), 'unknown field; a schedule file holds "schedule" entries only'
        )
    entries = document.get("schedule", [])
    if not isinstance(entries, list):
        raise ScheduleError(None, "schedule", "must be an array of tables ([[schedule]])")
    return check_request(ScheduleRequest("apply", definitions=entries))


@dataclass(frozen=True)
class Changes:
    """What applying a file does to the stored schedules, by name, sorted."""

    added: list[Schedule]
    changed: list[Schedule]
    removed: list[str]

    @property
    def none(self) -> bool:
        return not (self.added or self.changed or self.removed)


def diff(stored: Mapping[str, bytes], wanted: Sequence[Schedule]) -> Changes:
    """The changes that make the stored definitions (name -> `Schedule.encoded`) be
    exactly `wanted`."""
    names = {schedule.name for schedule in wanted}
    ordered = sorted(wanted, key=lambda schedule: schedule.name)
    return Changes(
        added=[s for s in ordered if s.name not in stored],
        changed=[s for s in ordered if s.name in stored and stored[s.name] != s.encoded()],
        removed=sorted(name for name in stored if name not in names),
    )


# ----------------------------------------------------------------- occurrences


def _stamp(instant: float) -> str:
    return datetime.fromtimestamp(instant, UTC).strftime("%Y%m%dT%H%M%SZ")


def occurrence_id(name: str, instant: float) -> str:
    """The id of an occurrence's job: NAME.YYYYMMDDTHHMMSSZ (its instant in UTC)."""
    return f"{name}.{_stamp(instant)}"


def manual_id(name: str, now: float) -> str:
    """The id of a job that `schedule trigger` makes: NAME.manual-YYYYMMDDTHHMMSSZ."""
    return f"{name}.manual-{_stamp(now)}"


def scheduled_for(schedule: Schedule, instant: float, *, local: bool = False) -> str:
    """An occurrence's nominal time in the schedule's zone, RFC 3339 with its offset
    (`every` ignores the zone: UTC, unless `local`, which shows the zone's time)."""
    zone = UTC if schedule.every is not None and not local else schedule.zone
    return datetime.fromtimestamp(instant, zone).isoformat()


def queued(schedule: Schedule, made: Sequence[Job], latest: str | None) -> tuple[Job, ...]:
    """The jobs of a plan as overlap "queue" makes them: each waits for the job before
    it (the first for `latest`, the schedule's job still pending or running, if any)
    and runs once that one has ended, whatever its outcome (`after`, `after_failure`
    "run"; CONTRACT 15). `plan` made at most one of them wait."""
    if schedule.overlap != "queue":
        return tuple(made)
    jobs: list[Job] = []
    before = latest
    for job in made:
        jobs.append(
            job if before is None
            else msgspec.structs.replace(job, after=(before,), after_failure="run")
        )  # fmt: skip
        before = job.id
    return tuple(jobs)


def job_of(
    schedule: Schedule, instant: float, defaults: JobDefaults, now: float, *, manual: bool = False
) -> Job:
    """The job of the occurrence at `instant`: the template's, with the occurrence's id,
    run at its instant (plus the template's delay, if any), its `schedule` and
    `scheduled_for`. `manual`: a job of `schedule trigger` (id NAME.manual-...)."""
    template = schedule.template()
    job_id = (manual_id if manual else occurrence_id)(schedule.name, instant)
    spec = msgspec.structs.replace(template, id=job_id, delay=None, run_at=None)
    job = to_job(spec, job_id=job_id, defaults=defaults, now=now)
    return msgspec.structs.replace(
        job,
        run_at=instant + (template.delay or 0.0),
        schedule=schedule.name,
        scheduled_for=scheduled_for(schedule, instant),
    )


def check_request(request: ScheduleRequest) -> list[Schedule]:
    """The schedules of an apply request, checked (`check`); [] for the other actions.

    Raises:
        ScheduleError: a definition is bad, or names given twice (the field named).
    """
    if request.schedules != "apply":
        return []
    checked = [check(value) for value in request.definitions or []]
    names = [schedule.name for schedule in checked]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise ScheduleError(twice, "name", "given twice")
    return checked


def upcoming(schedule: Schedule, after: float, count: int) -> list[float]:
    """The next `count` instants after `after`, within start and end."""
    source, ends = schedule.source(), schedule.ends
    instants: list[float] = []
    instant = _first(schedule, source, after)
    while len(instants) < count and (ends is None or instant <= ends):
        instants.append(instant)
        instant = source.next_after(instant)
    return instants


def _first(schedule: Schedule, source: OccurrenceSource, after: float) -> float:
    starts = schedule.starts
    if starts is not None and after < starts:
        after = math.ceil(starts) - 1  # instants are whole seconds: the start may be one
    return source.next_after(after)


@dataclass(frozen=True)
class Skip:
    """An occurrence not created, and why (one of REASONS)."""

    instant: float
    reason: str


@dataclass(frozen=True)
class Plan:
    """What to do about a schedule at `now`: the instants whose jobs to create (oldest
    first), the occurrences skipped, the cursor once both are done (unchanged when
    nothing was due), and when to plan again (None: never; the schedule has ended)."""

    create: tuple[float, ...]
    skipped: tuple[Skip, ...]
    cursor: float
    wake: float | None


@dataclass(frozen=True)
class Facts:
    """What a plan depends on besides the clock: an earlier job of the schedule is
    pending or running (`active`), and is itself queued behind the one before it
    (`waiting`: overlap "queue"), the schedule is paused, some daemon serves its type
    (`served`)."""

    active: bool = False
    waiting: bool = False
    paused: bool = False
    served: bool = True


def plan(
    schedule: Schedule,
    cursor: float | None,
    now: float,
    facts: Facts = Facts(),
    source: OccurrenceSource | None = None,
) -> Plan:
    """Decide the occurrences due after `cursor` and at or before `now` (CONTRACT 14).

    `cursor` None (a schedule never planned) starts at `now`: a new schedule never
    fires for the past. An occurrence later than its instant + `grace` is missed:
    `catchup` "latest" creates only the most recent missed one and only while no later
    occurrence is due; "all" creates them oldest first, at most CATCHUP_ALL_MAX, the
    rest skipped `missed`; "none" creates none. A missed one found after `end` is
    skipped `ended`. A paused schedule skips each as `paused`, one no daemon serves as
    `no_handler`. With `overlap` "skip", an occurrence is skipped `overlap` while an
    earlier job of the schedule is pending or running, the ones this plan creates
    included; with "queue", it is created to wait for the earlier job (`queued`),
    unless one already waits so: then it is skipped `overlap`. `source`: the schedule's
    own, unless given (tests).
    """
    if cursor is None:
        return Plan((), (), now, _wake(schedule, source or schedule.source(), now))
    source = source or schedule.source()
    ends = schedule.ends
    due: list[float] = []
    instant: float | None = _first(schedule, source, cursor)
    while instant is not None and instant <= now and len(due) < SCAN_MAX:
        if ends is not None and instant > ends:
            instant = None
            break
        due.append(instant)
        instant = source.next_after(instant)
    if instant is not None and ends is not None and instant > ends:
        instant = None
    more = instant is not None and instant <= now  # SCAN_MAX reached: the rest next turn
    wake = now if more else instant
    if not due:
        return Plan((), (), cursor, wake)
    if not facts.served or facts.paused:
        reason = "paused" if facts.paused else "no_handler"
        return Plan((), tuple(Skip(t, reason) for t in due), due[-1], wake)
    on_time = [t for t in due if now <= t + schedule.grace]
    missed = due[: len(due) - len(on_time)]
    caught: list[float] = []
    if schedule.catchup == "all":
        caught = missed[:CATCHUP_ALL_MAX]
    elif schedule.catchup == "latest" and missed and not on_time and not more:
        caught = missed[-1:]
    skipped = [Skip(t, "missed") for t in missed if t not in caught]
    if caught and ends is not None and now > ends:
        skipped += [Skip(t, "ended") for t in caught]
        caught = []
    create: list[float] = []
    active, waiting = facts.active, facts.waiting
    for t in sorted(caught + on_time):
        if active and (schedule.overlap == "skip" or (schedule.overlap == "queue" and waiting)):
            skipped.append(Skip(t, "overlap"))
            continue
        waiting = active  # a job made while an earlier one is active waits for it
        create.append(t)
        active = True
    skipped.sort(key=lambda skip: skip.instant)
    return Plan(tuple(create), tuple(skipped), due[-1], wake)


def _wake(schedule: Schedule, source: OccurrenceSource, after: float) -> float | None:
    instant = _first(schedule, source, after)
    ends = schedule.ends
    return None if ends is not None and instant > ends else instant


# ----------------------------------------------------------------- as stored


@dataclass(frozen=True)
class Stored:
    """A schedule as the store keeps it: its definition, its cursor (the last instant
    handled), whether it is paused, the id of its latest job (`last_job`, for overlap),
    the instant of its latest occurrence created (`last_run`) and its latest skip
    (`last_skip`: instant and reason)."""

    schedule: Schedule
    cursor: float
    paused: bool = False
    last_job: str | None = None
    last_run: float | None = None
    last_skip: Skip | None = None


@dataclass(frozen=True)
class Advance:
    """What one plan writes, in the transaction that moves the cursor from its expected
    value to `cursor`: the occurrences' jobs (those whose ids exist are left as they are)
    and the skips (counted by reason; the latest kept)."""

    cursor: float
    jobs: tuple[Job, ...] = ()
    skipped: tuple[Skip, ...] = ()
    run: float | None = None  # the instant of the latest job of `jobs`

    @property
    def last_job(self) -> str | None:
        return self.jobs[-1].id if self.jobs else None

    @property
    def last_skip(self) -> Skip | None:
        return self.skipped[-1] if self.skipped else None
