"""Configuration (CONTRACT section 8): precedence, errors that name the key, the
documented file. Unit tests: `load` is given its environment explicitly (the
environment's effect on the real daemon and CLI: tests/e2e/test_config_cli.py)."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from procpool.adapters.config import (
    Config,
    default_home,
    load,
    resolve_home,
    unknown_variables,
)
from procpool.application.supervisor.settings import Settings
from procpool.domain.errors import ConfigError
from procpool.entrypoints.daemon import settings_from

DOCUMENTED = Path(__file__).parents[2] / "config" / "procpool.toml"


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    """An environment whose default home holds no procpool.toml of the user's."""
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_match_the_contract(environ: dict[str, str]) -> None:
    config = load(environ=environ)
    assert config == Config()
    assert config.workers is None
    assert config.handlers == []
    assert (config.max_attempts, config.timeout) == (3, None)
    assert (config.backoff_base, config.backoff_max) == (1.0, 300.0)
    assert config.shutdown_timeout == 30.0
    assert (config.heartbeat_interval, config.heartbeat_timeout) == (1.0, 30.0)
    assert (config.max_jobs_per_worker, config.max_memory_mb) == (0, 0)
    assert config.max_file_bytes == 1_048_576
    assert config.log_level == "INFO"


def test_workers_default_to_the_cpu_count() -> None:
    assert Config().worker_count == (os.cpu_count() or 1)
    assert Config(workers=3).worker_count == 3


def test_precedence_flag_then_environment_then_file_then_default(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    file = write(tmp_path / "p.toml", "workers = 3\nmax_attempts = 7\nbackoff_max = 9.5\n")
    env = {**environ, "PROCPOOL_WORKERS": "4", "PROCPOOL_MAX_ATTEMPTS": "8"}
    config = load(flags={"workers": 5}, config_file=file, environ=env)
    assert config.workers == 5  # flag over environment and file
    assert config.max_attempts == 8  # environment over file
    assert config.backoff_max == 9.5  # file over default
    assert config.backoff_base == 1.0  # default
    assert load(config_file=file, environ=env).workers == 4
    assert load(config_file=file, environ=environ).workers == 3


def test_flags_not_given_do_not_override(tmp_path: Path, environ: dict[str, str]) -> None:
    file = write(tmp_path / "p.toml", 'workers = 3\nhandlers = ["mine"]\n')
    config = load(flags={"workers": None, "handlers": None}, config_file=file, environ=environ)
    assert (config.workers, config.handlers) == (3, ["mine"])


def test_the_file_comes_from_procpool_config_or_the_home(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    named = write(tmp_path / "named.toml", "workers = 6\n")
    assert load(environ={**environ, "PROCPOOL_CONFIG": str(named)}).workers == 6
    home = tmp_path / "home"
    home.mkdir()
    write(home / "procpool.toml", "workers = 9\n")
    assert load(flags={"home": str(home)}, environ=environ).workers == 9
    assert load(environ={**environ, "PROCPOOL_HOME": str(home)}).workers == 9
    assert load(flags={"home": str(home)}, config_file=named, environ=environ).workers == 6


def test_the_home(tmp_path: Path, environ: dict[str, str]) -> None:
    assert resolve_home(load(environ=environ), environ) == tmp_path / "state" / "procpool"
    assert default_home({"HOME": "/nowhere"}) == Path("~/.local/state/procpool").expanduser()
    config = load(environ={**environ, "PROCPOOL_HOME": str(tmp_path / "h")})
    assert resolve_home(config, environ) == tmp_path / "h"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", ["a"]),
        ("a,b", ["a", "b"]),
        (" mod.one , mod.two ,", ["mod.one", "mod.two"]),
        ("", []),
    ],
)
def test_handlers_from_the_environment_are_a_comma_separated_list(
    environ: dict[str, str], text: str, expected: list[str]
) -> None:
    assert load(environ={**environ, "PROCPOOL_HANDLERS": text}).handlers == expected


@pytest.mark.parametrize("text", ["none", "None", "null", ""])
def test_none_from_the_environment(environ: dict[str, str], text: str) -> None:
    env = {**environ, "PROCPOOL_TIMEOUT": text, "PROCPOOL_WORKERS": text}
    config = load(environ=env)
    assert (config.timeout, config.workers) == (None, None)


def test_numbers_from_the_environment(environ: dict[str, str]) -> None:
    env = {**environ, "PROCPOOL_TIMEOUT": "12.5", "PROCPOOL_MAX_MEMORY_MB": "256"}
    config = load(environ=env)
    assert (config.timeout, config.max_memory_mb) == (12.5, 256)


def test_log_level_is_case_insensitive(environ: dict[str, str]) -> None:
    assert load(environ={**environ, "PROCPOOL_LOG_LEVEL": "debug"}).log_level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("wrokers = 2\n", "wrokers"),
        ("[section]\nworkers = 2\n", "section"),
        ('workers = "many"\n', "workers"),
        ("workers = 2.5\n", "workers"),
        ('max_attempts = "3"\n', "max_attempts"),
        ('handlers = "mod"\n', "handlers"),
        ("handlers = [1]\n", "handlers"),
        ("timeout = true\n", "timeout"),
        ("workers = 0\n", "workers"),
        ("backoff_base = -1.0\n", "backoff_base"),
        ("max_memory_mb = -1\n", "max_memory_mb"),
        ('log_level = "LOUD"\n', "log_level"),
        ("heartbeat_interval = 5.0\nheartbeat_timeout = 2.0\n", "heartbeat_timeout"),
        ('database_url = "postgresql:///x"\ndaemon_lease = 0.5\n', "daemon_lease"),
    ],
)
def test_a_bad_file_names_the_key(
    tmp_path: Path, environ: dict[str, str], text: str, key: str
) -> None:
    file = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load(config_file=file, environ=environ)
    assert key in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "key"),
    [
        ("PROCPOOL_WORKERS", "many", "workers"),
        ("PROCPOOL_MAX_ATTEMPTS", "0", "max_attempts"),
        ("PROCPOOL_SHUTDOWN_TIMEOUT", "soon", "shutdown_timeout"),
    ],
)
def test_a_bad_environment_variable_names_the_key(
    environ: dict[str, str], name: str, value: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ={**environ, name: value})
    assert key in str(caught.value)
    assert name in str(caught.value) or "must be" in str(caught.value)


