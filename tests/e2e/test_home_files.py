"""The daemon's own files in a home others can write (issue 22, cases 7 to 9).

A group member who may only submit jobs can create names in a 0770 home: each
name the daemon opens there, planted as a link to a file of the daemon's user,
must leave that file's bytes as they were, and the daemon must refuse the name
(saying which) or replace the link; nothing already stored is lost.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, run_cli, wait_until

VICTIM = b"the daemon user's own file: not to be written through a link\n"


def victim(tmp_path: Path) -> Path:
    """A file of the daemon's user outside the home: what a planted link points to."""
    path = tmp_path / "victim"
    path.write_bytes(VICTIM)
    return path


def run_refused(home: Path) -> subprocess.CompletedProcess[str]:
    """`procpool run` on a home it must refuse: it exits at once, never serves."""
    try:
        return run_cli(home, "run", "--workers", "1", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon served the home instead of refusing it")


def used_home(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A home a daemon has served and left cleanly, with one completed job in it."""
    daemon = make_daemon(workers=1)
    daemon.client.submit("echo", {"kept": True}, id="before")
    daemon.wait_status("before", "completed")
    daemon.client.close()  # the last connection to close checkpoints the WAL
    assert daemon.stop() == 0
    return daemon


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "name",
    [
        "procpool.pid",
        "procpool.starts",
        "logs/procpool.jsonl",
        "procpool.db-wal",
        "procpool.db-shm",
    ],
)
def test_a_link_planted_under_a_daemon_file_is_refused_and_nothing_is_lost(
    make_daemon: Callable[..., Daemon], tmp_path: Path, name: str
) -> None:
    daemon = used_home(make_daemon)
    target = victim(tmp_path)
    planted = daemon.home / name
    planted.unlink(missing_ok=True)  # whoever can write the home can remove a name in it
    planted.symlink_to(target)

    refused = run_refused(daemon.home)

    assert target.read_bytes() == VICTIM
    assert refused.returncode == 2, refused.stderr
    assert f"{planted} is a symbolic link, not a regular file" in refused.stderr
    assert "remove it" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert os.path.islink(planted)  # refused, left for the operator to look at
    assert not (daemon.home / "procpool.pid").is_file() or name == "procpool.pid"

    planted.unlink()
    daemon.start()
    assert daemon.job("before").status == "completed"
    daemon.client.submit("echo", {"after": True}, id="after")
    assert daemon.wait_status("after", "completed").result == {"after": True}
    assert target.read_bytes() == VICTIM


def test_a_store_that_is_a_link_is_refused(home: Path, tmp_path: Path) -> None:
    home.mkdir(mode=0o700)
    target = victim(tmp_path)
    (home / "procpool.db").symlink_to(target)
    refused = run_refused(home)
    assert target.read_bytes() == VICTIM
    assert refused.returncode == 2, refused.stderr
    assert f"{home / 'procpool.db'} is a symbolic link, not a regular file" in refused.stderr


def test_a_logs_directory_that_is_a_link_is_refused(home: Path, tmp_path: Path) -> None:
    home.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / "logs").symlink_to(elsewhere)
    refused = run_refused(home)
    assert refused.returncode == 2, refused.stderr
    assert f"{home / 'logs'} is a symbolic link, not a directory" in refused.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_fifo_planted_as_the_pid_file_is_refused(home: Path) -> None:
    home.mkdir(mode=0o700)
    os.mkfifo(home / "procpool.pid")
    refused = run_refused(home)
    assert refused.returncode == 2, refused.stderr
    assert f"{home / 'procpool.pid'} is a FIFO, not a regular file" in refused.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_daemon_file_of_another_user_is_refused(home: Path) -> None:
    home.mkdir(mode=0o700)
    starts = home / "procpool.starts"
    starts.write_bytes(b"")
    os.chown(starts, 4321, 4321)
    refused = run_refused(home)
    assert refused.returncode == 2, refused.stderr
    assert f"{starts} belongs to uid 4321, not to the daemon's user (uid 0)" in refused.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a home to another user needs root")
def test_a_home_of_another_user_is_refused(home: Path) -> None:
    home.mkdir(mode=0o770)
    os.chown(home, 4321, 4321)
    refused = run_refused(home)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"procpool: {home} belongs to uid 4321")
    assert not (home / "procpool.pid").exists()


def test_a_world_writable_home_is_refused(home: Path) -> None:
    home.mkdir()
    home.chmod(0o777)
    refused = run_refused(home)
    assert refused.returncode == 2, refused.stderr
    assert f"{home} is writable by every user (mode 0777)" in refused.stderr
    assert not (home / "procpool.pid").exists()


def test_metrics_are_never_written_through_a_planted_link(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The old fixed temporary name, and metrics.prom itself, planted as links."""
    home = tmp_path / "home"
    home.mkdir(mode=0o770)
    temporary_target, metrics_target = victim(tmp_path), tmp_path / "victim2"
    metrics_target.write_bytes(VICTIM)
    (home / ".metrics.prom.tmp").symlink_to(temporary_target)
    (home / "metrics.prom").symlink_to(metrics_target)
    daemon = make_daemon(env={"PROCPOOL_METRICS_INTERVAL": "0.2"})
    metrics = home / "metrics.prom"
    wait_until(
        lambda: not metrics.is_symlink() and b"procpool_workers_alive" in metrics.read_bytes(),
        30,
        what="metrics.prom written as a file of its own",
    )
    first = metrics.stat().st_ino
    wait_until(lambda: metrics.stat().st_ino != first, 30, what="metrics.prom written again")
    assert temporary_target.read_bytes() == VICTIM
    assert metrics_target.read_bytes() == VICTIM
    assert stat.S_ISREG(metrics.lstat().st_mode)
    assert not [p.name for p in home.iterdir() if p.name.endswith(".tmp")]
    assert daemon.stop() == 0


def test_a_link_planted_where_the_log_is_reopened_is_refused(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """logrotate moves the log, someone plants a link in its place before SIGUSR1: the
    daemon keeps writing the moved file and says why."""
    daemon = make_daemon(workers=1)
    log = daemon.home / "logs" / "procpool.jsonl"
    moved = log.with_name("procpool.jsonl-moved")
    log.rename(moved)
    target = victim(tmp_path)
    log.symlink_to(target)
    daemon.signal(signal.SIGUSR1)
    wait_until(lambda: b"log.reopen_failed" in moved.read_bytes(), 30, what="log.reopen_failed")
    assert f"{log} is a symbolic link, not a regular file".encode() in moved.read_bytes()
    daemon.client.submit("echo", {"n": 1}, id="meanwhile")
    daemon.wait_status("meanwhile", "completed")
    wait_until(lambda: b'"job_id":"meanwhile"' in moved.read_bytes(), 30, what="its lines")
    assert target.read_bytes() == VICTIM
    log.unlink()
    assert daemon.stop() == 0
    assert target.read_bytes() == VICTIM


@pytest.mark.parametrize("name", ["procpool.sock", "procpool.sock.binding"])
def test_a_link_planted_where_the_socket_goes_is_replaced_not_followed(
    make_daemon: Callable[..., Daemon], tmp_path: Path, name: str
) -> None:
    """At its name, or at the one it is bound under before it listens."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    target = victim(tmp_path)
    (home / name).symlink_to(target)
    daemon = make_daemon(workers=1)
    assert stat.S_ISSOCK((home / "procpool.sock").lstat().st_mode)
    assert not os.path.lexists(home / "procpool.sock.binding")
    assert target.read_bytes() == VICTIM
    daemon.client.submit("echo", {"n": 1}, id="through-the-door")
    assert daemon.wait_status("through-the-door", "completed").result == {"n": 1}
    assert not daemon.events("socket.unavailable")
    assert daemon.stop() == 0


# ------------------------------------------------------------------ outside changes


def _run_jobs_until(daemon: Daemon, prefix: str, done: Callable[[], bool], most: int = 400) -> int:
    """Run echo jobs, three at a time, until `done()`; returns how many ran."""
    count = 0
    while not done():
        if count >= most:
            pytest.fail(f"{most} jobs ran and the condition still does not hold")
        ids = [f"{prefix}{count + n}" for n in range(3)]
        daemon.client.submit_many([{"type": "echo", "id": i, "payload": {"i": i}} for i in ids])
        daemon.client.wait(ids, timeout=60)
        daemon.wait_events("job.completed", job_id=ids[-1])  # logged after the commit
        count += 3
    return count


@pytest.mark.timeout(240)
def test_a_log_truncated_from_outside_is_rotated_at_its_real_size(
    make_daemon: Callable[..., Daemon],
) -> None:
    """logrotate's copytruncate empties the file under the daemon: its count of bytes
    written since it opened the file is wrong from then on."""
    limit = 20_000
    daemon = make_daemon(
        workers=1, start=False,
        env={"PROCPOOL_LOG_MAX_BYTES": str(limit), "PROCPOOL_LOG_KEEP": "2"},
    )  # fmt: skip
    logs = daemon.home / "logs"
    logs.mkdir(mode=0o700, parents=True)
    log, kept1, kept2 = (
        logs / "procpool.jsonl",
        logs / "procpool.jsonl.1",
        logs / "procpool.jsonl.2",
    )
    kept1.write_bytes(b"kept one\n")
    kept2.write_bytes(b"kept two\n")

    def files() -> str:
        """What a failure needs to be read: each file's size and first bytes."""
        return ", ".join(
            f"{path.name}: {path.stat().st_size} B {path.read_bytes()[:60]!r}"
            for path in sorted(logs.iterdir())
        )

    daemon.start()
    _run_jobs_until(daemon, "before", lambda: log.stat().st_size > limit * 0.6)
    assert kept1.read_bytes() == b"kept one\n", files()

    copy = logs / "procpool.jsonl-copied"
    copy.write_bytes(log.read_bytes())
    os.truncate(log, 0)  # what copytruncate does after the copy
    # Past the limit by the daemon's own count, well under it by the file's size.
    _run_jobs_until(daemon, "after", lambda: log.stat().st_size > limit * 0.5)
    assert kept1.read_bytes() == b"kept one\n", f"rotated early: {files()}"
    assert kept2.read_bytes() == b"kept two\n", files()
    assert b'"job_id":"after0"' in log.read_bytes(), files()

    # At the real size, rotation goes on as before.
    _run_jobs_until(daemon, "later", lambda: kept1.read_bytes() != b"kept one\n")
    assert kept2.read_bytes() == b"kept one\n", files()
    rotated = kept1.read_bytes()
    assert b'"job_id":"after0"' in rotated, files()
    assert limit * 0.5 < len(rotated) <= limit, files()
    assert not (logs / "procpool.jsonl.3").exists(), files()
    assert daemon.stop() == 0


@pytest.mark.timeout(240)
def test_the_wal_shrinks_once_a_reader_lets_go(make_daemon: Callable[..., Daemon]) -> None:
    """A reader holding a snapshot lets the WAL grow past wal_max_bytes while jobs run;
    once it ends its transaction, the WAL is emptied within seconds."""
    limit = 256 * 1024
    daemon = make_daemon(workers=2, env={"PROCPOOL_WAL_MAX_BYTES": str(limit)})
    wal = daemon.home / "procpool.db-wal"
    reader = sqlite3.connect(daemon.home / "procpool.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM jobs").fetchone()  # the snapshot is held now
        ran = _run_jobs_until(daemon, "job", lambda: wal.stat().st_size > 3 * limit, most=3000)
        assert wal.stat().st_size > 3 * limit
        reader.execute("COMMIT")
    finally:
        reader.close()
    wait_until(lambda: wal.stat().st_size <= limit, 30, what="the WAL to shrink under its limit")
    jobs = daemon.client.list(status="completed", limit=ran + 10)
    assert len(jobs) == ran
    # The daemon goes on as before.
    daemon.client.submit("echo", {"n": 1}, id="after")
    assert daemon.wait_status("after", "completed").result == {"n": 1}
    assert daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_wal_files_a_group_reader_made_do_not_stop_the_daemon(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A producer of the home's group who reads the store while no daemon runs makes
    procpool.db-wal and -shm, owned by them: they are SQLite's, and used as they are."""
    daemon = used_home(make_daemon)
    reader = sqlite3.connect(f"file:{daemon.home / 'procpool.db'}?mode=ro", uri=True)
    assert reader.execute("SELECT count(*) FROM jobs").fetchone() == (1,)
    reader.close()
    for suffix in ("-wal", "-shm"):
        os.chown(daemon.home / f"procpool.db{suffix}", 4321, 0)
    daemon.start()
    daemon.client.submit("echo", {"after": True}, id="after")
    assert daemon.wait_status("after", "completed").result == {"after": True}
    assert daemon.job("before").status == "completed"
    assert daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_group_member_sees_the_running_daemon(daemon: Daemon) -> None:
    """A producer of the home's group is not the pid file's owner: it still reads it as
    the running daemon's."""
    os.chown(daemon.home / "procpool.pid", 4321, 0)  # as the member sees it: not theirs
    stats = json.loads(daemon.cli("stats", "--json").stdout)
    assert stats["daemon"] == {"running": True, "pid": daemon.pid}
    assert daemon.stop() == 0


def test_the_http_servers_output_is_not_written_through_a_link(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    target = victim(tmp_path)
    (home / "logs" / "http.log").symlink_to(target)
    daemon = make_daemon(workers=1, env={"PROCPOOL_HTTP_BIND": "127.0.0.1:0"})
    [failed] = daemon.wait_events("http.spawn_failed")
    assert "Too many levels of symbolic links" in failed["error"]
    daemon.client.submit("echo", {"n": 1}, id="meanwhile")
    assert daemon.wait_status("meanwhile", "completed").result == {"n": 1}
    (home / "logs" / "http.log").unlink()
    daemon.wait_events("http.started", timeout=60)  # at its next try
    assert target.read_bytes() == VICTIM
    assert stat.S_ISREG((home / "logs" / "http.log").lstat().st_mode)
    assert daemon.stop() == 0
