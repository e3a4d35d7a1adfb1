"""What a new user met on a first afternoon (issue 24, item 9), each through a real
daemon or a real command: the readable log lines, the CLI's hints and numbering,
the store a start names."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, clean_env, run_cli, wait_until
from http_helpers import Server, free_port

from procpool.entrypoints.daemon import store_label

HANDLERS = ("--handlers", "new_user_handlers")


def _procpool(*words: str) -> subprocess.CompletedProcess[str]:
    """`procpool WORDS` exactly as typed (run_cli puts --home after the command)."""
    command = [sys.executable, "-m", "procpool", *words]
    return subprocess.run(
        command, capture_output=True, text=True, env=clean_env(), timeout=60, check=False
    )


def test_a_handlers_log_fields_show_on_the_readable_lines(make_daemon: Any) -> None:
    daemon: Daemon = make_daemon(workers=1, args=HANDLERS)
    daemon.client.submit("count_lines", None, id="counted")
    assert daemon.wait_status("counted", "completed").result == 200000
    [line] = daemon.wait_events("job.log", job_id="counted")
    assert line["fields"] == {"n": 200000, "source": "the numbers file"}
    shown = '  n=200000  source="the numbers file"'
    stderr = wait_until(
        lambda: [t for t in daemon.stderr().splitlines() if "counted the lines" in t],
        what="the job.log line on stderr",
    )
    assert stderr[0].endswith(shown), stderr
    logs = daemon.cli("logs", "--job", "counted")
    assert logs.returncode == 0, logs.stderr
    [logged] = [t for t in logs.stdout.splitlines() if "counted the lines" in t]
    assert logged.endswith(shown), logged
    assert daemon.process is not None and daemon.process.poll() is None


def test_an_option_before_the_command_is_told_to_go_after_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    answer = _procpool("--home", str(home), "list", "--limit", "2")
    assert answer.returncode == 2
    assert answer.stderr == (
        "procpool: no such option '--home' before the command: options go after it,"
        f" as in procpool list --home {home} --limit 2 (see --help)\n"
    )
    # An option no command has keeps click's answer: moving it would not help.
    answer = _procpool("--frobnicate", "list")
    assert answer.returncode == 2
    # click 8.1 words it "no such option: --frobnicate", later ones "no such option '--frobnicate'".
    assert "no such option" in answer.stderr.lower()
    assert "--frobnicate" in answer.stderr
    assert "go after" not in answer.stderr


@pytest.mark.timeout(180)
def test_show_numbers_only_the_runs_that_count_as_attempts(make_daemon: Any) -> None:
    first: Daemon = make_daemon(workers=1)
    first.client.submit("sleep", {"seconds": 3}, id="napper")
    first.wait_started("napper")
    first.signal(signal.SIGQUIT)  # stop now: the run is interrupted, not charged
    assert first.wait_exit() == 0
    second: Daemon = make_daemon(workers=1)
    assert second.wait_status("napper", "completed", timeout=60).attempts == 0
    shown = second.cli("show", "napper")
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.split("\nattempts\n")[1].splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["-", "1"], shown.stdout
    assert "interrupted" in rows[0] and "completed" in rows[1]


def test_the_start_line_names_the_store(daemon: Daemon) -> None:
    [starting] = daemon.wait_events("daemon.starting")
    expected = f"SQLite {daemon.home / 'procpool.db'}"
    assert starting["store"] == expected
    assert f", store {expected}, handlers from " in starting["msg"]


@pytest.mark.parametrize(
    ("url", "label"),
    [
        (
            "postgresql://procpool:secret@db.example:5433/jobs",
            "PostgreSQL database jobs at db.example:5433",
        ),
        ("postgresql://procpool@localhost/jobs", "PostgreSQL database jobs at localhost"),
        ("postgresql:///jobs", "PostgreSQL database jobs at the local socket"),
        ("host=/run/postgresql dbname=q", "PostgreSQL database q at /run/postgresql"),
        ("postgresql://u@h:5432", "PostgreSQL database (the user name) at h:5432"),
    ],
)
def test_the_store_label_of_a_database_url_keeps_no_secret(url: str, label: str) -> None:
    assert store_label(Path("/home/h"), url) == label
    assert "secret" not in store_label(Path("/home/h"), url)


def test_a_server_bound_to_localhost_answers_its_own_address(home: Path) -> None:
    home.mkdir(mode=0o700)
    port = free_port()
    api = Server(home, "--bind", f"localhost:{port}")
    try:
        assert api.url == f"http://127.0.0.1:{port}", api.printed()
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            answer = api.get("/healthz", headers={"Host": host})
            assert answer.status_code == 503, (host, answer.text)  # in; no daemon runs
        assert api.get("/healthz", headers={"Host": "evil.example"}).status_code == 421
    finally:
        assert api.stop() == 0


def _without(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment in which importing `module` fails as if it were not installed."""
    shadow = tmp_path / "shadow" / module
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        f'raise ModuleNotFoundError("No module named {module!r}", name={module!r})\n'
    )
    return {"PYTHONPATH": str(shadow.parent)}


