"""Telemetry outside the log: HOME/metrics.prom for Prometheus, and systemd's notify socket.

metrics.prom follows the node_exporter textfile-collector convention: the whole
file is written to a temporary name and renamed, so a scrape never reads half
of it. The names are listed in docs/operations.md ("Metrics"). The temporary name is
new and unpredictable each time (`.metrics.prom.RANDOM.tmp`, created with
O_EXCL), so a link planted in a shared home is never written through; the
rename replaces a link at `metrics.prom` itself, never follows it.

A file that cannot be written (a full disk, a read-only home) does not stop the
daemon: `metrics.write_failed` once, a new try at each publish, and
`metrics.write_recovered` when one succeeds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from procpool.adapters.home.files import HomeDir
from procpool.adapters.inbox.directory import SUFFIXES
from procpool.application.events import emit
from procpool.application.supervisor.histogram import RUN_TIME_BUCKETS
from procpool.application.supervisor.telemetry import Snapshot
from procpool.domain.wording import plural

METRICS_NAME = "metrics.prom"
_TEMPORARY_PREFIX = f".{METRICS_NAME}"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snapshot: Snapshot, inbox_backlog: int) -> str:
    """The text exposition format of one snapshot."""
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    family("procpool_jobs", "gauge", "Jobs in the store, by type and status.")
    for (job_type, status), count in sorted(snapshot.jobs.items()):
        out.append(f'procpool_jobs{{type="{_label(job_type)}",status="{status}"}} {count}')
    family(
        "procpool_attempts_failed_total",
        "counter",
        "Failed attempts since the daemon started, by type and reason.",
    )
    for (job_type, reason), count in sorted(snapshot.failed_attempts.items()):
        out.append(
            f'procpool_attempts_failed_total{{type="{_label(job_type)}",reason="{reason}"}} {count}'
        )
    family("procpool_job_run_seconds", "histogram", "Run time of finished attempts, by type.")
    for job_type, histogram in sorted(snapshot.run_seconds.items()):
        label = _label(job_type)
        cumulative = 0
        for bound, count in zip((*RUN_TIME_BUCKETS, "+Inf"), histogram.counts, strict=True):
            cumulative += count
            out.append(
                f'procpool_job_run_seconds_bucket{{type="{label}",le="{bound}"}} {cumulative}'
            )
        out.append(f'procpool_job_run_seconds_sum{{type="{label}"}} {histogram.total:.6f}')
        out.append(f'procpool_job_run_seconds_count{{type="{label}"}} {cumulative}')
    family("procpool_workers_alive", "gauge", "Worker processes alive.")
    out.append(f"procpool_workers_alive {len(snapshot.workers)}")
    family("procpool_worker_rss_bytes", "gauge", "Resident memory of each worker process.")
    for worker in snapshot.workers:
        if worker.rss_bytes is not None:
            out.append(f'procpool_worker_rss_bytes{{pid="{worker.pid}"}} {worker.rss_bytes}')
    family("procpool_inbox_backlog_files", "gauge", "Job files waiting in the inbox.")
    out.append(f"procpool_inbox_backlog_files {inbox_backlog}")
    family(
        "procpool_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest pending job, 0 when none is pending.",
    )
    out.append(f"procpool_oldest_pending_age_seconds {snapshot.oldest_pending_age or 0:.3f}")
    for name, column, text in (
        ("procpool_limit_max", 1, "The concurrency limit of each limited type."),
        ("procpool_limit_running", 2, "Running jobs of each limited type."),
        ("procpool_limit_waiting", 3, "Due pending jobs of each limited type."),
    ):
        family(name, "gauge", text)
        out.extend(f'{name}{{type="{_label(row[0])}"}} {row[column]}' for row in snapshot.limits)
    for name, column, text in (
        ("procpool_key_limit_max", 1, "The most running jobs per concurrency_key of a type."),
        ("procpool_key_limit_keys_running", 2, "Keys of a type with a job running."),
        ("procpool_key_limit_keys_full", 3, "Keys of a type at their key limit."),
        ("procpool_key_limit_waiting", 4, "Due pending jobs of a type's full keys."),
    ):
        family(name, "gauge", text)
        out.extend(
            f'{name}{{type="{_label(row[0])}"}} {row[column]}' for row in snapshot.key_limits
        )
    family("procpool_paused", "gauge", "1 for each job type paused now.")
    out.extend(f'procpool_paused{{type="{_label(t)}"}} 1' for t, _, _ in snapshot.pauses)
    family("procpool_paused_waiting", "gauge", "Due pending jobs of each paused type.")
    out.extend(f'procpool_paused_waiting{{type="{_label(t)}"}} {n}' for t, _, n in snapshot.pauses)
    family("procpool_pause_until_seconds", "gauge", "When each pause with an until ends by itself.")
    out.extend(
        f'procpool_pause_until_seconds{{type="{_label(t)}"}} {until:.3f}'
        for t, until, _ in snapshot.pauses
        if until is not None
    )
    family("procpool_jobs_expired_total", "counter", "Pending jobs canceled at expires_at.")
    out.append(f"procpool_jobs_expired_total {snapshot.expired}")
    family(
        "procpool_schedule_skipped_total", "counter",
        "Occurrences of schedules not made jobs, by reason (since the store began).",
    )  # fmt: skip
    out.extend(
        f'procpool_schedule_skipped_total{{reason="{_label(reason)}"}} {count}'
        for reason, count in snapshot.schedule_skips.items()
    )
    family(
        "procpool_jobs_duplicate_key_total", "counter",
        "Submissions not added because a live job of their type held their unique_key.",
    )  # fmt: skip
    out.append(f"procpool_jobs_duplicate_key_total {snapshot.duplicate_keys}")
    family(
        "procpool_jobs_canceled_by_parent_total",
        "counter",
        "Pending jobs canceled because a job of their after failed or was canceled.",
    )
    out.append(f"procpool_jobs_canceled_by_parent_total {snapshot.canceled_by_parent}")
    family("procpool_metrics_timestamp_seconds", "gauge", "When this file was written.")
    out.append(f"procpool_metrics_timestamp_seconds {snapshot.at:.3f}")
    return "\n".join(out) + "\n"


class SystemdNotifier:
    """sd_notify(3) in a few lines: datagrams to $NOTIFY_SOCKET, when systemd set it."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        if address and address.startswith("@"):  # the abstract namespace
            self.address = "\0" + address[1:]

    def notify(self, *lines: str) -> None:
        if not self.address:
            return
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
            contextlib.suppress(OSError),  # systemd went away: nothing to tell
        ):
            sock.sendto("\n".join(lines).encode(), self.address)