def test_an_unknown_variable_is_ignored_with_a_guess(environ: dict[str, str]) -> None:
    """The environment is shared with other tools: a PROCPOOL_* name that is no key
    is a warning (with the nearest key's variable), not an error."""
    env = {**environ, "PROCPOOL_WROKERS": "2", "PROCPOOL_ZZZ": "1", "PROCPOOL_WORKERS": "3"}
    assert load(environ=env).workers == 3
    assert unknown_variables(env) == [
        "ignoring environment variable PROCPOOL_WROKERS: no config key 'wrokers'"
        " (did you mean PROCPOOL_WORKERS?)",
        "ignoring environment variable PROCPOOL_ZZZ: no config key 'zzz'",
    ]
    assert unknown_variables({**environ, "PROCPOOL_CONFIG": "x", "PROCPOOL_HOME": "y"}) == []
    # The daemon's test-only clock (adapters/testing_clock.py) is no config key either.
    assert unknown_variables({**environ, "PROCPOOL_TEST_CLOCK_OFFSET_FILE": "f"}) == []


def test_a_bad_flag_names_the_key(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="workers"):
        load(flags={"workers": 0}, environ=environ)


def test_a_missing_or_broken_file_is_an_error(tmp_path: Path, environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(config_file=tmp_path / "absent.toml", environ=environ)
    broken = write(tmp_path / "broken.toml", "workers = = 2\n")
    with pytest.raises(ConfigError) as caught:
        load(config_file=broken, environ=environ)
    assert str(caught.value) == f"config file {broken} is not valid TOML at line 1 column 11"
    with pytest.raises(ConfigError) as caught:
        load(config_file=tmp_path, environ=environ)
    assert str(caught.value) == f"config file {tmp_path} is a directory"


# In procpool's words: msgspec's ("Expected `int`, got `str`") change between releases.
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('workers = "many"\n', "config key 'workers' (F) must be an integer or none, got 'many'"),
        ("max_attempts = 2.5\n", "config key 'max_attempts' (F) must be an integer, got 2.5"),
        ("handlers = [1]\n", "config key 'handlers' (F) must be a list of strings, got [1]"),
        ("timeout = true\n", "config key 'timeout' (F) must be a number or none, got True"),
        ("log_level = 3\n", "config key 'log_level' (F) must be a string, got 3"),
    ],
)
def test_a_value_of_the_wrong_type_is_worded_by_procpool(
    tmp_path: Path, environ: dict[str, str], text: str, message: str
) -> None:
    file = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as caught:
        load(config_file=file, environ=environ)
    assert str(caught.value) == message.replace("(F)", f"({file})")
    with pytest.raises(ConfigError) as caught:
        load(environ={**environ, "PROCPOOL_SHUTDOWN_TIMEOUT": "soon"})
    assert str(caught.value) == (
        "config key 'shutdown_timeout' (environment variable PROCPOOL_SHUTDOWN_TIMEOUT)"
        " must be a number, got 'soon'"
    )


# ------------------------------------------------------------------ config/procpool.toml


def test_the_documented_file_sets_every_default() -> None:
    """Every key of Config is in config/procpool.toml with its default: set, or, for a
    key whose default is none, shown commented out (`# workers = 2`)."""
    text = DOCUMENTED.read_text()
    written = tomllib.loads(text)
    commented = set(re.findall(r"^# ?([a-z_]+) = ", text, flags=re.MULTILINE))
    defaults = msgspec.structs.asdict(Config())
    assert set(written) <= set(defaults), "the file documents keys that do not exist"
    for key, default in defaults.items():
        if key in written:
            assert written[key] == default, (
                f"{key}: file says {written[key]!r}, default {default!r}"
            )
        else:
            assert default is None, f"{key} (default {default!r}) is not set in the file"
            assert key in commented, f"{key} is not documented in {DOCUMENTED}"


def test_the_documented_file_loads_to_the_defaults(environ: dict[str, str]) -> None:
    assert load(config_file=DOCUMENTED, environ=environ) == Config()


def test_max_result_bytes_stays_within_what_the_store_keeps(tmp_path: Path) -> None:
    config_file = tmp_path / "procpool.toml"
    config_file.write_text("max_result_bytes = 2_000_000_000\n")
    with pytest.raises(ConfigError, match=r"max_result_bytes.*at most 536870912"):
        load(flags={}, config_file=config_file)


def test_a_config_of_defaults_gives_the_supervisor_its_own_defaults() -> None:
    """One source of defaults: the settings of a config that sets nothing are those the
    supervisor's records hold (Settings, JobDefaults, RetryPolicy)."""
    given = settings_from(Config(workers=3))
    assert given == Settings(workers=3)
