"""Which files waiting in an inbox may become a given job, looked up by name.

A producer names a job's file after its id: `ID.json`, `ID.SUFFIX.json` when that
name was taken (`Client._drop`), and a batch written while no daemon ran is
`FIRST_ID.batch[.SUFFIX].json`, holding the other ids inside. To answer for one id
the client looks `ID.json` up directly, and takes the rest from an index of the
inbox's names (and of the ids inside its batch files) that is built by one listing
and kept while the directory does not change:

    lookup(ID) ──▶ lstat ID.json
               └─▶ index ──(inbox's inode and mtime as when listed?)── yes: reuse
                                                                  └── no: list once

So a backlog of 40,000 files costs a lookup two `stat`s, not two listings; while a
daemon drains it, one listing per change of the directory serves every lookup and
every thread of the process in between (one index per inbox, shared).

When a listing is trusted: see change_stamp.py.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from procpool.adapters.inbox.change_stamp import ChangeStamp
from procpool.adapters.inbox.rejections import batch_file_ids
from procpool.domain import inbox_names


@dataclass
class _Index:
    named: dict[str, list[str]] = field(default_factory=dict)  # ID -> ["ID.SUFFIX.json"]
    batched: dict[str, list[str]] = field(default_factory=dict)  # ID -> batch files holding it


class InboxLookup:
    """The files of one inbox that may become a job, by id. Safe from any thread.

    Use `InboxLookup.of(inbox)`: one per inbox in the process, so that every
    client and thread shares its index.
    """

    @staticmethod
    def of(inbox: Path) -> InboxLookup:
        with _INSTANCES_LOCK:
            found = _INSTANCES.get(inbox)
            if found is None:
                found = _INSTANCES[inbox] = InboxLookup(inbox)
            return found

    def __init__(self, inbox: Path) -> None:
        self.inbox = inbox
        self._stamp = ChangeStamp(inbox)
        self._index = _Index()
        # batch file name -> (its identity, the ids it holds): read once each
        self._batches: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
        self._lock = threading.Lock()

    def named(self, job_id: str) -> list[Path]:
        """The regular files named after `job_id` (`ID.json`, `ID.*.json`), waiting now."""
        found = []
        direct = self.inbox / inbox_names.file_name(job_id)
        if _is_regular(direct):
            found.append(direct)
        found += [self.inbox / name for name in self._current().named.get(job_id, ())]
        return found

    def waiting(self, job_id: str) -> bool:
        """Whether a file named after `job_id`, or a batch file holding it, waits."""
        if _is_regular(self.inbox / inbox_names.file_name(job_id)):
            return True
        index = self._current()
        return job_id in index.named or job_id in index.batched

    def _current(self) -> _Index:
        with self._lock:
            if not self._stamp.unchanged():
                before = self._stamp.current()
                started = time.time_ns()
                self._index = self._list()
                self._stamp.listed(before, started)
            return self._index

    def _list(self) -> _Index:
        index = _Index()
        batches: dict[str, tuple[tuple[int, int, int], list[str]]] = {}
        try:
            entries = list(os.scandir(self.inbox))
        except OSError:  # no inbox yet, or not readable: nothing waits that we can see
            self._batches = batches
            return index
        for entry in entries:
            name = entry.name
            if name.startswith(".") or not name.endswith(inbox_names.JOB_SUFFIX):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            for job_id in inbox_names.named_ids(name):
                index.named.setdefault(job_id, []).append(name)
            if inbox_names.is_batch(name):
                ids = self._batch_ids(entry, batches)
                for job_id in ids:
                    index.batched.setdefault(job_id, []).append(name)
        self._batches = batches
        return index

    def _batch_ids(
        self, entry: os.DirEntry[str], batches: dict[str, tuple[tuple[int, int, int], list[str]]]
    ) -> list[str]:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            return []
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        known = self._batches.get(entry.name)
        if known is not None and known[0] == identity:
            ids = known[1]
        else:
            ids = batch_file_ids(Path(entry.path)) or []
        batches[entry.name] = (identity, ids)
        return ids


_INSTANCES: dict[Path, InboxLookup] = {}
_INSTANCES_LOCK = threading.Lock()


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
