"""`procpool stats`: figures read from the store and the process table.

Everything comes from the read-only store (counts, the attempt history of the
last 15 minutes, the worker states the daemon writes every metrics_interval)
and from psutil (each worker's memory and CPU share), so `stats` never asks
the daemon anything and works while it is down. The JSON form is documented
key by key in docs/operations.md; keys are only ever added.
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol, runtime_checkable

import msgspec
import psutil

from procpool.adapters.stores.job_reader import JobReader
from procpool.domain.job import Run, Status
from procpool.domain.timefmt import rfc3339

# (name, seconds): the windows of the throughput figures.
WINDOWS = (("1m", 60.0), ("5m", 300.0), ("15m", 900.0))
# Outcomes of a run that ran to its end (not stopped by a cancel or a shutdown).
_RAN = ("completed", "failed", "retry")


class DaemonStats(msgspec.Struct):
    running: bool
    pid: int | None


class Throughput(msgspec.Struct):
    """Per minute, averaged over the window."""

    completed: float  # attempts that completed their job
    failed: float  # jobs that failed for good
    attempts_failed: float  # failed attempts, retried or not


class RunTime(msgspec.Struct):
    """Seconds from start to end of the attempts that ran to their end, last 15 minutes."""

    count: int
    mean: float
    p95: float


class WorkerStats(msgspec.Struct):
    pid: int
    state: str  # starting, idle, busy, retiring, terminating
    current_job: str | None
    jobs_done: int
    rss_bytes: int | None
    cpu_percent: float | None  # of one CPU, sampled over a short interval
    updated_at: str | None  # when the daemon last wrote state, current_job, jobs_done
    # Seconds from updated_at to Stats.at: how old state, current_job and jobs_done are
    # (the daemon writes them every metrics_interval); None if never written.
    age: float | None


class DaemonOnDatabase(msgspec.Struct):
    """A daemon registered on a shared PostgreSQL store."""

    id: int
    host: str
    home: str
    pid: int
    state: str  # alive (its lease holds), expired (not renewed: about to be rescued)
    lease_age: float  # seconds since its last renewal, on the database's clock
    expires_in: float  # seconds until its lease runs out (negative: ran out)
    running: int  # jobs it runs


class DatabaseStats(msgspec.Struct):
    """With `database_url`: who shares the store, and what to watch on PostgreSQL."""

    daemons: list[DaemonOnDatabase]
    oldest_snapshot_age: float | None  # seconds: an old one keeps the dead rows below
    jobs_dead_tuples: int  # dead rows of the jobs table, until autovacuum takes them
    jobs_live_tuples: int
    snapshots_hidden: str | None = None  # why the oldest snapshot may be older than shown


@runtime_checkable
class SharedReader(Protocol):
    """A reader of a store that several daemons share (postgres_client)."""

    def daemons(self) -> list[DaemonOnDatabase]: ...

    def health(self) -> dict[str, Any]: ...


class LimitStats(msgspec.Struct):
    """A type's concurrency limit (docs/handlers.md): `running` of at most `max`, and
    `waiting`, its due pending jobs (held back while running >= max)."""

    type: str
    max: int
    running: int
    waiting: int


class PauseStats(msgspec.Struct):
    """A paused type (`procpool pause`): `until` (RFC 3339) when it ends by itself, null:
    until resumed; `since` when it was set; `waiting`, its due pending jobs."""

    type: str
    until: str | None
    since: str
    waiting: int


class KeyLimitStats(msgspec.Struct):
    """A type's key limit (docs/handlers.md): at most `max` running jobs per
    concurrency_key; `keys_running` keys have a job running, `keys_full` of them are at
    `max`, and `waiting` due pending jobs have one of those full keys."""

    type: str
    max: int
    keys_running: int
    keys_full: int
    waiting: int


class Stats(msgspec.Struct):
    at: str
    daemon: DaemonStats
    jobs: dict[str, int]
    types: dict[str, dict[str, int]]
    throughput: dict[str, Throughput]
    failure_rate: float | None
    oldest_pending_age: float | None
    run_time: dict[str, RunTime]
    workers: list[WorkerStats]
    database: DatabaseStats | None = None  # None: the home's own SQLite store
    limits: list[LimitStats] = msgspec.field(default_factory=list)  # the types limited
    pauses: list[PauseStats] = msgspec.field(default_factory=list)  # in force now
    # The types with a key limit, or with a keyed job running.
    key_limits: list[KeyLimitStats] = msgspec.field(default_factory=list)
    expired: int = 0  # jobs in the store canceled as "expired" (retention deletes them)
    # Occurrences of schedules not made jobs since the store began, by reason
    # (CONTRACT section 14): missed, overlap, paused, ended, no_handler.
    schedule_skips: dict[str, int] = msgspec.field(default_factory=dict)
    waiting_for_parents: int = 0  # pending jobs their parents hold back (`after`)
    canceled_by_parent: int = 0  # jobs in the store canceled because a parent failed


def _throughput(runs: list[Run], now: float) -> dict[str, Throughput]:
    figures = {}
    for name, seconds in WINDOWS:
        outcomes = [run.outcome for run in runs if run.ended_at >= now - seconds]
        minutes = seconds / 60
        figures[name] = Throughput(
            completed=round(outcomes.count("completed") / minutes, 3),
            failed=round(outcomes.count("failed") / minutes, 3),
            attempts_failed=round(
                (outcomes.count("failed") + outcomes.count("retry")) / minutes, 3
            ),
        )
    return figures


def _failure_rate(runs: list[Run]) -> float | None:
    """Failed attempts among the attempts that ran to their end."""
    ended = [run for run in runs if run.outcome in _RAN]
    if not ended:
        return None
    return round(sum(1 for run in ended if run.outcome != "completed") / len(ended), 4)


def _run_times(runs: list[Run]) -> dict[str, RunTime]:
    durations: dict[str, list[float]] = {}
    for run in runs:
        if run.outcome in _RAN and run.started_at is not None:
            durations.setdefault(run.type, []).append(max(0.0, run.ended_at - run.started_at))
    table = {}
    for job_type, values in sorted(durations.items()):
        values.sort()
        p95 = values[max(0, math.ceil(0.95 * len(values)) - 1)]  # nearest rank
        table[job_type] = RunTime(
            count=len(values), mean=round(sum(values) / len(values), 6), p95=round(p95, 6)
        )
    return table


def _workers(reader: JobReader, now: float, cpu_sample: float) -> list[WorkerStats]:
    """The live workers the daemon recorded, with their RSS and CPU share measured now
    and the age of the rest at `now`."""
    live: list[tuple[psutil.Process, WorkerStats]] = []
    for record, report in reader.worker_reports():
        try:
            process = psutil.Process(record.pid)
            if abs(process.create_time() - record.create_time) >= 0.01:
                continue  # the pid now belongs to another process
            process.cpu_percent(None)  # starts the sample
            rss: int | None = process.memory_info().rss
        except psutil.Error:
            continue
        state = "idle" if report.state == "serving" else report.state
        live.append((process, WorkerStats(
            pid=record.pid, state=state, current_job=report.current_job,
            jobs_done=report.jobs_done, rss_bytes=rss, cpu_percent=None,
            updated_at=rfc3339(report.updated_at) if report.updated_at else None,
            age=round(max(0.0, now - report.updated_at), 3) if report.updated_at else None,
        )))  # fmt: skip
    if live and cpu_sample > 0:
        time.sleep(cpu_sample)
    workers = []
    for process, worker in live:
        try:
            worker.cpu_percent = round(process.cpu_percent(None), 1)
        except psutil.Error:
            continue  # it exited while we measured
        workers.append(worker)
    return workers


def collect(reader: JobReader, daemon_pid: int | None, cpu_sample: float = 0.25) -> Stats:
    """The figures of one home. `cpu_sample` seconds are spent measuring CPU shares."""
    now = time.time()
    types = {
        job_type: {status.value: counts.get(status.value, 0) for status in Status}
        for job_type, counts in sorted(reader.counts().items())
    }
    jobs = {status.value: sum(t[status.value] for t in types.values()) for status in Status}
    runs = reader.recent_runs(now - WINDOWS[-1][1])
    running = daemon_pid is not None
    dependencies = reader.dependency_counts()
    return Stats(
        at=rfc3339(now),
        daemon=DaemonStats(running=running, pid=daemon_pid if running else None),
        jobs=jobs,
        types=types,
        throughput=_throughput(runs, now),
        failure_rate=_failure_rate(runs),
        oldest_pending_age=(
            None if (age := reader.oldest_pending_age(now)) is None else round(max(0.0, age), 3)
        ),
        run_time=_run_times(runs),
        workers=_workers(reader, now, cpu_sample) if running else [],
        database=_database(reader) if isinstance(reader, SharedReader) else None,
        limits=[LimitStats(*figures) for figures in reader.limit_figures(now)],
        pauses=[
            PauseStats(
                type=pause.type,
                until=None if pause.until is None else rfc3339(pause.until),
                since=rfc3339(pause.since),
                waiting=waiting,
            )
            for pause, waiting in reader.pause_figures(now)
        ],
        key_limits=[KeyLimitStats(*figures) for figures in reader.key_limit_figures(now)],
        expired=reader.expired_count(),
        schedule_skips=reader.schedule_skips(),
        waiting_for_parents=dependencies[0],
        canceled_by_parent=dependencies[1],
    )


def _database(reader: SharedReader) -> DatabaseStats:
    return DatabaseStats(daemons=reader.daemons(), **reader.health())


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s ago" if seconds < 120 else f"{_duration(seconds)} ago"


def _size(count: int | None) -> str:
    return "-" if count is None else f"{count / 2**20:.1f} MiB"


def _table(rows: list[tuple[str, ...]], align: str) -> list[str]:
    """Columns padded to their widest cell; `align` has an `l` or `r` per column."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(align))]
    return [
        "  ".join(cell.rjust(widths[i]) if align[i] == "r" else cell.ljust(widths[i])
                  for i, cell in enumerate(row)).rstrip()
        for row in rows
    ]  # fmt: skip


