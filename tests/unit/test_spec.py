"""Job files decoded strictly and checked value by value (CONTRACT section 2): unit tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from procpool.domain import spec
from procpool.domain.errors import InvalidJobFile
from procpool.domain.spec import CancelRequest, JobDefaults, JobSpec, check, decode, to_job

NOW = 1_800_000_000.0
DEFAULTS = JobDefaults(max_attempts=3, timeout=None)


def encoded(**fields: Any) -> bytes:
    return json.dumps({"type": "echo", **fields}).encode()


def job_of(data: bytes, job_id: str = "j", defaults: JobDefaults = DEFAULTS) -> Any:
    decoded = decode(data)
    assert isinstance(decoded, JobSpec)
    return to_job(decoded, job_id=job_id, defaults=defaults, now=NOW)


def test_the_smallest_job_takes_every_default() -> None:
    decoded = decode(b'{"type": "echo"}')
    assert decoded == JobSpec(type="echo")
    job = job_of(b'{"type": "echo"}', "report-7")
    assert (job.id, job.type, job.payload, job.status) == ("report-7", "echo", b"null", "pending")
    assert (job.max_attempts, job.timeout, job.priority, job.attempts) == (3, None, 0, 0)
    assert job.run_at == job.created_at == job.updated_at == NOW


def test_every_field_is_taken() -> None:
    job = job_of(
        encoded(id="x-1", payload={"a": [1, 2]}, max_attempts=5, timeout=2.5, priority=-4),
        "x-1",
    )
    assert json.loads(job.payload) == {"a": [1, 2]}
    assert (job.max_attempts, job.timeout, job.priority) == (5, 2.5, -4)


def test_config_defaults_apply_to_jobs_that_do_not_say() -> None:
    job = job_of(encoded(), defaults=JobDefaults(max_attempts=7, timeout=60.0))
    assert (job.max_attempts, job.timeout) == (7, 60.0)
    job = job_of(encoded(max_attempts=1, timeout=1), defaults=JobDefaults(7, 60.0))
    assert (job.max_attempts, job.timeout) == (1, 1.0)


@pytest.mark.parametrize("payload", [None, 0, "text", [1, "two"], {"nested": {"deep": True}}])
def test_any_json_payload_is_kept_as_it_is(payload: Any) -> None:
    assert json.loads(job_of(encoded(payload=payload)).payload) == payload


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"colour": "red"}, "colour"),
        ({"type": 3}, "type"),
        ({"type": ""}, "type"),
        ({"id": 12}, "id"),
        ({"id": ""}, "id"),
        ({"id": ".hidden"}, "id"),
        ({"id": "-dash"}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": "caf\u00e9"}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -2}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"priority": "high"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": 10**7}, "priority"),
        ({"delay": -0.5}, "delay"),
        ({"delay": "1s"}, "delay"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"run_at": 1700000000}, "run_at"),
        ({"run_at": "2030-01-01T00:00:00Z", "delay": 5}, "run_at"),
        ({"unique_key": ""}, "unique_key"),
        ({"unique_key": "k" * 129}, "unique_key"),
        ({"unique_key": 7}, "unique_key"),
        ({"unique_key": "k", "unique_while": "running"}, "unique_while"),
        ({"unique_key": "k", "unique_while": 1}, "unique_while"),
        ({"unique_while": "pending"}, "unique_while needs a unique_key"),
    ],
    ids=lambda value: json.dumps(value)[:40] if isinstance(value, dict) else value,
)
def test_each_rule_names_its_field(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidJobFile) as caught:
        decode(encoded(**fields))
    assert named in str(caught.value)


def test_type_is_required() -> None:
    with pytest.raises(InvalidJobFile, match='missing required field "type"'):
        decode(b'{"payload": 1}')


@pytest.mark.parametrize("job_id", ["a", "A-Z_a.z-09", "x" * 128, "_under", "9lives"])
def test_valid_ids(job_id: str) -> None:
    decoded = decode(encoded(id=job_id))
    assert isinstance(decoded, JobSpec)
    assert decoded.id == job_id


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "JSON"),
        (b'{"type": ', "JSON"),
        (b'{"type": "echo",}', "line 1"),
        (b'\n\n{"type" "echo"}', "line 3"),
        (b'{"type": "echo", "payload": "\xff"}', "UTF-8"),
        (b"[1, 2]", "object"),
        (b'"echo"', "object"),
    ],
)
def test_bytes_that_are_not_a_json_object(data: bytes, says: str) -> None:
    with pytest.raises(InvalidJobFile, match=says):
        decode(data)


def test_a_cancel_request() -> None:
    assert decode(b'{"cancel": "report-7"}') == CancelRequest(cancel="report-7")


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b'{"cancel": "../etc"}', "cancel"),
        (b'{"cancel": 7}', "cancel"),
        (b'{"cancel": "a", "why": "x"}', "why"),
    ],
)
def test_a_bad_cancel_request(data: bytes, named: str) -> None:
    with pytest.raises(InvalidJobFile, match=named):
        decode(data)


def test_pause_and_resume_requests() -> None:
    """What `procpool pause` and `resume` drop into a SQLite home's inbox."""
    until = "2026-12-07T01:00:00Z"
    assert decode(b'{"pause": ["render", "sync", "render"], "until": "2026-12-07T01:00:00Z"}') == (
        spec.PauseRequest(pause=["render", "sync"], until=until)
    )
    assert decode(b'{"pause": ["render"]}') == spec.PauseRequest(pause=["render"])
    assert decode(b'{"resume": ["render"]}') == spec.ResumeRequest(resume=["render"])


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"pause": []}', "type: name at least one job type"),
        (b'{"pause": [""]}', "type must be a non-empty string"),
        (b'{"pause": "render"}', "pause must be a list of job types"),
        (b'{"pause": ["render"], "until": "soon"}', "until must be an RFC 3339 time"),
        (b'{"pause": ["render"], "until": 5}', "until must be a string"),
        (b'{"pause": ["render"], "for": 5}', 'unknown field "for"'),
        (b'{"resume": [""]}', "type must be a non-empty string"),
        (b'{"resume": ["' + b"x" * 201 + b'"]}', "type must be at most 200 characters"),
    ],
)
def test_a_bad_pause_request(data: bytes, says: str) -> None:
    with pytest.raises(InvalidJobFile, match=says):
        decode(data)


