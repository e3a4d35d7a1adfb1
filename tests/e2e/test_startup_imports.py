"""What starting procpool imports: `import procpool` and the commands other than `run`
load neither the daemon (its supervisor and workers, loguru) nor an optional extra
(Litestar, uvicorn, psycopg), nor importlib.metadata (for --version only). Each
`procpool` command is a process of its own, and these imports were most of its
start-up: a test here keeps that from creeping back unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env

# Module names, each with its submodules, that only `procpool run` (or an extra) needs.
DAEMON_ONLY = (
    "procpool.entrypoints.daemon",
    "procpool.application.supervisor.loop",
    "procpool.application.worker.main",
    "loguru",
    "litestar",
    "uvicorn",
    "psycopg",
    "importlib.metadata",
)

# Runs the code (a statement, or `-m procpool ARGS`) and writes sys.modules as it ends.
PROBE = """
import json, runpy, sys
out, how, *words = sys.argv[1:]
try:
    if how == "-c":
        exec(words[0])
    else:
        sys.argv = ["procpool", *words]
        runpy.run_module("procpool", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
with open(out, "w") as file:
    json.dump(sorted(sys.modules), file)
"""


def imported(tmp_path: Path, how: str, *words: str) -> list[str]:
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), how, *words],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.exists(), result.stderr
    return json.loads(out.read_text())


def daemon_only(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == n or m.startswith(n + ".") for n in DAEMON_ONLY)]


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("-c", ("import procpool",)),
        ("-c", ("from procpool import Client, JobInfo, ProcpoolError",)),
        ("-m", ("--help",)),
        ("-m", ("submit", "--help")),
    ],
    ids=["import procpool", "from procpool import Client", "--help", "submit --help"],
)
def test_starting_imports_nothing_only_the_daemon_needs(
    tmp_path: Path, how: str, words: tuple[str, ...]
) -> None:
    modules = imported(tmp_path, how, *words)
    assert "procpool" in modules
    assert daemon_only(modules) == []


def test_reading_a_home_imports_nothing_only_the_daemon_needs(tmp_path: Path) -> None:
    """`list` and `status` on a home: the client, its configuration and its reader."""
    home = str(tmp_path / "home")
    for words in (("list", "--home", home), ("status", "--home", home, "x")):
        modules = imported(tmp_path, "-m", *words)
        assert "procpool.client" in modules
        assert daemon_only(modules) == [], words


def test_the_http_server_imports_nothing_else_only_the_daemon_needs(tmp_path: Path) -> None:
    """`procpool serve` needs its extra (Litestar, uvicorn, and importlib.metadata, which
    Litestar imports), not the worker's modules."""
    modules = imported(tmp_path, "-c", "import procpool.entrypoints.http.server")
    assert "litestar" in modules
    extra = ("litestar", "uvicorn", "importlib")
    assert [m for m in daemon_only(modules) if m.split(".")[0] not in extra] == []


def test_every_public_name_loads_on_first_use(tmp_path: Path) -> None:
    """`from procpool import *` gives every name of __all__, each the object its own
    module defines (the lazy ones too), and a wrong name is an AttributeError."""
    check = """
import importlib, procpool
from procpool import *
names = {name: globals()[name] for name in procpool.__all__}
assert sorted(names) == sorted(procpool.__all__)
for name, value in names.items():
    home = importlib.import_module(value.__module__)
    assert getattr(home, value.__name__) is value is getattr(procpool, name), name
assert set(procpool.__all__) <= set(dir(procpool))
try:
    procpool.Clinet
except AttributeError as error:
    assert "Clinet" in str(error)
else:
    raise AssertionError("procpool.Clinet")
"""
    modules = imported(tmp_path, "-c", check)
    assert "procpool.client" in modules
    assert "procpool.application.handlers" in modules