def render(stats: Stats) -> str:
    """The figures as a person reads them."""
    daemon = stats.daemon
    lines = ["daemon   " + (f"running, pid {daemon.pid}" if daemon.running else "not running")]
    statuses = [status.value for status in Status]
    lines.append("")
    lines.extend(_table([
        ("JOBS", *(s.upper() for s in statuses)),
        *((job_type, *(str(counts[s]) for s in statuses))
          for job_type, counts in stats.types.items()),
        ("all", *(str(stats.jobs[s]) for s in statuses)),
    ], "lrrrrr"))  # fmt: skip
    age = stats.oldest_pending_age
    lines.append(f"oldest pending: {'none' if age is None else _duration(age)}")
    lines.append(f"expired: {stats.expired} (canceled pending, still in the store)")
    if stats.schedule_skips:
        skips = ", ".join(f"{reason} {n}" for reason, n in stats.schedule_skips.items())
        lines.append(f"schedule occurrences skipped: {skips}")
    lines.append(
        f"dependencies: {stats.waiting_for_parents} waiting for their parents,"
        f" {stats.canceled_by_parent} canceled by a parent (still in the store)"
    )
    if stats.limits:
        lines.append("")
        lines.extend(_table([
            ("LIMIT", "MAX", "RUNNING", "WAITING"),
            *((x.type, str(x.max), str(x.running), str(x.waiting)) for x in stats.limits),
        ], "lrrr"))  # fmt: skip
    if stats.key_limits:
        lines.append("")
        lines.extend(_table([
            ("KEY LIMIT", "MAX PER KEY", "KEYS RUNNING", "KEYS FULL", "WAITING"),
            *((x.type, str(x.max), str(x.keys_running), str(x.keys_full), str(x.waiting))
              for x in stats.key_limits),
        ], "lrrrr"))  # fmt: skip
    if stats.pauses:
        lines.append("")
        lines.extend(_table([
            ("PAUSED", "UNTIL", "WAITING"),
            *((x.type, x.until or "resumed", str(x.waiting)) for x in stats.pauses),
        ], "llr"))  # fmt: skip
    lines.append("")
    lines.extend(_table([
        ("PER MINUTE", *(name for name, _ in WINDOWS)),
        *((label, *(f"{getattr(stats.throughput[name], key):g}" for name, _ in WINDOWS))
          for label, key in (("completed", "completed"), ("failed", "failed"),
                             ("attempts failed", "attempts_failed"))),
    ], "lrrr"))  # fmt: skip
    rate = stats.failure_rate
    lines.append(f"failure rate (15m): {'-' if rate is None else f'{rate:.1%}'} of attempts")
    if stats.run_time:
        lines.append("")
        lines.extend(_table([
            ("RUN TIME (15m)", "COUNT", "MEAN", "P95"),
            *((job_type, str(t.count), _duration(t.mean), _duration(t.p95))
              for job_type, t in stats.run_time.items()),
        ], "lrrr"))  # fmt: skip
    lines.append("")
    if stats.workers:
        lines.extend(_table([
            ("WORKER", "STATE", "AS OF", "JOBS DONE", "RSS", "CPU", "CURRENT JOB"),
            *((str(w.pid), w.state, _age(w.age), str(w.jobs_done), _size(w.rss_bytes),
               "-" if w.cpu_percent is None else f"{w.cpu_percent:.0f}%", w.current_job or "")
              for w in stats.workers),
        ], "llrrrrl"))  # fmt: skip
    else:
        lines.append("no workers")
    if stats.database is not None:
        lines.extend(_render_database(stats.database))
    return "\n".join(lines)


def _render_database(database: DatabaseStats) -> list[str]:
    lines = [""]
    if database.daemons:
        lines.extend(_table([
            ("DAEMON", "HOST", "PID", "STATE", "RENEWED", "RUNNING", "HOME"),
            *((str(d.id), d.host, str(d.pid), d.state, _age(d.lease_age), str(d.running), d.home)
              for d in database.daemons),
        ], "lllllrl"))  # fmt: skip
    else:
        lines.append("no daemons on the database")
    age = database.oldest_snapshot_age
    lines.append(
        f"database: oldest snapshot {'-' if age is None else _duration(age)},"
        f" jobs table {database.jobs_live_tuples} live rows, {database.jobs_dead_tuples} dead"
    )
    if database.snapshots_hidden:
        lines.append(f"database: oldest snapshot of this role only: {database.snapshots_hidden}")
    return lines
