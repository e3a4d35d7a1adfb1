"""`procpool run`: put the parts together and hand control to the supervisor."""

from __future__ import annotations

import gc
import importlib.util
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from traceback import format_exc
from typing import Any, NoReturn

from procpool.adapters import config as configuration
from procpool.adapters.bind import check_policy, parse_bind
from procpool.adapters.home import door_socket
from procpool.adapters.home.files import HomeDir, UnsafeHomeFile
from procpool.adapters.home.pidfile import AlreadyRunning, PidFile
from procpool.adapters.home.start_register import StartRegister
from procpool.adapters.inbox.directory import FileInbox
from procpool.adapters.logs.writer import LOG_NAME, DaemonLogs, append_event, reserve_standard_fds
from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.adapters.telemetry import DaemonTelemetry
from procpool.adapters.testing_clock import clock_from
from procpool.application.events import emit
from procpool.application.handlers import load_handler_modules, registry
from procpool.application.ports import JobStore, StoreLost
from procpool.application.supervisor.companion import Companion
from procpool.application.supervisor.loop import Supervisor
from procpool.application.supervisor.settings import Settings
from procpool.application.worker import tree
from procpool.domain.errors import ConfigError, ProcpoolError
from procpool.domain.limits import ClaimLimits
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults
from procpool.domain.wording import plural
from procpool.entrypoints import builtin_handlers

EXIT_CRASHED = 70  # EX_SOFTWARE
# Not an exit code: run_daemon's way of asking its caller to start the daemon again
# in this process (os.execv), once everything of this start is closed.
EXIT_RESTART = -1


def settings_from(config: configuration.Config) -> Settings:
    """Raises ConfigError: see `effective_limits`."""
    return Settings(
        claim=effective_limits(config),
        workers=config.worker_count,
        defaults=job_defaults(config),
        retry=RetryPolicy(base=config.backoff_base, cap=config.backoff_max),
        shutdown_timeout=config.shutdown_timeout,
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        max_result_bytes=config.max_result_bytes,
        max_checkpoint_bytes=config.max_checkpoint_bytes,
        max_jobs_per_worker=config.max_jobs_per_worker,
        max_memory_mb=config.max_memory_mb,
        kill_grace=config.kill_grace,
        poll_interval=config.poll_interval,
        retention_days=config.retention_days,
        metrics_interval=config.metrics_interval,
        max_file_bytes=config.max_file_bytes,
    )


def store_label(home: Path, database_url: str | None) -> str:
    """Which store a daemon of `home` uses, for its start line: "SQLite HOME/procpool.db"
    or "PostgreSQL database DB at HOST:PORT" (never the user or password of the URL).

    Raises:
        ImportError: `database_url` is set and psycopg is not installed.
        psycopg.ProgrammingError: `database_url` is not a connection string.
    """
    if database_url is None:
        return f"SQLite {home / 'procpool.db'}"
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415 (optional)

    parts = conninfo_to_dict(database_url)
    where = str(parts.get("host") or "the local socket")
    if parts.get("port"):
        where += f":{parts['port']}"
    return f"PostgreSQL database {parts.get('dbname') or '(the user name)'} at {where}"


def job_defaults(config: configuration.Config) -> JobDefaults:
    """What a job that leaves a field out gets: its handler's default, else the config's."""
    return JobDefaults(
        max_attempts=config.max_attempts, timeout=config.timeout, types=registry.job_defaults()
    )


def effective_limits(config: configuration.Config) -> ClaimLimits:
    """The limits of every registered type: the config tables over @handler's own.

    Raises:
        ConfigError: `[limits]` or `[key_limits]` names a type no handler registers.
    """
    configuration.check_limit_types(config, registry.names())
    types, keys = {}, {}
    for job_type in registry.names():
        options = registry.options(job_type)
        if options.limit is not None:
            types[job_type] = options.limit
        if options.key_limit is not None:
            keys[job_type] = options.key_limit
    return ClaimLimits({**types, **config.limits}, {**keys, **config.key_limits})


