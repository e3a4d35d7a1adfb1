"""Schedules' pure parts (procpool/domain/schedules.py): the file's checks, the
occurrence ids, `apply`'s diff and the planner, by table with a fake clock (plain
numbers: seconds since the epoch)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from procpool.domain.schedules import (
    CATCHUP_ALL_MAX,
    Every,
    Facts,
    Plan,
    Schedule,
    ScheduleError,
    Skip,
    check,
    diff,
    job_of,
    manual_id,
    occurrence_id,
    parse_file,
    plan,
    queued,
    scheduled_for,
    upcoming,
)
from procpool.domain.spec import JobDefaults

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()  # a whole minute
JOB = {"type": "echo", "payload": {"k": 1}}


def every(seconds: int = 10, **fields: object) -> Schedule:
    return check({"name": "s", "every": seconds, "job": JOB, **fields})


# ----------------------------------------------------------------- the file


def test_a_toml_file_gives_its_schedules_with_their_defaults() -> None:
    text = b"""
[[schedule]]
name = "nightly"
every = "15m"
tz = "Europe/Berlin"
[schedule.job]
type = "report"
payload = {kind = "daily"}
max_attempts = 2

[[schedule]]
name = "often"
every = 5
overlap = "allow"
catchup = "all"
grace = 2
start = "2026-01-01T00:00:00Z"
end = "2027-01-01T00:00:00Z"
job = {type = "echo"}
"""
    nightly, often = parse_file(text)
    assert nightly.every == 900 and nightly.tz == "Europe/Berlin"
    assert (nightly.overlap, nightly.catchup, nightly.grace) == ("skip", "latest", 60.0)
    assert nightly.job == {"type": "report", "payload": {"kind": "daily"}, "max_attempts": 2}
    assert nightly.template().max_attempts == 2
    assert (often.every, often.overlap, often.catchup, often.grace) == (5, "allow", "all", 2.0)


def test_the_same_schedule_in_json_is_the_same_definition() -> None:
    toml = b'[[schedule]]\nname = "a"\nevery = "1m"\njob = {type = "echo"}\n'
    doc = {"schedule": [{"name": "a", "every": 60, "job": {"type": "echo"}}]}
    (from_toml,) = parse_file(toml)
    (from_json,) = parse_file(json.dumps(doc).encode(), json_file=True)
    assert from_toml.encoded() == from_json.encoded()


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ({"every": 5, "job": JOB}, "name", "missing"),
        ({"name": "-x", "every": 5, "job": JOB}, "name", "A-Z a-z"),
        ({"name": "x" * 101, "every": 5, "job": JOB}, "name", "1-100"),
        ({"name": "s", "job": JOB}, "cron", "either cron or every"),
        ({"name": "s", "every": 5, "cron": "* * * * *", "job": JOB}, "cron", "not both"),
        ({"name": "s", "every": 0.5, "job": JOB}, "every", "at least 1 s"),
        ({"name": "s", "every": 0, "job": JOB}, "every", "at least 1 s"),
        ({"name": "s", "every": "0s", "job": JOB}, "every", "at least 1 s"),
        ({"name": "s", "every": "5 weeks", "job": JOB}, "every", "unit"),
        ({"name": "s", "every": 1.5, "job": JOB}, "every", "whole number"),
        ({"name": "s", "every": True, "job": JOB}, "every", "must be seconds"),
        ({"name": "s", "every": 5, "tz": "Mars/Olympus", "job": JOB}, "tz", "unknown time zone"),
        ({"name": "s", "every": 5, "overlap": "wait", "job": JOB}, "overlap", "one of"),
        ({"name": "s", "every": 5, "catchup": "some", "job": JOB}, "catchup", "one of"),
        ({"name": "s", "every": 5, "grace": -1, "job": JOB}, "grace", "from 0 to ten years"),
        ({"name": "s", "every": "99999999d", "job": JOB}, "every", "at most ten years"),
        ({"name": "s", "every": 5, "start": "noon", "job": JOB}, "start", "RFC 3339"),
        (
            {
                "name": "s",
                "every": 5,
                "job": JOB,
                "start": "2026-02-01T00:00:00Z",
                "end": "2026-01-01T00:00:00Z",
            },
            "end",
            "later than start",
        ),
        ({"name": "s", "every": 5, "job": JOB, "colour": 1}, "colour", "unknown field"),
        ({"name": "s", "cron": "61 * * * *", "job": JOB}, "cron minute", "out of range 0-59"),
        ({"name": "s", "cron": "0 25 * * *", "job": JOB}, "cron hour", "out of range 0-23"),
        ({"name": "s", "cron": "* * * *", "job": JOB}, "cron", "expected 5 fields"),
        ({"name": "s", "cron": "0 0 30 2 *", "job": JOB}, "cron", "can never match"),
        ({"name": "s", "cron": 5, "job": JOB}, "cron", "must be a string"),
        ({"name": "s", "every": 5}, "job", "must be a table"),
        ({"name": "s", "every": 5, "job": {"type": "echo", "id": "x"}}, "job.id", "not allowed"),
        (
            {"name": "s", "every": 5, "job": {"type": "echo", "after": ["x"]}},
            "job.after",
            "not allowed",
        ),
        (
            {"name": "s", "every": 5, "job": {"type": "e", "run_at": "x"}},
            "job.run_at",
            "not allowed",
        ),
        ({"name": "s", "every": 5, "job": {"payload": 1}}, "job.type", "missing"),
        ({"name": "s", "every": 5, "job": {"type": "e", "max_attempts": 0}}, "job", "max_attempts"),
        ({"name": "s", "every": 5, "job": {"type": "e", "colour": 1}}, "job", "colour"),
    ],
)
def test_a_bad_field_is_an_error_naming_the_schedule_and_the_field(
    entry: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ScheduleError) as raised:
        check(entry)
    assert raised.value.field == field
    assert words in str(raised.value)
    if "name" in entry and field != "name":
        assert str(raised.value).startswith('schedule "s": ')


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b"[[schedule]\n", "not valid TOML"),
        (b"other = 1\n", "unknown field"),
        (b"schedule = 1\n", "array of tables"),
        (
            b'[[schedule]]\nname = "a"\nevery = 1\njob = {type = "e"}\n'
            b'[[schedule]]\nname = "a"\nevery = 2\njob = {type = "e"}\n',
            "given twice",
        ),
    ],
)
def test_a_bad_file_is_an_error(text: bytes, words: str) -> None:
    with pytest.raises(ScheduleError, match=words):
        parse_file(text)


def test_an_empty_file_holds_no_schedule() -> None:
    assert parse_file(b"") == []


# ----------------------------------------------------------------- ids and times


def test_occurrence_and_manual_ids_name_the_instant_in_utc() -> None:
    assert occurrence_id("nightly", T0 + 1.5) == "nightly.20261207T120001Z"
    assert manual_id("nightly", T0) == "nightly.manual-20261207T120000Z"
    assert len(occurrence_id("x" * 100, T0)) <= 128 and len(manual_id("x" * 100, T0)) <= 128


def test_scheduled_for_is_the_local_time_with_its_offset() -> None:
    berlin = check({"name": "s", "cron": None, "every": 60, "tz": "Europe/Berlin", "job": JOB})
    assert scheduled_for(berlin, T0) == "2026-12-07T12:00:00+00:00"  # every ignores tz


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


CRON = [
    # (expression, zone, after, the next instants in local time): the daylight-saving
    # rules themselves are tests/unit/test_cron.py's; here, that schedules use them.
    ("30 2 * * *", "Europe/Berlin", "2027-03-27T12:00:00+00:00",
     ["2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]),  # the gap: once, after it
    ("30 2 * * *", "Europe/Berlin", "2027-10-30T12:00:00+00:00",
     ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"]),  # the fold: its first pass
    ("*/30 2 * * *", "UTC", "2027-01-01T00:00:00+00:00",
     ["2027-01-01T02:00:00+00:00", "2027-01-01T02:30:00+00:00"]),
    ("@daily", "America/New_York", "2027-01-01T12:00:00+00:00",
     ["2027-01-02T00:00:00-05:00", "2027-01-03T00:00:00-05:00"]),
]  # fmt: skip


@pytest.mark.parametrize(("expression", "zone", "after", "expected"), CRON)
def test_a_cron_schedule_fires_at_its_expressions_instants_in_its_zone(
    expression: str, zone: str, after: str, expected: list[str]
) -> None:
    schedule = check({"name": "c", "cron": expression, "tz": zone, "job": JOB})
    instants = upcoming(schedule, at(after), len(expected))
    assert [scheduled_for(schedule, t) for t in instants] == expected
    assert [at(text) for text in expected] == instants


def test_a_cron_schedule_is_planned_like_any_other() -> None:
    hourly = check({"name": "h", "cron": "0 * * * *", "tz": "Asia/Kolkata", "job": JOB})
    cursor = at("2027-01-01T10:00:00+00:00")  # on the hour in Kolkata: hh:30 UTC (+05:30)
    result = plan(hourly, cursor, cursor + 3 * 3600 + 30, Facts())
    assert result.create == (cursor + 2.5 * 3600,), "the latest missed one"
    assert [skip.instant for skip in result.skipped] == [cursor + 1800, cursor + 1.5 * 3600]
    assert result.wake == cursor + 3.5 * 3600


def test_every_counts_from_the_epoch_or_from_start() -> None:
    assert Every(10).next_after(T0) == T0 + 10
    assert Every(10).next_after(T0 + 3.5) == T0 + 10
    assert Every(10, anchor=int(T0) + 3).next_after(T0) == T0 + 3
    start = datetime.fromtimestamp(T0 + 7, UTC).isoformat()
    assert upcoming(every(10, start=start), T0 - 100, 3) == [T0 + 7, T0 + 17, T0 + 27]
    end = datetime.fromtimestamp(T0 + 25, UTC).isoformat()
    assert upcoming(every(10, end=end), T0, 5) == [T0 + 10, T0 + 20]


# ----------------------------------------------------------------- apply's diff


def test_diff_says_what_is_added_changed_removed_and_nothing_the_second_time() -> None:
    a, b, c = (every(5, name=name) for name in "abc")
    b2 = every(6, name="b")
    stored = {"a": a.encoded(), "b": b.encoded(), "x": b"{}"}
    changes = diff(stored, [c, b2, a])
    assert [s.name for s in changes.added] == ["c"]
    assert [s.name for s in changes.changed] == ["b"]
    assert changes.removed == ["x"]
    again = diff({s.name: s.encoded() for s in (a, b2, c)}, [a, b2, c])
    assert again.none


# ----------------------------------------------------------------- the planner


def P(
    create: tuple[float, ...],
    skipped: tuple[tuple[float, str], ...],
    cursor: float,
    wake: float | None,
) -> Plan:
    return Plan(
        tuple(T0 + t for t in create),
        tuple(Skip(T0 + t, r) for t, r in skipped),
        T0 + cursor,
        None if wake is None else T0 + wake,
    )


PLANS = [
    # (what, schedule fields, cursor, now, facts, expected), times from T0
    ("new schedule: never fires for the past", {}, None, 95, Facts(), P((), (), 95, 100)),
    ("nothing due yet", {}, 0, 5, Facts(), P((), (), 0, 10)),
    ("due on time", {}, 0, 10, Facts(), P((10,), (), 10, 20)),
    ("late within grace", {"grace": 8}, 0, 17, Facts(), P((10,), (), 10, 20)),
    (
        "several on time: the later ones overlap the first",
        {},
        0,
        31,
        Facts(),
        P((10,), ((20, "overlap"), (30, "overlap")), 30, 40),
    ),
    ("cursor ahead of now (clock stepped back)", {}, 50, 20, Facts(), P((), (), 50, 60)),
    (
        "down 3 periods, latest: the last missed one",
        {"grace": 5},
        0,
        38,
        Facts(),
        P((30,), ((10, "missed"), (20, "missed")), 30, 40),
    ),
    (
        "latest is not created when the next occurrence is due",
        {"grace": 5},
        0,
        41,
        Facts(),
        P((40,), ((10, "missed"), (20, "missed"), (30, "missed")), 40, 50),
    ),
    (
        "all: oldest first",
        {"grace": 5, "catchup": "all", "overlap": "allow"},
        0,
        38,
        Facts(),
        P((10, 20, 30), (), 30, 40),
    ),
    (
        "none: only skips",
        {"grace": 5, "catchup": "none"},
        0,
        38,
        Facts(),
        P((), ((10, "missed"), (20, "missed"), (30, "missed")), 30, 40),
    ),
    (
        "all with overlap skip: one, the rest overlap",
        {"grace": 5, "catchup": "all"},
        0,
        32,
        Facts(),
        P((10,), ((20, "overlap"), (30, "overlap")), 30, 40),
    ),
    (
        "overlap skip while an earlier job runs",
        {},
        0,
        10,
        Facts(active=True),
        P((), ((10, "overlap"),), 10, 20),
    ),
    ("overlap allow", {"overlap": "allow"}, 0, 10, Facts(active=True), P((10,), (), 10, 20)),
    (
        "overlap queue: one waits for the job that runs",
        {"overlap": "queue"},
        0,
        10,
        Facts(active=True),
        P((10,), (), 10, 20),
    ),
    (
        "overlap queue: one waits already, the next is skipped",
        {"overlap": "queue"},
        0,
        10,
        Facts(active=True, waiting=True),
        P((), ((10, "overlap"),), 10, 20),
    ),
    (
        "overlap queue in one plan: the second waits for the first, the third overlaps",
        {"grace": 5, "catchup": "all", "overlap": "queue"},
        0,
        32,
        Facts(),
        P((10, 20), ((30, "overlap"),), 30, 40),
    ),
    (
        "overlap queue while one runs: only one made, the rest overlap",
        {"grace": 5, "catchup": "all", "overlap": "queue"},
        0,
        32,
        Facts(active=True),
        P((10,), ((20, "overlap"), (30, "overlap")), 30, 40),
    ),
    ("paused", {}, 0, 21, Facts(paused=True), P((), ((10, "paused"), (20, "paused")), 20, 30)),
    (
        "no daemon serves the type",
        {},
        0,
        10,
        Facts(served=False),
        P((), ((10, "no_handler"),), 10, 20),
    ),
    (
        "ended: no wake after the end",
        {"end": "2026-12-07T12:00:25Z"},
        10,
        20,
        Facts(),
        P((20,), (), 20, None),
    ),
    (
        "a missed one found after the end is skipped ended",
        {"end": "2026-12-07T12:00:25Z", "grace": 1},
        15,
        40,
        Facts(),
        P((), ((20, "ended"),), 20, None),
    ),
    (
        "before start: wake at start",
        {"start": "2026-12-07T12:01:03Z"},
        0,
        30,
        Facts(),
        P((), (), 0, 63),
    ),
]


@pytest.mark.parametrize(
    ("fields", "cursor", "now", "facts", "expected"),
    [row[1:] for row in PLANS],
    ids=[row[0] for row in PLANS],
)
def test_plan(
    fields: dict[str, object], cursor: float | None, now: float, facts: Facts, expected: Plan
) -> None:
    schedule = every(10, **fields)
    assert plan(schedule, None if cursor is None else T0 + cursor, T0 + now, facts) == expected


def test_catchup_all_creates_at_most_a_hundred() -> None:
    schedule = every(1, catchup="all", overlap="allow", grace=0)
    result = plan(schedule, T0, T0 + 150.5)
    assert len(result.create) == CATCHUP_ALL_MAX
    assert result.create[0] == T0 + 1 and result.create[-1] == T0 + 100
    assert [s.reason for s in result.skipped] == ["missed"] * 50
    assert result.cursor == T0 + 150


def test_a_long_outage_is_worked_through_in_bounded_plans_and_one_job_at_the_end() -> None:
    schedule = every(1, grace=0)
    cursor, now, created = T0, T0 + 25_000.5, []
    for _ in range(5):
        result = plan(schedule, cursor, now)
        created += result.create
        if result.wake is not None and result.wake <= now:
            cursor = result.cursor
            continue
        break
    assert created == [T0 + 25_000]
    assert result.cursor == T0 + 25_000 and result.wake == T0 + 25_001


def test_planning_twice_at_the_same_instant_creates_nothing_more() -> None:
    schedule = every(10)
    first = plan(schedule, T0, T0 + 10)
    assert plan(schedule, first.cursor, T0 + 10) == Plan((), (), first.cursor, T0 + 20)


@pytest.mark.parametrize(
    ("overlap", "latest", "want"),
    [
        ("queue", None, [(), ("s.20261207T120010Z",)]),
        ("queue", "s.earlier", [("s.earlier",), ("s.20261207T120010Z",)]),
        ("skip", "s.earlier", [(), ()]),
        ("allow", "s.earlier", [(), ()]),
    ],
)
def test_queued_jobs_wait_for_the_one_before_them_whatever_its_outcome(
    overlap: str, latest: str | None, want: list[tuple[str, ...]]
) -> None:
    schedule = check({"name": "s", "every": 10, "overlap": overlap, "job": JOB})
    made = [job_of(schedule, t, JobDefaults(), t) for t in (T0 + 10, T0 + 20)]
    jobs = queued(schedule, made, latest)
    assert [job.after for job in jobs] == want
    assert all(job.after_failure == "run" for job in jobs if job.after)
    assert [job.id for job in jobs] == [job.id for job in made]