def test_check_bounds_a_spec_built_in_code() -> None:
    assert check(JobSpec(type="echo", priority=3)).priority == 3
    with pytest.raises(InvalidJobFile, match="max_attempts"):
        check(JobSpec(type="echo", max_attempts=0))
    with pytest.raises(InvalidJobFile, match="timeout"):
        check(JobSpec(type="echo", timeout=float("inf")))


# ------------------------------------------------------------------ digests


def test_the_digest_ignores_key_order() -> None:
    first = job_of(b'{"type": "echo", "payload": {"a": 1, "b": {"c": 2, "d": 3}}, "priority": 1}')
    second = job_of(b'{"priority": 1, "payload": {"b": {"d": 3, "c": 2}, "a": 1}, "type": "echo"}')
    assert first.digest == second.digest
    assert first.payload == second.payload


def test_an_id_from_the_file_name_and_the_same_id_written_out_are_the_same_submission() -> None:
    assert job_of(encoded(), "same").digest == job_of(encoded(id="same"), "same").digest


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"a": 2}},
        {"type": "cpu"},
        {"max_attempts": 4},
        {"timeout": 9.0},
        {"priority": 1},
        {"delay": 5},
    ],
)
def test_any_difference_changes_the_digest(change: dict[str, Any]) -> None:
    base = {"type": "echo", "payload": {"a": 1}}
    assert (
        job_of(json.dumps(base).encode()).digest
        != job_of(json.dumps({**base, **change}).encode()).digest
    )


def test_other_ids_are_other_submissions() -> None:
    assert job_of(encoded(), "one").digest != job_of(encoded(), "two").digest


# ------------------------------------------------------------------ when a job may start


def test_delay_moves_run_at() -> None:
    job = job_of(encoded(delay=2.5))
    assert job.run_at == NOW + 2.5
    assert job.created_at == NOW


@pytest.mark.parametrize(
    "text",
    [
        "2030-01-02T03:04:05Z",
        "2030-01-02T03:04:05+00:00",
        "2030-01-02T05:04:05+02:00",
        "2030-01-01T22:04:05-05:00",
        "2030-01-02T03:04:05",
    ],
)
def test_run_at_with_or_without_an_offset(text: str) -> None:
    expected = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert job_of(encoded(run_at=text)).run_at == expected