def _reloaded_settings(config: configuration.Config, fresh: configuration.Config) -> Settings:
    """The settings of a reloaded configuration, its limits logged (`limits.set`).

    Raises:
        ConfigError: see `effective_limits`.
    """
    settings = settings_from(fresh)
    _restart_needed(config.handlers, fresh.handlers)
    _log_limits(settings.claim)
    return settings


def _restart_needed(loaded: list[str], configured: list[str]) -> None:
    if configured != loaded:
        # Modules are imported once, before any worker is forked (DESIGN 9): a
        # reload cannot change what the workers run without a restart.
        emit(
            "WARNING", "config.restart_needed",
            f"handlers changed from {loaded} to {configured}:"
            " they load at the next start; the workers keep the ones loaded now",
            key="handlers", loaded=loaded, configured=configured,
        )  # fmt: skip


def _say_starting(home: Path, store: str, loaded: list[str], limits: ClaimLimits) -> None:
    """The start line, which opens every run's log, then the limits in force."""
    emit(
        "INFO", "daemon.starting", f"home {home}, store {store}, handlers from {', '.join(loaded)}",
        home=str(home), store=store, pid=os.getpid(),
    )  # fmt: skip
    _log_limits(limits)


def _log_limits(limits: ClaimLimits) -> None:
    emit(
        "INFO", "limits.set",
        "limits: " + (", ".join(f"{t} {n}" for t, n in sorted(limits.types.items())) or "none")
        + "; key limits: "
        + (", ".join(f"{t} {n}" for t, n in sorted(limits.keys.items())) or "1 per key"),
        limits=dict(limits.types), key_limits=dict(limits.keys),
    )  # fmt: skip


def open_store(config: configuration.Config, home: Path) -> JobStore:
    """The job store: HOME/procpool.db, or the PostgreSQL database of `database_url`.

    Raises:
        ConfigError: `database_url` is set but psycopg is not installed.
        ProcpoolError: the database cannot be reached, or has a newer schema.
    """
    if config.database_url is None:
        return SqliteJobStore(
            home / "procpool.db",
            synchronous=config.synchronous,
            wal_max_bytes=config.wal_max_bytes,
        )
    try:
        from procpool.adapters.stores import postgres as postgres_store  # noqa: PLC0415 (optional)
    except ImportError as error:
        raise configuration.extra_missing(
            "config key 'database_url'", "postgresql", str(error.name)
        ) from None
    return postgres_store.open_store(
        config.database_url, home, config.daemon_lease, registry.names()
    )


def prepare_home(home: Path) -> None:
    """Create the home 0700; refuse one whose inbox other users could fill.

    Other users must not be able to write the home, inbox/ or rejected/: whoever can
    write there can submit jobs, or swap a directory for a link elsewhere. Group
    write is allowed, for producers that share a group with the daemon's user (the
    daemon's own files are opened through HomeDir, safe from what they plant). The
    three must belong to the daemon's user: an owner can change their mode at will.
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
        if info.st_uid != os.geteuid():
            raise ConfigError(
                f"{directory} belongs to uid {info.st_uid}, not to the daemon's user"
                f" (uid {os.geteuid()}): its owner could let anyone write it;"
                " run the daemon as that user, or chown it"
            )


def http_command(
    config: configuration.Config, home: Path, config_file: Path | None
) -> list[str] | None:
    """The argv of the HTTP server that `http_bind` asks for, or None.

    Raises:
        ConfigError: the bind may not serve without a token, the token file is
            unusable, or the http extra is not installed.
        ProcpoolError: the bind's host name does not resolve.
    """
    if config.http_bind is None:
        return None
    check_policy(parse_bind(config.http_bind), config.http_token_file)
    missing = [name for name in ("litestar", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise configuration.extra_missing("http_bind", "http", " and ".join(missing))
    command = [sys.executable, "-m", "procpool", "serve", "--home", str(home)]
    command += ["--bind", config.http_bind]
    if config.http_token_file:
        command += ["--token-file", config.http_token_file]
    if config_file is not None:
        command += ["--config", str(config_file)]
    return command


class _StoppedWhileStarting(BaseException):
    """A stop signal came before the supervisor took over the signals."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signal = signal.Signals(signum).name


