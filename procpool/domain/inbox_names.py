"""How the name of an inbox file gives the ids of its jobs: the one rule, in one place.

    NAME.json          a job without an `id` field is job NAME
    NAME.jsonl         line N without an `id` field is job NAME-N (N from 1)
    ID.SUFFIX.json     written by a producer that found ID.json taken (Client._drop):
                       may hold job ID, for every prefix of the stem ending at a dot
    FIRST.batch*.json  a batch written while no daemon ran: its ids are inside

The daemon (intake), the client's look-ups (adapters/inbox/lookup.py), the reports of
rejected files (rejections.py) and the HTTP API's digests all go through here, so
that a file is given the same ids wherever it is looked at. Names only: whether
an id is valid is `spec.check_id`'s business.
"""

from __future__ import annotations

import fnmatch

JOB_SUFFIX = ".json"
LINES_SUFFIX = ".jsonl"
BATCH_PATTERN = "*.batch*.json"


def stem(name: str) -> str | None:
    """NAME of `NAME.json` or `NAME.jsonl`; None for any other name."""
    if name.endswith(LINES_SUFFIX):
        return name[: -len(LINES_SUFFIX)]
    if name.endswith(JOB_SUFFIX):
        return name[: -len(JOB_SUFFIX)]
    return None


def default_id(stem: str, line: int | None = None) -> str:
    """The id of a job that names none: the file's stem, or `STEM-LINE` for the
    1-based line `line` of a `.jsonl` file."""
    return stem if line is None else f"{stem}-{line}"


def line_of(stem: str, job_id: str) -> int | None:
    """The line N of `STEM.jsonl` whose default id is `job_id` (`STEM-N`), or None."""
    number = job_id.removeprefix(f"{stem}-")
    if number == job_id or not number.isdigit() or number.startswith("0"):
        return None
    return int(number)


def file_name(stem: str, tag: str | None = None) -> str:
    """The name a producer writes a job file as: `STEM.json`, or `STEM.TAG.json` when
    that one is taken."""
    return f"{stem}{JOB_SUFFIX}" if tag is None else f"{stem}.{tag}{JOB_SUFFIX}"


def named_ids(name: str) -> list[str]:
    """The ids besides its stem that the file `name` may hold by its name: every
    prefix of the stem of `ID.SUFFIX.json` that ends at a dot (not a leading one)."""
    found = stem(name) if name.endswith(JOB_SUFFIX) else None
    if found is None:
        return []
    return [found[:dot] for dot in range(1, len(found)) if found[dot] == "."]


def is_batch(name: str) -> bool:
    """Whether `name` is the name of a batch file (`FIRST.batch[.SUFFIX].json`)."""
    return fnmatch.fnmatchcase(name, BATCH_PATTERN)
