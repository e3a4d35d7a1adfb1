"""The daemon's own outputs and its store never kill it (issue 14, cases 5 and 6):
standard error gone or closed, the log file or metrics.prom unwritable, the store
locked by another process. A real store failure ends it with its reason in the
log, and so does every other way the daemon ends."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import TESTS, Daemon, clean_env, run_cli, wait_until

# Holds the write lock of a store for argv[2] seconds, as `BEGIN IMMEDIATE;` typed
# into the sqlite3 shell does.
LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA busy_timeout = 10000")
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


def _popen(daemon: Daemon, command: list[str], **kwargs: object) -> None:
    """Start `procpool run` for `daemon` with standard streams of the test's choosing."""
    daemon.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    daemon.process = subprocess.Popen(
        command, env=clean_env(daemon.env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        **kwargs,  # type: ignore[call-overload]
    )  # fmt: skip


def _run_command(home: Path) -> list[str]:
    return [sys.executable, "-m", "procpool", "run", "--home", str(home), "--workers", "2"]


def _complete(daemon: Daemon, prefix: str, count: int) -> None:
    """Submit `count` echo jobs and wait until each has completed with its result."""
    for n in range(count):
        daemon.client.submit("echo", {"n": n}, id=f"{prefix}{n}")
    for n in range(count):
        assert daemon.wait_status(f"{prefix}{n}", "completed").result == {"n": n}


def test_the_reader_of_stderr_goes_away(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(start=False)
    read_end, write_end = os.pipe()
    _popen(daemon, _run_command(daemon.home), stderr=write_end)
    os.close(write_end)
    daemon.wait_ready()
    assert b"daemon.started" in os.read(read_end, 1 << 16)
    daemon.client.submit("sleep", {"seconds": 1.0}, id="running")
    daemon.wait_status("running", "running")
    os.close(read_end)  # an ssh session drops, a `| tee` is killed
    _complete(daemon, "after", 5)
    assert daemon.wait_status("running", "completed").attempts == 0
    [lost] = daemon.wait_events("daemon.stderr_lost")
    assert lost["error"] == "Broken pipe"
    _complete(daemon, "later", 3)
    assert len(daemon.events("daemon.stderr_lost")) == 1
    assert daemon.stop() == 0
    assert daemon.events("daemon.stopped")


def test_a_stderr_nobody_reads_does_not_stop_the_loop(make_daemon: Callable[..., Daemon]) -> None:
    """A `| less` left unread: the pipe fills, and the daemon goes on without waiting for
    it; past 256 KiB of lines waiting, stderr's lines are dropped until it drains."""
    daemon = make_daemon(start=False)
    read_end, write_end = os.pipe()
    _popen(daemon, _run_command(daemon.home), stderr=write_end)
    os.close(write_end)
    try:
        daemon.wait_ready()
        # A job.started and a job.completed line each, with the long id twice: about 1 MB,
        # past the pipe's 64 KiB and the 256 KiB that may wait.
        count = 1500
        lines = "".join(
            json.dumps({"type": "echo", "payload": n, "id": f"{'a-long-job-name-' * 6}{n}"}) + "\n"
            for n in range(count)
        )
        daemon.drop("many.jsonl", lines)
        wait_until(
            lambda: len(daemon.client.list(status="completed", limit=count)) == count,
            timeout=60, interval=0.2, what=f"{count} jobs completed",
        )  # fmt: skip
        assert len(daemon.events("daemon.stderr_full")) == 1
        os.set_blocking(read_end, False)
        read = bytearray()

        def drain() -> bytes:
            with contextlib.suppress(BlockingIOError):
                while chunk := os.read(read_end, 1 << 16):
                    read.extend(chunk)
            return bytes(read)

        wait_until(lambda: b"daemon.stderr_resumed" in drain(), what="stderr_resumed on stderr")
        [resumed] = daemon.wait_events("daemon.stderr_resumed")
        assert resumed["dropped_lines"] > 0
        # Whole lines were dropped, none cut: each line read starts with its time.
        assert all(line.startswith(b"20") for line in read.splitlines())
        assert daemon.stop() == 0
    finally:
        os.close(read_end)


def test_started_with_stderr_closed(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(start=False)
    # exec keeps the pid: the shell becomes the daemon, with descriptor 2 closed.
    _popen(daemon, ["sh", "-c", 'exec "$@" 2>&-', "sh", *_run_command(daemon.home)])
    daemon.wait_ready()
    _complete(daemon, "job", 3)
    [lost] = daemon.events("daemon.stderr_lost")
    assert lost["error"] == "it was closed when the daemon started"
    # Nothing the daemon opened took descriptor 2 and got the readable log lines.
    assert (daemon.home / "procpool.pid").read_text() == f"{daemon.pid}\n"
    assert daemon.stop() == 0


def test_a_store_locked_by_another_process_is_waited_for(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    daemon.client.submit("sleep", {"seconds": 1.5}, id="running")
    daemon.wait_status("running", "running")
    # 12 s: longer than the 10 s busy timeout that used to end the daemon with exit 70.
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(daemon.home / "procpool.db"), "12"],
        stdout=subprocess.PIPE, text=True,
    ) as locker:  # fmt: skip
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            for n in range(10):
                daemon.client.submit("echo", {"n": n}, id=f"meanwhile{n}")
            [busy] = daemon.wait_events("store.busy", timeout=8)
            assert "database is locked" in busy["error"]
            assert daemon.process is not None and daemon.process.poll() is None
            assert locker.wait(30) == 0
        finally:
            locker.kill()
    for n in range(10):
        assert daemon.wait_status(f"meanwhile{n}", "completed").result == {"n": n}
    assert daemon.wait_status("running", "completed").attempts == 0
    daemon.wait_events("store.available")
    assert len(daemon.events("store.busy")) == 1
    assert not list((daemon.home / "inbox").glob("*.json"))
    assert daemon.stop() == 0


@pytest.fixture
def small_logs_disk(home: Path) -> Iterator[Path]:
    """HOME/logs on a tmpfs of 256 KiB: a real full disk, and a real recovery."""
    logs = home / "logs"
    logs.mkdir(mode=0o700, parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(logs)],
        capture_output=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    yield logs
    subprocess.run(["umount", "-l", str(logs)], check=False)


def _fill(disk: Path) -> Path:
    """Fill the small disk to its last block with one file; returns that file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"x" * 4096):
            pass
    except OSError:
        pass  # the disk is full
    finally:
        os.close(fd)
    return filler


def test_a_log_file_that_cannot_be_written(
    make_daemon: Callable[..., Daemon], small_logs_disk: Path
) -> None:
    """A disk full before the daemon starts: every write of the log fails with ENOSPC.
    (A link to /dev/full would be refused: the daemon follows no link in its home.)"""
    filler = _fill(small_logs_disk)
    daemon = make_daemon(start=False)
    daemon.start(wait_ready=False)
    wait_until(lambda: "worker.started" in daemon.stderr(), what="worker.started on stderr")
    _complete(daemon, "job", 3)
    assert daemon.stderr().count("log.write_failed") == 1
    assert "No space left on device" in daemon.stderr()
    filler.unlink()
    daemon.signal(signal.SIGUSR1)  # a reopen on the way changes nothing
    [recovered] = daemon.wait_events("log.write_recovered")
    assert recovered["dropped_lines"] == 0
    # The lines of the failing spell were kept and written once it ended.
    assert len(daemon.events("log.write_failed")) == 1
    assert {e["job_id"] for e in daemon.events("job.completed")} == {"job0", "job1", "job2"}
    assert daemon.stop() == 0


def test_a_full_disk_under_the_log(
    make_daemon: Callable[..., Daemon], small_logs_disk: Path
) -> None:
    daemon = make_daemon()
    filler = _fill(small_logs_disk)
    _complete(daemon, "full", 30)
    wait_until(lambda: "log.write_failed" in daemon.stderr(), what="log.write_failed")
    filler.unlink()
    daemon.wait_events("log.write_recovered")  # at a later turn, without any signal
    _complete(daemon, "after", 2)
    assert daemon.stderr().count("log.write_failed") == 1
    completed = {e["job_id"] for e in daemon.events("job.completed")}
    assert completed >= {f"full{n}" for n in range(30)} | {"after0", "after1"}
    # A line cut short by the full disk was finished, not written again.
    text = (small_logs_disk / "procpool.jsonl").read_text()
    assert all(json.loads(line) for line in text.splitlines())
    assert daemon.stop() == 0


def test_metrics_that_cannot_be_written(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(start=False, env={"PROCPOOL_METRICS_INTERVAL": "0.2"})
    blocker = daemon.home / "metrics.prom"  # a directory: the rename over it fails
    blocker.mkdir(parents=True)
    daemon.start()
    [failed] = daemon.wait_events("metrics.write_failed")
    assert failed["error"] == "Is a directory"
    _complete(daemon, "job", 3)
    assert len(daemon.events("metrics.write_failed")) == 1
    blocker.rmdir()
    daemon.wait_events("metrics.write_recovered")
    assert "procpool_workers_alive 2" in (daemon.home / "metrics.prom").read_text()
    assert daemon.stop() == 0


def test_a_deleted_store_ends_the_daemon_with_its_reason(
    make_daemon: Callable[..., Daemon],
) -> None:
    """SQLite would go on writing into the deleted file, and everything accepted from
    then on would vanish at the next start."""
    daemon = make_daemon()
    _complete(daemon, "before", 2)
    for path in daemon.home.glob("procpool.db*"):
        path.unlink()
    dropped = daemon.drop("late.json", {"type": "echo", "id": "late"})
    assert daemon.wait_exit(20) == 70
    [crash] = daemon.events("daemon.crashed")
    assert "StoreReplaced" in crash["error"] and "deleted or replaced" in crash["error"]
    assert dropped.exists()  # not consumed by a turn that could not be stored


def test_every_failed_start_says_why_in_the_log(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    second = run_cli(daemon.home, "run")
    assert second.returncode == 1
    assert "already running" in second.stderr
    [refused] = daemon.events("daemon.start_failed")
    assert f"pid {daemon.pid}" in refused["error"]
    assert daemon.stop() == 0
    broken = run_cli(daemon.home, "run", "--handlers", "no_such_handler_module")
    assert broken.returncode == 1
    [_, failed] = daemon.events("daemon.start_failed")
    assert "no_such_handler_module" in failed["error"]


def test_a_stop_while_starting_says_so(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """SIGTERM while a handler module is still importing used to kill the daemon
    without a line."""
    modules = tmp_path / "modules"
    modules.mkdir()
    mark = tmp_path / "importing"
    (modules / "slow_import.py").write_text(
        f"import pathlib, time\npathlib.Path({str(mark)!r}).touch()\ntime.sleep(60)\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(modules), str(TESTS)])}
    daemon = make_daemon(start=False, env=env, args=("--handlers", "slow_import"))
    daemon.start(wait_ready=False)
    wait_until(mark.exists, what="the handler module being imported")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(10) == 0
    [stopped] = daemon.events("daemon.stopped")
    assert stopped["signal"] == "SIGTERM"