def _stop_while_starting(signum: int, frame: object) -> None:
    raise _StoppedWhileStarting(signum)


def _hold_signals_while_starting() -> None:
    """Until the supervisor installs its own handlers: a stop signal ends the start with
    a line in the log (by default it would kill the process without one), and SIGHUP and
    SIGUSR1 (reload, reopen: both about to happen anyway) are ignored, not fatal."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, _stop_while_starting)
    for signum in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


def start_again() -> NoReturn:
    """Replace this process by a fresh start of the same command line, under the same
    pid, so that the pid file and a service manager's view of it stay true."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _crashed(error: BaseException) -> int:
    reason = f"{type(error).__name__}: {error}"
    emit(
        "CRITICAL",
        "daemon.crashed",
        f"procpool crashed: {reason}",
        error=reason,
        traceback=format_exc(),
    )
    return EXIT_CRASHED


def run_daemon(flags: dict[str, Any], config_file: Path | None) -> int:
    """Serve until a signal stops the daemon. Returns the exit code: 0 stopped by a
    signal, EXIT_CRASHED (70) a failure of the daemon or of its store; or EXIT_RESTART
    after StoreLost, once this start is closed: the caller then calls `start_again`.

    Every way out once the log is open says why in it: `daemon.stopped` (a signal),
    `daemon.start_failed` (a user error, re-raised for the CLI to print and map to
    its exit code), `daemon.crashed`. A second daemon on a running home says why in
    the running one's log. Errors found before the home is known and safe (a bad
    config, an unsafe home) reach stderr only.

    Raises:
        ProcpoolError: the daemon cannot start (ConfigError, AlreadyRunning, a handler
            module that does not import, a store of a newer schema).
    """
    stderr_closed = reserve_standard_fds()
    config = configuration.load(flags=flags, config_file=config_file)
    home = configuration.resolve_home(config)
    prepare_home(home)
    home_dir = HomeDir(home)
    try:
        return _run_in(home_dir, flags, config_file, config, stderr_closed)
    finally:
        home_dir.close()


def _run_in(
    home_dir: HomeDir,
    flags: dict[str, Any],
    config_file: Path | None,
    config: configuration.Config,
    stderr_closed: bool,
) -> int:
    home = home_dir.path
    pid_file = PidFile(home_dir)
    try:
        stale = pid_file.acquire()
    except AlreadyRunning as error:
        append_event(
            home_dir,
            LOG_NAME,
            "ERROR",
            "daemon.start_failed",
            f"another procpool (pid {os.getpid()}) did not start: {error}",
            error=str(error),
            pid=os.getpid(),
        )
        raise
    try:
        logs = DaemonLogs(
            home_dir,
            config.log_level,
            config.log_max_bytes,
            config.log_keep,
            stderr_closed=stderr_closed,
        )
    except UnsafeHomeFile:
        pid_file.release()
        raise
    except OSError as error:
        pid_file.release()
        raise ProcpoolError(f"cannot open the log {home / LOG_NAME}: {error.strerror}") from None
    _hold_signals_while_starting()
    try:
        return _serve(flags, config_file, config, home_dir, logs, pid_file, stale)
    except _StoppedWhileStarting as stop:
        emit(
            "INFO",
            "daemon.stopped",
            f"procpool stopped on {stop.signal} while starting",
            pid=os.getpid(),
            signal=stop.signal,
        )
        return 0
    finally:
        logs.close()
        pid_file.release()


