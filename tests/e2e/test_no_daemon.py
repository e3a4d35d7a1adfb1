"""`cancel` and `wait` when no daemon runs, or when it stops under them (issue 12):
`cancel` never hangs, `wait` says once that it waits for a daemon and goes on.
Through the real CLI and daemon; the daemon is frozen with SIGSTOP to hold it
between two steps of a command."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import Daemon, clean_env, run_cli, wait_until

NOT_YET = (
    "the daemon stopped before job d1 was canceled; the cancel takes effect when the daemon"
    " starts\n"
)


@contextmanager
def background(home: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    """`procpool ARGS --home HOME` running on its own, its output in two files."""
    out, err = home.parent / "cli-out.txt", home.parent / "cli-err.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "procpool", args[0], "--home", str(home), *args[1:]],
            stdout=stdout, stderr=stderr, env=clean_env(), text=True,
        )  # fmt: skip
    try:
        yield process, out, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def cancel_file_dropped(daemon: Daemon) -> bool:
    return any((daemon.home / "inbox").glob("cancel-d1*.json"))


def test_cancel_ends_when_the_daemon_dies_while_it_waits(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workers=1)
    daemon.cli("submit", "echo", "{}", "--delay", "600", "--id", "d1")
    daemon.wait_status("d1", "pending")
    daemon.signal(signal.SIGSTOP)  # it cannot read the cancel request
    with background(daemon.home, "cancel", "d1") as (cancel, out, err):
        wait_until(lambda: cancel_file_dropped(daemon), what="the cancel request")
        daemon.kill()
        assert cancel.wait(20) == 0, err.read_text()
        assert out.read_text() == NOT_YET
    # The request waited in the inbox, and the next start applies it.
    restarted = make_daemon(workers=1)
    assert restarted.wait_status("d1", "canceled").status == "canceled"


def test_cancel_ends_when_the_daemon_stops_while_it_waits(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(workers=1)
    daemon.cli("submit", "echo", "{}", "--delay", "600", "--id", "d1")
    daemon.wait_status("d1", "pending")
    daemon.signal(signal.SIGSTOP)
    with background(daemon.home, "cancel", "d1") as (cancel, out, err):
        wait_until(lambda: cancel_file_dropped(daemon), what="the cancel request")
        daemon.signal(signal.SIGTERM)
        daemon.signal(signal.SIGCONT)
        assert daemon.wait_exit() == 0
        # The daemon may read the request before it stops, or leave it for the next start.
        assert cancel.wait(20) == 0, err.read_text()
        assert out.read_text() in ("d1 canceled\n", NOT_YET)
    assert make_daemon(workers=1).wait_status("d1", "canceled")


def test_cancel_without_a_daemon_returns_at_once(home: Path) -> None:
    run_cli(home, "submit", "echo", "{}", "--delay", "600", "--id", "d1")
    result = run_cli(home, "cancel", "d1", timeout=20)
    assert (result.returncode, result.stdout) == (
        0, "cancel of d1 requested; it takes effect when the daemon starts\n"
    )  # fmt: skip


def test_wait_says_once_that_no_daemon_runs_and_goes_on_when_it_starts(
    make_daemon: Callable[..., Daemon], home: Path
) -> None:
    run_cli(home, "submit", "echo", '"late"', "--id", "w1")
    with background(home, "wait", "w1") as (waiting, out, err):
        wait_until(lambda: "no daemon runs" in err.read_text(), what="the notice")
        assert waiting.poll() is None, "wait keeps waiting"
        assert err.read_text() == (
            f"procpool: no daemon runs on {home}; still waiting: the jobs go on when it starts\n"
        )
        daemon = make_daemon(workers=1)
        assert waiting.wait(20) == 0, err.read_text()
        assert out.read_text() == "w1 completed\n"
        notices = err.read_text().splitlines()
        assert len(notices) <= 2 and notices[0].startswith("procpool: no daemon runs")
        assert all("a daemon started" in line for line in notices[1:])  # the home's first
    daemon.stop()
    # Jobs already finished need no daemon: nothing is said.
    finished = run_cli(home, "wait", "w1")
    assert (finished.returncode, finished.stdout, finished.stderr) == (0, "w1 completed\n", "")


def test_wait_tells_when_the_daemon_stops_and_comes_back(
    make_daemon: Callable[..., Daemon], home: Path
) -> None:
    daemon = make_daemon(workers=1)
    daemon.cli("submit", "sleep", '{"seconds": 2}', "--id", "w2")
    with background(home, "wait", "w2") as (waiting, out, err):
        daemon.wait_status("w2", "running")
        daemon.signal(signal.SIGQUIT)  # stop now: the job goes back to pending
        assert daemon.wait_exit() == 0
        wait_until(lambda: "no daemon runs" in err.read_text(), what="the notice")
        assert waiting.poll() is None, "wait keeps waiting"
        make_daemon(workers=1)
        wait_until(lambda: "runs again" in err.read_text(), what="the daemon's return")
        assert waiting.wait(30) == 0, err.read_text()
        assert out.read_text() == "w2 completed\n"
        assert len(err.read_text().splitlines()) == 2, err.read_text()
