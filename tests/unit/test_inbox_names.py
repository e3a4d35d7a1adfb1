"""The one rule that turns inbox file names into job ids (domain/inbox_names.py)."""

from __future__ import annotations

import pytest

from procpool.domain import inbox_names


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("report-7.json", "report-7"),
        ("lines.jsonl", "lines"),
        ("a.b.json", "a.b"),
        ("x.batch.json", "x.batch"),
        ("x.json.jsonl", "x.json"),
        (".json", ""),
        ("notes.txt", None),
        ("x.json.tmp", None),
        ("x.error.json", "x.error"),
    ],
)
def test_stem(name: str, stem: str | None) -> None:
    assert inbox_names.stem(name) == stem


@pytest.mark.parametrize(
    ("stem", "line", "job_id"),
    [("report-7", None, "report-7"), ("lines", 1, "lines-1"), ("a.b", 12, "a.b-12")],
)
def test_default_id_and_back(stem: str, line: int | None, job_id: str) -> None:
    assert inbox_names.default_id(stem, line) == job_id
    if line is not None:
        assert inbox_names.line_of(stem, job_id) == line


@pytest.mark.parametrize(
    ("stem", "job_id", "line"),
    [
        ("lines", "lines-3", 3),
        ("lines", "lines-0", None),  # lines count from 1
        ("lines", "lines-03", None),  # never written with a leading zero
        ("lines", "lines-", None),
        ("lines", "lines-x", None),
        ("lines", "lines", None),
        ("lines", "other-3", None),
        ("a-1", "a-1-2", 2),
    ],
)
def test_line_of(stem: str, job_id: str, line: int | None) -> None:
    assert inbox_names.line_of(stem, job_id) == line


@pytest.mark.parametrize(
    ("stem", "tag", "name"),
    [("job-1", None, "job-1.json"), ("job-1", "0a1b2c3d", "job-1.0a1b2c3d.json")],
)
def test_file_name(stem: str, tag: str | None, name: str) -> None:
    assert inbox_names.file_name(stem, tag) == name


@pytest.mark.parametrize(
    ("name", "ids"),
    [
        ("job-1.json", []),
        ("job-1.0a1b2c3d.json", ["job-1"]),
        ("a.b.c.json", ["a", "a.b"]),
        (".hidden.json", []),  # never the empty prefix before a leading dot
        ("a.b.jsonl", []),  # a .jsonl file's jobs are numbered, not named
        ("first.batch.json", ["first"]),
        ("notes.txt", []),
    ],
)
def test_named_ids(name: str, ids: list[str]) -> None:
    assert inbox_names.named_ids(name) == ids


@pytest.mark.parametrize(
    ("name", "batch"),
    [
        ("first.batch.json", True),
        ("first.batch.0a1b2c3d.json", True),
        ("first.batch.jsonl", False),
        ("first.json", False),
        ("batch.json", False),
    ],
)
def test_is_batch(name: str, batch: bool) -> None:
    assert inbox_names.is_batch(name) is batch
