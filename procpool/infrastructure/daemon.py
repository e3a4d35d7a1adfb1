"""`procpool run`: put the parts together and hand control to the supervisor."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from traceback import format_exc
from typing import Any

from procpool.application.events import emit
from procpool.application.handlers import load_handler_modules, registry
from procpool.application.supervisor import Settings, Supervisor
from procpool.domain.errors import ConfigError
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults
from procpool.infrastructure import config as configuration
from procpool.infrastructure.inbox import FileInbox
from procpool.infrastructure.logs import DaemonLogs
from procpool.infrastructure.pidfile import PidFile
from procpool.infrastructure.sqlite_store import SqliteJobStore
from procpool.infrastructure.start_register import StartRegister
from procpool.infrastructure.telemetry import DaemonTelemetry

EXIT_CRASHED = 70  # EX_SOFTWARE


def settings_from(config: configuration.Config) -> Settings:
    return Settings(
        workers=config.worker_count,
        defaults=JobDefaults(max_attempts=config.max_attempts, timeout=config.timeout),
        retry=RetryPolicy(base=config.backoff_base, cap=config.backoff_max),
        shutdown_timeout=config.shutdown_timeout,
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        max_result_bytes=config.max_result_bytes,
        max_jobs_per_worker=config.max_jobs_per_worker,
        max_memory_mb=config.max_memory_mb,
        kill_grace=config.kill_grace,
        poll_interval=config.poll_interval,
        retention_days=config.retention_days,
        metrics_interval=config.metrics_interval,
    )


def prepare_home(home: Path) -> None:
    """Create the home 0700; refuse one whose inbox other users could fill.

    Other users must not be able to write the home, inbox/ or rejected/: whoever can
    write there can submit jobs, or swap a directory for a link elsewhere. Group
    write is allowed, for producers that share a group with the daemon's user.
    inbox/ and rejected/ must be real directories, not symbolic links.
    """
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"the home {home} cannot be a directory: a file is in the way") from None
    for directory in (home, home / "inbox", home / "rejected"):
        try:
            info = directory.lstat() if directory != home else directory.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
            raise ConfigError(f"{directory} is {kind}; it must be a directory")
        if info.st_mode & stat.S_IWOTH:
            raise ConfigError(
                f"{directory} is writable by every user (mode {stat.S_IMODE(info.st_mode):04o});"
                f" run chmod o-w {directory}"
            )


def run_daemon(flags: dict[str, Any], config_file: Path | None) -> int:
    config = configuration.load(flags=flags, config_file=config_file)
    home = configuration.resolve_home(config)
    prepare_home(home)
    pid_file = PidFile(home / "procpool.pid")
    stale = pid_file.acquire()  # raises AlreadyRunning
    logs = DaemonLogs(home, config.log_level, config.log_max_bytes, config.log_keep)
    try:
        for warning in configuration.unknown_variables():
            emit("WARNING", "config.unknown_variable", warning)
        if stale is not None:
            emit(
                "WARNING",
                "daemon.stale_pid",
                f"took over the pid file of dead pid {stale}",
                stale_pid=stale,
            )
        loaded = load_handler_modules(config.handlers)
        store = SqliteJobStore(home / "procpool.db", synchronous=config.synchronous)
        inbox = FileInbox(home, config.max_file_bytes)
        starts = StartRegister(home / "procpool.starts")

        def reload() -> Settings:
            fresh = configuration.load(flags=flags, config_file=config_file)
            logs.set_level(fresh.log_level)
            logs.set_rotation(fresh.log_max_bytes, fresh.log_keep)
            inbox.max_file_bytes = fresh.max_file_bytes
            return settings_from(fresh)

        def close_in_child() -> None:
            pid_file.close_in_child()
            logs.close_in_child()
            inbox.close_descriptors()

        emit(
            "INFO",
            "daemon.starting",
            f"home {home}, handlers from {', '.join(loaded)}",
            home=str(home),
            pid=os.getpid(),
        )
        supervisor = Supervisor(
            store,
            inbox,
            registry,
            settings_from(config),
            reload=reload,
            reopen_logs=logs.reopen,
            flush_logs=logs.flush,
            close_in_child=close_in_child,
            telemetry=DaemonTelemetry(home, dict(os.environ)),
            starts=starts,
            tree_mark=str(home.resolve()),
        )
        try:
            code = supervisor.run()
        except Exception:
            # A bug, not a user error: say so in the log, then let the workers die with
            # us (PR_SET_PDEATHSIG); the next start recovers their jobs.
            emit("CRITICAL", "daemon.crashed", "procpool crashed", traceback=format_exc())
            return EXIT_CRASHED
        store.close()
        starts.close()
        inbox.close_descriptors()
        return code
    finally:
        logs.close()
        pid_file.release()
