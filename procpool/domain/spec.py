"""What a producer may write into the inbox, decoded strictly and checked value by value.

A job file is untrusted input (DESIGN decision 10). `decode` turns its bytes
into a JobSpec or a request (cancel, prune, pause, resume), or raises InvalidJobFile
with a message that says what is wrong and where: the line and column of bad
JSON, or the field, its rule and the value given ("max_attempts must be >= 1,
got 0").

The bytes are parsed into plain values first, so that a message can quote the
value at fault, then converted into a strict struct (an unknown field is an
error), then `check` bounds every value. Nesting is bounded by MAX_DEPTH
because msgspec counts depth against Python's recursion limit: without a bound
of its own, whether a deep payload is accepted would depend on how deep the
caller's stack happens to be. Bytes that end mid-value raise IncompleteJson, so
that the inbox can tell a file still being written from a broken one.

Every message is procpool's own: msgspec's exceptions tell only whether and
where the bytes went wrong (its wording changes between releases: 0.23 says
"Invalid UTF-8 encoded string" where 0.19 raised UnicodeDecodeError), and the
reason is worked out here, from the bytes.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import msgspec

from procpool.domain.errors import InvalidJobFile
from procpool.domain.job import Job
from procpool.domain.limits import KEY_MAX_CHARS
from procpool.domain.pauses import check_types

MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
ID_RULE = '1-128 characters of A-Z a-z 0-9 . _ -, not starting with "." or "-"'
MAX_ATTEMPTS_LIMIT = 1000
PRIORITY_LIMIT = 1_000_000
# Ten years: longer timeouts or delays are typos, and huge floats overflow time arithmetic.
MAX_SECONDS = 10 * 366 * 24 * 3600.0
# The whole document: {"payload": ...} is level 1, so a payload may nest 99 levels.
MAX_DEPTH = 100
# run_at must be shown as a four-digit year by every tool that reads the store.
LATEST_RUN_AT = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?", re.ASCII
)
RFC3339_RULE = "an RFC 3339 time such as 2026-11-28T02:04:15Z"
MAX_AFTER = 256  # parents one job may wait for
AFTER_FAILURE = ("cancel", "run")


class JobSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    type: str
    payload: Any = None
    id: str | None = None
    max_attempts: int | None = None
    timeout: float | None = None
    # None: not given, so the handler's default applies (0 without one); hashed as 0
    # by `digest`, as before handlers had defaults.
    priority: int | None = None
    delay: float | None = None
    run_at: str | None = None
    retry_of: str | None = None  # set by `procpool retry`: the terminal job this one repeats
    # Last: `digest` leaves these out while they are null, so that a submission made
    # before they existed keeps its digest (see `digest`).
    concurrency_key: str | None = None
    expires_at: str | None = None  # RFC 3339: canceled if still pending then
    expires_in: float | None = None  # seconds from acceptance; not with expires_at
    unique_key: str | None = None  # CONTRACT section 16: one live job per type and key
    unique_while: str | None = None  # UNIQUE_WHILE; with unique_key only ("active" if not given)
    # Set by `procpool retry --resume`: the job starts from retry_of's last checkpoint.
    from_checkpoint: bool | None = None
    after: list[str] | None = None  # ids of the jobs this one waits for (CONTRACT section 15)
    after_failure: str | None = None  # "cancel" (None: the default) or "run"


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True):
    cancel: str


class PruneRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Delete terminal jobs older than this many days (`procpool prune`)."""

    prune: float


class PauseRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Start no job of these types (`procpool pause`); `until`, RFC 3339: the pause ends
    by itself then (None: until resumed)."""

    pause: list[str]
    until: str | None = None


class ResumeRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Lift the pauses of these types (`procpool resume`)."""

    resume: list[str]


SCHEDULE_ACTIONS = ("apply", "pause", "resume", "trigger", "remove")


class ScheduleRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A change of the schedules (`procpool schedule ...`, CONTRACT section 14):
    `schedules` is the action, one of SCHEDULE_ACTIONS. "apply": `definitions` are every
    schedule, as a schedule file holds them (checked by domain/schedules.py); the others
    concern the schedule `name`; "trigger" makes its job at `at` (RFC 3339)."""

    schedules: str
    name: str | None = None
    definitions: list[Any] | None = None
    at: str | None = None


@dataclass(frozen=True)
class BatchRequest:
    """`{"batch": [job, ...]}`: jobs stored all or none (`Client.submit_many` while no
    daemon runs). Each job is its spec, or why it is not one."""

    jobs: list[JobSpec | InvalidJobFile]


# What each field must be, in the words a message uses when the JSON type is wrong.
_KINDS = {
    "type": "a string",
    "id": "a string",
    "max_attempts": "an integer",
    "timeout": "a number",
    "priority": "an integer",
    "delay": "a number",
    "run_at": "a string",
    "retry_of": "a string",
    "concurrency_key": "a string",
    "expires_at": "a string",
    "expires_in": "a number",
    "unique_key": "a string",
    "unique_while": 'the string "active" or "pending"',
    "from_checkpoint": "true or false",
    "after": "a list of job ids",
    "after_failure": 'one of "cancel", "run"',
    "cancel": "a string",
    "prune": "a number",
    "pause": "a list of job types",
    "resume": "a list of job types",
    "until": "a string",
    "schedules": "a string",
    "name": "a string",
    "definitions": "an array of schedules",
    "at": "a string",
}


@dataclass(frozen=True)
class TypeDefaults:
    """What `@handler` gives the jobs of its type that do not say (None: not set there).
    `timeout` in seconds."""

    timeout: float | None = None
    max_attempts: int | None = None
    priority: int | None = None


NO_TYPE_DEFAULTS: Mapping[str, TypeDefaults] = MappingProxyType({})


@dataclass(frozen=True)
class JobDefaults:
    """The values a job gets for the fields it leaves out: its type's `TypeDefaults`
    (`types`, by type) where set, else these (the configuration's; priority 0)."""

    max_attempts: int = 3
    timeout: float | None = None
    types: Mapping[str, TypeDefaults] = dataclasses.field(default_factory=dict)


def show(value: Any, width: int = 60) -> str:
    """A value as JSON, cut short: how a message quotes what a producer wrote."""
    if isinstance(value, float) and not math.isfinite(value):
        text = repr(value)  # msgspec would write null
    else:
        try:
            text = msgspec.json.encode(value).decode()
        except (TypeError, ValueError, RecursionError):  # lone surrogates, odd objects
            text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def check_id(value: str, what: str = "id") -> str:
    if not ID_PATTERN.fullmatch(value):
        raise InvalidJobFile(f"{what} must be {ID_RULE}, got {show(value)}")
    return value


def _check_bounds(name: str, value: int, low: int, high: int) -> None:
    if value < low:
        raise InvalidJobFile(f"{name} must be >= {low}, got {value}")
    if value > high:
        raise InvalidJobFile(f"{name} must be <= {high}, got {value}")


def _check_seconds(name: str, value: float, *, allow_zero: bool) -> None:
    if not math.isfinite(value):
        raise InvalidJobFile(f"{name} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise InvalidJobFile(f"{name} must be {rule}, got {value:g}")
    if value > MAX_SECONDS:
        raise InvalidJobFile(f"{name} must be <= {MAX_SECONDS:.0f} (ten years), got {value:g}")


def parse_time(value: str, name: str = "run_at") -> float:
    """An RFC 3339 time as epoch seconds. A time without an offset is taken as UTC."""
    moment = None
    if _RFC3339.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value.upper())
        except ValueError:  # the right shape, but month 13, hour 24, offset +25:00, ...
            moment = None
    if moment is None:
        raise InvalidJobFile(f"{name} must be {RFC3339_RULE}, got {show(value)}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = moment.timestamp()
    if not 0 <= seconds <= LATEST_RUN_AT:
        raise InvalidJobFile(
            f"{name} must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z,"
            f" got {show(value)}"
        )
    return seconds


def _check_text(name: str, value: str) -> None:
    """Strings built in Python (not decoded from JSON) can hold lone surrogates."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidJobFile(f"{name} is not valid Unicode text, got {show(value)}") from None


def check_concurrency_key(value: str) -> str:
    if not 1 <= len(value) <= KEY_MAX_CHARS:
        raise InvalidJobFile(
            f"concurrency_key must be 1-{KEY_MAX_CHARS} characters, got {len(value)}: {show(value)}"
        )
    _check_text("concurrency_key", value)
    return value


UNIQUE_KEY_MAX_CHARS = 128
UNIQUE_WHILE = ("active", "pending")
"""What a job's unique_key is held for: "active", while it is pending or running;
"pending", until it is first handed to a worker (a retry that waits again does not
take it back: a job submitted meanwhile may hold it, and two pending jobs cannot)."""


def _check_unique(spec: JobSpec) -> None:
    key, held = spec.unique_key, spec.unique_while
    if key is not None:
        if not 1 <= len(key) <= UNIQUE_KEY_MAX_CHARS:
            raise InvalidJobFile(
                f"unique_key must be 1-{UNIQUE_KEY_MAX_CHARS} characters, got {len(key)}:"
                f" {show(key)}"
            )
        _check_text("unique_key", key)
    if held is not None:
        if held not in UNIQUE_WHILE:
            raise InvalidJobFile(f'unique_while must be "active" or "pending", got {show(held)}')
        if key is None:
            raise InvalidJobFile("unique_while needs a unique_key")


def _not_unicode(text: str, start: int) -> str:
    """Why `text[start]`, a lone surrogate, is not text, in a file's terms where it can."""
    code = ord(text[start])
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for a byte that is not UTF-8
        return f"not valid UTF-8 at character {start + 1}: byte 0x{code - 0xDC00:02x}"
    return (
        f"not valid Unicode at character {start + 1}:"
        f" \\u{code:04x} is half of a UTF-16 surrogate pair, not a character"
    )


def unencodable(value: Any, where: str) -> str:
    """Why a Python value cannot be written as JSON, and where in it (`payload["a"][2]`).

    For a value that msgspec refused to encode: the first string that is not valid
    Unicode, or the first value of a type JSON has nothing for. msgspec's own message
    names neither the place nor, across releases, the fault in the same words.
    """
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError as bad:
                return f"{path}: {_not_unicode(item, bad.start)}"
        elif isinstance(item, dict):
            for key, inner in reversed(item.items()):
                if isinstance(key, str):
                    try:
                        key.encode()
                    except UnicodeEncodeError as bad:
                        return f"{path}: a key is {_not_unicode(key, bad.start)}"
                stack.append((f"{path}[{show(key)}]", inner))
        elif isinstance(item, list | tuple):
            stack.extend((f"{path}[{n}]", inner) for n, inner in reversed(list(enumerate(item))))
        elif not isinstance(item, int | float | None):
            return f"{path}: {type(item).__name__} is not a JSON value"
    return f"{where} cannot be written as JSON"


def check(spec: JobSpec) -> JobSpec:
    """Bound every value of a decoded spec; return it unchanged if all hold."""
    if not spec.type:
        raise InvalidJobFile("type must not be empty")
    _check_text("type", spec.type)
    if spec.id is not None:
        check_id(spec.id)
    if spec.retry_of is not None:
        check_id(spec.retry_of, "retry_of")
    if spec.concurrency_key is not None:
        check_concurrency_key(spec.concurrency_key)
    _check_options(spec)
    if spec.after is not None or spec.after_failure is not None:
        _check_dependencies(spec)
    if spec.expires_at is not None:
        if spec.expires_in is not None:
            raise InvalidJobFile("expires_at and expires_in cannot be given together")
        parse_time(spec.expires_at, "expires_at")
    if spec.unique_key is not None or spec.unique_while is not None:
        _check_unique(spec)
    if spec.from_checkpoint and spec.retry_of is None:
        raise InvalidJobFile(
            "from_checkpoint needs retry_of: it starts from that job's last checkpoint"
        )
    return spec


def _check_options(spec: JobSpec) -> None:
    """The attempts, priority and times a spec gives, in this order (the first fault
    is the one reported). One left out (None, or 0 for priority) needs no check: no
    call for it, on every job submitted and every line of a large file."""
    if spec.max_attempts is not None:
        _check_bounds("max_attempts", spec.max_attempts, 1, MAX_ATTEMPTS_LIMIT)
    if spec.priority:
        _check_bounds("priority", spec.priority, -PRIORITY_LIMIT, PRIORITY_LIMIT)
    if spec.timeout is not None:
        _check_seconds("timeout", spec.timeout, allow_zero=False)
    if spec.delay is not None:
        _check_seconds("delay", spec.delay, allow_zero=True)
    if spec.run_at is not None:
        if spec.delay is not None:
            raise InvalidJobFile("run_at and delay cannot be given together")
        parse_time(spec.run_at)
    if spec.expires_in is not None:
        _check_seconds("expires_in", spec.expires_in, allow_zero=False)


def _check_dependencies(spec: JobSpec) -> None:
    if spec.after is not None:
        check_after(spec.after)
    if spec.after_failure is not None and spec.after_failure not in AFTER_FAILURE:
        raise InvalidJobFile(
            f'after_failure must be one of "cancel", "run", got {show(spec.after_failure)}'
        )


def check_after(after: list[str]) -> list[str]:
    """`after`: 1-MAX_AFTER ids of the id shape, none twice. Raises InvalidJobFile naming
    the id at fault."""
    if not 1 <= len(after) <= MAX_AFTER:
        raise InvalidJobFile(f"after must list 1-{MAX_AFTER} job ids, got {len(after)}")
    seen: set[str] = set()
    for parent in after:
        check_id(parent, "each id in after")
        if parent in seen:
            raise InvalidJobFile(f"after names {show(parent)} twice")
        seen.add(parent)
    return after


def check_expiry(spec: JobSpec, now: float) -> None:
    """At acceptance: an `expires_at` that has passed is an error (the job could never
    run). Raises InvalidJobFile naming it."""
    if spec.expires_at is not None and parse_time(spec.expires_at, "expires_at") <= now:
        raise InvalidJobFile(
            f"expires_at {show(spec.expires_at)} has passed: the job would expire at once"
        )


# ----------------------------------------------------------------- bytes to values


class IncompleteJson(InvalidJobFile):
    """The bytes end before the JSON value does: perhaps a producer is still writing."""


class _Malformed(Exception):
    """Where the bytes go wrong (a byte offset, or None) and why."""

    def __init__(
        self,
        offset: int | None,
        reason: str,
        what: str | None = "JSON",
        *,
        ends_early: bool = False,
    ) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.what = what
        self.ends_early = ends_early

    def describe(self, data: bytes, first_line: int) -> str:
        where = "" if self.offset is None else f" at {_position(data, self.offset, first_line)}"
        if self.what is None:
            return f"{self.reason}{where}"
        return f"not valid {self.what}{where}: {self.reason}"


def _position(data: bytes, offset: int, first_line: int) -> str:
    start = data.rfind(b"\n", 0, offset) + 1
    line = first_line + data.count(b"\n", 0, offset)
    column = len(data[start:offset].decode("utf-8", "replace")) + 1
    return f"line {line} column {column}"


_ENDS_EARLY = "the data ends before the JSON value does"
_UNICODE_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u([0-9a-fA-F]{4})")


def _lone_surrogate(data: bytes) -> _Malformed | None:
    r"""msgspec rejects "\ud800" without its pair, but calls it truncated input."""

    def lone(match: re.Match[bytes]) -> _Malformed:
        escape = match.group(0)[-6:].decode()
        reason = f"{escape} is half of a UTF-16 surrogate pair, not a character"
        return _Malformed(match.end() - 6, f"{reason}; strings must be valid Unicode")

    high: re.Match[bytes] | None = None  # waiting for the low half right after it
    for match in _UNICODE_ESCAPE.finditer(data):
        code = int(match.group(1), 16)
        if high is not None:
            if 0xDC00 <= code <= 0xDFFF and match.end() - 6 == high.end():
                high = None
                continue
            return lone(high)
        if 0xD800 <= code <= 0xDBFF:
            high = match
        elif 0xDC00 <= code <= 0xDFFF:
            return lone(match)
    return None if high is None else lone(high)


class _OutOfRange:
    """Stands in for a number too large to hold, where the standard parser meets one."""


_OUT_OF_RANGE = _OutOfRange()
_MAX_DIGITS = 4300  # Python's own limit on converting digits to an int


def _number_out_of_range(data: bytes) -> str:
    """Name the top-level field whose number overflows, if it is one."""
    where = "a number"

    def floating(text: str) -> float | _OutOfRange:
        value = float(text)
        return value if math.isfinite(value) else _OUT_OF_RANGE

    def integer(text: str) -> int | _OutOfRange:
        return int(text) if len(text.lstrip("-")) <= _MAX_DIGITS else _OUT_OF_RANGE

    try:
        document = json.loads(data, parse_float=floating, parse_int=integer)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict):
        field = next((key for key, value in document.items() if value is _OUT_OF_RANGE), None)
        if field is not None:
            where = f"{field} holds a number that"
    return f"{where} is out of range (beyond ±1.8e308, or over {_MAX_DIGITS} digits)"


def _end_of_first_value(data: bytes) -> int | None:
    """Where what follows a complete JSON value starts (msgspec has parsed that value)."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return None
    end += len(text[end:]) - len(text[end:].lstrip(" \t\n\r"))
    return len(text[:end].encode("utf-8", "surrogateescape"))


def _bad_utf8(data: bytes) -> _Malformed | None:
    """The first byte that is not UTF-8, checked here: msgspec words it differently
    from one release to the next, and not every release says where."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return _Malformed(bad.start, f"byte 0x{data[bad.start]:02x}", "UTF-8")
    return None


def _character_at(data: bytes, offset: int) -> str:
    """The character that starts at `offset`, named for a message."""
    if offset >= len(data):
        return "the end of the data"
    character = data[offset : offset + 4].decode("utf-8", "replace")[0]
    if character.isprintable() and character != "\ufffd":
        return f"character {show(character)}"
    if data[offset] >= 0x80:
        return f"byte 0x{data[offset]:02x}"
    return f"control character U+{ord(character):04X} (write it as \\u{ord(character):04x})"


_ESCAPES = 'only \\" \\\\ \\/ \\b \\f \\n \\r \\t and \\uXXXX are escapes in JSON'
# msgspec's reasons (0.19 to 0.23) in procpool's words; a reason not listed here, or
# worded otherwise by a later release, is described from the byte at the offset.
_REASONS = {
    "expected ':'": "expected : after the object's key",
    "expected ',' or '}'": "expected , or } after the object's value",
    "expected ',' or ']'": "expected , or ] after the array's item",
    "expected '\"'": "expected a key in double quotes",
    "object keys must be strings": "expected a key in double quotes",
    "trailing comma in array": "a comma before ]: JSON allows no trailing comma",
    "trailing comma in object": "a comma before }: JSON allows no trailing comma",
    "invalid escape character in string": f"not an escape; {_ESCAPES}",
    "invalid escaped character": f"not an escape; {_ESCAPES}",
    "invalid character in unicode escape": "a \\u escape takes four hex digits",
    "unexpected end of hex escape": "a \\u escape takes four hex digits",
    "invalid number": "not a JSON number",
}
_MALFORMED = re.compile(r".*\(byte (\d+)\)", re.DOTALL)


def _located_elsewhere(data: bytes) -> _Malformed:
    """For a msgspec error worded in a way this module does not know: the standard
    parser says where the JSON goes wrong."""
    try:
        json.loads(data)
    except json.JSONDecodeError as located:
        offset = len(located.doc[: located.pos].encode("utf-8", "surrogateescape"))
        return _Malformed(offset, f"unexpected {_character_at(data, offset)}")
    except (ValueError, RecursionError):
        pass
    return _Malformed(None, "not a JSON value")


def _explain_decode_error(error: msgspec.DecodeError, data: bytes) -> _Malformed:
    text = str(error)
    if isinstance(error, msgspec.ValidationError):  # an untyped decode checks only ranges
        return _Malformed(None, _number_out_of_range(data), None)
    lone = _lone_surrogate(data)
    if lone is not None:
        return lone
    if not data.strip():
        return _Malformed(None, "there is no JSON value, only white space")
    if text == "Input data was truncated":
        return _Malformed(len(data.rstrip()), _ENDS_EARLY, ends_early=True)
    at = _MALFORMED.fullmatch(text)
    if not at:
        return _located_elsewhere(data)
    offset = int(at.group(1))
    reason = next((ours for theirs, ours in _REASONS.items() if f": {theirs} (" in text), None)
    if reason == _REASONS["invalid number"] and offset >= len(data.rstrip()):
        return _Malformed(offset, _ENDS_EARLY, ends_early=True)  # a cut-off "-" or "1e"
    if "trailing characters" in text:  # msgspec points past them, not at them
        return _Malformed(_end_of_first_value(data), "more follows the JSON value")
    rest = data[offset:]
    if offset == 0 and rest.startswith(b"\xef\xbb\xbf"):
        reason = "a UTF-8 byte order mark; write the file without one"
    elif rest.startswith((b"NaN", b"Infinity")):
        token = "NaN" if rest.startswith(b"NaN") else "Infinity"
        reason = f"{token} is not a JSON number; numbers must be finite"
    return _Malformed(offset, reason or f"unexpected {_character_at(data, offset)}")


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS_ONLY = (bytes.maketrans(b"{}", b"[]"), bytes(set(range(256)) - set(b"[]{}")))
_TOO_DEEP = f"the JSON is nested more than {MAX_DEPTH} levels deep"


def _too_deep(data: bytes) -> bool:
    """Whether valid JSON nests deeper than MAX_DEPTH, at the speed of bytes methods.

    Each pass deletes the innermost pairs, so it takes as many passes as the nesting is deep.
    """
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return False
    brackets = _STRING.sub(b"", data).translate(*_BRACKETS_ONLY)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


def parse_json(data: bytes, first_line: int = 1) -> Any:
    """Parse untrusted JSON into plain values, or raise InvalidJobFile saying where and why.

    `first_line` numbers the lines of `data` as in its file (a .jsonl line).
    """
    try:
        bad_utf8 = _bad_utf8(data)
        try:
            value = msgspec.json.decode(data)
        except msgspec.DecodeError as error:
            malformed = _explain_decode_error(error, data)
            # The first fault in the file is the one reported, whichever check found it.
            where = len(data) if malformed.offset is None else malformed.offset
            if bad_utf8 is not None and where > (bad_utf8.offset or 0):
                raise bad_utf8 from None
            raise malformed from None
        except UnicodeDecodeError:  # how msgspec 0.19 reports bytes that are not UTF-8
            raise bad_utf8 or _Malformed(None, "a string is not UTF-8", "UTF-8") from None
        except RecursionError:
            raise _Malformed(None, _TOO_DEEP, None) from None
        if bad_utf8 is not None:
            raise bad_utf8
        if isinstance(value, dict | list) and _too_deep(data):
            raise _Malformed(None, _TOO_DEEP, None)
    except _Malformed as malformed:
        kind = IncompleteJson if malformed.ends_early else InvalidJobFile
        raise kind(malformed.describe(data, first_line)) from None
    return value


# ----------------------------------------------------------------- values to specs


def _json_kind(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return show(value)
    kinds: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return kinds.get(type(value), "a number")


def _explain_mismatch(document: dict[str, Any], target: type[msgspec.Struct]) -> str:
    """Why msgspec would not convert `document` into `target`, found field by field
    (msgspec's own message is worded differently from one release to the next)."""
    fields = {field.name: field for field in msgspec.structs.fields(target)}
    for name in document:
        if name not in fields:
            message = f"unknown field {show(name)}"
            close = difflib.get_close_matches(name, list(fields), n=1)
            return f"{message}; did you mean {show(close[0])}?" if close else message
    for field in fields.values():
        if field.required and field.name not in document:
            return f"missing required field {show(field.name)}"
    for name, value in document.items():
        try:
            msgspec.convert(value, fields[name].type)
        except msgspec.ValidationError:
            return f"{name} must be {_KINDS.get(name, 'something else')}, got {show(value)}"
    return f"the object is not a valid {target.__name__}"


_job_decoder = msgspec.json.Decoder(JobSpec)


def _job_of(value: Any) -> JobSpec:
    """A job object of a batch, checked as a job file is."""
    if not isinstance(value, dict):
        raise InvalidJobFile(f"a job must be a JSON object, got {_json_kind(value)}")
    try:
        return check(msgspec.convert(value, JobSpec))
    except msgspec.ValidationError:
        raise InvalidJobFile(_explain_mismatch(value, JobSpec)) from None


def _batch(document: dict[str, Any]) -> BatchRequest:
    extra = next((key for key in document if key != "batch"), None)
    if extra is not None:
        raise InvalidJobFile(f'unknown field {show(extra)} beside "batch"')
    jobs = document["batch"]
    if not isinstance(jobs, list):
        raise InvalidJobFile(f"batch must be an array of job objects, got {_json_kind(jobs)}")
    if not jobs:
        raise InvalidJobFile("the batch holds no job")
    found: list[JobSpec | InvalidJobFile] = []
    for value in jobs:
        try:
            found.append(_job_of(value))
        except InvalidJobFile as error:
            found.append(error)
    return BatchRequest(found)


Request = CancelRequest | PruneRequest | PauseRequest | ResumeRequest | ScheduleRequest


def decode(data: bytes, first_line: int = 1) -> JobSpec | Request | BatchRequest:
    """Decode one JSON object: a job, a cancel, prune, pause, resume or schedule
    request, or a batch."""
    # The common case, a well-formed job, in one typed pass; anything else takes the
    # slower path below, which explains what is wrong.
    try:
        spec = _job_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        pass
    else:
        if not _too_deep(data):
            return check(spec)
    document = parse_json(data, first_line)
    if not isinstance(document, dict):
        raise InvalidJobFile(f"a job must be a JSON object, got {_json_kind(document)}")
    target: type[JobSpec | Request] = JobSpec
    if "type" not in document:
        if "batch" in document:
            return _batch(document)
        if "cancel" in document:
            target = CancelRequest
        elif "prune" in document:
            target = PruneRequest
        elif "pause" in document:
            target = PauseRequest
        elif "resume" in document:
            target = ResumeRequest
        elif "schedules" in document:
            target = ScheduleRequest
    try:
        decoded = msgspec.convert(document, target)
    except msgspec.ValidationError:
        raise InvalidJobFile(_explain_mismatch(document, target)) from None
    return check(decoded) if isinstance(decoded, JobSpec) else _check_request(decoded)


def _check_request(request: Request) -> Request:
    """Bound the values of a decoded request; return it (its types without repeats)."""
    if isinstance(request, CancelRequest):
        check_id(request.cancel, "cancel")
    elif isinstance(request, PruneRequest):
        if not math.isfinite(request.prune) or request.prune < 0:
            raise InvalidJobFile(f"prune must be a number of days >= 0, got {request.prune:g}")
    elif isinstance(request, PauseRequest):
        request.pause = check_types(request.pause)
        if request.until is not None:
            parse_time(request.until, "until")
    elif isinstance(request, ResumeRequest):
        request.resume = check_types(request.resume)
    else:
        _check_schedule_request(request)
    return request


def _check_schedule_request(request: ScheduleRequest) -> None:
    if request.schedules not in SCHEDULE_ACTIONS:
        raise InvalidJobFile(
            f"schedules must be one of {', '.join(SCHEDULE_ACTIONS)}, got {show(request.schedules)}"
        )
    if request.schedules == "apply":
        if request.definitions is None:
            raise InvalidJobFile('definitions: an apply names every schedule (or "[]")')
        return
    if request.name is None:
        raise InvalidJobFile(f"name: a schedule {request.schedules} names its schedule")
    check_id(request.name, "name")
    if request.schedules == "trigger":
        parse_time(request.at or "", "at")


_canonical = msgspec.json.Encoder(order="deterministic")


def encode_json(value: Any) -> bytes:
    """Canonical JSON: equal values give equal bytes, whatever their key order."""
    return _canonical.encode(value)


# The fields added after digests were first kept, in their order (the last ones), as
# they are encoded while null: last first.
_LATER_NULLS = tuple(
    f',"{name}":null'.encode()
    for name in reversed(
        (
            "concurrency_key",
            "expires_at",
            "expires_in",
            "unique_key",
            "unique_while",
            "from_checkpoint",
            "after",
            "after_failure",
        )
    )
)

_ALL_NULL = b"".join(reversed(_LATER_NULLS)) + b"}"


def digest(spec: JobSpec) -> str:
    """What makes two submissions "the very same": type, payload and options. The
    fields added later (_LATER_NULLS) are hashed only where set, as before they existed,
    and a priority not given as 0, as before it could be left out, so that a file read
    again after an upgrade is still the same submission."""
    if spec.priority is None:  # never from to_job, which hashes it as 0 already
        spec = msgspec.structs.replace(spec, priority=0)
    encoded = encode_json(spec)
    if encoded.endswith(_ALL_NULL):  # the common case: one look
        encoded = encoded[: -len(_ALL_NULL)] + b"}"
    else:
        end = len(encoded) - 1  # before the closing brace
        for null in _LATER_NULLS:  # trailing nulls only: the order is the fields'
            if not encoded.endswith(null, 0, end):
                break
            end -= len(null)
        encoded = encoded[:end] + b"}"
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def to_job(spec: JobSpec, *, job_id: str, defaults: JobDefaults, now: float) -> Job:
    """The job a checked spec makes. A field the spec leaves out takes the default of
    its type (`defaults.types`), else the configuration's (`defaults`; priority 0)."""
    run_at = parse_time(spec.run_at) if spec.run_at is not None else now + (spec.delay or 0.0)
    payload = encode_json(spec.payload)
    # The digest reuses the canonical payload bytes (as Raw) instead of encoding it again.
    submitted = msgspec.structs.replace(
        spec, id=job_id, payload=msgspec.Raw(payload), priority=spec.priority or 0
    )
    max_attempts, timeout, priority = spec.max_attempts, spec.timeout, spec.priority
    own = defaults.types.get(spec.type)
    if own is not None:
        max_attempts = max_attempts or own.max_attempts
        timeout = own.timeout if timeout is None else timeout
        priority = own.priority if priority is None else priority
    return Job(
        id=job_id,
        type=spec.type,
        payload=payload,
        max_attempts=max_attempts or defaults.max_attempts,
        timeout=timeout if timeout is not None else defaults.timeout,
        priority=priority or 0,
        run_at=run_at,
        created_at=now,
        updated_at=now,
        digest=digest(submitted),
        retry_of=spec.retry_of,
        concurrency_key=spec.concurrency_key,
        expires_at=_expiry(spec, now),
        unique_key=spec.unique_key,
        unique_while=None if spec.unique_key is None else spec.unique_while or "active",
        after=tuple(spec.after or ()),
        after_failure=spec.after_failure or "cancel",
    )


def _expiry(spec: JobSpec, now: float) -> float | None:
    if spec.expires_at is not None:
        return parse_time(spec.expires_at, "expires_at")
    return None if spec.expires_in is None else now + spec.expires_in
