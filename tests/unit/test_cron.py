"""The cron evaluator (domain/cron.py; CONTRACT section 14, daylight saving).

Every expected instant is written out by hand from the zone's rules (the transitions
are listed above each table, as zoneinfo reports them for tzdata 2025b), never
computed by the code under test. The property tests at the end compare the evaluator
with a brute-force oracle that looks at every minute of a window.
"""

from __future__ import annotations

import itertools
import pickle
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from procpool.domain.cron import CronError, CronExpression


def utc(text: str) -> datetime:
    """'2027-03-28 01:00' (or with seconds) as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def walk(expression: str, zone: str, after: str, count: int) -> list[datetime]:
    """The next `count` occurrences after `after`, each one fed back as the next `after`."""
    cron = CronExpression.parse(expression)
    instant = utc(after)
    found = []
    for _ in range(count):
        instant = cron.next_after(instant, ZoneInfo(zone))
        found.append(instant)
    return found


# --- parsing -----------------------------------------------------------------------

EVERY_MINUTE = tuple(range(60))

PARSED = [
    ("* * * * *", "minutes", EVERY_MINUTE),
    ("*/15 * * * *", "minutes", (0, 15, 30, 45)),
    ("1-30/5 * * * *", "minutes", (1, 6, 11, 16, 21, 26)),
    ("5/15 * * * *", "minutes", (5, 20, 35, 50)),
    ("0,30,15 * * * *", "minutes", (0, 15, 30)),
    ("*/100 * * * *", "minutes", (0,)),
    ("0 9-17 * * *", "hours", tuple(range(9, 18))),
    ("0 */6,1 * * *", "hours", (0, 1, 6, 12, 18)),
    ("0 0 1-31/10 * *", "days_of_month", (1, 11, 21, 31)),
    ("0 0 * JAN,jul,Dec *", "months", frozenset({1, 7, 12})),
    ("0 0 * feb-APR *", "months", frozenset({2, 3, 4})),
    ("0 0 * JAN-DEC/3 *", "months", frozenset({1, 4, 7, 10})),
    ("0 0 * * MON-FRI", "days_of_week", frozenset({1, 2, 3, 4, 5})),
    ("0 0 * * sun", "days_of_week", frozenset({0})),
    ("0 0 * * 7", "days_of_week", frozenset({0})),
    ("0 0 * * 5-7", "days_of_week", frozenset({5, 6, 0})),
    ("0 0 * * 0-7", "days_of_week", frozenset(range(7))),
    ("0 0 * * */2", "days_of_week", frozenset({0, 2, 4, 6})),
    ("0 0 * * Sat,1", "days_of_week", frozenset({6, 1})),
    ("  0  0\t* * *  ", "hours", (0,)),
]


@pytest.mark.parametrize(
    ("text", "attribute", "values"), PARSED, ids=[f"{t.strip()}:{a}" for t, a, _ in PARSED]
)
def test_parse_reads_every_syntax(text: str, attribute: str, values: object) -> None:
    assert getattr(CronExpression.parse(text), attribute) == values


MACROS = [
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@DAILY", "0 0 * * *"),
]

FIELD_ATTRIBUTES = ("minutes", "hours", "days_of_month", "months", "days_of_week", "either_day")


@pytest.mark.parametrize(("macro", "fields"), MACROS, ids=[m for m, _ in MACROS])
def test_macros_mean_their_five_fields(macro: str, fields: str) -> None:
    parsed, expanded = CronExpression.parse(macro), CronExpression.parse(fields)
    for attribute in (*FIELD_ATTRIBUTES, "repeating_hour"):
        assert getattr(parsed, attribute) == getattr(expanded, attribute), attribute
    assert parsed.text == macro


REPEATING = [
    ("* * * * *", True),
    ("0 * * * *", True),
    ("0 */2 * * *", True),
    ("0 1-23/2 * * *", True),
    ("0 5/6 * * *", True),
    ("0 1,*/12 * * *", True),
    ("@hourly", True),
    ("0 0 * * *", False),
    ("0 1,13 * * *", False),
    ("0 9-17 * * *", False),
    ("0 0-23 * * *", False),
    ("@daily", False),
]


@pytest.mark.parametrize(("text", "repeating"), REPEATING, ids=[t for t, _ in REPEATING])
def test_repeating_hour_is_a_star_or_a_step_in_the_hour_field(text: str, repeating: bool) -> None:
    assert CronExpression.parse(text).repeating_hour is repeating


EITHER_DAY = [
    ("0 0 1 * MON", True),
    ("0 0 1,15 * 1-5", True),
    ("0 0 * * MON", False),
    ("0 0 1 * *", False),
    ("0 0 */2 * MON", False),
    ("0 0 1 * */2", False),
    ("* * * * *", False),
]


@pytest.mark.parametrize(("text", "either"), EITHER_DAY, ids=[t for t, _ in EITHER_DAY])
def test_either_day_when_neither_day_field_starts_with_a_star(text: str, either: bool) -> None:
    assert CronExpression.parse(text).either_day is either


ERRORS = [
    ("0 24 * * *", "hour", "cron field hour: 24 is out of range 0-23 in '0 24 * * *'"),
    ("60 * * * *", "minute", "cron field minute: 60 is out of range 0-59"),
    ("0 0 0 * *", "day_of_month", "0 is out of range 1-31"),
    ("0 0 32 * *", "day_of_month", "32 is out of range 1-31"),
    ("0 0 * 0 *", "month", "0 is out of range 1-12"),
    ("0 0 * 13 *", "month", "13 is out of range 1-12"),
    ("0 0 * * 8", "day_of_week", "8 is out of range 0-7"),
    ("0 0 * FOO *", "month", "'FOO' is neither a number nor a month name"),
    ("0 0 * * FUNDAY", "day_of_week", "'FUNDAY' is neither a number nor a day name"),
    ("0 0 * * MONDAY", "day_of_week", "'MONDAY' is neither a number nor a day name"),
    ("MON 0 * * *", "minute", "'MON' is not a number"),
    ("0 0 JAN * *", "day_of_month", "'JAN' is not a number"),
    ("1.5 * * * *", "minute", "'1.5' is not a number"),
    ("+5 * * * *", "minute", "'+5' is not a number"),
    ("\uff15 * * * *", "minute", "is not a number"),
    ("0 0 L * *", "day_of_month", "'L' is not supported (no L, W, # or ?)"),
    ("0 0 LW * *", "day_of_month", "'LW' is not supported (no L, W, # or ?)"),
    ("0 0 15W * *", "day_of_month", "'15W' is not supported (no L, W, # or ?)"),
    ("0 0 ? * *", "day_of_month", "'?' is not supported (no L, W, # or ?)"),
    ("0 0 * * 5L", "day_of_week", "'5L' is not supported (no L, W, # or ?)"),
    ("0 0 * * 5#3", "day_of_week", "'5#3' is not supported (no L, W, # or ?)"),
    ("0 0 * * ?", "day_of_week", "'?' is not supported (no L, W, # or ?)"),
    ("*/0 * * * *", "minute", "step 0 is not at least 1"),
    ("*/x * * * *", "minute", "'x' is not a number"),
    ("*/ * * * *", "minute", "a number is missing"),
    ("5-1 * * * *", "minute", "the range 5-1 runs backwards"),
    ("0 0 * * MON-SUN", "day_of_week", "the range MON-SUN runs backwards"),
    ("1,,2 * * * *", "minute", "an empty list item"),
    ("0 1, * * *", "hour", "an empty list item"),
    ("-5 * * * *", "minute", "a number is missing"),
    ("1-2-3 * * * *", "minute", "'2-3' is not a number"),
    ("*-5 * * * *", "minute", "'*' is not a number"),
    ("0 0 * *", "cron", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("0 0 0 * * *", "cron", "got 6 in '0 0 0 * * *'; a seconds or year field is not supported"),
    ("0 0 * * * * 2027", "cron", "got 7"),
    ("", "cron", "got 0"),
    ("   ", "cron", "got 0"),
    ("@reboot", "cron", "unknown macro '@reboot'"),
    ("@every 5m", "cron", "unknown macro '@every 5m'"),
    ("@daily 0", "cron", "unknown macro"),
]


@pytest.mark.parametrize(
    ("text", "field", "message"), ERRORS, ids=[t or "empty" for t, _, _ in ERRORS]
)
def test_parse_errors_name_the_field(text: str, field: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        CronExpression.parse(text)
    assert caught.value.field == field
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_the_constructor_validates_like_parse() -> None:
    with pytest.raises(CronError, match="hour"):
        CronExpression("0 24 * * *")
    with pytest.raises(CronError) as caught:
        CronExpression.parse(5)  # type: ignore[arg-type]
    assert caught.value.field == "cron"


def test_a_cron_error_survives_pickling() -> None:
    with pytest.raises(CronError) as caught:
        CronExpression.parse("0 24 * * *")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.field, str(copy)) == ("hour", str(caught.value))


def test_expressions_compare_by_text() -> None:
    assert CronExpression.parse("0 0 * * *") == CronExpression("0 0 * * *")
    assert repr(CronExpression.parse("@daily")) == "CronExpression(text='@daily')"


# --- next_after without daylight saving --------------------------------------------
# 2027-01-01 is a Friday.

ORDINARY = [
    ("* * * * *", "2027-01-01 00:00", ["2027-01-01 00:01", "2027-01-01 00:02"]),
    ("* * * * *", "2027-01-01 00:00:30.5", ["2027-01-01 00:01"]),
    ("*/15 * * * *", "2027-01-01 00:15", ["2027-01-01 00:30", "2027-01-01 00:45"]),
    ("*/15 * * * *", "2027-01-01 00:59:59", ["2027-01-01 01:00"]),
    ("0 * * * *", "2027-01-01 23:30", ["2027-01-02 00:00", "2027-01-02 01:00"]),
    ("30 2 * * *", "2027-01-01 02:30", ["2027-01-02 02:30", "2027-01-03 02:30"]),
    ("30 2 * * *", "2027-01-01 02:29:59", ["2027-01-01 02:30"]),
    ("0 0 1 * *", "2027-01-15 00:00", ["2027-02-01 00:00", "2027-03-01 00:00"]),
    ("0 0 31 * *", "2027-01-31 00:00", ["2027-03-31 00:00", "2027-05-31 00:00"]),
    ("0 0 1 1 *", "2027-06-01 00:00", ["2028-01-01 00:00"]),
    ("59 23 31 12 *", "2027-12-31 23:59", ["2028-12-31 23:59"]),
    ("0 12 * * MON-FRI", "2027-01-01 12:00", ["2027-01-04 12:00", "2027-01-05 12:00"]),
    ("0 0 * * 0", "2027-01-01 00:00", ["2027-01-03 00:00", "2027-01-10 00:00"]),
    ("0 0 * * 7", "2027-01-01 00:00", ["2027-01-03 00:00"]),
    ("0 0 1 jan *", "2027-01-01 00:00", ["2028-01-01 00:00"]),
    ("15,45 8-9 * * *", "2027-01-01 08:15", ["2027-01-01 08:45", "2027-01-01 09:15"]),
    ("@hourly", "2027-01-01 00:00", ["2027-01-01 01:00"]),
    ("@weekly", "2027-01-01 00:00", ["2027-01-03 00:00"]),
    ("@monthly", "2027-01-01 00:00", ["2027-02-01 00:00"]),
    # Vixie's OR rule: both day fields restricted, a day matching either one runs.
    ("0 0 13 * FRI", "2027-01-01 00:00", ["2027-01-08 00:00", "2027-01-13 00:00"]),
    ("0 0 13 * FRI", "2027-01-13 00:00", ["2027-01-15 00:00", "2027-01-22 00:00"]),
    # A day field starting with `*` (even with a step) makes it AND: both must match.
    # {1, 11, 21, 31} on a Friday: Jan 11 Mon, 21 Thu, 31 Sun; Feb 1 Mon, 11 Thu,
    # 21 Sun; Mar 1 Mon, 11 Thu, 21 Sun, 31 Wed; Apr 1 Thu, 11 Sun, 21 Wed; May 1 Sat,
    # 11 Tue, 21 Fri.
    ("0 0 */10 * FRI", "2027-01-01 00:00", ["2027-05-21 00:00"]),
    # The 13th on Sun, Tue, Thu or Sat: Jan 13 is a Wednesday, Feb 13 a Saturday.
    ("0 0 13 * */2", "2027-01-01 00:00", ["2027-02-13 00:00"]),
]


@pytest.mark.parametrize(
    ("expression", "after", "expected"), ORDINARY, ids=[f"{e}@{a}" for e, a, _ in ORDINARY]
)
def test_next_after_in_utc(expression: str, after: str, expected: list[str]) -> None:
    assert walk(expression, "UTC", after, len(expected)) == [utc(x) for x in expected]


def test_next_after_returns_whole_seconds_in_utc_for_an_after_in_any_zone() -> None:
    berlin = datetime(2027, 1, 1, 1, 0, 0, 999, tzinfo=ZoneInfo("Europe/Berlin"))  # 00:00Z
    found = CronExpression.parse("0 * * * *").next_after(berlin, ZoneInfo("UTC"))
    assert found == utc("2027-01-01 01:00")
    assert found.tzinfo is UTC
    assert found.microsecond == 0


def test_next_after_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="aware"):
        CronExpression.parse("* * * * *").next_after(datetime(2027, 1, 1), ZoneInfo("UTC"))


NEVER = ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 30,31 feb *", "0 0 31 2 */2"]


@pytest.mark.parametrize("expression", NEVER)
def test_an_expression_that_can_never_match_is_an_error_not_a_loop(expression: str) -> None:
    cron = CronExpression.parse(expression)
    assert not cron.can_match
    with pytest.raises(CronError, match="can never match") as caught:
        cron.next_after(utc("2027-01-01 00:00"), ZoneInfo("UTC"))
    assert caught.value.field == "cron"


@pytest.mark.parametrize("expression", ["0 0 31 4,5 *", "0 0 30 2 MON", "0 0 29 2 *"])
def test_rare_but_possible_expressions_can_match(expression: str) -> None:
    assert CronExpression.parse(expression).can_match


LEAP_DAYS = [
    ("0 0 29 2 *", "UTC", "2027-01-01 00:00", ["2028-02-29 00:00", "2032-02-29 00:00"]),
    # 2100 is not a leap year.
    ("0 0 29 2 *", "UTC", "2097-01-01 00:00", ["2104-02-29 00:00"]),
    # Berlin is at +01:00 in February.
    ("0 0 29 2 *", "Europe/Berlin", "2027-01-01 00:00", ["2028-02-28 23:00"]),
    ("0 * 29 2 *", "Europe/Berlin", "2028-02-29 22:30", ["2032-02-28 23:00"]),
    # Feb 29 on a Saturday or Sunday (AND: the day-of-week field starts with *). Feb 29
    # is a Tuesday in 2028; each four years move it 1461 days, 5 weekdays on: Sunday in
    # 2032, Friday 2036, Wednesday 2040, Monday 2044, Saturday 2048.
    ("0 0 29 2 */6", "UTC", "2027-01-01 00:00", ["2032-02-29 00:00", "2048-02-29 00:00"]),
]


@pytest.mark.parametrize(
    ("expression", "zone", "after", "expected"),
    LEAP_DAYS,
    ids=[f"{e}@{z}@{a}" for e, z, a, _ in LEAP_DAYS],
)
def test_leap_days(expression: str, zone: str, after: str, expected: list[str]) -> None:
    assert walk(expression, zone, after, len(expected)) == [utc(x) for x in expected]


# --- daylight saving ---------------------------------------------------------------
# Each row: zone, expression, after (UTC), the next occurrences (UTC), written out by
# hand. A comment above each zone gives its 2027 transitions as zoneinfo reports them.

DST = [
    # Europe/Berlin. 2027-03-28 01:00Z: 02:00 CET (+01) -> 03:00 CEST (+02), a gap
    # 02:00-02:59. 2027-10-31 01:00Z: 03:00 CEST -> 02:00 CET, a fold 02:00-02:59.
    ("berlin-gap-fixed", "Europe/Berlin", "30 2 * * *", "2027-03-27 00:00",
     ["2027-03-27 01:30", "2027-03-28 01:00", "2027-03-29 00:30"]),
    # Three nominal times (02:00, 02:30 in the gap, 03:00 right after it) are one instant.
    ("berlin-gap-fixed-merged", "Europe/Berlin", "0,30 2,3 * * *", "2027-03-27 23:00",
     ["2027-03-28 01:00", "2027-03-28 01:30", "2027-03-29 00:00", "2027-03-29 00:30"]),
    # A range is fixed-hour too.
    ("berlin-gap-range", "Europe/Berlin", "30 1-3 * * *", "2027-03-28 00:00",
     ["2027-03-28 00:30", "2027-03-28 01:00", "2027-03-28 01:30", "2027-03-28 23:30"]),
    ("berlin-gap-every-15", "Europe/Berlin", "*/15 * * * *", "2027-03-28 00:30",
     ["2027-03-28 00:45", "2027-03-28 01:00", "2027-03-28 01:15"]),
    ("berlin-gap-hourly", "Europe/Berlin", "0 * * * *", "2027-03-28 00:00",
     ["2027-03-28 01:00", "2027-03-28 02:00"]),
    ("berlin-gap-half-past", "Europe/Berlin", "30 * * * *", "2027-03-28 00:00",
     ["2027-03-28 00:30", "2027-03-28 01:30"]),
    # A step in the hour field repeats, even over a range.
    ("berlin-gap-step-range", "Europe/Berlin", "30 1-3/1 * * *", "2027-03-28 00:00",
     ["2027-03-28 00:30", "2027-03-28 01:30", "2027-03-28 23:30"]),
    ("berlin-fold-fixed", "Europe/Berlin", "30 2 * * *", "2027-10-30 00:00",
     ["2027-10-30 00:30", "2027-10-31 00:30", "2027-11-01 01:30"]),
    ("berlin-fold-fixed-after-first", "Europe/Berlin", "30 2 * * *", "2027-10-31 00:30",
     ["2027-11-01 01:30"]),
    # `after` in the fold's first pass (02:10 CEST), then in its second (02:15 CET).
    ("berlin-fold-fixed-from-first-pass", "Europe/Berlin", "30 2 * * *", "2027-10-31 00:10",
     ["2027-10-31 00:30", "2027-11-01 01:30"]),
    ("berlin-fold-fixed-from-second-pass", "Europe/Berlin", "30 2 * * *", "2027-10-31 01:15",
     ["2027-11-01 01:30"]),
    ("berlin-fold-half-past", "Europe/Berlin", "30 * * * *", "2027-10-30 23:00",
     ["2027-10-30 23:30", "2027-10-31 00:30", "2027-10-31 01:30", "2027-10-31 02:30"]),
    ("berlin-fold-every-15", "Europe/Berlin", "*/15 * * * *", "2027-10-30 23:50",
     ["2027-10-31 00:00", "2027-10-31 00:15", "2027-10-31 00:30", "2027-10-31 00:45",
      "2027-10-31 01:00", "2027-10-31 01:15", "2027-10-31 01:30", "2027-10-31 01:45",
      "2027-10-31 02:00"]),
    ("berlin-fold-hourly", "Europe/Berlin", "0 * * * *", "2027-10-30 23:30",
     ["2027-10-31 00:00", "2027-10-31 01:00", "2027-10-31 02:00"]),
    # From inside the fold's first pass (02:10 CEST), 02:00 CET is still ahead.
    ("berlin-fold-hourly-from-first-pass", "Europe/Berlin", "0 * * * *", "2027-10-31 00:10",
     ["2027-10-31 01:00", "2027-10-31 02:00"]),
    ("berlin-fold-ten-past-from-first-pass", "Europe/Berlin", "10 * * * *", "2027-10-31 00:20",
     ["2027-10-31 01:10", "2027-10-31 02:10"]),
    ("berlin-fold-every-15-from-second-pass", "Europe/Berlin", "*/15 * * * *",
     "2027-10-31 01:05", ["2027-10-31 01:15", "2027-10-31 01:30"]),
    # America/New_York. 2027-03-14 07:00Z: 02:00 EST (-05) -> 03:00 EDT (-04).
    # 2027-11-07 06:00Z: 02:00 EDT -> 01:00 EST, a fold 01:00-01:59.
    ("new-york-gap-fixed", "America/New_York", "30 2 * * *", "2027-03-13 12:00",
     ["2027-03-14 07:00", "2027-03-15 06:30"]),
    ("new-york-gap-fixed-on-the-hour", "America/New_York", "0 2 * * *", "2027-03-13 12:00",
     ["2027-03-14 07:00", "2027-03-15 06:00"]),
    ("new-york-gap-every-30", "America/New_York", "*/30 * * * *", "2027-03-14 06:00",
     ["2027-03-14 06:30", "2027-03-14 07:00", "2027-03-14 07:30"]),
    ("new-york-fold-fixed", "America/New_York", "30 1 * * *", "2027-11-06 12:00",
     ["2027-11-07 05:30", "2027-11-08 06:30"]),
    ("new-york-fold-half-past", "America/New_York", "30 * * * *", "2027-11-07 04:00",
     ["2027-11-07 04:30", "2027-11-07 05:30", "2027-11-07 06:30", "2027-11-07 07:30"]),
    # America/Santiago, transitions at midnight. 2027-04-04 03:00Z: 04-04 00:00 -03 ->
    # 04-03 23:00 -04, a fold 23:00-23:59 of April 3. 2027-09-05 04:00Z: 09-05 00:00
    # -04 -> 01:00 -03: September 5 starts at 01:00.
    ("santiago-gap-midnight", "America/Santiago", "0 0 * * *", "2027-09-03 12:00",
     ["2027-09-04 04:00", "2027-09-05 04:00", "2027-09-06 03:00"]),
    ("santiago-gap-half-past-midnight", "America/Santiago", "30 0 * * *", "2027-09-04 12:00",
     ["2027-09-05 04:00", "2027-09-06 03:30"]),
    ("santiago-gap-hourly", "America/Santiago", "0 * * * *", "2027-09-05 02:30",
     ["2027-09-05 03:00", "2027-09-05 04:00", "2027-09-05 05:00"]),
    ("santiago-fold-fixed", "America/Santiago", "30 23 * * *", "2027-04-02 12:00",
     ["2027-04-03 02:30", "2027-04-04 02:30", "2027-04-05 03:30"]),
    # Two minutes of the fold, each at its first instant only.
    ("santiago-fold-fixed-two-minutes", "America/Santiago", "0,39 23 * * *", "2027-04-03 12:00",
     ["2027-04-04 02:00", "2027-04-04 02:39", "2027-04-05 03:00"]),
    # Midnight of April 4 happens once (at -04): the clocks went back at it.
    ("santiago-fold-midnight", "America/Santiago", "0 0 * * *", "2027-04-02 12:00",
     ["2027-04-03 03:00", "2027-04-04 04:00", "2027-04-05 04:00"]),
    ("santiago-fold-hourly", "America/Santiago", "0 * * * *", "2027-04-04 01:30",
     ["2027-04-04 02:00", "2027-04-04 03:00", "2027-04-04 04:00"]),
    # Australia/Lord_Howe, 30-minute shifts. 2027-04-03 15:00Z: 04-04 02:00 +11 ->
    # 01:30 +10:30, a fold 01:30-01:59. 2027-10-02 15:30Z: 10-03 02:00 +10:30 -> 02:30
    # +11, a gap 02:00-02:29.
    ("lord-howe-gap-fixed", "Australia/Lord_Howe", "15 2 * * *", "2027-10-01 12:00",
     ["2027-10-01 15:45", "2027-10-02 15:30", "2027-10-03 15:15"]),
    ("lord-howe-gap-every-15", "Australia/Lord_Howe", "*/15 * * * *", "2027-10-02 15:10",
     ["2027-10-02 15:15", "2027-10-02 15:30", "2027-10-02 15:45"]),
    ("lord-howe-gap-hourly", "Australia/Lord_Howe", "0 * * * *", "2027-10-02 14:00",
     ["2027-10-02 14:30", "2027-10-02 16:00"]),
    ("lord-howe-fold-fixed", "Australia/Lord_Howe", "45 1 * * *", "2027-04-02 12:00",
     ["2027-04-02 14:45", "2027-04-03 14:45", "2027-04-04 15:15"]),
    # The evening of the fold's day, at the new offset (cronsim 2.9 skips 17:02 here).
    ("lord-howe-fold-day-evening", "Australia/Lord_Howe", "2 */17 * 4 *", "2027-04-03 13:30",
     ["2027-04-04 06:32", "2027-04-04 13:32"]),
    ("lord-howe-fold-every-15", "Australia/Lord_Howe", "*/15 * * * *", "2027-04-03 14:20",
     ["2027-04-03 14:30", "2027-04-03 14:45", "2027-04-03 15:00", "2027-04-03 15:15",
      "2027-04-03 15:30"]),
    # Antarctica/Troll, 2-hour shifts. 2027-03-28 01:00Z: 01:00 +00 -> 03:00 +02, a gap
    # 01:00-02:59. 2027-10-31 01:00Z: 03:00 +02 -> 01:00 +00, a fold 01:00-02:59.
    ("troll-gap-fixed", "Antarctica/Troll", "30 1 * * *", "2027-03-27 00:00",
     ["2027-03-27 01:30", "2027-03-28 01:00", "2027-03-28 23:30"]),
    # Four nominal times in the gap, one occurrence.
    ("troll-gap-fixed-merged", "Antarctica/Troll", "0,30 1,2 * * *", "2027-03-27 23:00",
     ["2027-03-28 01:00", "2027-03-28 23:00", "2027-03-28 23:30", "2027-03-29 00:00"]),
    ("troll-gap-hourly", "Antarctica/Troll", "0 * * * *", "2027-03-27 23:30",
     ["2027-03-28 00:00", "2027-03-28 01:00", "2027-03-28 02:00"]),
    ("troll-fold-fixed", "Antarctica/Troll", "30 2 * * *", "2027-10-30 12:00",
     ["2027-10-31 00:30", "2027-11-01 02:30"]),
    ("troll-fold-half-past", "Antarctica/Troll", "30 * * * *", "2027-10-30 22:00",
     ["2027-10-30 22:30", "2027-10-30 23:30", "2027-10-31 00:30", "2027-10-31 01:30",
      "2027-10-31 02:30", "2027-10-31 03:30"]),
    # Pacific/Chatham, +12:45 / +13:45. 2027-04-03 14:00Z: 04-04 03:45 +13:45 -> 02:45
    # +12:45, a fold 02:45-03:44. 2027-09-25 14:00Z: 09-26 02:45 +12:45 -> 03:45 +13:45,
    # a gap 02:45-03:44.
    ("chatham-gap-fixed", "Pacific/Chatham", "0 3 * * *", "2027-09-24 00:00",
     ["2027-09-24 14:15", "2027-09-25 14:00", "2027-09-26 13:15"]),
    ("chatham-gap-every-30", "Pacific/Chatham", "*/30 * * * *", "2027-09-25 13:00",
     ["2027-09-25 13:15", "2027-09-25 13:45", "2027-09-25 14:15"]),
    ("chatham-fold-fixed", "Pacific/Chatham", "0 3 * * *", "2027-04-02 00:00",
     ["2027-04-02 13:15", "2027-04-03 13:15", "2027-04-04 14:15"]),
    ("chatham-fold-hourly", "Pacific/Chatham", "0 * * * *", "2027-04-03 12:00",
     ["2027-04-03 12:15", "2027-04-03 13:15", "2027-04-03 14:15", "2027-04-03 15:15"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "expression", "after", "expected"), [row[1:] for row in DST], ids=[r[0] for r in DST]
)
def test_daylight_saving(zone: str, expression: str, after: str, expected: list[str]) -> None:
    assert walk(expression, zone, after, len(expected)) == [utc(x) for x in expected]


# --- properties, against a brute-force oracle ----------------------------------------
# The oracle looks at every minute (or quarter hour) of a window with zoneinfo alone:
# a repeating-hour expression fires at each instant whose local wall time matches; a
# fixed-hour one at the first instant of each matching wall time (fold 0), and, for a
# matching wall time that does not exist, at the first instant after it.

ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Antarctica/Troll",
    "Pacific/Chatham",
    "UTC",
]
MINUTE = timedelta(minutes=1)


def transitions(zone: ZoneInfo, year: int) -> list[datetime]:
    """The instants (UTC, to the minute) in `year` where `zone`'s offset changes."""
    found = []
    instant, end = utc(f"{year}-01-01 00:00"), utc(f"{year + 1}-01-01 00:00")
    while instant < end:
        step = instant + timedelta(hours=1)
        if instant.astimezone(zone).utcoffset() != step.astimezone(zone).utcoffset():
            while instant.astimezone(zone).utcoffset() == step.astimezone(zone).utcoffset():
                instant += MINUTE
            while (
                instant.astimezone(zone).utcoffset()
                == (instant - MINUTE).astimezone(zone).utcoffset()
            ):
                instant += MINUTE
            found.append(instant)
        instant = step
    return found


