"""The schedule requests a daemon takes from its inbox (`procpool schedule ...` on a
SQLite home, where the daemon is the only writer, or a request dropped into the inbox
of a PostgreSQL one), carried out in the turn's transaction (CONTRACT section 14).

    {"schedules": "apply", "definitions": [...]} ─▶ diff with the stored ─▶ write_schedules
    {"schedules": "pause" | "resume" | "remove", "name": N} ─▶ the schedule's row
    {"schedules": "trigger", "name": N, "at": T} ─▶ one job NAME.manual-T, the cursor unmoved

Each is logged (`schedule.applied`, `.paused`, `.resumed`, `.removed`, `.triggered`,
or `schedule.unknown` for a name the store does not hold); the request file is
removed after the commit, which is how the client knows it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from procpool.application.ports import JobStore
from procpool.application.supervisor.ledger import Ledger
from procpool.domain import schedules
from procpool.domain.schedules import Changes, Schedule
from procpool.domain.spec import JobDefaults, ScheduleRequest, parse_time

Log = Callable[..., None]  # (level, event, message, **fields)


def carry_out(
    request: ScheduleRequest,
    checked: Sequence[Schedule],
    store: JobStore,
    ledger: Ledger,
    log: Log,
    defaults: JobDefaults,
    wall: float,
    file: str,
) -> None:
    """Carry out one request; `checked`: an apply's schedules, checked by the intake."""
    action, name = request.schedules, request.name
    if action == "apply":
        changes = schedules.diff(store.schedule_definitions(), checked)
        if changes.none:
            log("INFO", "schedule.applied", "schedules applied: no change", file=file,
                added=[], changed=[], removed=[])  # fmt: skip
            return
        store.write_schedules(changes, wall)
        added = [s.name for s in changes.added]
        changed = [s.name for s in changes.changed]
        log(
            "INFO", "schedule.applied",
            f"schedules applied: {len(added)} added, {len(changed)} changed,"
            f" {len(changes.removed)} removed",
            file=file, added=added, changed=changed, removed=changes.removed,
        )  # fmt: skip
        return
    assert name is not None  # checked by spec.decode
    stored = next((s for s in store.schedules() if s.schedule.name == name), None)
    if stored is None:
        log("WARNING", "schedule.unknown", f"schedule {action} of {name}: no such schedule",
            schedule=name, action=action, file=file)  # fmt: skip
        return
    if action in ("pause", "resume"):
        store.pause_schedule(name, action == "pause", wall)
        log("INFO", f"schedule.{action}d", f"schedule {name} {action}d", schedule=name,
            file=file)  # fmt: skip
    elif action == "remove":
        store.write_schedules(Changes([], [], [name]), wall)
        log("INFO", "schedule.removed", f"schedule {name} removed", schedule=name, file=file)
    else:
        at = parse_time(request.at or "", "at")
        job = schedules.job_of(stored.schedule, at, defaults, wall, manual=True)
        if store.trigger_schedule(name, job):
            ledger.added(job)
            log("INFO", "schedule.triggered", f"schedule {name} made job {job.id} by hand",
                schedule=name, job_id=job.id, file=file)  # fmt: skip
