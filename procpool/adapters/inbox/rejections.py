"""Which job ids the files in `rejected/` would have become, and why they did not.

The daemon moves a file it cannot accept to `rejected/NAME` and writes
`rejected/NAME.error.json` beside it (CONTRACT section 2):
`{"file": ORIGINAL_NAME, "error": "...", "lines": [{"line": N, "error": "..."}]}`,
`lines` only for a `.jsonl` file. The report names the file, not the jobs, so
the ids are worked out as the daemon would have given them:

- `NAME.json`: the file's `id` field if it has a string one, else `NAME`.
- a bad line N of `NAME.jsonl`: the line's `id` field, else `NAME-N`.
- a `.jsonl` file rejected as a whole (too big, grew while read): each line's
  id as above; if the file cannot be read, any `NAME-N`.
- a batch (`{"batch": [...]}`, from `Client.submit_many` while no daemon ran) is
  rejected whole: each of its jobs' ids.
- a cancel or prune request (`{"cancel": ...}`, `{"prune": ...}`) is no job.

The reports are the record: a report the user deleted rejects nothing, while
a report whose rejected file was deleted still does (with the ids taken from
its name). When several reports claim an id, the newest wins. Nothing here
decides whether a job exists: the caller looks in the store first.

Files here and in the inbox are read as the daemon reads them (untrusted_files.py):
regular files only, so that a FIFO is never waited on and a link never followed.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from procpool.adapters.inbox.change_stamp import ChangeStamp
from procpool.adapters.inbox.untrusted_files import READ_LIMIT, open_regular, read_regular
from procpool.domain import inbox_names

REPORT_SUFFIX = ".error.json"


@dataclass(frozen=True)
class Rejection:
    """Why the job `job_id` does not exist: its file, or its line, was rejected.

    `reason` is the report's error (for a line: "line N of NAME.jsonl: ..."),
    `report` the absolute path of `NAME.error.json`, `line` the 1-based line of a
    `.jsonl` file, or None; `duplicate` whether the report says an id of the file
    exists with other content (its `duplicate` field).
    """

    job_id: str
    reason: str
    report: Path
    line: int | None = None
    duplicate: bool = False


@dataclass
class _Report:
    """What one report rejects: ids, and maybe every `STEM-N` of an unreadable file."""

    order: tuple[int, str]  # (mtime in ns, name): the newest report wins
    ids: dict[str, Rejection] = field(default_factory=dict)
    numbered: tuple[str, str] | None = None  # (stem, reason)

    def find(self, job_id: str, path: Path) -> Rejection | None:
        if job_id in self.ids:
            return self.ids[job_id]
        if self.numbered is not None:
            stem, reason = self.numbered
            number = inbox_names.line_of(stem, job_id)
            if number is not None:
                return Rejection(job_id, reason, path, number)
        return None


_NOT_A_JOB = object()


def _claimed_id(value: Any) -> object:
    """The id a job object names; None to take the default; _NOT_A_JOB for a request."""
    if not isinstance(value, dict):
        return None
    if "type" not in value and ("cancel" in value or "prune" in value):
        return _NOT_A_JOB
    claimed = value.get("id")
    return claimed if isinstance(claimed, str) else None


def batch_file_ids(path: Path) -> list[str] | None:
    """The ids of the jobs of a batch file (`{"batch": [...]}`), or None if it is none
    or cannot be read (see `read_regular`)."""
    data = read_regular(path)
    return None if data is None else _batch_ids(_decode(data))


def _batch_ids(document: Any) -> list[str] | None:
    if not isinstance(document, dict) or "type" in document:
        return None
    jobs = document.get("batch")
    if not isinstance(jobs, list):
        return None
    return [job["id"] for job in jobs if isinstance(job, dict) and isinstance(job.get("id"), str)]


def _decode(data: bytes) -> Any:
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return None


def _lines(path: Path) -> Iterator[tuple[int, bytes]] | None:
    """The numbered lines of a rejected `.jsonl` file; None if it cannot be read."""
    try:
        opened = open_regular(path, limit=READ_LIMIT)
    except OSError:
        return None
    if opened is None:
        return None
    handle = os.fdopen(opened[0], "rb")

    def numbered() -> Iterator[tuple[int, bytes]]:
        with handle:
            yield from enumerate(handle, start=1)

    return numbered()


def _parse(report_path: Path, order: tuple[int, str]) -> _Report:
    parsed = _Report(order)
    target = report_path.name.removesuffix(REPORT_SUFFIX)
    data = read_regular(report_path)
    if data is None or inbox_names.stem(target) is None:
        return parsed  # not a report: a user's file that was itself named *.error.json
    report = _decode(data)
    if not isinstance(report, dict) or not isinstance(report.get("error"), str):
        return parsed
    name = report["file"] if isinstance(report.get("file"), str) else target
    rejected = report_path.with_name(target)
    if not target.endswith(inbox_names.LINES_SUFFIX):
        duplicate = isinstance(report.get("duplicate"), str)
        content = read_regular(rejected)
        claimed = None
        if content is not None:
            document = _decode(content)
            batch = _batch_ids(document)
            if batch is not None:  # a batch is rejected whole: each of its jobs with it
                for job_id in batch:
                    parsed.ids[job_id] = Rejection(
                        job_id, report["error"], report_path, duplicate=duplicate
                    )
                return parsed
            claimed = _claimed_id(document)
        if claimed is not _NOT_A_JOB:
            job_id = claimed if isinstance(claimed, str) else inbox_names.default_id(_stem(name))
            parsed.ids[job_id] = Rejection(
                job_id, report["error"], report_path, duplicate=duplicate
            )
        return parsed
    _parse_lines(parsed, report, name, rejected, report_path)
    return parsed


def _parse_lines(
    parsed: _Report, report: dict[str, Any], name: str, rejected: Path, report_path: Path
) -> None:
    stem = _stem(name)
    bad: dict[int, str] = {}
    for entry in report.get("lines") or []:
        if isinstance(entry, dict) and isinstance(entry.get("line"), int):
            bad[entry["line"]] = f"line {entry['line']} of {name}: {entry.get('error')}"
    whole = not bad  # rejected as a whole: every line shares the file's error
    lines = _lines(rejected)
    if lines is None:
        if whole:
            parsed.numbered = (stem, report["error"])
        for number, reason in bad.items():
            job_id = inbox_names.default_id(stem, number)
            parsed.ids[job_id] = Rejection(job_id, reason, report_path, number)
        return
    for number, line in lines:
        if not (whole or number in bad) or not line.strip():
            continue
        claimed = _claimed_id(_decode(line))
        if claimed is _NOT_A_JOB:
            continue
        job_id = claimed if isinstance(claimed, str) else inbox_names.default_id(stem, number)
        reason = report["error"] if whole else bad[number]
        parsed.ids.setdefault(job_id, Rejection(job_id, reason, report_path, number))


def _stem(name: str) -> str:
    # The report's `file` is the daemon's own name of the file: a .json or .jsonl one.
    return inbox_names.stem(name) or name


class RejectedFiles:
    """The reports in `HOME/rejected/`, read once each and looked up by job id."""

    def __init__(self, home: Path) -> None:
        self.directory = home / "rejected"
        # name -> (identity, parsed): a report is written once (a rename), so its
        # identity says whether what was parsed is still what is there.
        self._cache: dict[str, tuple[tuple[int, int, int], _Report]] = {}
        self._stamp = ChangeStamp(self.directory)

    def find(self, job_id: str) -> Rejection | None:
        """The newest rejection of the file or line that would have been `job_id`."""
        found: list[tuple[tuple[int, str], Rejection]] = []
        for report in self._reports():
            rejection = report.find(job_id, self.directory / report.order[1])
            if rejection is not None:
                found.append((report.order, rejection))
        return max(found, key=lambda pair: pair[0])[1] if found else None

    def _reports(self) -> list[_Report]:
        # Listed again only once rejected/ changed: a lookup costs one stat, not a scan.
        if self._stamp.unchanged():
            return [report for _, report in self._cache.values()]
        before = self._stamp.current()
        started = time.time_ns()
        try:
            entries = list(os.scandir(self.directory))
        except OSError:  # no rejected/ yet, or not readable: nothing was rejected we can see
            self._cache.clear()
            self._stamp.listed(None, started)
            return []
        fresh: dict[str, tuple[tuple[int, int, int], _Report]] = {}
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(REPORT_SUFFIX):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(info.st_mode):
                continue
            identity = (info.st_ino, info.st_size, info.st_mtime_ns)
            cached = self._cache.get(entry.name)
            if cached is not None and cached[0] == identity:
                fresh[entry.name] = cached
            else:
                order = (info.st_mtime_ns, entry.name)
                fresh[entry.name] = (identity, _parse(Path(entry.path), order))
        self._cache = fresh
        self._stamp.listed(before, started)
        return [report for _, report in fresh.values()]
