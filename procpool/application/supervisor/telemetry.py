"""What the supervisor tells the outside world about itself, besides the log:
counts and histograms for metrics, worker states for `stats`, readiness for systemd."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from procpool.application.ports import JobStore, WorkerReport
from procpool.application.supervisor.fleet import Fleet, WorkerState
from procpool.application.supervisor.histogram import Histogram
from procpool.application.supervisor.ledger import Ledger
from procpool.domain.job import Status


@dataclass(frozen=True)
class WorkerSnapshot:
    pid: int
    state: str
    current_job: str | None
    jobs_done: int
    rss_bytes: int | None


@dataclass(frozen=True)
class Snapshot:
    """The daemon's figures at one moment. Counters count since the daemon started."""

    at: float
    jobs: dict[tuple[str, Status], int]
    failed_attempts: Counter[tuple[str, str]]  # (type, reason)
    run_seconds: dict[str, Histogram]  # per type
    workers: list[WorkerSnapshot]
    oldest_pending_age: float | None
    limits: list[tuple[str, int, int, int]] = field(
        default_factory=list
    )  # type, max, running, waiting
    expired: int = 0  # pending jobs canceled at their expires_at
    duplicate_keys: int = 0  # submissions not added: a live job held their unique_key
    canceled_by_parent: int = 0  # pending jobs canceled: a parent failed or was canceled
    # (type, until or None, due pending jobs) of each pause in force
    pauses: list[tuple[str, float | None, int]] = field(default_factory=list)
    # (type, max per key, keys running, keys full, due pending jobs of full keys)
    key_limits: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    # Occurrences of schedules skipped since the store began, by reason.
    schedule_skips: dict[str, int] = field(default_factory=dict)


class Telemetry(Protocol):
    def ready(self, workers: int) -> None:
        """The daemon accepts work."""
        ...

    def stopping(self) -> None: ...

    def publish(self, snapshot: Snapshot) -> None:
        """Called every few seconds from the supervisor's loop: must not block."""
        ...


class NoTelemetry:
    def ready(self, workers: int) -> None:
        pass

    def stopping(self) -> None:
        pass

    def publish(self, snapshot: Snapshot) -> None:
        pass


def take_snapshot(
    fleet: Fleet, ledger: Ledger, store: JobStore, rss_bytes: Callable[[int], int | None], at: float
) -> Snapshot:
    """The daemon's figures now; the workers' states are also stored, for `stats`."""
    workers = [
        WorkerSnapshot(
            pid=w.pid,
            state="busy" if w.assigned and w.state is WorkerState.SERVING else str(w.state),
            current_job=w.current,
            jobs_done=w.jobs_done,
            rss_bytes=rss_bytes(w.pid),
        )
        for w in fleet
    ]
    store.update_workers(
        [WorkerReport(w.pid, w.state, w.current_job, w.jobs_done, at) for w in workers]
    )
    oldest = store.oldest_pending_created()
    return Snapshot(
        at=at,
        jobs={key: count for key, count in ledger.counts.items() if count},
        failed_attempts=Counter(ledger.failed_attempts),
        run_seconds={k: Histogram(list(h.counts), h.total) for k, h in ledger.run_seconds.items()},
        workers=workers,
        oldest_pending_age=None if oldest is None else max(0.0, at - oldest),
        limits=store.limit_figures(at),
        expired=ledger.expired,
        duplicate_keys=ledger.duplicate_keys,
        canceled_by_parent=ledger.dependents.canceled,
        pauses=[(p.type, p.until, waiting) for p, waiting in store.pause_figures(at)],
        key_limits=store.key_limit_figures(at),
        schedule_skips=store.schedule_skips(),
    )
