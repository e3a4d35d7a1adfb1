"""An in-memory JobStore with the SQLite store's semantics, for fast tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import msgspec

from procpool.adapters.stores.schedule_rows import MemoryScheduleRows, ScheduleMethods
from procpool.application.ports import FileProgress, LineError, Serving, WorkerRecord, WorkerReport
from procpool.domain.job import Job, Run, Status
from procpool.domain.limits import NO_LIMITS, Running, admit, limited
from procpool.domain.pauses import Pause, first_wake, in_force, next_end


class MemoryJobStore(ScheduleMethods):
    shared = False
    _schedule_rows: MemoryScheduleRows

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._workers: dict[int, WorkerRecord] = {}
        self._runs: dict[tuple[str, int], Run] = {}
        self._reports: dict[int, WorkerReport] = {}
        self._progress: dict[str, FileProgress] = {}
        self._line_errors: dict[str, dict[int, str]] = {}
        self._limits = NO_LIMITS
        self._served: frozenset[str] = frozenset()
        self._pauses: dict[str, Pause] = {}
        self._pause_end: float | None = None  # the next `until` that `due` saw
        self._schedule_rows = MemoryScheduleRows()
        self._checkpoints: dict[str, bytes] = {}
        self._held: set[str] = set()  # jobs that wait for their parents (`after`)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        saved = dict(self._jobs), dict(self._workers), dict(self._runs)
        saved_progress, saved_pauses = dict(self._progress), dict(self._pauses)
        saved_held = set(self._held)
        saved_errors = {key: dict(lines) for key, lines in self._line_errors.items()}
        saved_schedules = self._schedule_rows.state()
        saved_checkpoints = dict(self._checkpoints)
        try:
            yield
        except BaseException:
            self._jobs, self._workers, self._runs = saved
            self._progress, self._line_errors = saved_progress, saved_errors
            self._pauses, self._checkpoints = saved_pauses, saved_checkpoints
            self._held = saved_held
            self._schedule_rows.restore(saved_schedules)
            raise

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def digests(self, job_ids: Sequence[str]) -> dict[str, str]:
        return {i: self._jobs[i].digest for i in job_ids if i in self._jobs}

    def statuses(self, job_ids: Sequence[str]) -> dict[str, Status]:
        return {i: self._jobs[i].status for i in job_ids if i in self._jobs}

    def insert(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            if job.id in self._jobs:
                raise KeyError(f"job {job.id} exists")
        for job in jobs:
            self._jobs[job.id] = job
            if job.after:
                self._held.add(job.id)

    def dependents(self, parent_id: str, after: str, limit: int) -> list[str]:
        found = sorted(j.id for j in self._jobs.values() if parent_id in j.after and j.id > after)
        return found[:limit]

    def held_ids(self, after: str, limit: int) -> list[str]:
        return sorted(i for i in self._held if i > after and i in self._jobs)[:limit]

    def held(
        self, job_ids: Sequence[str], arrived: bool = False
    ) -> list[tuple[Job, dict[str, Status]]]:
        found = []
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is not None and job_id in self._held and job.status is Status.PENDING:
                found.append((job, self.statuses(job.after)))
        return found

    def release(self, job_ids: Sequence[str]) -> None:
        self._held.difference_update(job_ids)

    def save(
        self, job: Job, *, expected: Status, expected_lease: int, fields: Sequence[str] = ()
    ) -> bool:
        return self.save_many([(job, expected, expected_lease)], fields) == 1

    def save_many(self, saves: Sequence[tuple[Job, Status, int]], fields: Sequence[str]) -> int:
        written = 0
        for job, expected, expected_lease in saves:
            stored = self._jobs.get(job.id)
            if stored is not None and stored.status is expected and stored.lease == expected_lease:
                # checkpoint_at is not a field a transition writes: the stored one stays.
                kept = msgspec.structs.replace(job, checkpoint_at=stored.checkpoint_at)
                self._jobs[job.id] = kept
                written += 1
        return written

    def serve(self, serving: Serving) -> None:
        """See JobStore.serve; the defaults are for clients, which write no memory store."""
        self._limits, self._served = serving.limits, frozenset(serving.types)

    def pause(self, pause: Pause) -> None:
        self._pauses[pause.type] = pause

    def resume(self, types: Sequence[str]) -> list[str]:
        return [t for t in types if self._pauses.pop(t, None) is not None]

    def pauses(self) -> list[Pause]:
        return sorted(self._pauses.values(), key=lambda pause: pause.type)

    def due(self, now: float, limit: int) -> list[Job]:
        paused = in_force(self._pauses.values(), now)
        self._pause_end = next_end(self._pauses.values(), now)
        ready = [
            j
            for j in self._jobs.values()
            if j.status is Status.PENDING
            and j.run_at <= now
            and j.type not in paused
            and j.id not in self._held
        ]
        ready.sort(key=lambda j: (-j.priority, j.run_at))
        if not any(limited(job, self._limits) for job in ready[:limit]):
            return ready[:limit]
        # As the SQLite store's limited claim: the types served only, counted from the
        # running rows.
        running = Running.of(
            [
                (j.type, j.concurrency_key, 1)
                for j in self._jobs.values()
                if j.status is Status.RUNNING
            ]
        )
        served = [job for job in ready if job.type in self._served]
        return admit(served, running, self._limits, limit)

    def limit_figures(self, now: float) -> list[tuple[str, int, int, int]]:
        def count(job_type: str, status: Status) -> int:
            return sum(
                1
                for j in self._jobs.values()
                if j.type == job_type and j.status is status and j.run_at <= now
            )

        return [
            (t, most, count(t, Status.RUNNING), count(t, Status.PENDING))
            for t, most in sorted(self._limits.types.items())
        ]

    def pause_figures(self, now: float) -> list[tuple[Pause, int]]:
        return [
            (pause, sum(1 for j in self._jobs.values() if j.type == pause.type
                        and j.status is Status.PENDING and j.run_at <= now))
            for pause in self.pauses() if pause.in_force(now)
        ]  # fmt: skip

    def key_limit_figures(self, now: float) -> list[tuple[str, int, int, int, int]]:
        running = Running.of([(j.type, j.concurrency_key, 1) for j in self._jobs.values()
                              if j.status is Status.RUNNING])  # fmt: skip
        full = running.full_keys(self._limits)
        figures = []
        for job_type in sorted({*self._limits.keys, *(t for t, _ in running.keys)}):
            waiting = sum(1 for j in self._jobs.values() if j.status is Status.PENDING
                          and j.run_at <= now and (j.type, j.concurrency_key) in full)  # fmt: skip
            figures.append((
                job_type, self._limits.key_limit(job_type),
                sum(1 for t, _ in running.keys if t == job_type),
                sum(1 for t, _ in full if t == job_type), waiting,
            ))  # fmt: skip
        return figures

    def expired(self, now: float, limit: int) -> list[Job]:
        found = [
            j
            for j in self._jobs.values()
            if j.status is Status.PENDING and j.expires_at is not None and j.expires_at <= now
        ]
        return sorted(found, key=lambda j: j.expires_at or 0.0)[:limit]

    def next_expiry(self) -> float | None:
        return min(
            (j.expires_at for j in self._jobs.values()
             if j.status is Status.PENDING and j.expires_at is not None),
            default=None,
        )  # fmt: skip

    def next_run_at(self, after: float) -> float | None:
        scheduled = min(
            (
                j.run_at
                for j in self._jobs.values()
                if j.status is Status.PENDING and j.run_at > after
            ),
            default=None,
        )
        return first_wake(scheduled, self._pause_end, after)

    def left_running(self) -> list[Job]:
        return self.with_status(Status.RUNNING)

    def with_status(self, status: Status) -> list[Job]:
        return [j for j in self._jobs.values() if j.status is status]

    def max_lease(self) -> int:
        return max((j.lease for j in self._jobs.values()), default=0)

    def add_worker(self, worker: WorkerRecord) -> None:
        self._workers[worker.pid] = worker

    def remove_worker(self, pid: int) -> None:
        self._workers.pop(pid, None)

    def workers(self) -> list[WorkerRecord]:
        return list(self._workers.values())

    def update_workers(self, reports: Sequence[WorkerReport]) -> None:
        self._reports = {r.pid: r for r in reports}

    def record_runs(self, runs: Sequence[Run]) -> None:
        for run in runs:
            self._runs[(run.job_id, run.lease)] = run

    def runs(self, job_id: str) -> list[Run]:
        return sorted((r for r in self._runs.values() if r.job_id == job_id), key=lambda r: r.lease)

    def counts(self) -> dict[tuple[str, Status], int]:
        return dict(Counter((j.type, j.status) for j in self._jobs.values()))

    def oldest_pending_created(self) -> float | None:
        return min(
            (j.created_at for j in self._jobs.values() if j.status is Status.PENDING),
            default=None,
        )

    def delete_finished_before(self, cutoff: float, limit: int) -> list[tuple[str, Status]]:
        live_parents = {
            parent for j in self._jobs.values() if not j.status.is_terminal for parent in j.after
        }
        old = [
            j
            for j in self._jobs.values()
            if j.status.is_terminal and j.updated_at < cutoff and j.id not in live_parents
        ]
        for job in old[:limit]:
            del self._jobs[job.id]
            self._checkpoints.pop(job.id, None)
            for key in [k for k in self._runs if k[0] == job.id]:
                del self._runs[key]
        return [(j.type, j.status) for j in old[:limit]]

    def vacuum_step(self, pages: int) -> None:
        pass

    def files_in_progress(self) -> dict[str, FileProgress]:
        return dict(self._progress)

    def save_progress(self, progress: FileProgress, errors: Sequence[LineError]) -> None:
        self._progress[progress.key] = progress
        self._line_errors.setdefault(progress.key, {}).update((e.line, e.error) for e in errors)

    def line_errors(self, key: str) -> list[LineError]:
        return [LineError(*item) for item in sorted(self._line_errors.get(key, {}).items())]

    def forget_progress(self, key: str) -> None:
        self._progress.pop(key, None)
        self._line_errors.pop(key, None)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------- section 16

    def insert_unique(self, jobs: Sequence[Job]) -> dict[str, str]:
        taken: dict[str, str] = {}
        for job in jobs:
            holder = next((j.id for j in self._jobs.values() if _holds(j, job)), None)
            if holder is None:
                self.insert([job])
            else:
                taken[job.id] = holder
        return taken

    def write_checkpoint(self, job_id: str, lease: int, value: bytes, now: float) -> bool:
        stored = self._jobs.get(job_id)
        if stored is None or stored.status is not Status.RUNNING or stored.lease != lease:
            return False
        self._jobs[job_id] = msgspec.structs.replace(stored, checkpoint_at=now)
        self._checkpoints[job_id] = value
        return True

    def checkpoints(self, job_ids: Sequence[str]) -> dict[str, bytes]:
        return {i: self._checkpoints[i] for i in job_ids if i in self._checkpoints}

    def copy_checkpoint(self, source: str, target: str) -> None:
        value, old, new = (
            self._checkpoints.get(source),
            self._jobs.get(source),
            self._jobs.get(target),
        )
        if value is not None and old is not None and new is not None:
            self._checkpoints[target] = value
            self._jobs[target] = msgspec.structs.replace(new, checkpoint_at=old.checkpoint_at)


def _holds(held: Job, new: Job) -> bool:
    """Whether `held` holds the unique key `new` asks for (the stores' UNIQUE_HELD)."""
    if held.unique_key is None or (held.type, held.unique_key) != (new.type, new.unique_key):
        return False
    if held.status is Status.RUNNING:
        return held.unique_while == "active"
    return held.status is Status.PENDING and (held.unique_while == "active" or held.lease == 0)
