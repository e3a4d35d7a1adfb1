"""Configuration: defaults, then the TOML file, then PROCPOOL_* variables, then flags.

Every key is documented in config/procpool.toml. An unknown key in the file,
or a wrong value from anywhere, is a ConfigError that names the key and where
it came from. An unknown PROCPOOL_* variable is not an error: the environment
is shared with other tools, so it is ignored, and `unknown_variables` gives the
warning each caller shows.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

import msgspec

from procpool.adapters.bind import parse_bind
from procpool.adapters.stores.sqlite import WAL_MAX_BYTES
from procpool.application.supervisor.settings import Settings
from procpool.domain.errors import ConfigError
from procpool.domain.retry import RetryPolicy
from procpool.domain.spec import JobDefaults

if TYPE_CHECKING:  # psycopg is optional: imported where a database_url asks for it
    from procpool.adapters.stores.postgres_client import PostgresClientStore

ENV_PREFIX = "PROCPOOL_"
# PROCPOOL_* variables that are no config key: the config file's path, and the
# daemon's test-only clock (adapters/testing_clock.py).
_NOT_KEYS = (ENV_PREFIX + "CONFIG", ENV_PREFIX + "TEST_CLOCK_OFFSET_FILE")
LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")


# The keys the supervisor, a job or its retries read default to what those records
# say (application/supervisor/settings.py); the keys only the adapters read default
# here.
_SETTINGS = Settings(workers=1)
_JOB = JobDefaults()
_RETRY = RetryPolicy()


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    home: str | None = None
    workers: int | None = None  # None: one per CPU
    handlers: list[str] = msgspec.field(default_factory=list)
    max_attempts: int = _JOB.max_attempts
    timeout: float | None = _JOB.timeout
    backoff_base: float = _RETRY.base
    backoff_max: float = _RETRY.cap
    shutdown_timeout: float = _SETTINGS.shutdown_timeout
    heartbeat_interval: float = _SETTINGS.heartbeat_interval
    heartbeat_timeout: float = _SETTINGS.heartbeat_timeout
    max_jobs_per_worker: int = _SETTINGS.max_jobs_per_worker
    max_memory_mb: int = _SETTINGS.max_memory_mb
    max_file_bytes: int = _SETTINGS.max_file_bytes
    max_result_bytes: int = _SETTINGS.max_result_bytes
    max_checkpoint_bytes: int = _SETTINGS.max_checkpoint_bytes
    log_level: str = "INFO"
    kill_grace: float = _SETTINGS.kill_grace
    poll_interval: float = _SETTINGS.poll_interval
    synchronous: str = "FULL"
    wal_max_bytes: int = WAL_MAX_BYTES  # the WAL is emptied past this, once no reader holds it
    retention_days: float = _SETTINGS.retention_days
    metrics_interval: float = _SETTINGS.metrics_interval
    log_max_bytes: int = 52_428_800
    log_keep: int = 5
    http_bind: str | None = None  # HOST:PORT or unix:PATH: `procpool run` serves HTTP too
    http_token_file: str | None = None
    http_request_timeout: float = 10.0  # seconds to receive a request's head and body
    http_max_connections: int = 2048  # connections served at once; past it 503
    database_url: str | None = None  # PostgreSQL, shared by several daemons (CONTRACT 11)
    daemon_lease: float = 15.0  # seconds; with database_url: see stores/postgres.py, Timing
    # Tables: the most jobs of a type that run at once; the most of a type with one
    # concurrency_key (CONTRACT section 13). They override @handler(limit=, key_limit=).
    limits: dict[str, int] = msgspec.field(default_factory=dict)
    key_limits: dict[str, int] = msgspec.field(default_factory=dict)

    @property
    def worker_count(self) -> int:
        return self.workers if self.workers is not None else (os.cpu_count() or 1)


_FIELDS = {field.name: field.type for field in msgspec.structs.fields(Config)}


def default_home(environ: Mapping[str, str] = os.environ) -> Path:
    state = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "procpool"


def _convert(key: str, value: Any, source: str, *, from_text: bool) -> Any:
    if key not in _FIELDS:
        raise ConfigError(f"unknown config key {key!r} ({source})")
    if from_text:
        text = str(value).strip()
        if key == "handlers":
            value = [part.strip() for part in text.split(",") if part.strip()]
        elif key in _TABLES:
            value = _table_from_text(key, text, source)
        elif text.lower() in ("", "none", "null") and _FIELDS[key] is not str:
            value = None
    try:
        return msgspec.convert(value, _FIELDS[key], strict=not from_text)
    except msgspec.ValidationError:
        # In our words: msgspec's ("Expected `int`, got `str`") differ between releases.
        raise ConfigError(
            f"config key {key!r} ({source}) must be {_kind(_FIELDS[key])}, got {value!r}"
        ) from None


_KIND_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_TABLES = ("limits", "key_limits")


def _table_from_text(key: str, text: str, source: str) -> dict[str, Any]:
    """A table from an environment variable: `render=2,sync=1`."""
    table: dict[str, Any] = {}
    for part in filter(None, (item.strip() for item in text.split(","))):
        name, equals, value = part.partition("=")
        if not equals or not name.strip():
            raise ConfigError(
                f"config key {key!r} ({source}) must be TYPE=N pairs separated by commas,"
                f" got {part!r}"
            )
        try:
            table[name.strip()] = int(value)
        except ValueError:
            raise ConfigError(
                f"config key '{key}.{name.strip()}' ({source}) must be an integer,"
                f" got {value.strip()!r}"
            ) from None
    return table


def _kind(annotation: Any) -> str:
    """A config key's type in words: `int | None` is "an integer or none"."""
    parts = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    tables = {list: "a list of strings", dict: "a table of integers by job type"}
    words = [
        tables[get_origin(part)] if get_origin(part) in tables else _KIND_WORDS.get(part, str(part))
        for part in parts
        if part is not type(None)
    ]
    return " or ".join(words) + (" or none" if type(None) in parts else "")


