"""The schedules' phase of a turn (CONTRACT section 14): each schedule whose next
occurrence has come is planned (domain/schedules.py) and its jobs and skips written
in the turn's transaction, by compare-and-set on its cursor.

    store.schedules_changed? ─▶ read every schedule: its next wake (wall time)
    wake come ─▶ take_schedule (held) ─▶ plan(cursor, now, facts) ─▶ advance_schedule
             ─▶ schedule.fired / schedule.skipped, logged after the commit
    next_at ─▶ the loop's wait (wait.Alarms.schedule_at): no polling

A daemon without the handler of a schedule's job type does not plan it, unless no
daemon serves that type (then its occurrences are skipped `no_handler`). On a shared
store another daemon may hold a schedule's row: this one then leaves the occurrence
to it and waits for the next one. Times are wall-clock seconds since the epoch (the
store's clock with SQLite; see CONTRACT 12 for PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from procpool.application.ports import JobStore, SharedStore
from procpool.application.supervisor.ledger import Ledger
from procpool.domain import schedules
from procpool.domain.job import Job, Status
from procpool.domain.schedules import Advance, Facts, Schedule, Stored
from procpool.domain.spec import JobDefaults
from procpool.domain.timefmt import rfc3339

Log = Callable[..., None]  # (level, event, message, **fields)
# On a shared store a write of the schedules by a client is heard (a notification);
# should one be lost, the schedules are read again at least this often (seconds).
REFRESH_SHARED = 30.0
_ACTIVE = (Status.PENDING, Status.RUNNING)


class Scheduler:
    """Plans the schedules of `store` in the turns of one daemon, whose handlers are
    `registered()`; `next_at`: when the next one is due (wall time; None: none)."""

    def __init__(
        self, store: JobStore, ledger: Ledger, log: Log, registered: Callable[[], Sequence[str]]
    ) -> None:
        self._store, self._ledger, self._log, self._registered = store, ledger, log, registered
        self._wakes: dict[str, float | None] = {}  # by name: when to plan it next
        self._known: dict[str, Schedule] = {}  # by name, as last read
        self._refresh_at = 0.0
        self._stale = True  # read the schedules at the next turn, whatever the store says
        self.next_at: float | None = None

    def run(self, wall: float, defaults: JobDefaults) -> None:
        """In the turn's transaction: plan every schedule whose wake has come. A turn
        with no schedule due and no change costs a comparison or two."""
        store = self._store
        changed = store.schedules_changed()  # asked each turn: it clears the store's flag
        if self._stale or changed or (store.shared and wall >= self._refresh_at):
            self._read(wall)
        elif self.next_at is None or wall < self.next_at:
            return
        for name, at in list(self._wakes.items()):
            if at is not None and at <= wall:
                self._plan(name, wall, defaults)
        self.next_at = min((at for at in self._wakes.values() if at is not None), default=None)

    def rolled_back(self) -> None:
        """The turn's transaction was undone: read the schedules again."""
        self._stale = True

    def _read(self, wall: float) -> None:
        self._stale = False
        self._refresh_at = wall + REFRESH_SHARED
        stored = self._store.schedules()
        self._known = {one.schedule.name: one.schedule for one in stored}
        self._wakes = {one.schedule.name: _next(one.schedule, one.cursor) for one in stored}

    def _served_elsewhere(self, job_type: str) -> bool:
        """Whether another daemon of a shared store may serve `job_type` (None: a live
        daemon that did not say which types it serves may)."""
        if not self._store.shared:
            return False
        served = cast(SharedStore, self._store).served_types()
        return served is None or job_type in served

    def _plan(self, name: str, wall: float, defaults: JobDefaults) -> None:
        store = self._store
        stored = store.take_schedule(name)
        if stored is None:
            # Removed, or (shared) held by another daemon, which plans this occurrence:
            # the next one is ours to look at (a removed one is gone at the next read).
            known = self._known.get(name)
            self._wakes[name] = None if known is None or not store.shared else _next(known, wall)
            return
        schedule = self._known[name] = stored.schedule
        served = schedule.type in self._registered()
        if not served and self._served_elsewhere(schedule.type):
            self._wakes[name] = _next(schedule, wall)
            return
        latest = self._latest(stored)
        active = latest is not None and latest.status in _ACTIVE
        facts = Facts(
            active=active,
            # Queued behind the job before it, and not started yet (overlap "queue").
            waiting=latest is not None and latest.status is Status.PENDING and bool(latest.after),
            paused=stored.paused,
            served=served,
        )
        decided = schedules.plan(schedule, stored.cursor, wall, facts)
        self._wakes[name] = decided.wake
        if decided.cursor == stored.cursor:
            return
        made = [schedules.job_of(schedule, t, defaults, wall) for t in decided.create]
        jobs = schedules.queued(schedule, made, stored.last_job if active else None)
        run = decided.create[-1] if decided.create else None
        advance = Advance(decided.cursor, jobs, decided.skipped, run)
        if not store.advance_schedule(name, stored.cursor, advance):
            return  # planned meanwhile by another turn: its jobs are the ones
        self._ledger.added_many(jobs)
        for instant, job in zip(decided.create, jobs, strict=True):
            self._log(
                "INFO", "schedule.fired", f"schedule {name} made job {job.id}",
                schedule=name, occurrence=rfc3339(instant), job_id=job.id, type=job.type,
            )  # fmt: skip
        for skip in decided.skipped:
            self._log(
                "INFO", "schedule.skipped",
                f"schedule {name} skipped its occurrence at {rfc3339(skip.instant)}: {skip.reason}",
                schedule=name, occurrence=rfc3339(skip.instant), reason=skip.reason,
            )  # fmt: skip

    def _latest(self, stored: Stored) -> Job | None:
        """The schedule's latest job (overlap), if the store still has it."""
        return None if stored.last_job is None else self._store.get(stored.last_job)


def _next(schedule: Schedule, after: float) -> float | None:
    upcoming = schedules.upcoming(schedule, after, 1)
    return upcoming[0] if upcoming else None
