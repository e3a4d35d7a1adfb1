"""Large inboxes and large files (issues 13 and 14): a scan costs what it reads, not what
waits; a `.jsonl` file of any size is ingested a part at a time, in bounded memory, and
judged whole, every line once, with every bad line in its report.

These tests drive the inbox and the ingestion in this process, on the memory store,
as the supervisor does each turn; tests/e2e/test_inbox_huge_files.py runs the real
daemon on huge files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procpool.adapters.inbox import directory as inbox_module
from procpool.adapters.inbox.directory import FileInbox
from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application import events
from procpool.application.handlers import HandlerRegistry
from procpool.application.supervisor.fleet import Fleet, Limits
from procpool.application.supervisor.intake import Intake, Received
from procpool.application.supervisor.ledger import Ledger
from procpool.domain.job import Status
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults

NOW = 1_800_000_000.0


@pytest.fixture(autouse=True)
def quiet_events() -> Iterator[None]:
    events.configure(None)
    yield
    events.configure(None)


@contextmanager
def opened(home: Path, **options: Any) -> Iterator[FileInbox]:
    """The inbox alone, in this process (its inotify descriptor closed after)."""
    inbox = FileInbox(home, **{"max_file_bytes": 1 << 20, **options})
    try:
        yield inbox
    finally:
        inbox.close_descriptors()


def write(path: Path, content: bytes, age: float) -> None:
    path.write_bytes(content)
    then = time.time() - age
    os.utime(path, (then, then))


class Turns:
    """The supervisor's `_ingest`, turn after turn, in this process on the memory store:
    scan with the committed progress, judge in a transaction, then remove and reject."""

    def __init__(self, inbox: FileInbox) -> None:
        self.inbox = inbox
        self.store = MemoryJobStore()
        self.said: list[tuple[str, dict[str, Any]]] = []
        registry = HandlerRegistry()
        registry.register("echo", lambda ctx, payload: payload)
        ledger = Ledger(self.store, RetryPolicy(), self._log)
        self.intake = Intake(self.store, ledger, registry, Fleet(Limits()), self._log)

    def _log(self, level: str, event: str, message: str, **fields: Any) -> None:
        self.said.append((event, {"msg": message, **fields}))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.said if event == name]

    def turn(self) -> Received:
        progress = self.store.files_in_progress()
        files = list(self.inbox.scan(1000, progress))
        with self.store.transaction():
            self.intake.vanished(self.inbox.vanished(progress), progress)
            received = self.intake.files(files, JobDefaults(), 0.0, NOW, progress)
        self.inbox.remove(received.accepted)
        for rejection in received.rejected:
            assert self.inbox.reject(rejection.file, rejection.error, rejection.lines)
        return received

    def until_done(self) -> tuple[list[Any], list[Any]]:
        """Turns until the inbox is empty; returns every accepted file and rejection."""
        accepted: list[Any] = []
        rejected: list[Any] = []
        for _ in range(10_000):
            received = self.turn()
            accepted += received.accepted
            rejected += received.rejected
            if not self.inbox.more() and not any(self.inbox.directory.iterdir()):
                return accepted, rejected
        pytest.fail("the inbox never emptied")

    def job_ids(self) -> set[str]:
        return {job.id for job in self.store.with_status(Status.PENDING)}


# ------------------------------------------------------------------ the scan's cost


def test_a_backlog_is_listed_once_then_read_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 files waiting, 100 read per scan: the inbox is listed (every name looked at)
    once for the whole backlog, not at every scan; files come oldest first, and one that
    arrives meanwhile waits for the next listing, then is read too."""
    with opened(tmp_path / "home") as inbox:
        for number in range(3000):
            write(inbox.directory / f"f{number:04d}.json", b'{"type": "echo"}', age=5000 - number)
        listings = 0
        real_scandir = os.scandir

        def counting_scandir(path: Any) -> Any:
            nonlocal listings
            listings += 1
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", counting_scandir)
        read: list[str] = []
        for scan in range(30):
            files = list(inbox.scan(100))
            assert len(files) == 100
            assert inbox.more() == (scan < 29)  # the last 100 end the listing
            read += [f.name for f in files]
            inbox.remove(files)
            if scan == 10:
                write(inbox.directory / "late.json", b'{"type": "echo"}', age=0)
        assert listings == 1
        assert read == [f"f{number:04d}.json" for number in range(3000)]
        assert [f.name for f in inbox.scan(100)] == ["late.json"]
        assert listings == 2
        assert not inbox.more()


