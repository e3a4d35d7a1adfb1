"""Hostile input (issue 5) at the inbox alone, in this process: only regular files
within their limit are read, and a producer acting between the inbox's listing and
its reading is neither lost nor blamed. Through a running daemon:
tests/e2e/test_hostile_input.py."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procpool.adapters.inbox import directory as inbox_module
from procpool.adapters.inbox.directory import FileInbox
from procpool.adapters.inbox.rejections import read_regular
from procpool.application import events

MiB = 1024 * 1024


def job(**fields: Any) -> bytes:
    return json.dumps({"type": "echo", **fields}).encode()


def test_read_regular_reads_regular_files_within_their_limit_only(tmp_path: Path) -> None:
    exact, over = tmp_path / "exact.json", tmp_path / "over.json"
    exact.write_bytes(b"x" * 10)
    over.write_bytes(b"x" * 11)
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "link.json").symlink_to(exact)
    assert read_regular(exact, limit=10) == b"x" * 10
    assert read_regular(over, limit=10) is None
    assert read_regular(tmp_path / "pipe.json", limit=10) is None
    assert read_regular(tmp_path / "link.json", limit=10) is None
    assert read_regular(tmp_path / "gone.json", limit=10) is None


class CollectedEvents:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def write_event(self, level: str, event: str, message: str, fields: dict[str, Any]) -> None:
        self.seen.append((event, message, fields))

    def named(self, event: str) -> list[str]:
        return [message for name, message, _ in self.seen if name == event]


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[tuple[FileInbox, CollectedEvents]]:
    """The inbox alone, in this process: to act between its listing and its reading."""
    collected = CollectedEvents()
    events.configure(collected, "DEBUG")
    file_inbox = FileInbox(tmp_path / "home", max_file_bytes=MiB)
    try:
        yield file_inbox, collected
    finally:
        file_inbox.close_descriptors()
        events.configure(None)


def write(path: Path, content: bytes, age: float = 10.0) -> None:
    path.write_bytes(content)
    then = time.time() - age
    os.utime(path, (then, then))


def test_files_that_change_between_listing_and_reading(
    inbox: tuple[FileInbox, CollectedEvents],
) -> None:
    """The scan lists, then reads one file at a time: change the next one in between."""
    file_inbox, collected = inbox
    directory = file_inbox.directory
    for number in range(5):
        write(directory / f"f{number}.json", job(payload=number), age=10 - number)
    scan = file_inbox.scan(10)
    assert next(scan).name == "f0.json"  # the listing is done: all five were listed
    (directory / "f1.json").unlink()  # gone
    (directory / "f2.json").unlink()
    (directory / "f2.json").symlink_to(directory / "f4.json")  # now a link
    (directory / "f3.json").unlink()
    os.mkfifo(directory / "f3.json")  # now a FIFO: opened without waiting, then let be
    write(directory / "f4.json", job(payload="new"))  # other content
    started = time.monotonic()
    rest = list(scan)
    assert time.monotonic() - started < 5
    assert [(f.name, f.entries[0].value.payload) for f in rest] == [("f4.json", "new")]
    assert collected.named("file.skipped") == []  # nothing was wrong, only late

    # The next scan sees the link and the FIFO for what they are, and says so once.
    assert [f.name for f in file_inbox.scan(10)] == ["f0.json", "f4.json"]
    assert [f.name for f in file_inbox.scan(10)] == ["f0.json", "f4.json"]
    assert sorted(collected.named("file.skipped")) == [
        "f2.json is a symbolic link: left alone, never opened",
        "f3.json is a FIFO: left alone, never opened",
    ]


def test_a_file_changed_after_reading_is_neither_removed_nor_rejected(
    inbox: tuple[FileInbox, CollectedEvents],
) -> None:
    file_inbox, _ = inbox
    directory = file_inbox.directory
    write(directory / "kept.json", job(payload=1))
    write(directory / "bad.json", b"[1]")
    kept, bad = sorted(file_inbox.scan(10), key=lambda f: f.name, reverse=True)
    write(directory / "kept.json", job(payload=2))  # a producer replaced it meanwhile
    write(directory / "bad.json", job(payload=3))
    file_inbox.remove([kept])
    assert file_inbox.reject(bad, "a job must be a JSON object", []) == ""
    assert (directory / "kept.json").read_bytes() == job(payload=2)
    assert (directory / "bad.json").read_bytes() == job(payload=3)
    assert list(file_inbox.rejected.iterdir()) == []


def test_a_file_still_being_written_is_read_when_done(
    inbox: tuple[FileInbox, CollectedEvents],
) -> None:
    """A producer that writes in place, not through a rename: an unfinished file is
    left for a later scan while it is fresh, rejected once it has stayed unfinished."""
    file_inbox, _ = inbox
    path = file_inbox.directory / "slow.json"
    path.write_bytes(b'{"type": "echo", "payl')
    assert list(file_inbox.scan(10)) == []
    path.write_bytes(b"")
    assert list(file_inbox.scan(10)) == []
    path.write_bytes(job(payload="done"))
    [done] = file_inbox.scan(10)
    assert done.entries[0].value.payload == "done"
    write(path, b'{"type": "echo", "payl')  # unfinished, and written long ago
    [stale] = file_inbox.scan(10)
    assert "the data ends before the JSON value does" in stale.entries[0].error


def test_files_left_for_later_do_not_starve_the_rest(
    inbox: tuple[FileInbox, CollectedEvents], monkeypatch: pytest.MonkeyPatch
) -> None:
    file_inbox, _ = inbox
    monkeypatch.setattr(inbox_module, "SETTLE_SECONDS", 3600.0)  # "still being written"
    for number in range(3):
        write(file_inbox.directory / f"busy{number}.json", b'{"type": ', age=20 + number)
    write(file_inbox.directory / "ready.json", job(), age=10)
    assert [f.name for f in file_inbox.scan(2)] == ["ready.json"]
