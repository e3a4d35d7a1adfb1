"""Cron expressions: five-field (Vixie) cron text, and its next occurrence in an IANA
zone under procpool's daylight-saving rules (CONTRACT 14).

    "30 2 * * *" --parse--> CronExpression: the allowed values of each field
    next_after(after, zone):
        the wall time of `after` in `zone`
          --> the matching nominal wall times from there on, in order
              (month by month, day by day, then hour and minute)
          --> each one's instants, from zoneinfo:
                ordinary wall time       its one instant
                fold (clocks go back)    fixed hour: the first of its two instants
                                         repeating hour: both
                gap (clocks go forward)  fixed hour: the first instant after the gap
                                         repeating hour: none
          --> the first instant strictly after `after`, in UTC

Fixed-hour expressions name wall-clock times ("30 2 * * *": half past two on the
kitchen clock); repeating-hour ones (`*` or a step in the hour field) name a cadence,
which keeps real time across a transition. Pure code: stdlib and zoneinfo, no I/O.
"""

from __future__ import annotations

import calendar
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

FIELDS = ("minute", "hour", "day_of_month", "month", "day_of_week")

_BOUNDS = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_month": (1, 31),
    "month": (1, 12),
    "day_of_week": (0, 7),  # 0 and 7 are both Sunday
}
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_NAMES = {
    "month": {name: number for number, name in enumerate(_MONTHS, start=1)},
    "day_of_week": {name: number for number, name in enumerate(_DAYS)},
}
_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
# Quartz and cronie extensions that procpool does not read.
_EXTENSIONS = "LW#?"
# Longest month length, leap years included: whether a day of month can ever occur.
_LONGEST = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# The Gregorian calendar repeats every 400 years, weekdays included: a day rule that
# matches nothing in 400 years and a month never matches.
_SEARCH_MONTHS = 400 * 12 + 12
_MINUTE = timedelta(minutes=1)