MAX_RESULT_BYTES = 512 * 1024 * 1024
# With database_url: the fence ends a daemon's runs within milliseconds of 2/3 of the
# lease (application/fence.py); below 1 s the 2/3-of-a-second gap before a rescue is
# what a loaded machine's scheduling delays and the database's own bounds take.
# heartbeat_interval does not bound the fence: the watchdog acts at the deadline itself.
MIN_DAEMON_LEASE = 1.0


def _check_tables(config: Config) -> None:
    for table in _TABLES:
        for job_type, most in getattr(config, table).items():
            if most < 1:
                raise ConfigError(f"config key '{table}.{job_type}' must be >= 1, got {most}")


def _check(config: Config) -> Config:
    def positive(key: str, allow_zero: bool = False) -> None:
        value = getattr(config, key)
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            rule = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"config key {key!r} must be {rule}, got {value}")

    for key in ("workers", "max_attempts", "backoff_base", "backoff_max", "shutdown_timeout",
                "heartbeat_interval", "heartbeat_timeout", "max_file_bytes", "max_result_bytes",
                "max_checkpoint_bytes", "kill_grace",
                "poll_interval", "timeout", "retention_days", "metrics_interval",
                "log_max_bytes", "daemon_lease", "wal_max_bytes", "http_request_timeout",
                "http_max_connections"):  # fmt: skip
        positive(key)
    for key in ("max_jobs_per_worker", "max_memory_mb", "log_keep"):
        positive(key, allow_zero=True)
    _check_tables(config)
    for key in ("max_result_bytes", "max_checkpoint_bytes"):
        # SQLite stores no value over 1 GB (SQLITE_MAX_LENGTH); a result must fit, with
        # room for the rest of its row.
        if getattr(config, key) > MAX_RESULT_BYTES:
            raise ConfigError(
                f"config key {key!r} must be at most {MAX_RESULT_BYTES}"
                f" (512 MiB), got {getattr(config, key)}"
            )
    if config.heartbeat_timeout <= config.heartbeat_interval:
        raise ConfigError(
            f"config key 'heartbeat_timeout' ({config.heartbeat_timeout}) must be greater than"
            f" 'heartbeat_interval' ({config.heartbeat_interval})"
        )
    if config.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(
            f"config key 'log_level' must be one of {', '.join(LOG_LEVELS)},"
            f" got {config.log_level!r}"
        )
    if config.http_bind is not None:
        try:
            parse_bind(config.http_bind)
        except ValueError as error:
            raise ConfigError(f"config key 'http_bind': {error}") from None
    url = config.database_url
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            "config key 'database_url' must be a PostgreSQL URL (postgresql://...),"
            # Only the scheme: the rest may hold a password.
            f" got {url.split('://')[0] + '://...' if '://' in url else 'no URL scheme'}"
        )
    if url is not None and config.daemon_lease < MIN_DAEMON_LEASE:
        raise ConfigError(
            f"config key 'daemon_lease' must be at least {MIN_DAEMON_LEASE:g} s with"
            f" 'database_url', got {config.daemon_lease:g}: a daemon's runs end at 2/3 of"
            " it, another daemon may take them over at 4/3, and what lies between must"
            " outlast a loaded machine's delays"
        )
    if config.synchronous.upper() not in SYNCHRONOUS_MODES:
        raise ConfigError(
            f"config key 'synchronous' must be one of {', '.join(SYNCHRONOUS_MODES)},"
            f" got {config.synchronous!r}"
        )
    return msgspec.structs.replace(
        config, log_level=config.log_level.upper(), synchronous=config.synchronous.upper()
    )


