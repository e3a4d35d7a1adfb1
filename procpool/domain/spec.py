"""What a producer may write into the inbox, decoded strictly and checked value by value.

A job file is untrusted input (DESIGN decision 10): msgspec decodes it into a
struct that forbids unknown fields, then `check` bounds every value. Each
failure raises InvalidJobFile with a message that names the field and the rule.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from procpool.domain.errors import InvalidJobFile
from procpool.domain.job import Job

ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
MAX_ATTEMPTS_LIMIT = 1000
PRIORITY_LIMIT = 1_000_000
# Ten years: longer timeouts or delays are typos, and huge floats overflow time arithmetic.
MAX_SECONDS = 10 * 366 * 24 * 3600.0


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    type: str
    payload: Any = None
    id: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    priority: int = 0
    delay: float | None = None
    run_at: str | None = None
    retry_of: str | None = None  # set by `procpool retry`: the terminal job this one repeats


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    cancel: str


class PruneRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Delete terminal jobs older than this many days (`procpool prune`)."""

    prune: float


@dataclass(frozen=True)
class JobDefaults:
    max_attempts: int = 3
    timeout: float | None = None


def check_id(value: str, what: str = "id") -> str:
    if not ID_PATTERN.fullmatch(value):
        raise InvalidJobFile(
            f"{what} {value[:140]!r} is not valid: 1-128 characters of A-Z a-z 0-9 . _ -,"
            " not starting with '.' or '-'"
        )
    return value


def _check_seconds(name: str, value: float | None, *, allow_zero: bool) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise InvalidJobFile(f"{name} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise InvalidJobFile(f"{name} must be {rule}, got {value}")
    if value > MAX_SECONDS:
        raise InvalidJobFile(f"{name} must be at most {MAX_SECONDS:.0f} seconds, got {value}")


def parse_time(value: str, name: str = "run_at") -> float:
    """An RFC 3339 time as epoch seconds. A time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidJobFile(
            f"{name} {value[:64]!r} is not an RFC 3339 time such as 2026-11-28T02:04:15Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check(spec: JobSpec) -> JobSpec:
    """Bound every value of a decoded spec; return it unchanged if all hold."""
    if not spec.type:
        raise InvalidJobFile("type must not be empty")
    if spec.id is not None:
        check_id(spec.id)
    if spec.retry_of is not None:
        check_id(spec.retry_of, "retry_of")
    if spec.max_attempts is not None and not 1 <= spec.max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidJobFile(
            f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {spec.max_attempts}"
        )
    if not -PRIORITY_LIMIT <= spec.priority <= PRIORITY_LIMIT:
        raise InvalidJobFile(
            f"priority must be between {-PRIORITY_LIMIT} and {PRIORITY_LIMIT}, got {spec.priority}"
        )
    _check_seconds("timeout", spec.timeout, allow_zero=False)
    _check_seconds("delay", spec.delay, allow_zero=True)
    if spec.run_at is not None:
        if spec.delay is not None:
            raise InvalidJobFile("run_at and delay cannot be given together")
        parse_time(spec.run_at)
    return spec


def describe_validation_error(error: msgspec.ValidationError) -> str:
    """msgspec says "Expected `int`, got `str` - at `$.priority`"; say it field first."""
    text = str(error)
    match = re.fullmatch(r"(.*) - at `\$\.([A-Za-z_]+)`", text)
    if match:
        return f"{match.group(2)}: {match.group(1)[0].lower()}{match.group(1)[1:]}"
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", text)
    if unknown:
        return f'unknown field "{unknown.group(1)}"'
    missing = re.fullmatch(r"Object missing required field `(.*)`", text)
    if missing:
        return f'missing required field "{missing.group(1)}"'
    if text.startswith("Expected `object`"):
        return f"a job must be a JSON object: {text[0].lower()}{text[1:]}"
    return text


def _describe_decode_error(error: msgspec.DecodeError, data: bytes) -> str:
    text = str(error)
    match = re.search(r"\(byte (\d+)\)", text)
    if not match:
        return f"not valid JSON: {text}"
    offset = int(match.group(1))
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    reason = text.split(" (byte", maxsplit=1)[0].removeprefix("JSON is malformed: ")
    return f"not valid JSON at line {line} column {column}: {reason}"


def decode(data: bytes) -> JobSpec | CancelRequest | PruneRequest:
    """Decode one JSON object: a job, a cancel request or a prune request."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as error:
        raise InvalidJobFile(_describe_decode_error(error, data)) from None
    except UnicodeDecodeError as error:
        raise InvalidJobFile(f"not valid UTF-8 at byte {error.start}") from None
    except RecursionError:
        raise InvalidJobFile("JSON is nested too deeply") from None
    if not isinstance(value, dict):
        raise InvalidJobFile(f"a job must be a JSON object, got {type(value).__name__}")
    target: type[JobSpec | CancelRequest | PruneRequest] = JobSpec
    if "type" not in value:
        if "cancel" in value:
            target = CancelRequest
        elif "prune" in value:
            target = PruneRequest
    try:
        decoded = msgspec.convert(value, target)
    except msgspec.ValidationError as error:
        raise InvalidJobFile(describe_validation_error(error)) from None
    if isinstance(decoded, CancelRequest):
        check_id(decoded.cancel, "cancel")
        return decoded
    if isinstance(decoded, PruneRequest):
        if not math.isfinite(decoded.prune) or decoded.prune < 0:
            raise InvalidJobFile(f"prune must be a number of days >= 0, got {decoded.prune}")
        return decoded
    return check(decoded)


def encode_json(value: Any) -> bytes:
    """Canonical JSON: equal values give equal bytes, whatever their key order."""
    return msgspec.json.encode(value, order="deterministic")


def digest(spec: JobSpec) -> str:
    """What makes two submissions "the very same": type, payload and options."""
    return hashlib.blake2b(encode_json(spec), digest_size=16).hexdigest()


def to_job(spec: JobSpec, *, job_id: str, defaults: JobDefaults, now: float) -> Job:
    run_at = parse_time(spec.run_at) if spec.run_at is not None else now + (spec.delay or 0.0)
    return Job(
        id=job_id,
        type=spec.type,
        payload=encode_json(spec.payload),
        max_attempts=spec.max_attempts or defaults.max_attempts,
        timeout=spec.timeout if spec.timeout is not None else defaults.timeout,
        priority=spec.priority,
        run_at=run_at,
        created_at=now,
        updated_at=now,
        digest=digest(msgspec.structs.replace(spec, id=job_id)),
        retry_of=spec.retry_of,
    )