class CronError(ValueError):
    """An invalid cron expression. `field` names the field: "minute", "hour",
    "day_of_month", "month", "day_of_week", or "cron" (the expression as a whole:
    wrong field count, unknown @macro, an expression that can never match). The
    message names the field and the bad text."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[type[CronError], tuple[str, str]]:
        return type(self), (self.field, str(self))


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A parsed cron expression. `CronExpression(text)` and `CronExpression.parse(text)`
    both validate `text` and raise CronError; the other attributes are derived from it:
    the allowed values of each field, sorted (`days_of_week`: 0 = Sunday, 7 folded
    into 0), and `either_day`: both day fields are restricted, so that a day matching
    either one matches (Vixie cron's rule; otherwise a day must match both)."""

    text: str
    minutes: tuple[int, ...] = field(init=False, repr=False, compare=False)
    hours: tuple[int, ...] = field(init=False, repr=False, compare=False)
    days_of_month: tuple[int, ...] = field(init=False, repr=False, compare=False)
    months: frozenset[int] = field(init=False, repr=False, compare=False)
    days_of_week: frozenset[int] = field(init=False, repr=False, compare=False)
    either_day: bool = field(init=False, repr=False, compare=False)
    hour_repeats: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise CronError("cron", f"a cron expression is text, not {self.text!r}")
        sources = _split(self.text)
        values = {
            name: _parse_field(name, source, self.text)
            for name, source in zip(FIELDS, sources, strict=True)
        }
        hour_items = sources[1].split(",")
        setattr_ = object.__setattr__  # frozen: the derived attributes are set once, here
        setattr_(self, "minutes", tuple(sorted(values["minute"])))
        setattr_(self, "hours", tuple(sorted(values["hour"])))
        setattr_(self, "days_of_month", tuple(sorted(values["day_of_month"])))
        setattr_(self, "months", frozenset(values["month"]))
        setattr_(self, "days_of_week", frozenset(values["day_of_week"]))
        setattr_(
            self, "either_day", not sources[2].startswith("*") and not sources[4].startswith("*")
        )
        setattr_(self, "hour_repeats", any(item == "*" or "/" in item for item in hour_items))

    @classmethod
    def parse(cls, text: str) -> CronExpression:
        """The expression `text` (surrounding blanks ignored); CronError if invalid."""
        return cls(text.strip() if isinstance(text, str) else text)

    @property
    def repeating_hour(self) -> bool:
        """True when the hour field is `*` or has a step: the expression keeps its
        real-time cadence across daylight-saving transitions. False for one hour, a
        list or a range: wall-clock times, each run once per local date."""
        return self.hour_repeats

    @property
    def can_match(self) -> bool:
        """False when no date can ever match, such as "0 0 30 2 *"; next_after then raises."""
        if self.either_day:  # a restricted day of week matches some day of every month
            return True
        return any(day <= _LONGEST[month] for month in self.months for day in self.days_of_month)

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        """The first occurrence strictly after the instant `after` (an aware datetime in
        any zone), with the expression read in `zone`: an aware UTC datetime, whole
        seconds. CronError (field "cron") if the expression can never match; ValueError
        if `after` is naive."""
        if after.utcoffset() is None:
            raise ValueError(f"next_after needs an aware datetime, not {after!r}")
        if not self.can_match:
            raise CronError(
                "cron",
                f"cron expression '{self.text}' can never match: none of its days of"
                " month exists in its months",
            )
        after_utc = after.astimezone(UTC).replace(tzinfo=None)
        local = after.astimezone(zone)
        wall = local.replace(tzinfo=None)
        if self.hour_repeats:
            repeated = _offset(local.replace(fold=0)) - _offset(local.replace(fold=1))
            if repeated > timedelta(0):
                # `after` lies in a fold: the second instants of nominal times earlier in
                # the fold, before `wall`, can still be ahead of it.
                wall -= repeated
        start = wall.replace(second=0, microsecond=0) + _MINUTE
        best: datetime | None = None
        for nominal in self._nominal_times(start):
            first, second = self._instants(nominal, zone)
            if second is not None and second > after_utc and (best is None or second < best):
                best = second
            if first is not None and first > after_utc:
                # First instants increase with the nominal time, and a fold's second
                # instants all come after the first instants of that fold: nothing
                # later can be earlier than this one.
                if best is None or first < best:
                    best = first
                return best.replace(tzinfo=UTC)
        raise CronError(
            "cron", f"cron expression '{self.text}' has no occurrence after {after.isoformat()}"
        )

    def _instants(
        self, nominal: datetime, zone: ZoneInfo
    ) -> tuple[datetime | None, datetime | None]:
        """The instants (naive UTC) of the local wall time `nominal`: the first one, or
        None when it does not occur; the second one in a fold for a repeating hour."""
        local = nominal.replace(tzinfo=zone)
        earlier = _offset(local)  # the offset before a transition: PEP 495's fold=0
        later = _offset(local.replace(fold=1))
        if earlier == later:
            return nominal - earlier, None
        if earlier > later:  # a fold: the wall time happens twice
            return nominal - earlier, (nominal - later if self.hour_repeats else None)
        if self.hour_repeats:  # a gap: this wall time does not exist
            return None, None
        return _transition(nominal - later, nominal - earlier, zone), None

    def _nominal_times(self, start: datetime) -> Iterator[datetime]:
        """The matching wall times (naive, whole minutes) from `start` on, in order;
        ends after 401 years, or at the year 9999."""
        year, month, first_day = start.year, start.month, start.day
        for _ in range(_SEARCH_MONTHS):
            if month in self.months:
                for day in self._days(year, month, first_day):
                    yield from self._times_on(year, month, day, start)
            first_day = 1
            if month == 12:
                if year == 9999:
                    return
                year, month = year + 1, 1
            else:
                month += 1

    def _days(self, year: int, month: int, first_day: int) -> Iterator[int]:
        """The matching days of a month of the allowed months, from `first_day` on."""
        monday_first, length = calendar.monthrange(year, month)
        sunday_first = (monday_first + 1) % 7  # cron counts weekdays from Sunday = 0
        if self.either_day:
            for day in range(first_day, length + 1):
                if day in self.days_of_month or (sunday_first + day - 1) % 7 in self.days_of_week:
                    yield day
            return
        every_weekday = len(self.days_of_week) == 7
        days = self.days_of_month
        for day in days[bisect_left(days, first_day) :]:
            if day > length:
                return
            if every_weekday or (sunday_first + day - 1) % 7 in self.days_of_week:
                yield day

    def _times_on(self, year: int, month: int, day: int, start: datetime) -> Iterator[datetime]:
        """The matching wall times of one matching date, those before `start` left out."""
        hours = self.hours
        on_start_date = (year, month, day) == (start.year, start.month, start.day)
        if on_start_date:
            hours = hours[bisect_left(hours, start.hour) :]
        for hour in hours:
            minutes = self.minutes
            if on_start_date and hour == start.hour:
                minutes = minutes[bisect_left(minutes, start.minute) :]
            for minute in minutes:
                yield datetime(year, month, day, hour, minute)


