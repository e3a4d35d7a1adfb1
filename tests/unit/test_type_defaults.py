"""Per-type defaults (CONTRACT section 13): a job's own field wins, then its handler's
default (`@handler(..., timeout=, max_attempts=, priority=)`), then the configuration's.
Unit tests of `to_job`, of the digest and of the checks of `@handler`'s options."""

from __future__ import annotations

import json
from typing import Any

import pytest

from procpool.application.handlers import HandlerOptions, HandlerRegistry
from procpool.domain.errors import ProcpoolError
from procpool.domain.spec import JobDefaults, JobSpec, TypeDefaults, decode, digest, to_job

NOW = 1_800_000_000.0
CONFIG = JobDefaults(
    max_attempts=3,
    timeout=None,
    types={
        "render": TypeDefaults(timeout=60.0, max_attempts=2, priority=5),
        "half": TypeDefaults(timeout=7.5),  # the others from the configuration
    },
)
CONFIG_WITH_TIMEOUT = JobDefaults(max_attempts=4, timeout=30.0, types=CONFIG.types)


def _fields(job_type: str, own: dict[str, Any], defaults: JobDefaults = CONFIG) -> tuple[Any, ...]:
    decoded = decode(json.dumps({"type": job_type, **own}).encode())
    assert isinstance(decoded, JobSpec)
    job = to_job(decoded, job_id="j", defaults=defaults, now=NOW)
    return job.timeout, job.max_attempts, job.priority


@pytest.mark.parametrize(
    ("job_type", "own", "defaults", "expected"),
    [
        # The job says nothing: its handler's defaults.
        ("render", {}, CONFIG, (60.0, 2, 5)),
        # The job's own values win, 0 and 1 included (0 is a priority given, not none).
        ("render", {"timeout": 1.5, "max_attempts": 9, "priority": 0}, CONFIG, (1.5, 9, 0)),
        ("render", {"priority": -3}, CONFIG, (60.0, 2, -3)),
        ("render", {"max_attempts": 1}, CONFIG, (60.0, 1, 5)),
        # A handler that sets some: the configuration gives the rest (priority 0).
        ("half", {}, CONFIG, (7.5, 3, 0)),
        ("half", {}, CONFIG_WITH_TIMEOUT, (7.5, 4, 0)),
        ("half", {"timeout": 2.0}, CONFIG_WITH_TIMEOUT, (2.0, 4, 0)),
        # A type whose handler sets none: the configuration's.
        ("echo", {}, CONFIG, (None, 3, 0)),
        ("echo", {}, CONFIG_WITH_TIMEOUT, (30.0, 4, 0)),
        ("echo", {"timeout": 1.0, "max_attempts": 2, "priority": 7}, CONFIG_WITH_TIMEOUT,
         (1.0, 2, 7)),
        # The handler's timeout beats the configuration's.
        ("render", {}, CONFIG_WITH_TIMEOUT, (60.0, 2, 5)),
    ],
)  # fmt: skip
def test_a_job_field_beats_the_handler_which_beats_the_configuration(
    job_type: str, own: dict[str, Any], defaults: JobDefaults, expected: tuple[Any, ...]
) -> None:
    assert _fields(job_type, own, defaults) == expected


def test_a_priority_left_out_is_told_from_a_priority_of_0() -> None:
    assert decode(b'{"type": "render"}') == JobSpec(type="render", priority=None)
    assert decode(b'{"type": "render", "priority": 0}') == JobSpec(type="render", priority=0)


def test_submissions_made_before_defaults_keep_their_digest() -> None:
    """A file read again after the upgrade is the same submission: the digests below are
    those of the code before per-type defaults (070ddfe), where an omitted priority was 0."""
    left_out, zero = (
        JobSpec(type="render", payload={"n": 1}),
        JobSpec(type="render", payload={"n": 1}, priority=0),
    )
    assert digest(left_out) == digest(zero) == "27e2df7155483459d52b269012c92968"
    for spec in (left_out, zero):
        job = to_job(spec, job_id="a", defaults=CONFIG, now=1.0)
        assert job.digest == "dd9f0955fb1f36d2104e9403d93e8470"
    assert job.priority == 0  # the spec's own 0, over the handler's 5
    assert to_job(left_out, job_id="a", defaults=CONFIG, now=1.0).priority == 5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (HandlerOptions(timeout=0), "@handler('t', timeout=...) must be a number of seconds > 0"),
        (HandlerOptions(timeout=-1.0), "timeout=...) must be"),
        (HandlerOptions(timeout=float("nan")), "timeout=...) must be"),
        (HandlerOptions(timeout="5"), "timeout=...) must be"),  # type: ignore[arg-type]
        (HandlerOptions(max_attempts=0),
         "@handler('t', max_attempts=...) must be an integer from 1 to 1000, got 0"),
        (HandlerOptions(max_attempts=2.0), "max_attempts=...) must be"),  # type: ignore[arg-type]
        (HandlerOptions(max_attempts=True), "max_attempts=...) must be"),
        (HandlerOptions(priority=2_000_000), "@handler('t', priority=...) must be an integer from"),
        (HandlerOptions(priority=1.5), "priority=...) must be"),  # type: ignore[arg-type]
        (HandlerOptions(limit=0), "@handler('t', limit=...) must be an integer >= 1, got 0"),
        (HandlerOptions(key_limit=-1), "key_limit=...) must be an integer >= 1"),
    ],
)  # fmt: skip
def test_bad_handler_options_are_refused_naming_the_argument(
    options: HandlerOptions, message: str
) -> None:
    registry = HandlerRegistry()
    with pytest.raises(ProcpoolError) as refused:
        registry.register("t", lambda ctx, payload: None, options)
    assert message in str(refused.value)
    assert "t" not in registry  # nothing half-registered


def test_the_registry_gives_the_defaults_of_the_types_that_set_any() -> None:
    registry = HandlerRegistry()
    registry.register("plain", lambda ctx, payload: None, HandlerOptions(limit=2))
    registry.register("slow", lambda ctx, payload: None, HandlerOptions(timeout=5, priority=-1))
    assert registry.job_defaults() == {"slow": TypeDefaults(timeout=5, priority=-1)}
