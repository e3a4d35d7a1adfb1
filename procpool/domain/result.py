"""A handler's result: a JSON value, checked strictly, then encoded (CONTRACT section 3).

msgspec's encoder is lenient where the contract is strict: it turns a set or a
tuple into an array, bytes into base64, a datetime or UUID into a string, NaN
and infinity into null, and an int key into a string. So the value is walked
first, and anything that is not a JSON value fails the attempt with an error
that names its type and where it sits: `result["tags"]: set is not a JSON value`.

What counts as JSON here:

- None, bool, str, int, float (finite only);
- dict, and its subclasses (OrderedDict, Counter, defaultdict), with str keys;
- list and tuple, and their subclasses (a namedtuple): all become arrays;
- a subclass of int, float or str (IntEnum, StrEnum, numpy.float64) is stored
  as its plain value: an IntEnum as its integer.

A string must be valid Unicode: a lone surrogate (what a file name that is not
UTF-8 decodes to, `caf\\udce9.jpg`) has no UTF-8 form. Nesting is bounded as a
job file's is (spec.MAX_DEPTH), which also stops a container that holds itself.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from procpool.domain.errors import ProcpoolError
from procpool.domain.spec import MAX_DEPTH


class ResultError(ProcpoolError):
    """A result that is not a JSON value, or is too large. The message says where and why."""


class CheckpointError(ResultError):
    """A checkpoint (`ctx.checkpoint`) that is not a JSON value, or is over
    max_checkpoint_bytes: nothing was stored. The message says where and why."""


def _plain(value: Any) -> Any:
    """Called by msgspec for types it does not know: only the subclasses the walk let through."""
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"{_type_name(value)} is not a JSON value")  # the walk let nothing else in


_encoder = msgspec.json.Encoder(enc_hook=_plain)


def _type_name(value: Any) -> str:
    kind = type(value)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _render(path: list[str | int]) -> str:
    """`result["a"][0]`; a very deep path keeps its first and last steps."""
    steps = [f"[{msgspec.json.encode(_safe_key(s)).decode()}]" if isinstance(s, str) else f"[{s}]"
             for s in path]  # fmt: skip
    if len(steps) > 12:
        steps = [*steps[:6], f"...{len(steps) - 12} more...", *steps[-6:]]
    return "result" + "".join(steps)


def _safe_key(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


_SURROGATE_HINT = (
    "which is not valid Unicode (a file name that is not UTF-8? decode it with"
    " errors='replace' or 'backslashreplace')"
)


def _fault(path: tuple[str | int, ...], text: str) -> ResultError:
    return ResultError(f"{_render(list(path))}: {text}")


def _check_string(text: str, path: tuple[str | int, ...], what: str = "str") -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise _fault(
            path,
            f"{what} holds the lone surrogate {bad!r} at index {error.start}, {_SURROGATE_HINT}",
        ) from None


def _other(value: Any, path: tuple[str | int, ...], check_strings: bool) -> int:
    """A lower bound of the encoded size of a value that is not a plain scalar nor a
    container: a subclass of str, int or float, or a fault."""
    if isinstance(value, str):
        if check_strings and not value.isascii():
            _check_string(value, path)
        return len(value) + 2
    if isinstance(value, float) and not math.isfinite(value):
        raise _fault(path, f"float {value!r} is not a JSON value (numbers must be finite)")
    if isinstance(value, int | float):
        return 1
    raise _fault(path, f"{_type_name(value)} is not a JSON value")


def _scalar_size(value: Any, path: tuple[str | int, ...], check_strings: bool) -> int:
    """The size bound of a scalar, -1 for a container (to be walked), or a fault."""
    kind = type(value)
    if kind is str:
        if check_strings and not value.isascii():
            _check_string(value, path)
        return len(value) + 2
    if kind is int or kind is bool or value is None:
        return 1
    if kind is float:
        if not math.isfinite(value):
            raise _fault(path, f"float {value!r} is not a JSON value (numbers must be finite)")
        return 1
    if isinstance(value, dict | list | tuple):
        return -1
    return _other(value, path, check_strings)


def _children(
    item: dict[Any, Any] | list[Any] | tuple[Any, ...],
    path: tuple[str | int, ...],
    todo: list[tuple[Any, tuple[str | int, ...]]],
    check_strings: bool,
) -> int:
    """Check a container's scalar children and queue the others with their paths;
    returns the size bound of the scalars, keys and separators."""
    if isinstance(item, dict):
        return _members(item, path, todo, check_strings)
    size = 2
    for index, child in enumerate(item):
        kind = type(child)
        if kind is int or kind is bool or child is None:
            size += 2
        else:
            child_size = _scalar_size(child, (*path, index), check_strings)
            if child_size < 0:
                todo.append((child, (*path, index)))
            size += 1 + max(child_size, 0)
    return size


def _members(
    item: dict[Any, Any],
    path: tuple[str | int, ...],
    todo: list[tuple[Any, tuple[str | int, ...]]],
    check_strings: bool,
) -> int:
    size = 2
    for key, child in item.items():
        if type(key) is not str or (check_strings and not key.isascii()):
            _check_key(key, path, check_strings)
        kind = type(child)
        if kind is str:
            size += len(key) + len(child) + 6
            if check_strings and not child.isascii():
                _check_string(child, (*path, key))
        elif kind is int or kind is bool or child is None:
            size += len(key) + 5
        else:
            child_size = _scalar_size(child, (*path, key), check_strings)
            if child_size < 0:
                todo.append((child, (*path, key)))
            size += len(key) + 4 + max(child_size, 0)
    return size


def _check_key(key: Any, path: tuple[str | int, ...], check_strings: bool) -> None:
    if not isinstance(key, str):
        raise _fault(
            path,
            f"the key {key!r} ({_type_name(key)}) is not a string; JSON object keys are strings",
        )
    if check_strings and not key.isascii():
        _check_string(key, path, what=f"the key {key!r}")


def _walk(value: Any, max_bytes: int, check_strings: bool) -> int:
    """A lower bound of the JSON size of `value` (every character encodes to at least
    one byte), or the first fault found. Stops early once the bound passes `max_bytes`.

    Iterative, and scalars are checked in their container's loop: a result of a
    million numbers is walked in a fraction of a second, a small one in microseconds."""
    size = _scalar_size(value, (), check_strings)
    if size >= 0:
        return size
    size = 0
    todo: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while todo and size <= max_bytes:
        item, path = todo.pop()
        if len(path) >= MAX_DEPTH:
            raise _fault(path, f"nested more than {MAX_DEPTH} levels deep (or it contains itself)")
        size += _children(item, path, todo, check_strings)
    return size


def encode_result(value: Any, max_bytes: int) -> bytes:
    """`value` as JSON bytes, at most `max_bytes` long.

    Raises:
        ResultError: `value` is not a JSON value (the message names the type and
            its path), or it encodes to more than `max_bytes` bytes (the message
            names the size and the limit).
    """
    size = _walk(value, max_bytes, check_strings=False)  # strings: only if encoding fails
    if size > max_bytes:
        raise ResultError(
            f"the result is larger than max_result_bytes ({max_bytes} bytes):"
            f" at least {size} bytes encoded as JSON"
        )
    try:
        encoded = _encoder.encode(value)
    except UnicodeEncodeError:
        _walk(value, max_bytes, check_strings=True)
        raise  # the walk raises first: only a string can fail to encode after it
    if len(encoded) > max_bytes:
        raise ResultError(
            f"the result is {len(encoded)} bytes encoded as JSON,"
            f" over max_result_bytes ({max_bytes} bytes)"
        )
    return encoded


def encode_checkpoint(value: Any, max_bytes: int) -> bytes:
    """A checkpoint as JSON bytes, by the result's rules (`encode_result`), at most
    `max_bytes` (the config key max_checkpoint_bytes) long.

    Raises:
        CheckpointError: as ResultError, its message speaking of the checkpoint.
    """
    try:
        return encode_result(value, max_bytes)
    except ResultError as error:
        text = str(error)
        if text.startswith("result"):  # where in the value: result["a"][2]: ...
            text = "checkpoint" + text.removeprefix("result")
        text = text.replace("the result", "the checkpoint").replace(
            "max_result_bytes", "max_checkpoint_bytes"
        )
        raise CheckpointError(text) from None