def oracle(
    zone: ZoneInfo, start: datetime, end: datetime, minutes: set[int], hours: set[int], fixed: bool
) -> list[datetime]:
    """The occurrences in (start, end) of "M H * * *", minute by minute."""
    wall_times = []
    instant = start + MINUTE
    while instant < end:
        wall_times.append((instant, instant.astimezone(zone)))
        instant += MINUTE
    expected = {
        instant
        for instant, local in wall_times
        if local.minute in minutes and local.hour in hours and not (fixed and local.fold)
    }
    if fixed:
        days = sorted({local.date() for _, local in wall_times})
        for day in days:
            for hour in hours:
                for minute in minutes:
                    wall = datetime(day.year, day.month, day.day, hour, minute)
                    there_and_back = wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone)
                    if there_and_back.replace(tzinfo=None) != wall:  # in a gap
                        expected.add(
                            next(i for i, local in wall_times if local.replace(tzinfo=None) > wall)
                        )
    return sorted(expected)


def walk_until(expression: str, zone: ZoneInfo, start: datetime, end: datetime) -> list[datetime]:
    cron, found = CronExpression.parse(expression), []
    instant = cron.next_after(start, zone)
    while instant < end:
        found.append(instant)
        instant = cron.next_after(instant, zone)
    return found