def _offset(local: datetime) -> timedelta:
    offset = local.utcoffset()
    if offset is None:  # pragma: no cover - a ZoneInfo datetime always has one
        raise ValueError(f"{local!r} has no UTC offset")
    return offset


def _transition(before: datetime, after: datetime, zone: ZoneInfo) -> datetime:
    """The instant (naive UTC) in (before, after] where `zone`'s offset changes: the
    first instant after a gap. Bisects whole seconds, as tzdata's transitions are."""
    offset_before = _offset(before.replace(tzinfo=UTC).astimezone(zone))
    low, high = 0, int((after - before).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        instant = before + timedelta(seconds=middle)
        if _offset(instant.replace(tzinfo=UTC).astimezone(zone)) == offset_before:
            low = middle
        else:
            high = middle
    return before + timedelta(seconds=high)


def _split(text: str) -> list[str]:
    """The five field texts of `text`, a macro expanded."""
    if text.startswith("@"):
        expansion = _MACROS.get(text.lower())
        if expansion is None:
            known = ", ".join(_MACROS)
            raise CronError("cron", f"cron: unknown macro '{text}' (known: {known})")
        return expansion.split()
    sources = text.split()
    if len(sources) != len(FIELDS):
        hint = "; a seconds or year field is not supported" if len(sources) in (6, 7) else ""
        raise CronError(
            "cron",
            f"cron: expected 5 fields (minute hour day-of-month month day-of-week),"
            f" got {len(sources)} in '{text}'{hint}",
        )
    return sources


def _parse_field(name: str, source: str, text: str) -> set[int]:
    """The allowed values of one field: a comma-separated list of `*`, N, N-M, each
    with an optional /STEP (N/STEP is N-max/STEP)."""
    low, high = _BOUNDS[name]
    values: set[int] = set()
    for item in source.split(","):
        if not item:
            raise CronError(name, f"cron field {name}: an empty list item in '{text}'")
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _number(name, step_text, text)
            if step < 1:
                raise CronError(
                    name, f"cron field {name}: step {step} is not at least 1 in '{text}'"
                )
        if body == "*":
            first, last = low, high
        else:
            start_text, dash, end_text = body.partition("-")
            first = _value(name, start_text, text)
            last = _value(name, end_text, text) if dash else (high if slash else first)
            if last < first:
                raise CronError(
                    name, f"cron field {name}: the range {body} runs backwards in '{text}'"
                )
        values.update(range(first, last + 1, step))
    if name == "day_of_week" and 7 in values:
        values.discard(7)
        values.add(0)
    return values


def _value(name: str, token: str, text: str) -> int:
    """One value of field `name`: a number in its range, or a month or day name."""
    names = _NAMES.get(name, {})
    if token.upper() in names:
        return names[token.upper()]
    low, high = _BOUNDS[name]
    number = _number(name, token, text)
    if not low <= number <= high:
        raise CronError(
            name, f"cron field {name}: {number} is out of range {low}-{high} in '{text}'"
        )
    return number


def _number(name: str, token: str, text: str) -> int:
    if token.isascii() and token.isdigit():
        return int(token)
    if not token:
        detail = "a number is missing"
    elif any(character in _EXTENSIONS for character in token.upper()):
        detail = f"'{token}' is not supported (no L, W, # or ?)"
    elif name in _NAMES:
        kind = "month" if name == "month" else "day"
        detail = f"'{token}' is neither a number nor a {kind} name"
    else:
        detail = f"'{token}' is not a number"
    raise CronError(name, f"cron field {name}: {detail} in '{text}'")
