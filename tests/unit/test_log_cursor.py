"""Following the log (adapters/logs/cursor.py), the one follower of `procpool logs
-f` and the SSE stream: rotations, truncation, a file not there yet, an over-long line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from procpool.adapters.logs.cursor import MAX_LINE, LogCursor


@pytest.fixture(autouse=True)
def _closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every cursor a test opens is closed at its end."""
    made: list[LogCursor] = []
    original = LogCursor.__init__

    def remember(self: LogCursor, path: Path) -> None:
        original(self, path)
        made.append(self)

    monkeypatch.setattr(LogCursor, "__init__", remember)
    yield
    for cursor in made:
        cursor.close()


def _drain(cursor: LogCursor) -> list[bytes]:
    lines: list[bytes] = []
    while batch := cursor.read():
        lines.extend(line for _, line in batch)
    return lines


def _append(path: Path, *lines: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))


def test_a_log_not_there_yet_is_waited_for(tmp_path: Path) -> None:
    cursor = LogCursor(tmp_path / "procpool.jsonl")
    assert not cursor.open()
    assert cursor.read() == []
    _append(tmp_path / "procpool.jsonl", b"a")
    assert cursor.open() and _drain(cursor) == [b"a"]


def test_a_partial_line_waits_for_its_end(tmp_path: Path) -> None:
    path = tmp_path / "procpool.jsonl"
    path.write_bytes(b"a\nb")
    cursor = LogCursor(path)
    assert cursor.open() and _drain(cursor) == [b"a"]
    _append(path, b"")
    assert _drain(cursor) == [b"b"]


def test_rotations_lose_nothing_and_repeat_nothing(tmp_path: Path) -> None:
    path = tmp_path / "procpool.jsonl"
    _append(path, b"1", b"2")
    cursor = LogCursor(path)
    assert cursor.open() and _drain(cursor) == [b"1", b"2"]
    _append(path, b"3")
    path.rename(tmp_path / "procpool.jsonl.1")  # the daemon rotates...
    _append(path, b"4")
    (tmp_path / "procpool.jsonl.1").rename(tmp_path / "procpool.jsonl.2")  # ...twice
    path.rename(tmp_path / "procpool.jsonl.1")
    _append(path, b"5")
    seen: list[bytes] = []
    for _ in range(10):  # each call reads on in one file, or steps to the next
        seen += [line for _, line in cursor.read()]
    assert seen == [b"3", b"4", b"5"]


def test_a_file_truncated_in_place_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "procpool.jsonl"
    _append(path, b"old-1", b"old-2")
    cursor = LogCursor(path)
    assert cursor.open() and len(_drain(cursor)) == 2
    path.write_bytes(b"")  # logrotate's copytruncate
    _append(path, b"new")
    seen: list[bytes] = []
    for _ in range(3):
        seen += [line for _, line in cursor.read()]
    assert seen == [b"new"]


def test_ids_resume_right_after_their_line(tmp_path: Path) -> None:
    path = tmp_path / "procpool.jsonl"
    _append(path, b"a", b"b", b"c")
    first = LogCursor(path)
    assert first.open()
    [(_, _), (after_b, _), (_, _)] = first.read()
    inode, offset = (int(part) for part in after_b.split(":"))
    again = LogCursor(path)
    assert again.resume(inode, offset)
    assert _drain(again) == [b"c"]


def test_a_line_longer_than_the_bound_is_skipped_not_held(tmp_path: Path) -> None:
    path = tmp_path / "procpool.jsonl"
    _append(path, b"before", b"x" * (2 * MAX_LINE), b"after")
    cursor = LogCursor(path)
    assert cursor.open()
    seen: list[bytes] = []
    for _ in range(80):
        seen += [line for _, line in cursor.read()]
    assert seen == [b"before", b"after"]
