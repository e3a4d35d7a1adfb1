"""Large files through the real daemon (issues 13 and 14): a `.jsonl` file of any size
is ingested a part at a time, in bounded memory, every line once across a kill, and
what arrives behind it does not wait for it. The inbox and the ingestion alone, in
this process: tests/unit/test_inbox_scale.py."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, wait_until

MiB = 1024 * 1024


def delayed(number: int) -> str:
    """A job that stays pending (it is not run): ingestion is what these tests measure."""
    return f'{{"type":"echo","payload":{number},"delay":3600}}'


def stored_ids(daemon: Daemon, stem: str) -> list[str]:
    """The ids of the jobs taken from `stem`.jsonl, as committed."""
    db = sqlite3.connect(f"file:{daemon.home / 'procpool.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id FROM jobs WHERE id LIKE ?", (f"{stem}-%",))
        return [job_id for (job_id,) in rows]
    finally:
        db.close()


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def gone(daemon: Daemon, name: str) -> Callable[[], bool]:
    return lambda: not (daemon.home / "inbox" / name).exists()


def since_last_start(daemon: Daemon) -> list[dict[str, Any]]:
    """The log lines of the daemon that started last."""
    log = daemon.log()
    starts = [n for n, event in enumerate(log) if event.get("event") == "daemon.started"]
    return log[starts[-1] :]


@pytest.mark.timeout(300)  # beyond the 240 s its ingestion may take
def test_a_huge_jsonl_file_is_ingested_in_bounded_memory(
    make_daemon: Callable[..., Daemon],
) -> None:
    """400,000 lines (17 MiB): every job stored once, and the supervisor's peak RSS stays
    far below what holding the file's jobs at once takes (about 500 MB)."""
    daemon = make_daemon(workers=1)
    count = 400_000
    daemon.drop("huge.jsonl", "".join(delayed(n) + "\n" for n in range(count)))
    wait_until(gone(daemon, "huge.jsonl"), timeout=240, what="huge.jsonl to be ingested")
    peak = peak_rss(daemon.pid)
    assert peak < 150 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    ids = stored_ids(daemon, "huge")
    assert len(ids) == count
    assert set(ids) == {f"huge-{n}" for n in range(1, count + 1)}
    [accepted] = daemon.wait_events("file.accepted", file="huge.jsonl")
    assert accepted["jobs"] == count
    assert len(daemon.events("file.reading", file="huge.jsonl")) == 1
    assert list((daemon.home / "rejected").iterdir()) == []


@pytest.mark.timeout(240)  # beyond the 120 s its ingestion may take, and the starts
def test_a_kill_mid_file_neither_loses_nor_repeats_a_line(
    make_daemon: Callable[..., Daemon],
) -> None:
    """kill -9 once a part of the file is committed: the restart goes on from there (no
    line judged twice, none skipped), and the report lists the bad lines of the parts
    before the kill and after it, by number."""
    count = 100_000
    bad = {
        3: '{"type": "nope"}',
        12_345: "[1]",
        45_678: '{"type": "echo", "max_attempts": 0}',
        99_999: '{"type": "echo", "paylod": 1}',
    }
    blank = {20_000, 70_001}
    lines = [bad.get(n, "" if n in blank else delayed(n)) for n in range(1, count + 1)]
    good = {f"mid-{n}" for n in range(1, count + 1)} - {f"mid-{n}" for n in {*bad, *blank}}
    daemon = make_daemon(workers=1)
    daemon.drop("mid.jsonl", "\n".join(lines) + "\n")
    wait_until(lambda: daemon.job("mid-1"), what="the first part committed")
    daemon.kill()
    committed = stored_ids(daemon, "mid")
    assert 0 < len(committed) < len(good)
    assert (daemon.home / "inbox" / "mid.jsonl").exists()

    restarted = make_daemon(workers=1)
    report_path = restarted.home / "rejected" / "mid.jsonl.error.json"
    wait_until(gone(restarted, "mid.jsonl"), timeout=120, what="mid.jsonl to be judged")
    report = json.loads(report_path.read_bytes())
    assert report == {
        "file": "mid.jsonl",
        "error": f"4 of {count - 2} lines were rejected, the other {count - 6} accepted",
        "lines": [
            {"line": 3, "error": 'unknown job type "nope"; registered: cpu, echo, fail, sleep'},
            {"line": 12_345, "error": "a job must be a JSON object, got an array"},
            {"line": 45_678, "error": "max_attempts must be >= 1, got 0"},
            {"line": 99_999, "error": 'unknown field "paylod"; did you mean "payload"?'},
        ],
    }
    ids = stored_ids(restarted, "mid")
    assert len(ids) == len(good)
    assert set(ids) == good
    after = since_last_start(restarted)
    [resumed] = [e for e in after if e.get("event") == "file.reading"]
    assert resumed["line"] > 1, resumed  # from where the killed daemon had committed
    assert [e for e in after if e.get("event") == "file.duplicate"] == []


@pytest.mark.timeout(240)  # beyond the 120 s its ingestion may take, and the starts
def test_what_arrives_behind_a_huge_file_does_not_wait_for_it(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A small job file and a cancel request dropped while a huge file is being read are
    both carried out before the huge file is done; then it is done, whole."""
    count = 150_000
    daemon = make_daemon(workers=1)
    daemon.drop("huge.jsonl", "".join(delayed(n) + "\n" for n in range(count)))
    wait_until(lambda: daemon.job("huge-1"), what="the first part committed")
    assert (daemon.home / "inbox" / "huge.jsonl").exists(), "the huge file was read at once"
    daemon.drop("small.json", {"type": "echo", "payload": "small"})
    daemon.drop("stop-first.json", {"cancel": "huge-1"})
    assert daemon.wait_status("small", "completed").result == "small"
    assert daemon.wait_status("huge-1", "canceled")
    assert (daemon.home / "inbox" / "huge.jsonl").exists(), "the huge file was read first"
    wait_until(gone(daemon, "huge.jsonl"), timeout=120, what="huge.jsonl to be ingested")
    assert len(stored_ids(daemon, "huge")) == count
