"""Looking an id up in the inbox by name (adapters/inbox/lookup.py): what it
finds, that it lists the inbox once per change of it and not once per look-up, and
that a listing made in the same clock tick as a change is never trusted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from procpool.adapters.inbox.change_stamp import RACY_NS, ChangeStamp
from procpool.adapters.inbox.lookup import InboxLookup
from procpool.adapters.inbox.rejections import RejectedFiles


def settle(directory: Path) -> None:
    """Date the directory's last change back past the racy window, as time does."""
    info = directory.stat()
    os.utime(directory, ns=(info.st_atime_ns, info.st_mtime_ns - 10 * RACY_NS))


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    directory = tmp_path / "inbox"
    directory.mkdir()
    return directory


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The directories os.scandir listed, in order."""
    seen: list[str] = []
    scandir = os.scandir

    def counted(path: str | os.PathLike[str]) -> object:
        seen.append(os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    return seen


def test_what_is_found_by_name_and_in_batches(inbox: Path) -> None:
    (inbox / "a.json").write_text("{}")
    (inbox / "b.1f2e3d4c.json").write_text("{}")
    (inbox / "c.d.json").write_text("{}")  # the job "c.d", or a second file of "c"
    batch = {"batch": [{"id": "first", "type": "echo"}, {"id": "inner", "type": "echo"}]}
    (inbox / "first.batch.json").write_text(json.dumps(batch))
    (inbox / ".hidden.json").write_text("{}")
    (inbox / "skip.txt").write_text("{}")
    os.mkfifo(inbox / "pipe.json")
    (inbox / "link.json").symlink_to(inbox / "a.json")
    (inbox / "dir.json").mkdir()
    lookup = InboxLookup(inbox)
    for waiting in ("a", "b", "c.d", "c", "first", "inner"):
        assert lookup.waiting(waiting), waiting
    for absent in ("hidden", "skip", "pipe", "link", "dir", "d", "1f2e3d4c", "x"):
        assert not lookup.waiting(absent), absent
    assert lookup.named("b") == [inbox / "b.1f2e3d4c.json"]
    assert lookup.named("a") == [inbox / "a.json"]
    assert lookup.named("inner") == []  # a batch is no file of its own
    assert not InboxLookup(inbox.parent / "absent").waiting("a")


def test_the_inbox_is_listed_once_per_change(inbox: Path, listings: list[str]) -> None:
    for n in range(50):
        (inbox / f"job-{n}.json").write_text("{}")
    settle(inbox)
    lookup = InboxLookup(inbox)
    for n in range(100):
        assert not lookup.waiting(f"absent-{n}")
    assert listings == [str(inbox)], "one listing for a hundred look-ups"
    (inbox / "new.1.json").write_text("{}")
    assert lookup.waiting("new")
    assert len(listings) == 2, "the change was seen"
    (inbox / "new.1.json").unlink()
    assert not lookup.waiting("new")


def test_a_listing_in_the_tick_of_a_change_is_not_trusted(inbox: Path, listings: list[str]) -> None:
    """The directory just changed: its mtime could stay the same through another change
    in the same tick, so each look-up lists it again until it has settled."""
    lookup = InboxLookup(inbox)
    assert not lookup.waiting("x")
    assert not lookup.waiting("x")
    assert len(listings) == 2
    settle(inbox)
    assert not lookup.waiting("x")
    assert not lookup.waiting("x")
    assert len(listings) == 3


@pytest.mark.parametrize(
    ("mtime_age_ns", "trusted"),
    [(RACY_NS + 1, True), (10 * RACY_NS, True), (RACY_NS, False), (0, False), (-5, False)],
)
def test_the_racy_window(mtime_age_ns: int, trusted: bool) -> None:
    """A listing is trusted only if the mtime it saw is older than it by more than
    RACY_NS (a fake clock: the listing begins at 10 s)."""
    started = 10_000_000_000

    class Stamp(ChangeStamp):
        def current(self) -> tuple[int, int]:
            return 7, started - mtime_age_ns

    stamp = Stamp(Path("inbox"))
    stamp.listed(stamp.current(), started)
    assert stamp.unchanged() is trusted
    stamp.listed(None, started)  # no directory: nothing to trust
    assert not stamp.unchanged()


def test_rejected_is_listed_once_per_change(tmp_path: Path, listings: list[str]) -> None:
    rejected = tmp_path / "rejected"
    rejected.mkdir()
    (rejected / "bad.json").write_text('{"type": "x"}')
    (rejected / "bad.json.error.json").write_text(json.dumps({"file": "bad.json", "error": "no"}))
    settle(rejected)
    reports = RejectedFiles(tmp_path)
    for _ in range(20):
        found = reports.find("bad")
        assert found is not None and found.reason == "no"
        assert reports.find("good") is None
    assert listings == [str(rejected)]
