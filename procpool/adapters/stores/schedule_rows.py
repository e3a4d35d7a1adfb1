"""The schedules' rows (CONTRACT section 14), in the SQL that SQLite and PostgreSQL
share: one row per schedule (its definition, cursor, pause and latest facts) and one
counter per skip reason.

    apply ─▶ write(changes) ─▶ schedules rows      (a new one's cursor: the apply's now)
    a daemon's turn ─▶ take(name) ─▶ plan ─▶ advance(name, expected cursor) ─▶ rows + jobs

`advance` is a compare-and-set on the cursor: of two daemons (or two turns after a
restart) that planned the same occurrences, only the first to commit moves it, and
the other inserts nothing (the store's `advance_schedule` inserts the jobs only when
it won). Cursors are never pruned: retention deletes jobs, not schedules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from procpool.domain.job import Job
from procpool.domain.schedules import Advance, Changes, Skip, Stored, from_stored

Rows = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]

_COLUMNS = "name, definition, cursor, paused, last_job, last_run, last_skip, last_skip_reason"


def _stored(row: tuple[Any, ...]) -> Stored:
    _, definition, cursor, paused, last_job, last_run, last_skip, reason = row
    text = definition if isinstance(definition, str) else bytes(definition).decode()
    return Stored(
        schedule=from_stored(text.encode()),
        cursor=cursor,
        paused=bool(paused),
        last_job=last_job,
        last_run=last_run,
        last_skip=None if last_skip is None else Skip(last_skip, reason),
    )


class ScheduleRows:
    """The statements, over a store's connection (`rows` runs one and fetches its rows).
    `table` and `skips` name the two tables; `mark` is the parameter mark (? or %s);
    `lock`, appended to the read of one row in a turn, locks it for the transaction
    (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite's writer holds the whole file)."""

    def __init__(self, rows: Rows, table: str, skips: str, mark: str, lock: str = "") -> None:
        self._rows, self._table, self._skips = rows, table, skips
        self._mark, self._lock = mark, lock

    def all(self) -> list[Stored]:
        return [
            _stored(row)
            for row in self._rows(f"SELECT {_COLUMNS} FROM {self._table} ORDER BY name", ())
        ]

    def definitions(self) -> dict[str, bytes]:
        """Each stored schedule's definition (`Schedule.encoded`), by name."""
        rows = self._rows(f"SELECT name, definition FROM {self._table}", ())
        return {name: str(text).encode() for name, text in rows}

    def take(self, name: str) -> Stored | None:
        """The schedule, as committed now, locked until the transaction ends; None if it
        is gone, or (PostgreSQL) another daemon holds it: that one is planning it."""
        m = self._mark
        rows = self._rows(
            f"SELECT {_COLUMNS} FROM {self._table} WHERE name = {m}{self._lock}", (name,)
        )
        return _stored(rows[0]) if rows else None

    def write(self, changes: Changes, now: float) -> None:
        """Apply's changes: an added schedule's cursor is `now` (it never fires for the
        past); a changed one keeps its cursor, moved up to `now`, so that the edit fires
        nothing the old definition had not."""
        m = self._mark
        for schedule in changes.added:
            self._rows(
                f"INSERT INTO {self._table} (name, definition, cursor, paused, updated_at)"
                f" VALUES ({m}, {m}, {m}, {m}, {m}) RETURNING name",
                (schedule.name, schedule.encoded().decode(), now, False, now),
            )
        for schedule in changes.changed:
            self._rows(
                f"UPDATE {self._table} SET definition = {m}, updated_at = {m},"
                f" cursor = CASE WHEN cursor < {m} THEN {m} ELSE cursor END"
                f" WHERE name = {m} RETURNING name",
                (schedule.encoded().decode(), now, now, now, schedule.name),
            )
        for name in changes.removed:
            self._rows(f"DELETE FROM {self._table} WHERE name = {m} RETURNING name", (name,))

    def set_paused(self, name: str, paused: bool, now: float) -> bool:
        """Pause or resume; False if there is no such schedule. A resume moves the cursor
        up to `now`: what came due while paused was skipped, never caught up."""
        m = self._mark
        rows = self._rows(
            f"UPDATE {self._table} SET paused = {m}, updated_at = {m},"
            f" cursor = CASE WHEN {m} AND cursor < {m} THEN {m} ELSE cursor END"
            f" WHERE name = {m} RETURNING name",
            (paused, now, not paused, now, now, name),
        )
        return bool(rows)

    def triggered(self, name: str, job_id: str) -> None:
        """A job made by `schedule trigger` is the schedule's latest (for overlap)."""
        m = self._mark
        self._rows(
            f"UPDATE {self._table} SET last_job = {m} WHERE name = {m} RETURNING name",
            (job_id, name),
        )

    def advance(self, name: str, expected: float, advance: Advance) -> bool:
        """Move the cursor from `expected` to `advance.cursor` and note the latest job and
        skip; False (nothing written) if the cursor is no longer `expected`."""
        m = self._mark
        skip = advance.last_skip
        rows = self._rows(
            f"UPDATE {self._table} SET cursor = {m},"
            f" last_job = coalesce({m}, last_job), last_run = coalesce({m}, last_run),"
            f" last_skip = coalesce({m}, last_skip),"
            f" last_skip_reason = coalesce({m}, last_skip_reason)"
            f" WHERE name = {m} AND cursor = {m} RETURNING name",
            (
                advance.cursor, advance.last_job, advance.run,
                None if skip is None else skip.instant, None if skip is None else skip.reason,
                name, expected,
            ),
        )  # fmt: skip
        if not rows:
            return False
        counts: dict[str, int] = {}
        for skipped in advance.skipped:
            counts[skipped.reason] = counts.get(skipped.reason, 0) + 1
        for reason, count in sorted(counts.items()):
            self._rows(
                f"INSERT INTO {self._skips} (reason, count) VALUES ({m}, {m})"
                f" ON CONFLICT (reason) DO UPDATE SET count = {self._skips}.count + excluded.count"
                " RETURNING reason",
                (reason, count),
            )
        return True

    def skip_counts(self) -> dict[str, int]:
        """Occurrences skipped since the store began, by reason."""
        return dict(self._rows(f"SELECT reason, count FROM {self._skips} ORDER BY reason", ()))


class ScheduleMethods:
    """The JobStore's schedule methods, for a store that keeps its schedules in
    ScheduleRows (`_schedule_rows`, set by the store's __init__) and inserts jobs with
    its own `digests` and `insert`."""

    _schedule_rows: ScheduleRows
    _schedules_changed: bool = True  # read them at the first look

    def digests(self, job_ids: Sequence[str]) -> dict[str, str]:
        raise NotImplementedError

    def insert(self, jobs: Sequence[Job]) -> None:
        raise NotImplementedError

    def schedules(self) -> list[Stored]:
        return self._schedule_rows.all()

    def schedule_definitions(self) -> dict[str, bytes]:
        return self._schedule_rows.definitions()

    def take_schedule(self, name: str) -> Stored | None:
        return self._schedule_rows.take(name)

    def _schedules_written(self) -> None:
        """After a write of the schedules: read them again (a shared store tells the
        other daemons too)."""
        self._schedules_changed = True

    def write_schedules(self, changes: Changes, now: float) -> None:
        self._schedule_rows.write(changes, now)
        self._schedules_written()

    def pause_schedule(self, name: str, paused: bool, now: float) -> bool:
        self._schedules_written()
        return self._schedule_rows.set_paused(name, paused, now)

    def trigger_schedule(self, name: str, job: Job) -> bool:
        """Insert `job` (`schedule trigger`), the schedule's latest job from now on;
        False if its id exists (it was triggered this second already)."""
        if self.digests([job.id]):
            return False
        self.insert([job])
        self._schedule_rows.triggered(name, job.id)
        return True

    def advance_schedule(self, name: str, expected: float, advance: Advance) -> bool:
        if not self._schedule_rows.advance(name, expected, advance):
            return False
        existing = self.digests([job.id for job in advance.jobs])
        self.insert([job for job in advance.jobs if job.id not in existing])
        return True

    def schedule_skips(self) -> dict[str, int]:
        return self._schedule_rows.skip_counts()

    def schedules_changed(self) -> bool:
        changed, self._schedules_changed = self._schedules_changed, False
        return changed


class MemoryScheduleRows(ScheduleRows):
    """ScheduleRows kept in dicts, for the in-memory store (`state`/`restore` let its
    transaction roll them back)."""

    def __init__(self) -> None:
        self._stored: dict[str, Stored] = {}
        self._counts: dict[str, int] = {}

    def state(self) -> tuple[dict[str, Stored], dict[str, int]]:
        return dict(self._stored), dict(self._counts)

    def restore(self, state: tuple[dict[str, Stored], dict[str, int]]) -> None:
        self._stored, self._counts = state

    def all(self) -> list[Stored]:
        return [self._stored[name] for name in sorted(self._stored)]

    def definitions(self) -> dict[str, bytes]:
        return {name: stored.schedule.encoded() for name, stored in self._stored.items()}

    def take(self, name: str) -> Stored | None:
        return self._stored.get(name)

    def write(self, changes: Changes, now: float) -> None:
        for schedule in changes.added:
            self._stored[schedule.name] = Stored(schedule, now)
        for schedule in changes.changed:
            old = self._stored[schedule.name]
            self._stored[schedule.name] = replace(
                old, schedule=schedule, cursor=max(old.cursor, now)
            )
        for name in changes.removed:
            self._stored.pop(name, None)

    def set_paused(self, name: str, paused: bool, now: float) -> bool:
        old = self._stored.get(name)
        if old is None:
            return False
        cursor = old.cursor if paused else max(old.cursor, now)
        self._stored[name] = replace(old, paused=paused, cursor=cursor)
        return True

    def triggered(self, name: str, job_id: str) -> None:
        if name in self._stored:
            self._stored[name] = replace(self._stored[name], last_job=job_id)

    def advance(self, name: str, expected: float, advance: Advance) -> bool:
        old = self._stored.get(name)
        if old is None or old.cursor != expected:
            return False
        self._stored[name] = replace(
            old,
            cursor=advance.cursor,
            last_job=advance.last_job or old.last_job,
            last_run=old.last_run if advance.run is None else advance.run,
            last_skip=advance.last_skip or old.last_skip,
        )
        for skipped in advance.skipped:
            self._counts[skipped.reason] = self._counts.get(skipped.reason, 0) + 1
        return True

    def skip_counts(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))