def test_a_missing_extra_is_installed_from_the_repository(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = clean_env(_without(tmp_path, "litestar"))
    command = [sys.executable, "-m", "procpool", "serve", "--home", str(home)]
    answer = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert answer.returncode == 1
    assert answer.stderr == (
        "procpool: procpool serve needs the http extra (litestar not installed):"
        " pip install '.[http]' in procpool's repository\n"
    )
    env = clean_env(_without(tmp_path, "psycopg"))
    env["PROCPOOL_DATABASE_URL"] = "postgresql://procpool@localhost:5432/procpool"
    command = [sys.executable, "-m", "procpool", "list", "--home", str(home)]
    answer = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert answer.returncode == 2
    assert "pip install '.[postgresql]' in procpool's repository" in answer.stderr
    assert "procpool[" not in answer.stderr


def test_wait_on_a_home_never_served_says_a_daemon_started(
    make_daemon: Any, home: Path, tmp_path: Path
) -> None:
    submitted = _procpool("submit", "sleep", '{"seconds": 2}', "--id", "w1", "--home", str(home))
    assert submitted.returncode == 0, submitted.stderr
    err = tmp_path / "wait-err.txt"
    command = [sys.executable, "-m", "procpool", "wait", "w1", "--home", str(home)]
    with open(err, "w") as stderr:
        waiting = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=clean_env()
        )
    try:
        wait_until(lambda: "no daemon runs" in err.read_text(), what="the notice")
        daemon: Daemon = make_daemon(workers=1)
        wait_until(lambda: "started" in err.read_text(), what="the daemon's start")
        assert waiting.wait(30) == 0, err.read_text()
        assert err.read_text().splitlines()[1] == (
            f"procpool: a daemon started (pid {daemon.pid}); still waiting"
        )
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)


def test_every_event_the_code_logs_is_in_the_event_table() -> None:
    """An event is logged as `emit(LEVEL, "area.what", ...)` (or log, Say): each name
    written so in the code has its row in docs/operations.md."""
    root = Path(__file__).resolve().parents[2]
    logged = re.compile(
        r'"(?:TRACE|DEBUG|INFO|SUCCESS|WARNING|ERROR|CRITICAL)",\s*"([a-z_]+\.[a-z_]+)"'
    )
    names = {
        name
        for source in (root / "procpool").rglob("*.py")
        for name in logged.findall(source.read_text())
    }
    assert len(names) > 50, "the pattern no longer finds the events"
    table = (root / "docs" / "operations.md").read_text()
    assert sorted(name for name in names if f"`{name}`" not in table) == []


def test_status_of_a_job_waiting_in_the_inbox_says_so(home: Path) -> None:
    submitted = run_cli(home, "submit", "echo", "{}", "--id", "queued")
    assert (submitted.returncode, submitted.stdout) == (0, "queued\n")
    for command in ("status", "show"):
        answer = run_cli(home, command, "queued")
        assert (answer.returncode, answer.stderr) == (
            1, "procpool: job 'queued' waits in the inbox: no daemon has taken it yet\n"
        )  # fmt: skip