def _toml_position(error: tomllib.TOMLDecodeError) -> str:
    """Where the TOML goes wrong: attributes from Python 3.14 on, the message before."""
    line, column = getattr(error, "lineno", None), getattr(error, "colno", None)
    if line is None:
        found = re.search(r"at line (\d+), column (\d+)", str(error))
        line, column = found.groups() if found else (None, None)
    if line is not None:
        return f" at line {line} column {column}"
    return " at its end" if "end of document" in str(error) else ""


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML{_toml_position(error)}") from None
    return {key: _convert(key, value, str(path), from_text=False) for key, value in raw.items()}


def check_limit_types(config: Config, types: Collection[str]) -> None:
    """Raises ConfigError naming the first key of `[limits]` or `[key_limits]` whose type
    no handler registers (`types`): a typo would otherwise limit nothing, silently."""
    for table in _TABLES:
        for job_type in getattr(config, table):
            if job_type not in types:
                guess = difflib.get_close_matches(job_type, list(types), n=1)
                hint = f" (did you mean {guess[0]!r}?)" if guess else ""
                raise ConfigError(
                    f"config key '{table}.{job_type}': no handler registers job type"
                    f" {job_type!r}{hint}"
                )


def _variable_key(name: str) -> str | None:
    """The config key a PROCPOOL_* variable names (known or not); None for other names."""
    if not name.startswith(ENV_PREFIX) or name in _NOT_KEYS:
        return None
    return name[len(ENV_PREFIX) :].lower()


def read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """The config keys set by PROCPOOL_* variables; unknown names are skipped.

    Raises:
        ConfigError: a known key has a wrong value.
    """
    values = {}
    for name, text in environ.items():
        key = _variable_key(name)
        if key in _FIELDS:
            values[key] = _convert(key, text, f"environment variable {name}", from_text=True)
    return values


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """A warning for each PROCPOOL_* variable that names no config key, with the
    nearest known name if one is close: "ignoring environment variable
    PROCPOOL_WROKERS: no config key 'wrokers' (did you mean PROCPOOL_WORKERS?)"."""
    known = [*_FIELDS, "config"]  # the keys alone: every full name shares the prefix
    warnings = []
    for name in sorted(environ):
        key = _variable_key(name)
        if key is None or key in _FIELDS:
            continue
        guess = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {ENV_PREFIX}{guess[0].upper()}?)" if guess else ""
        warnings.append(f"ignoring environment variable {name}: no config key {key!r}{hint}")
    return warnings


