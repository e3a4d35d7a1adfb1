"""What the supervisor needs of the configuration; SIGHUP may replace it.

The defaults of the settings live in one place each: the fleet's limits (Limits),
what a worker is told at its fork (WorkerOptions), a job's (JobDefaults), the
retry backoff (RetryPolicy), and the supervisor's own below. The config file's
keys (adapters/config.py) take their defaults from these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from procpool.application.ports import Serving
from procpool.application.worker.options import WorkerOptions
from procpool.domain.limits import ClaimLimits
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults

# A worker that has not said Ready by then is broken (seconds).
STARTUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Limits:
    """The settings the fleet's deadlines come from, in seconds; SIGHUP may change them."""

    heartbeat_timeout: float = 30.0
    kill_grace: float = 1.0
    startup_timeout: float = STARTUP_TIMEOUT
    max_jobs_per_worker: int = 0
    max_memory_bytes: int = 0
    max_result_bytes: int = 16 * 1024 * 1024
    max_checkpoint_bytes: int = 1024 * 1024


@dataclass
class Settings:
    """What the supervisor needs of the configuration; SIGHUP may replace it."""

    workers: int
    defaults: JobDefaults = field(default_factory=JobDefaults)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    shutdown_timeout: float = 30.0
    heartbeat_interval: float = WorkerOptions.heartbeat_interval
    heartbeat_timeout: float = Limits.heartbeat_timeout
    max_jobs_per_worker: int = Limits.max_jobs_per_worker
    max_memory_mb: int = Limits.max_memory_bytes // 2**20
    max_result_bytes: int = Limits.max_result_bytes
    max_checkpoint_bytes: int = Limits.max_checkpoint_bytes
    kill_grace: float = Limits.kill_grace
    poll_interval: float = 1.0
    scan_batch: int = 1000
    retention_days: float = 7.0
    metrics_interval: float = 5.0
    max_file_bytes: int = 1024 * 1024  # a job file, a .jsonl line, a job sent over the socket
    claim: ClaimLimits = field(default_factory=ClaimLimits)  # concurrency limits (CONTRACT 13)

    @property
    def limits(self) -> Limits:
        return Limits(
            heartbeat_timeout=self.heartbeat_timeout,
            kill_grace=self.kill_grace,
            max_jobs_per_worker=self.max_jobs_per_worker,
            max_memory_bytes=self.max_memory_mb * 1024 * 1024,
            max_result_bytes=self.max_result_bytes,
            max_checkpoint_bytes=self.max_checkpoint_bytes,
        )

    def serving(self, types: Sequence[str]) -> Serving:
        """What the store's claim obeys for a daemon with handlers for `types`."""
        return Serving(self.claim, tuple(types), self.defaults.types)