def test_run_at_keeps_fractions_of_a_second() -> None:
    job = job_of(encoded(run_at="2030-01-02T03:04:05.250Z"))
    assert job.run_at == datetime(2030, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC).timestamp()


def test_parse_time_names_the_field() -> None:
    with pytest.raises(InvalidJobFile, match="run_at") as caught:
        spec.parse_time("never")
    assert "never" in str(caught.value)


# Every message in procpool's words, whatever msgspec release is installed (CI runs these
# with the oldest and the newest allowed): its own wording for bad UTF-8 changed in 0.23.
JSON = "not valid JSON at line"
UTF8 = "not valid UTF-8 at line"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"type": "echo", "payload": "\xe9t\xe9"}', f"{UTF8} 1 column 30: byte 0xe9"),
        (b'{"type": "\xff"}', f"{UTF8} 1 column 11: byte 0xff"),
        (b'{"a": \xe9}', f"{JSON} 1 column 7: unexpected byte 0xe9"),
        (b'{"a": x, "b": "\xe9"}', f'{JSON} 1 column 7: unexpected character "x"'),
        (b'{"a": 1, "b": "\xe9", x}', f"{UTF8} 1 column 16: byte 0xe9"),
        (b'{"a" 1}', f"{JSON} 1 column 6: expected : after the object's key"),
        (b'{"a": 1 "b": 2}', f"{JSON} 1 column 9: expected , or }} after the object's value"),
        (b"[1 2]", f"{JSON} 1 column 4: expected , or ] after the array's item"),
        (b"{1: 2}", f"{JSON} 1 column 2: expected a key in double quotes"),
        (b"[1,]", f"{JSON} 1 column 4: a comma before ]: JSON allows no trailing comma"),
        (b'{"a":1,}', f"{JSON} 1 column 8: a comma before }}: JSON allows no trailing comma"),
        (b'"\\q"', f"{JSON} 1 column 4: not an escape; only"),
        (b"01", f"{JSON} 1 column 2: not a JSON number"),
        (b'"a\x01b"', f"{JSON} 1 column 3: unexpected control character U+0001"),
        (b"\n[1,\n 2", f"{JSON} 3 column 3: the data ends before the JSON value does"),
        (b'{"type": "echo", "priority": 1e999}', "priority holds a number that is out of"),
        (b'{"type": "echo", "priority": 1' + b"0" * 5000 + b"}", "priority holds a number"),
        (b'{"type": "echo", "payload": [1e999]}', "a number is out of range"),
        (b'{"type": 1}', "type must be a string, got 1"),
        (b'{"type": "echo", "tiemout": 1}', 'unknown field "tiemout"; did you mean "timeout"?'),
        (b'{"payload": 1}', 'missing required field "type"'),
        (b'{"prune": "x"}', 'prune must be a number, got "x"'),
    ],
)
def test_decode_errors_are_worded_by_procpool(data: bytes, message: str) -> None:
    with pytest.raises(InvalidJobFile) as caught:
        decode(data)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("caf\udce9", "payload: not valid UTF-8 at character 4: byte 0xe9"),
        ({"a": ["x", "\ud800"]}, 'payload["a"][1]: not valid Unicode at character 1: \\ud800 is'),
        ({"k\udcff": 1}, "payload: a key is not valid UTF-8 at character 2: byte 0xff"),
        ({"o": [object()]}, 'payload["o"][0]: object is not a JSON value'),
    ],
)
def test_what_cannot_be_written_as_json_is_named_with_its_place(value: Any, message: str) -> None:
    assert spec.unencodable(value, "payload").startswith(message)


def test_a_unique_key_is_held_while_active_unless_it_says_pending() -> None:
    plain = job_of(encoded(unique_key="nightly"))
    assert (plain.unique_key, plain.unique_while) == ("nightly", "active")
    pending = job_of(encoded(unique_key="k" * 128, unique_while="pending"))
    assert (pending.unique_key, pending.unique_while) == ("k" * 128, "pending")
    assert job_of(encoded()).unique_while is None