def config_path(
    explicit: Path | None, home: Path | None, environ: Mapping[str, str]
) -> Path | None:
    """--config, else $PROCPOOL_CONFIG, else HOME/procpool.toml if it exists."""
    if explicit is not None:
        return explicit
    if environ.get(ENV_PREFIX + "CONFIG"):
        return Path(environ[ENV_PREFIX + "CONFIG"])
    if home is not None and (home / "procpool.toml").is_file():
        return home / "procpool.toml"
    return None


def load(
    *,
    flags: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """The effective configuration. `flags` holds command-line values (None: not given)."""
    flags = {key: value for key, value in (flags or {}).items() if value not in (None, (), [])}
    environment = read_environment(environ)
    home_hint = flags.get("home") or environment.get("home")
    path = config_path(
        config_file, Path(home_hint) if home_hint else default_home(environ), environ
    )
    from_file = read_file(path) if path is not None else {}
    merged: dict[str, Any] = {**from_file, **environment}
    for key, value in flags.items():
        merged[key] = _convert(key, value, "command line", from_text=False)
    return _check(msgspec.convert(merged, Config))


def resolve_home(config: Config, environ: Mapping[str, str] = os.environ) -> Path:
    return Path(config.home).expanduser() if config.home else default_home(environ)


@dataclass(frozen=True)
class HomeChoice:
    """A home and how it was chosen, in words for a message ("the home given by --home")."""

    path: Path
    chosen_by: str


def locate_home(
    flag: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ
) -> HomeChoice:
    """The home a command means, with how it was chosen: --home (`flag`), else
    $PROCPOOL_HOME, else the config file's `home`, else the default.

    Raises:
        ConfigError: no flag given, and the configuration is invalid.
    """
    if flag is not None:
        return HomeChoice(Path(flag).expanduser(), "the home given by --home")
    home = resolve_home(load(environ=environ), environ)
    if read_environment(environ).get("home"):
        return HomeChoice(home, f"the home given by {ENV_PREFIX}HOME")
    path = config_path(None, default_home(environ), environ)
    if path is not None and read_file(path).get("home"):
        return HomeChoice(home, f"the home given by the home key of {path}")
    return HomeChoice(
        home, f"the default home, as neither --home, {ENV_PREFIX}HOME nor a config file names one"
    )


def extra_missing(what: str, extra: str, missing: str) -> ConfigError:
    """The error of `what` (a command, a config key) that needs an optional part of
    procpool, `extra`, whose module `missing` is not installed. procpool installs from
    its repository, not a package index, so `pip install 'procpool[http]'` would fail."""
    return ConfigError(
        f"{what} needs the {extra} extra ({missing} not installed):"
        f" pip install '.[{extra}]' in procpool's repository"
    )


def shared_store(home: Path, database_url: str | None = None) -> PostgresClientStore | None:
    """The client's PostgreSQL store (postgres_client.PostgresClientStore) when
    `database_url`, $PROCPOOL_DATABASE_URL or the config file (of `home`) names one;
    None: the home's SQLite store.

    Raises:
        ConfigError: the configuration is invalid, or psycopg is not installed.
    """
    if database_url is None and not os.environ.get(ENV_PREFIX + "DATABASE_URL"):
        path = config_path(None, home, os.environ)
        if path is None or "database_url" not in read_file(path):
            return None  # the common case costs no parse of the environment
    config = load(flags={"home": str(home), "database_url": database_url})
    if config.database_url is None:
        return None
    try:
        from procpool.adapters.stores.postgres_client import PostgresClientStore  # noqa: PLC0415
    except ImportError as error:
        raise extra_missing("config key 'database_url'", "postgresql", str(error.name)) from None
    defaults = JobDefaults(max_attempts=config.max_attempts, timeout=config.timeout)
    return PostgresClientStore(config.database_url, defaults)