EVERY_HOUR = set(range(24))
AROUND = [
    ("*/15 * * * *", set(range(0, 60, 15)), EVERY_HOUR, False),
    ("30 * * * *", {30}, EVERY_HOUR, False),
    ("0 * * * *", {0}, EVERY_HOUR, False),
    ("10,50 */2 * * *", {10, 50}, set(range(0, 24, 2)), False),
    ("30 2 * * *", {30}, {2}, True),
    ("0,30 1-3 * * *", {0, 30}, {1, 2, 3}, True),
    ("0 0 * * *", {0}, {0}, True),
    ("45 23 * * *", {45}, {23}, True),
    ("15,45 0,1,2,3 * * *", {15, 45}, {0, 1, 2, 3}, True),
]


@pytest.mark.parametrize("zone_name", ZONES[:-1])
@pytest.mark.parametrize(
    ("expression", "minutes", "hours", "fixed"), AROUND, ids=[row[0] for row in AROUND]
)
def test_around_each_2027_transition_next_after_agrees_with_the_oracle(
    zone_name: str, expression: str, minutes: set[int], hours: set[int], fixed: bool
) -> None:
    zone = ZoneInfo(zone_name)
    changes = transitions(zone, 2027)
    assert len(changes) == 2
    for change in changes:
        start, end = change - timedelta(hours=36), change + timedelta(hours=36)
        assert walk_until(expression, zone, start, end) == oracle(
            zone, start, end, minutes, hours, fixed
        )