def _serve(
    flags: dict[str, Any],
    config_file: Path | None,
    config: configuration.Config,
    home_dir: HomeDir,
    logs: DaemonLogs,
    pid_file: PidFile,
    stale: int | None,
) -> int:
    home = home_dir.path
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
        # The built-in handlers registered themselves when this wiring imported them.
        loaded = [builtin_handlers.__name__, *load_handler_modules(config.handlers)]
        settings = settings_from(config)  # before the store: the config may be wrong
        store = open_store(config, home)
        inbox = FileInbox(home, config.max_file_bytes)
        starts = StartRegister(home_dir)
        http = Companion(
            "http",
            http_command(config, home, config_file),
            home / "logs" / "http.log",
            # The mark lets the next start end a server that outlived a daemon killed -9.
            {**os.environ, tree.MARKER: str(home.resolve())},
        )
    except ProcpoolError as error:
        emit("ERROR", "daemon.start_failed", f"procpool did not start: {error}", error=str(error))
        raise
    except Exception as error:
        return _crashed(error)

    def reload() -> Settings:
        fresh = configuration.load(flags=flags, config_file=config_file)
        command = http_command(fresh, home, config_file)  # before any change: it may raise
        settings = _reloaded_settings(config, fresh)  # so may this
        logs.set_level(fresh.log_level)
        logs.set_rotation(fresh.log_max_bytes, fresh.log_keep)
        inbox.max_file_bytes = fresh.max_file_bytes
        http.reconfigure(command)
        return settings

    def close_in_child() -> None:
        pid_file.close_in_child()
        logs.close_in_child()
        inbox.close_descriptors()
        home_dir.close()

    _say_starting(home, store_label(home, config.database_url), loaded, settings.claim)
    door = _open_door(home)
    ours = door_socket.identity(home)
    try:
        supervisor = Supervisor(
            store,
            inbox,
            registry,
            settings,
            reload=reload,
            reopen_logs=logs.reopen,
            flush_logs=logs.flush,
            close_in_child=close_in_child,
            telemetry=DaemonTelemetry(home_dir, dict(os.environ)),
            starts=starts,
            tree_mark=str(home.resolve()),
            companions=[http],
            door=door,
            clock=clock_from(os.environ),  # the real clock, but in some end-to-end tests
        )
        # What exists now (modules, handlers, settings) lives as long as the daemon: kept
        # out of the cyclic collector's reach, a full collection no longer walks it (a
        # 20,000-job submission: the collector's CPU 95 -> 42 ms, its longest pause 35 ->
        # 14 ms), and the workers forked later keep sharing its pages, which a
        # collection would write to (the use gc.freeze's documentation gives).
        gc.freeze()
        try:
            code = supervisor.run()
        except StoreLost as lost:
            # Lost while starting (the recovery; a lost turn is the supervisor's own to
            # reconcile): started afresh, the daemon rebuilds its view from the store, as
            # after a crash; the runs of the workers it ends now are recovered by their fates.
            workers = supervisor.abandon()
            emit(
                "ERROR", "daemon.restarting",
                f"{lost}: ended {plural(workers, 'worker')}, starting again once the"
                " database answers; their jobs are recovered as after a restart",
                error=str(lost), workers=workers,
            )  # fmt: skip
            if not supervisor.wait_for_shared_store():
                emit("INFO", "daemon.stopped", "procpool stopped", pid=os.getpid())
                return 0
            return EXIT_RESTART
        except Exception as error:
            # A bug, or a store that failed (a full disk, an I/O error): say so in the
            # log, then let the workers die with us (PR_SET_PDEATHSIG); the next start
            # recovers their jobs. The turn that failed changed nothing: its effects
            # follow its commit.
            return _crashed(error)
    finally:
        door_socket.remove(home, ours)  # clients use the inbox from now on
    store.close()
    starts.close()
    inbox.close_descriptors()
    return code


def _open_door(home: Path) -> socket.socket | None:
    """The socket door, or None (clients then use the inbox, as they always can)."""
    try:
        return door_socket.listen(home)
    except OSError as error:
        emit(
            "WARNING", "socket.unavailable",
            f"no socket door at {home / door_socket.SOCKET_NAME}: {error.strerror or error};"
            " clients use the inbox",
            error=str(error.strerror or error),
        )  # fmt: skip
        return None