# ------------------------------------------------------------------ files read in parts


def lines_of(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def echo(payload: Any, **fields: Any) -> str:
    return json.dumps({"type": "echo", "payload": payload, **fields})


def test_a_file_read_in_parts_is_judged_as_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of 7 lines, read 64 bytes at a time: jobs, line numbers (blank lines count),
    bad lines and the report come out as when the file is read at once, and no progress
    is left behind."""
    lines = [echo(n) for n in range(40)]
    lines[2] = '{"type": "nope"}'
    lines[9] = ""
    lines[10] = "   "
    lines[17] = "[1]"
    lines[33] = '{"type": "echo", "payload": ' + "1" * 3000 + "}"  # over the line limit
    content = lines_of(*lines)[:-1]  # the last line without its newline

    outcomes = []
    for scan_lines, piece in ((7, 64), (10_000, 256 * 1024)):
        monkeypatch.setattr(inbox_module, "_PIECE", piece)
        home = tmp_path / f"home-{scan_lines}"
        with opened(home, max_file_bytes=1000, scan_lines=scan_lines) as inbox:
            turns = Turns(inbox)
            write(inbox.directory / "mixed.jsonl", content, age=10)
            accepted, rejected = turns.until_done()
            assert accepted == []
            assert len(rejected) == 1
            report = json.loads((home / "rejected" / "mixed.jsonl.error.json").read_bytes())
            assert (home / "rejected" / "mixed.jsonl").read_bytes() == content
            jobs = {job.id: job.payload for job in turns.store.with_status(Status.PENDING)}
            assert turns.store.files_in_progress() == {}
            outcomes.append((report, jobs))
            # Read in parts: said once when it began, not once per part.
            assert len(turns.events("file.reading")) == (1 if scan_lines == 7 else 0)
    assert outcomes[0] == outcomes[1]
    report, jobs = outcomes[0]
    assert report == {
        "file": "mixed.jsonl",
        "error": "3 of 38 lines were rejected, the other 35 accepted",
        "lines": [
            {"line": 3, "error": 'unknown job type "nope"; registered: echo'},
            {"line": 18, "error": "a job must be a JSON object, got an array"},
            {"line": 34, "error": "line 34 is 3 KiB, limit is 1000 bytes"},
        ],
    }
    assert set(jobs) == {f"mixed-{n}" for n in range(1, 41)} - {
        "mixed-3", "mixed-10", "mixed-11", "mixed-18", "mixed-34",
    }  # fmt: skip
    assert jobs["mixed-40"] == b"39"


def test_a_file_that_changes_between_parts_is_read_again_from_the_start(
    tmp_path: Path,
) -> None:
    """Appended to after its first part was committed: its next part would not be the
    file that was judged so far; it is read again as a new version, so no line is lost,
    and the lines already taken are found as the jobs they are."""
    with opened(tmp_path / "home", max_file_bytes=1000, scan_lines=5) as inbox:
        turns = Turns(inbox)
        path = inbox.directory / "grows.jsonl"
        write(path, lines_of(*(echo(n) for n in range(12))), age=10)
        turns.turn()
        assert turns.job_ids() == {f"grows-{n}" for n in range(1, 6)}
        write(path, lines_of(*(echo(n) for n in range(15))), age=5)
        turns.turn()
        assert [(e["job_id"], e["jobs"]) for e in turns.events("file.duplicate")] == [
            ("grows-1", 5)
        ]
        assert turns.events("file.reading")[-1]["msg"] == (
            "grows.jsonl changed while it was read: reading it again from the start"
        )
        accepted, _ = turns.until_done()
        assert [file.name for file in accepted] == ["grows.jsonl"]
        assert turns.job_ids() == {f"grows-{n}" for n in range(1, 16)}
        assert turns.store.files_in_progress() == {}
        [done] = turns.events("file.accepted")
        assert (done["jobs"], done["lines"]) == (10, 15)  # the first 5 were duplicates


def test_a_file_that_leaves_the_inbox_midway_is_forgotten(tmp_path: Path) -> None:
    """Deleted after its first part: its record goes with the next listing (said once),
    its jobs stay, and a new file of the same name is read from its first line."""
    with opened(tmp_path / "home", scan_lines=4) as inbox:
        turns = Turns(inbox)
        path = inbox.directory / "left.jsonl"
        write(path, lines_of(*(echo(n) for n in range(10))), age=10)
        turns.turn()
        path.unlink()
        turns.turn()
        assert turns.store.files_in_progress() == {}
        [vanished] = turns.events("file.vanished")
        assert (vanished["file"], vanished["jobs"], vanished["lines"]) == ("left.jsonl", 4, 4)
        write(path, lines_of(*(echo(n, id=f"new-{n}") for n in range(6))), age=10)
        turns.until_done()
        assert turns.job_ids() == {f"left-{n}" for n in range(1, 5)} | {
            f"new-{n}" for n in range(6)
        }


def test_a_report_lists_the_first_thousand_bad_lines_and_counts_them_all(
    tmp_path: Path,
) -> None:
    """Bad lines are kept (in the store, across parts) up to MAX_REPORTED_LINES: what
    judging a file holds stays bounded however many of its lines are bad."""
    with opened(tmp_path / "home", scan_lines=300) as inbox:
        turns = Turns(inbox)
        lines = ["[1]" if n % 2 else echo(n) for n in range(2500)]
        write(inbox.directory / "noisy.jsonl", lines_of(*lines), age=10)
        _, [rejection] = turns.until_done()
        assert rejection.error == (
            "1250 of 2500 lines were rejected, the other 1250 accepted; the first 1000 are listed"
        )
        report = json.loads((inbox.rejected / "noisy.jsonl.error.json").read_bytes())
        assert [entry["line"] for entry in report["lines"]] == list(range(2, 2001, 2))
        assert len(turns.job_ids()) == 1250


# One line of a generated .jsonl file, and whether it makes a job.
LINES = st.one_of(
    st.integers(0, 10**6).map(lambda n: (echo(n), True)),
    st.integers(0, 10**6).map(lambda n: (echo(n) + "\r", True)),
    st.sampled_from([("", None), ("  \t", None), ("[1]", False), ('{"type": ', False)]),
    st.sampled_from([('{"type": "gone"}', False), ('{"type": "echo", "delay": -1}', False)]),
    st.integers(150, 400).map(lambda n: (echo("x" * n), False)),  # over the line limit
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    lines=st.lists(LINES, max_size=30),
    newline_at_end=st.booleans(),
    scan_lines=st.integers(1, 8),
    scan_bytes=st.integers(1, 400),
    piece=st.integers(1, 300),
)
def test_any_file_read_in_any_parts_is_judged_line_by_line(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch_piece: Callable[[int], None],
    lines: list[tuple[str, bool | None]],
    newline_at_end: bool,
    scan_lines: int,
    scan_bytes: int,
    piece: int,
) -> None:
    """Whatever the lines and however small the parts and pieces: each good line is a job
    named by its number, each bad line is reported by its number, nothing else."""
    monkeypatch_piece(piece)
    home = tmp_path_factory.mktemp("parts") / "home"
    with opened(home, max_file_bytes=120, scan_lines=scan_lines, scan_bytes=scan_bytes) as inbox:
        turns = Turns(inbox)
        content = "\n".join(text for text, _ in lines) + ("\n" if newline_at_end else "")
        write(inbox.directory / "g.jsonl", content.encode(), age=10)
        accepted, rejected = turns.until_done()
        good = {f"g-{n}" for n, (_, ok) in enumerate(lines, start=1) if ok}
        bad = [n for n, (_, ok) in enumerate(lines, start=1) if ok is False]
        assert turns.job_ids() == good
        assert len(accepted) == (1 if good and not bad else 0)
        assert len(rejected) == (0 if good and not bad else 1)
        if rejected:
            report = json.loads((home / "rejected" / "g.jsonl.error.json").read_bytes())
            assert [entry["line"] for entry in report["lines"]] == bad
        assert turns.store.files_in_progress() == {}


@pytest.fixture(scope="module")
def monkeypatch_piece() -> Iterator[Callable[[int], None]]:
    saved = inbox_module._PIECE

    def set_piece(size: int) -> None:
        inbox_module._PIECE = size

    yield set_piece
    inbox_module._PIECE = saved


def test_a_file_that_fits_a_scan_is_not_cut_by_the_files_read_before_it(
    tmp_path: Path,
) -> None:
    """A .jsonl file that does not fit what the files before it left of a scan's budget
    waits for the next scan and is read whole there, so that its lines are judged
    together: here its first line names its last (`after`, CONTRACT section 15). One
    larger than a whole scan is still read in parts."""
    with opened(tmp_path / "home", scan_lines=10) as inbox:
        turns = Turns(inbox)
        write(inbox.directory / "a.jsonl", lines_of(*(echo(n) for n in range(6))), age=30)
        chain = [echo(n, id=f"c{n}", after=[f"c{n + 1}"]) for n in range(5)]
        write(inbox.directory / "b.jsonl", lines_of(*chain, echo(5, id="c5")), age=20)
        write(inbox.directory / "c.jsonl", lines_of(*(echo(n) for n in range(25))), age=10)
        first = turns.turn()
        assert [file.name for file in first.accepted] == ["a.jsonl"]
        accepted, rejected = turns.until_done()
        assert not rejected
        assert [file.name for file in accepted] == ["b.jsonl", "c.jsonl"]
        assert {f"c{n}" for n in range(6)} <= turns.job_ids()
        assert len(turns.events("file.reading")) == 1  # c.jsonl, over a whole scan


def test_a_file_read_in_parts_rejects_only_the_lines_whose_after_is_bad(
    tmp_path: Path,
) -> None:
    """Over a whole scan, a file is read in parts and its earlier parts are stored: a
    line that names a later part is a bad line as any (the file's report names it),
    the rest of the file is stored, and a job that waits for a bad line is canceled at
    once rather than waiting for a job that will never come."""
    with opened(tmp_path / "home", scan_lines=4) as inbox:
        turns = Turns(inbox)
        lines = [
            echo(0, id="j0"), echo(1, id="j1", after=["j0"]),
            echo(2, id="j2", after=["j9"]),  # names a line of a later part
            echo(3, id="j3", after=["j2"]), *(echo(n, id=f"j{n}") for n in range(4, 10)),
        ]  # fmt: skip
        write(inbox.directory / "big.jsonl", lines_of(*lines), age=30)
        accepted, rejected = turns.until_done()
        assert not accepted
        [rejection] = rejected
        assert [(line.line, line.error) for line in rejection.lines] == [
            (3, "job j2: after names j9, which is no job")
        ]
        assert "the other 9 accepted" in rejection.error
        assert turns.store.get("j2") is None
        j3 = turns.store.get("j3")
        assert j3 is not None and (j3.status, j3.canceled_by) == (Status.CANCELED, "j2")
        assert turns.store.get("j1") is not None and turns.store.get("j9") is not None