class DaemonTelemetry:
    def __init__(self, home: HomeDir, environ: dict[str, str]) -> None:
        self.home = home
        self.path = home.path / METRICS_NAME
        self.inbox = home.path / "inbox"
        self.systemd = SystemdNotifier(environ.get("NOTIFY_SOCKET"))
        self._failed_at: float | None = None  # monotonic: since when metrics.prom fails
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Temporary files of a daemon killed while it wrote one (and the fixed name
        older versions used): each start would otherwise add one."""
        with contextlib.suppress(OSError):
            for name in os.listdir(self.home.fd):
                if name.startswith(_TEMPORARY_PREFIX) and name.endswith(".tmp"):
                    self.home.unlink(name)

    def ready(self, workers: int) -> None:
        self.systemd.notify(
            "READY=1",
            f"MAINPID={os.getpid()}",
            f"STATUS=accepting jobs with {plural(workers, 'worker')}",
        )

    def stopping(self) -> None:
        self.systemd.notify("STOPPING=1", "STATUS=stopping: waiting for running jobs")

    def _backlog(self) -> int:
        try:
            return sum(
                1
                for entry in os.scandir(self.inbox)
                if entry.name.endswith(SUFFIXES) and not entry.name.startswith(".")
            )
        except OSError:
            return 0

    def publish(self, snapshot: Snapshot) -> None:
        backlog = self._backlog()
        self._write(render(snapshot, backlog))
        running = sum(1 for w in snapshot.workers if w.current_job)
        pending = sum(n for (_, status), n in snapshot.jobs.items() if status == "pending")
        self.systemd.notify(
            f"STATUS={plural(len(snapshot.workers), 'worker')}, {plural(running, 'job')} running,"
            f" {pending} pending, {plural(backlog, 'file')} in the inbox"
        )

    def _write(self, text: str) -> None:
        temporary = None
        try:
            fd, temporary = self.home.create_temporary(_TEMPORARY_PREFIX)
            try:
                data = memoryview(text.encode())
                while data:
                    data = data[os.write(fd, data) :]
            finally:
                os.close(fd)
            self.home.replace(temporary, METRICS_NAME)
        except OSError as error:
            if temporary is not None:  # a half-written file must not hold the space
                with contextlib.suppress(OSError):
                    self.home.unlink(temporary)
            if self._failed_at is None:
                self._failed_at = time.monotonic()
                reason = error.strerror or str(error)
                emit(
                    "WARNING",
                    "metrics.write_failed",
                    f"cannot write {self.path}: {reason};"
                    " the daemon goes on and tries again at each publish",
                    error=reason,
                )
            return
        if self._failed_at is not None:
            failed_for = time.monotonic() - self._failed_at
            self._failed_at = None
            emit(
                "INFO",
                "metrics.write_recovered",
                f"{self.path} is written again after {failed_for:.1f} s",
                failed_for_s=round(failed_for, 3),
            )
