"""The ledger: every change of a job's status, in one place.

Each change is computed by the domain's transition functions, applied to the
store as a compare-and-set, counted (per type and status, for metrics and
stats), kept in the attempt history when a run ends, and logged with its
event name. The supervisor decides *when* a job changes; the ledger is *how*.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from procpool.application.block import Block
from procpool.application.ports import JobStore
from procpool.application.supervisor.dependents import Dependents
from procpool.application.supervisor.fleet import RunEnded
from procpool.application.supervisor.histogram import Histogram
from procpool.domain import job as jobs
from procpool.domain.fate import Fate, Phase
from procpool.domain.job import Job, Progress, Run, Status
from procpool.domain.retry import RetryPolicy
from procpool.domain.timefmt import rfc3339
from procpool.domain.wording import plural

Log = Callable[..., None]  # (level, event, message, **fields)
EXPIRY_BATCH = 1000  # jobs expired per turn at the most
EXPIRY_LOOK = 1.0  # seconds between looks for expired jobs in a shared store


class Ledger:
    def __init__(self, store: JobStore, retry: RetryPolicy, log: Log) -> None:
        self.store = store
        self.retry = retry
        self._log = log
        self.counts: Counter[tuple[str, Status]] = Counter()
        self.failed_attempts: Counter[tuple[str, str]] = Counter()  # (type, reason)
        self.run_seconds: dict[str, Histogram] = {}
        self._runs: list[Run] = []
        self._finished: list[str] = []
        # While `held`: job id -> (the job as stored, as it is now).
        self._held: dict[str, tuple[Job, Job]] | None = None
        self._held_block = Block(self._hold, self._write_held, self._drop_held)
        # The earliest expires_at of a pending job as last seen (inf: none; None: look),
        # and when the store was last asked (only a shared store is asked again).
        self._next_expiry: float | None = None
        self._expiry_looked = -math.inf
        self.expired = 0  # jobs expired since the start
        self.duplicate_keys = 0  # submissions not added: a live job held their unique_key
        self.dependents = Dependents(store, self._write, log)

    def load(self) -> None:
        self.counts.update(self.store.counts())
        self.dependents.sweep()

    def _save(self, new: Job, old: Job) -> Job:
        self._write(new, old)
        return new

    def _write(self, new: Job, old: Job) -> bool:
        """Apply a change as a compare-and-set; whether it took (always, unless shared)."""
        if self._held is not None:
            # Compared with the job as stored once, when the block ends: what changed and
            # changed back is as stored already.
            held = self._held.get(old.id)
            self._held[old.id] = (old if held is None else held[0], new)
        elif not self.store.save(
            new, expected=old.status, expected_lease=old.lease,
            fields=jobs.changed_fields(old, new) or ["updated_at"],
        ):  # fmt: skip
            if not self.store.shared:
                # Only the supervisor's loop writes the store: a lost compare-and-set is a bug.
                raise RuntimeError(f"job {old.id} changed under the supervisor")
            # Another daemon took the job over (this one was declared dead) or it was
            # canceled: this attempt's word no longer counts, and nothing was written.
            self._log(
                "WARNING", "job.stale_result",
                f"job {old.id}: the store no longer holds this attempt (lease {old.lease});"
                f" its {new.status} is dropped",
                job_id=old.id, lease=old.lease, status=str(new.status),
            )  # fmt: skip
            return False
        if new.status is not old.status:
            self.counts[(old.type, old.status)] -= 1
            self.counts[(new.type, new.status)] += 1
            if new.status.is_terminal:
                self._finished.append(new.id)
                self.dependents.ended(new.id, new.updated_at)
                if self._held is None:
                    self.dependents.settle()
        return True

    def held(self) -> Block:
        """Within it, changes are kept and each job is written once, as it is at the end:
        a worker's Started and Finished read in the same turn make one UPDATE, not two,
        and the jobs whose changes set the same columns are written by one statement.
        Only for code that reads no job from the store meanwhile (the reading of worker
        messages, dispatch's starts): what is held is not in the store until the block
        ends. Only for a store of one writer, where a compare-and-set cannot fail: with a
        shared store, each change is written at once, so that a stale attempt is known
        at once."""
        return self._held_block

    def _hold(self) -> None:
        if not self.store.shared:
            self._held = {}

    def _write_held(self) -> None:
        """The end of a held block: its jobs written, one statement per set of columns."""
        held, self._held = self._held, None
        if held is None:  # a shared store's block: each change was written at once
            return
        batches: dict[tuple[str, ...], list[tuple[Job, Status, int]]] = {}
        for stored, latest in held.values():
            names = tuple(jobs.changed_fields(stored, latest) or ["updated_at"])
            batches.setdefault(names, []).append((latest, stored.status, stored.lease))
        for names, saves in batches.items():
            written = self.store.save_many(saves, names)
            if written != len(saves):
                raise RuntimeError(
                    f"{len(saves) - written} of {plural(len(saves), 'job')} changed under"
                    " the supervisor"
                )
        self.dependents.settle()

    def _drop_held(self) -> None:
        self._held = None  # the turn is rolled back: nothing to write

    def rolled_back(self) -> None:
        """The turn's transaction is gone (StoreLost): forget the history and the ends it
        held, and count afresh from the store at the next `load`."""
        self._runs = []
        self._finished = []
        self.dependents.forget()
        self.counts.clear()
        self._next_expiry = None

    def take_finished(self) -> list[str]:
        """The ids of the jobs made terminal since the last call (for the socket door's
        waiters, told after the commit that holds it)."""
        finished, self._finished = self._finished, []
        return finished

    def _end_run(self, old: Job, new: Job, now: float, exit_signal: str | None = None) -> bool:
        """The end of a run that started: saved, and kept in the attempt history. False:
        the run was stale (another daemon took the job over; it keeps the history)."""
        if not self._write(new, old):
            return False
        self._runs.append(jobs.run_of(old, new, now=now, exit_signal=exit_signal))
        return True

    def flush_history(self) -> None:
        """Write the turn's finished runs in one statement."""
        if self._runs:
            self.store.record_runs(self._runs)
            self._runs = []

    def added(self, job: Job) -> None:
        self.added_many([job])

    def added_many(self, new_jobs: Iterable[Job]) -> None:
        new_jobs = list(new_jobs)
        for job in new_jobs:
            self.counts[(job.type, Status.PENDING)] += 1
            if job.expires_at is not None and self._next_expiry is not None:
                self._next_expiry = min(self._next_expiry, job.expires_at)
        self.dependents.arrived(new_jobs)
        self.dependents.settle()

    def expire_due(self, now: float) -> float | None:
        """Cancel as expired (`last_error` "expired") the pending jobs past their
        expires_at, a batch a turn; returns when the next one expires (None: none). The
        store is asked only once the earliest known expiry has come, or a new job
        expires sooner; a shared store, whose jobs other processes add, every second."""
        known = self._next_expiry
        if known is not None and now < known and now < self._expiry_looked + EXPIRY_LOOK:
            return None if known == math.inf else known
        for job in self.store.expired(now, EXPIRY_BATCH):
            expired = jobs.expire(job, now=now)
            if self._write(expired, job):
                self.expired += 1
                self._log(
                    "INFO", "job.expired",
                    f"job {job.id} expired before it started"
                    f" (expires_at {rfc3339(job.expires_at or now)})",
                    job_id=job.id, type=job.type, attempts=job.attempts,
                )  # fmt: skip
        following = self.store.next_expiry()
        self._next_expiry = math.inf if following is None else following
        self._expiry_looked = now if self.store.shared else math.inf
        return following

    def start(self, job: Job, *, lease: int, worker_pid: int, now: float) -> Job:
        """Claimed for a worker: `running` in the store before it is sent there."""
        return self._save(jobs.start(job, lease=lease, worker_pid=worker_pid, now=now), job)

    def began(self, job: Job, now: float) -> Job:
        """The worker has started the job: stored in this turn, so that only a run that
        began is charged an attempt if it ends without a word (CONTRACT section 3); and
        logged now, not when it was sent (it may have waited in the worker's queue)."""
        begun = self._save(jobs.begin(job, now=now), job)
        self._log(
            "INFO", "job.started", f"job {job.id} started, attempt {job.attempt}",
            job_id=job.id, type=job.type, attempt=job.attempt, worker_pid=job.worker_pid,
        )  # fmt: skip
        return begun

    def end_run(self, ended: RunEnded, now: float) -> None:
        """Apply a run's fate (see `domain.fate`)."""
        job, ran = ended.job, ended.phase is Phase.STARTED
        if ended.fate is Fate.COMPLETED:
            self.complete(job, ended.result or b"null", ended.duration or 0.0, now)
        elif ended.fate in (Fate.FAILED_ATTEMPT, Fate.FAILED):
            self.fail(
                job, ended.error or "the attempt failed", now,
                reason="permanent" if ended.fate is Fate.FAILED else ended.label,
                duration=ended.duration, exit_signal=ended.exit_signal,
            )  # fmt: skip
        elif ended.fate is Fate.CANCELED:
            self.cancel(job, now, ran=ran, exit_signal=ended.exit_signal)
        else:
            self.interrupt(
                job, now, ran=ran, exit_signal=ended.exit_signal, why=ended.error or "the shutdown"
            )

    def progress(self, job: Job, fraction: float, message: str | None, now: float) -> Job:
        updated = self._save(jobs.report_progress(job, Progress(fraction, message), now=now), job)
        self._log(
            "DEBUG",
            "job.progress",
            f"job {job.id} at {fraction:.0%}" + (f": {message}" if message else ""),
            job_id=job.id,
            fraction=fraction,
            worker_pid=job.worker_pid,
        )
        return updated

    def complete(self, job: Job, result: bytes, duration: float, now: float) -> None:
        if not self._end_run(job, jobs.complete(job, result=result, now=now), now):
            return
        self._observe(job.type, duration)
        self._log(
            "INFO", "job.completed", f"job {job.id} completed",
            job_id=job.id, type=job.type, attempt=job.attempt, worker_pid=job.worker_pid,
            duration_ms=round(duration * 1000, 3),
        )  # fmt: skip

    def _observe(self, job_type: str, duration: float) -> None:
        """Count a run's time in its type's histogram, made at the type's first run only
        (setdefault would make one per run, to be thrown away)."""
        histogram = self.run_seconds.get(job_type)
        if histogram is None:
            histogram = self.run_seconds[job_type] = Histogram()
        histogram.observe(duration)

    def fail(
        self,
        job: Job,
        error: str,
        now: float,
        *,
        reason: str,
        duration: float | None = None,
        exit_signal: str | None = None,
    ) -> None:
        """A failed attempt: retried after a backoff, or the job fails for good.
        `reason` labels it in the metrics; `permanent` ends the retries."""
        retry_at = None if reason == "permanent" else now + self.retry.backoff(job.attempts + 1)
        failed = jobs.fail_attempt(job, error=error, now=now, retry_at=retry_at)
        if not self._end_run(job, failed, now, exit_signal):
            return
        self.failed_attempts[(job.type, reason)] += 1
        fields: dict[str, Any] = {
            "job_id": job.id, "type": job.type, "attempt": job.attempt,
            "worker_pid": job.worker_pid, "error": error, "reason": reason,
            "status": str(failed.status),
        }  # fmt: skip
        if duration is not None:
            self._observe(job.type, duration)
            fields["duration_ms"] = round(duration * 1000, 3)
        if exit_signal is not None:
            fields["signal"] = exit_signal
        if failed.status is Status.PENDING:
            self._log(
                "WARNING", "job.failed",
                f"job {job.id} attempt {job.attempt} failed, retry in"
                f" {failed.run_at - now:.2f} s: {error}",
                retry_at=rfc3339(failed.run_at), **fields,
            )  # fmt: skip
        else:
            self._log(
                "ERROR", "job.failed",
                f"job {job.id} failed for good after {plural(failed.attempts, 'attempt')}: {error}",
                **fields,
            )  # fmt: skip

    def cancel(self, job: Job, now: float, *, ran: bool, exit_signal: str | None = None) -> None:
        canceled = jobs.cancel(job, now=now)
        if not (
            self._end_run(job, canceled, now, exit_signal) if ran else self._write(canceled, job)
        ):
            return
        how = "while it ran" if ran else "before it ran"
        self._log(
            "INFO", "job.canceled", f"job {job.id} canceled {how}",
            job_id=job.id, type=job.type, worker_pid=job.worker_pid,
        )  # fmt: skip

    def request_cancel(self, job: Job, now: float) -> Job:
        return self._save(jobs.request_cancel(job, now=now), job)

    def interrupt(
        self, job: Job, now: float, *, ran: bool, exit_signal: str | None = None,
        why: str = "the shutdown",
    ) -> None:  # fmt: skip
        """Back to pending with attempts unchanged: the daemon stopped the run, or it
        never started (it waited in a worker's queue)."""
        pending = jobs.interrupt(job, now=now)
        if ran:
            if not self._end_run(job, pending, now, exit_signal):
                return
            self._log(
                "INFO", "job.interrupted", f"job {job.id} stopped by {why}; back to pending",
                job_id=job.id, type=job.type, worker_pid=job.worker_pid,
            )  # fmt: skip
        elif self._write(pending, job):
            self._log(
                "DEBUG", "job.requeued", f"job {job.id} had not started; back to pending",
                job_id=job.id, type=job.type, worker_pid=job.worker_pid,
            )  # fmt: skip

    def prune(self, days: float, now: float, limit: int) -> int:
        """Delete up to `limit` terminal jobs older than `days`; returns how many went."""
        deleted = self.store.delete_finished_before(now - days * 86400, limit)
        for key in deleted:
            self.counts[key] -= 1
        if deleted:
            self._log(
                "INFO", "jobs.pruned",
                f"deleted {plural(len(deleted), 'finished job')} older than {plural(days, 'day')}",
                count=len(deleted), days=days,
            )  # fmt: skip
        return len(deleted)