YEAR_FIXED = ["0 0 * * *", "30 2 * * *", "45 23 * * *", "0,30 1-3 * * *", "0 9 * * MON-FRI"]
ONE_A_DAY = {"0 0 * * *", "30 2 * * *", "45 23 * * *"}


@pytest.mark.parametrize("zone_name", ZONES)
@pytest.mark.parametrize("expression", YEAR_FIXED)
def test_a_fixed_hour_expression_over_a_year(zone_name: str, expression: str) -> None:
    """Strictly increasing; no local wall time twice; one a day for one nominal time a day."""
    zone = ZoneInfo(zone_name)
    start = datetime(2027, 1, 1, tzinfo=zone)
    end = datetime(2028, 1, 1, tzinfo=zone)
    found = walk_until(expression, zone, start - MINUTE, end)
    assert all(a < b for a, b in itertools.pairwise(found))
    walls = [instant.astimezone(zone).replace(tzinfo=None) for instant in found]
    assert len(set(walls)) == len(walls)
    if expression in ONE_A_DAY:
        dates = [wall.date() for wall in walls]
        assert dates == [date(2027, 1, 1) + timedelta(days=n) for n in range(365)]


YEAR_REPEATING = [
    ("0 */6 * * *", {0}, {0, 6, 12, 18}),
    ("30 1-23/2 * * *", {30}, set(range(1, 24, 2))),
]


@pytest.mark.parametrize("zone_name", ZONES)
@pytest.mark.parametrize(
    ("expression", "minutes", "hours"), YEAR_REPEATING, ids=[row[0] for row in YEAR_REPEATING]
)
def test_a_repeating_hour_expression_over_a_year_fires_at_every_matching_instant(
    zone_name: str, expression: str, minutes: set[int], hours: set[int]
) -> None:
    zone = ZoneInfo(zone_name)
    start, end = utc("2027-01-01 00:00"), utc("2028-01-01 00:00")
    expected, instant = [], start + timedelta(minutes=15)
    while instant < end:  # every offset of these zones is a whole quarter hour
        local = instant.astimezone(zone)
        if local.minute in minutes and local.hour in hours:
            expected.append(instant)
        instant += timedelta(minutes=15)
    assert walk_until(expression, zone, start, end) == expected
