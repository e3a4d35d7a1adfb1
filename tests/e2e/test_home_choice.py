"""A mistyped home is not an empty queue (issue 12, point 7), and every command closes
the store connections it opens (point 3): end to end, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import Daemon, clean_env, run_cli

READS = [
    ("status", "x1"),
    ("show", "x1"),
    ("list",),
    ("wait", "x1"),
    ("stats",),
    ("logs",),
    ("logs", "-f"),
]


def procpool(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI without --home: the home comes from the environment."""
    return subprocess.run(
        [sys.executable, "-m", "procpool", *args],
        capture_output=True, text=True, env=clean_env(env), timeout=60, check=False,
    )  # fmt: skip


def says_once(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    for part in parts:
        assert part in line, line


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_reading_a_directory_that_does_not_exist(tmp_path: Path, args: tuple[str, ...]) -> None:
    typo = tmp_path / "procpol"
    result = run_cli(typo, *args, timeout=30)
    says_once(
        result,
        f"procpool: {typo} is not a procpool home: the directory does not exist",
        "(the home given by --home)",
    )
    assert not typo.exists(), "reading creates nothing"


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_reading_a_directory_without_a_store(tmp_path: Path, args: tuple[str, ...]) -> None:
    typo = tmp_path / "elsewhere"
    typo.mkdir()
    says_once(
        run_cli(typo, *args, timeout=30),
        f"{typo} is not a procpool home: it has no job store (procpool.db),"
        " as no daemon has run with it (the home given by --home)",
    )
    assert list(typo.iterdir()) == []


def test_the_message_says_how_the_home_was_chosen(tmp_path: Path) -> None:
    state = tmp_path / "state"
    says_once(
        procpool("list", env={"XDG_STATE_HOME": str(state)}),
        f"{state / 'procpool'} is not a procpool home",
        "(the default home, as neither --home, PROCPOOL_HOME nor a config file names one)",
    )
    says_once(
        procpool("stats", env={"XDG_STATE_HOME": str(state), "PROCPOOL_HOME": str(tmp_path / "a")}),
        f"{tmp_path / 'a'} is not a procpool home",
        "(the home given by PROCPOOL_HOME)",
    )
    config = tmp_path / "procpool.toml"
    config.write_text(f'home = "{tmp_path / "b"}"\n')
    says_once(
        procpool("status", "x", env={"XDG_STATE_HOME": str(state), "PROCPOOL_CONFIG": str(config)}),
        f"{tmp_path / 'b'} is not a procpool home",
        f"(the home given by the home key of {config})",
    )


def test_submit_still_makes_a_home_and_wait_waits_for_its_daemon(make_daemon, home: Path) -> None:
    submitted = run_cli(home, "submit", "echo", '"early"', "--id", "early")
    assert submitted.returncode == 0, submitted.stderr
    # No daemon has run: the job waits in the inbox, so waiting for it is no typo.
    waited = run_cli(home, "wait", "early", "--timeout", "0.3")
    assert waited.returncode == 124, waited.stderr
    # An id that is nowhere, on that home, is a mistake the message names.
    says_once(run_cli(home, "wait", "nowhere"), f"{home} is not a procpool home")
    daemon = make_daemon()
    assert daemon.wait_status("early", "completed").result == "early"
    assert daemon.cli("list").returncode == 0


# Counts the sqlite3 connections a command opens and fails the command if one is left open
# when it ends: on any Python (3.13's ResourceWarning for them is checked as well).
TRACKER = textwrap.dedent(
    """
    import sqlite3, sys

    opened = []
    real_connect = sqlite3.connect

    class Tracked(sqlite3.Connection):
        is_closed = False

        def close(self):
            self.is_closed = True
            super().close()

    def connect(*args, **kwargs):
        kwargs.setdefault("factory", Tracked)
        connection = real_connect(*args, **kwargs)
        opened.append(connection)
        return connection

    sqlite3.connect = connect
    from procpool.entrypoints.cli import main

    sys.argv[0] = "procpool"
    try:
        main()
    finally:
        left = sum(not connection.is_closed for connection in opened)
        if left:
            print(f"{left} of {len(opened)} sqlite connections left open", file=sys.stderr)
    """
)


@pytest.mark.parametrize(
    "args",
    [
        ("list",),
        ("status", "done"),
        ("show", "done"),
        ("stats",),
        ("wait", "done"),
        ("logs", "-n", "1"),
        ("retry", "done"),
    ],
    ids=" ".join,
)
def test_commands_close_every_store_connection(daemon: Daemon, args: tuple[str, ...]) -> None:
    daemon.client.submit("echo", 1, id="done")
    daemon.wait_status("done", "completed")
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", TRACKER,
         *args, "--home", str(daemon.home)],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "left open" not in result.stderr
    assert "ResourceWarning" not in result.stderr
    assert "unclosed" not in result.stderr
