"""Operating procpool (issue 7), end to end through the real daemon and CLI: stats,
metrics.prom, logs and their rotation, progress, retry, the attempt history,
retention and prune, systemd's notify protocol, and the Python client."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import FAULTS, Daemon, clean_env, run_cli, wait_until

from procpool import Client
from procpool.client import JobNotTerminal

REPO = Path(__file__).parents[2]
FAST_METRICS = {"PROCPOOL_METRICS_INTERVAL": "0.5"}
DAY = 86400.0


# `procpool submit`'s options, as the client takes them.
SUBMIT_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--id": ("id", str),
    "--max-attempts": ("max_attempts", int),
    "--timeout": ("timeout", float),
    "--priority": ("priority", int),
    "--delay": ("delay", float),
}


def submit(daemon: Daemon, job_type: str, *args: str) -> str:
    """Queue a job, given as to `procpool submit` (TYPE [PAYLOAD_JSON] [--option
    VALUE]...), through the daemon's client in this process: these tests look at what
    follows a submission, which is the same from either door (the CLI's own submit
    has its tests in test_end_to_end.py), and a CLI process per job cost each of them
    tens of seconds on a loaded machine."""
    payload = None
    if args and not args[0].startswith("--"):
        payload, args = json.loads(args[0]), args[1:]
    options = {SUBMIT_OPTIONS[flag][0]: SUBMIT_OPTIONS[flag][1](value)
               for flag, value in zip(args[::2], args[1::2], strict=True)}  # fmt: skip
    return daemon.client.submit(job_type, payload, **options)


def wait_terminal(daemon: Daemon, *job_ids: str) -> None:
    for job_id in job_ids:
        daemon.wait_status(job_id, "completed", "failed", "canceled")


class Follower:
    """A `procpool logs -f` process whose output lines are collected by a thread."""

    def __init__(self, home: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "procpool", "logs", "--home", str(home), "-f", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(), text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C, as a person stops following; returns the exit code and stderr."""
        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=20)
        self._thread.join(10)
        return self.process.returncode, stderr

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=10)


@pytest.fixture
def followers() -> Any:
    started: list[Follower] = []
    yield started
    for follower in started:
        follower.kill()


# ------------------------------------------------------------------------ stats


def test_stats_counts_a_known_workload(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(env=FAST_METRICS)
    echoes = [submit(daemon, "echo", str(n)) for n in range(3)]
    failing = submit(daemon, "fail", "--max-attempts", "2")
    pending = submit(daemon, "echo", "--delay", "3600")
    wait_terminal(daemon, *echoes, failing)
    daemon.wait_status(pending, "pending")

    # Worker states reach the store every metrics_interval: waited for in this process,
    # so that the CLI below runs once, not once per look.
    wait_until(
        lambda: sum(w.jobs_done for w in daemon.client.stats(cpu_sample=0).workers) == 5,
        what="the workers' reports to count 5 finished attempts",
    )

    def figures() -> Any:
        result = daemon.cli("stats", "--json")
        assert result.returncode == 0, result.stderr
        stats = json.loads(result.stdout)
        return sum(w["jobs_done"] for w in stats["workers"]) == 5 and stats

    stats = wait_until(figures, what="stats to count 5 finished attempts")
    assert stats["daemon"] == {"running": True, "pid": daemon.pid}
    assert stats["jobs"] == {"pending": 1, "running": 0, "completed": 3, "failed": 1, "canceled": 0}
    assert stats["types"]["echo"] == {
        "pending": 1, "running": 0, "completed": 3, "failed": 0, "canceled": 0
    }  # fmt: skip
    assert stats["types"]["fail"]["failed"] == 1
    window = stats["throughput"]["5m"]  # per minute over 5 minutes: count / 5
    assert round(window["completed"] * 5) == 3
    assert round(window["failed"] * 5) == 1
    assert round(window["attempts_failed"] * 5) == 2
    assert set(stats["throughput"]) == {"1m", "5m", "15m"}
    assert stats["failure_rate"] == pytest.approx(2 / 5)
    assert stats["oldest_pending_age"] >= 0
    assert stats["run_time"]["echo"]["count"] == 3
    assert stats["run_time"]["fail"]["count"] == 2
    assert 0 <= stats["run_time"]["echo"]["mean"] <= stats["run_time"]["echo"]["p95"] + 1e-9
    assert sorted(w["pid"] for w in stats["workers"]) == sorted(daemon.worker_pids())
    for worker in stats["workers"]:
        assert worker["rss_bytes"] > 0
        assert worker["cpu_percent"] >= 0
        assert worker["state"] in ("idle", "busy")
        assert set(worker) == {"pid", "state", "current_job", "jobs_done", "rss_bytes",
                               "cpu_percent", "updated_at", "age"}  # fmt: skip
        # The state is as old as the daemon's last snapshot, and says so.
        written = datetime.fromisoformat(worker["updated_at"]).timestamp()
        taken = datetime.fromisoformat(stats["at"]).timestamp()
        assert worker["age"] == pytest.approx(taken - written, abs=0.002)
        assert 0 <= worker["age"] < 30

    table = daemon.cli("stats")
    assert table.returncode == 0, table.stderr
    assert f"daemon   running, pid {daemon.pid}" in table.stdout
    assert re.search(r"^echo\s+1\s+0\s+3\s+0\s+0$", table.stdout, re.MULTILINE), table.stdout
    assert "failure rate (15m): 40.0% of attempts" in table.stdout
    for pid in daemon.worker_pids():
        assert re.search(rf"^{pid}\s+(idle|busy)\s+[\d.]+ s ago\s+\d+\s+[\d.]+ MiB",
                         table.stdout, re.MULTILINE), table.stdout  # fmt: skip
    assert re.search(r"^WORKER\s+STATE\s+AS OF\s+JOBS DONE", table.stdout, re.MULTILINE)

    daemon.stop()
    stopped = json.loads(daemon.cli("stats", "--json").stdout)
    assert stopped["daemon"] == {"running": False, "pid": None}
    assert stopped["workers"] == []
    assert "daemon   not running" in daemon.cli("stats").stdout


# ---------------------------------------------------------------------- metrics

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse_metrics(text: str) -> tuple[dict[tuple[str, tuple[tuple[str, str], ...]], float], dict]:
    """The text exposition format: {(name, sorted labels): value}, {family: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        pairs = tuple(sorted(LABEL.findall(labels or "")))
        samples[(name, pairs)] = float(value)
    return samples, types


def test_metrics_file_counts_a_known_workload(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(env=FAST_METRICS)
    ids = [submit(daemon, "echo", json.dumps({"n": n})) for n in range(5)]
    ids += [submit(daemon, "fail", "--max-attempts", "2") for _ in range(2)]
    ids.append(submit(daemon, "sleep", '{"seconds": 60}', "--timeout", "0.5",
                      "--max-attempts", "1"))  # fmt: skip
    wait_terminal(daemon, *ids)
    finished = time.time()
    path = daemon.home / "metrics.prom"

    def fresh() -> Any:
        if not path.exists():
            return None
        samples, types = parse_metrics(path.read_text())
        stamp = samples.get(("procpool_metrics_timestamp_seconds", ()), 0)
        # The worker that the timeout killed is replaced: wait for the pool to be whole.
        pids = {dict(k[1])["pid"] for k in samples if k[0] == "procpool_worker_rss_bytes"}
        steady = pids == {str(pid) for pid in daemon.worker_pids()} and len(pids) == 2
        return stamp > finished and steady and (samples, types)

    samples, types = wait_until(fresh, what="a metrics.prom written after the workload")

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("procpool_jobs", type="echo", status="completed") == 5
    assert value("procpool_jobs", type="fail", status="failed") == 2
    assert value("procpool_jobs", type="sleep", status="failed") == 1
    assert [k for k in samples if k[0] == "procpool_jobs"] == [
        ("procpool_jobs", (("status", "completed"), ("type", "echo"))),
        ("procpool_jobs", (("status", "failed"), ("type", "fail"))),
        ("procpool_jobs", (("status", "failed"), ("type", "sleep"))),
    ]
    assert value("procpool_attempts_failed_total", type="fail", reason="error") == 4
    assert value("procpool_attempts_failed_total", type="sleep", reason="timeout") == 1
    assert value("procpool_job_run_seconds_count", type="echo") == 5
    assert value("procpool_job_run_seconds_count", type="fail") == 4
    assert value("procpool_job_run_seconds_bucket", type="echo", le="+Inf") == 5
    buckets = [
        v for (name, labels), v in samples.items()
        if name == "procpool_job_run_seconds_bucket" and ("type", "echo") in labels
    ]  # fmt: skip
    assert buckets == sorted(buckets), "histogram buckets are cumulative"
    assert value("procpool_workers_alive") == 2
    rss = {dict(k[1])["pid"]: v for k, v in samples.items() if k[0] == "procpool_worker_rss_bytes"}
    assert sorted(map(int, rss)) == sorted(daemon.worker_pids())
    assert all(v > 0 for v in rss.values())
    assert value("procpool_inbox_backlog_files") == 0
    assert value("procpool_oldest_pending_age_seconds") == 0
    assert types == {
        "procpool_jobs": "gauge",
        "procpool_attempts_failed_total": "counter",
        "procpool_job_run_seconds": "histogram",
        "procpool_workers_alive": "gauge",
        "procpool_worker_rss_bytes": "gauge",
        "procpool_inbox_backlog_files": "gauge",
        "procpool_oldest_pending_age_seconds": "gauge",
        "procpool_limit_max": "gauge",
        "procpool_limit_running": "gauge",
        "procpool_limit_waiting": "gauge",
        "procpool_key_limit_max": "gauge",
        "procpool_key_limit_keys_running": "gauge",
        "procpool_key_limit_keys_full": "gauge",
        "procpool_key_limit_waiting": "gauge",
        "procpool_paused": "gauge",
        "procpool_paused_waiting": "gauge",
        "procpool_pause_until_seconds": "gauge",
        "procpool_jobs_expired_total": "counter",
        "procpool_schedule_skipped_total": "counter",
        "procpool_jobs_duplicate_key_total": "counter",
        "procpool_jobs_canceled_by_parent_total": "counter",
        "procpool_metrics_timestamp_seconds": "gauge",
    }
    assert not list(daemon.home.glob(".metrics.prom*")), "the temporary file is renamed away"


# ------------------------------------------------------------------------- logs


def test_logs_follow_across_rotations(
    make_daemon: Callable[..., Daemon], followers: list[Follower]
) -> None:
    daemon = make_daemon(env={"PROCPOOL_LOG_MAX_BYTES": "4000", "PROCPOOL_LOG_KEEP": "3"})
    follower = Follower(daemon.home, "--json", "--event", "job.completed")
    followers.append(follower)
    # A first job shows that the follower is attached before the rotations begin.
    first = submit(daemon, "echo")
    wait_until(lambda: any(line["job_id"] == first for line in follower.json_lines()),
               what="the follower to print the first job")  # fmt: skip
    expected = [first]
    for round_ in range(4):
        batch = [submit(daemon, "echo", json.dumps({"round": round_, "n": n})) for n in range(8)]
        wait_terminal(daemon, *batch)
        expected.extend(batch)
        # A follower that lagged by more than log_keep rotations would have lost
        # files; one round rotates the log once or twice.
        wait_until(lambda: len(follower.lines) >= len(expected), what="the round's lines")
    seen = [line["job_id"] for line in follower.json_lines()]
    assert sorted(seen) == sorted(expected), "each line once, none lost across a rotation"
    assert seen[0] == first
    log = daemon.home / "logs"
    rotated = sorted(p.name for p in log.iterdir())
    assert rotated == ["procpool.jsonl", "procpool.jsonl.1", "procpool.jsonl.2",
                       "procpool.jsonl.3"], "three old files kept"  # fmt: skip
    for path in log.iterdir():
        data = path.read_bytes()
        assert data.endswith(b"\n")
        assert all(json.loads(line) for line in data.splitlines()), "no line split by a rotation"
    code, stderr = follower.interrupt()
    assert code == 0
    assert stderr == ""


def test_logs_reads_rotated_files_in_order_and_filters(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(env={"PROCPOOL_LOG_MAX_BYTES": "3000", "PROCPOOL_LOG_KEEP": "50"})
    jobs = [submit(daemon, "echo", str(n)) for n in range(10)]
    failing = submit(daemon, "fail", "--max-attempts", "2")
    wait_terminal(daemon, *jobs, failing)
    # The log line follows the commit that `wait_terminal` saw.
    wait_until(lambda: len(daemon.cli("logs", "--event", "job.failed").stdout.splitlines()) == 2,
               what="two job.failed lines")  # fmt: skip
    assert list((daemon.home / "logs").glob("procpool.jsonl.*")), "the log has rotated"

    everything = daemon.cli("logs", "--json")
    assert everything.returncode == 0, everything.stderr
    lines = [json.loads(line) for line in everything.stdout.splitlines()]
    assert lines[0]["event"] == "daemon.starting", "the oldest rotated file comes first"
    stamps = [line["ts"] for line in lines]
    assert stamps == sorted(stamps)
    assert {line["job_id"] for line in lines if line["event"] == "job.completed"} == set(jobs)

    one = daemon.cli("logs", "--job", jobs[0])
    assert one.returncode == 0, one.stderr
    events = [line.split()[2] for line in one.stdout.splitlines()]
    assert events == ["job.submitted", "job.started", "job.completed"]
    assert all(f"job_id={jobs[0]}" in line for line in one.stdout.splitlines())

    # Values of one kind are alternatives; kinds must all hold.
    two = daemon.cli("logs", "--json", "--job", jobs[0], "--job", jobs[1],
                     "--event", "job.started", "--event", "job.completed")  # fmt: skip
    assert two.returncode == 0, two.stderr
    picked = sorted(
        (line["job_id"], line["event"]) for line in map(json.loads, two.stdout.splitlines())
    )
    assert picked == sorted((job_id, event) for job_id in jobs[:2]
                            for event in ("job.started", "job.completed"))  # fmt: skip

    warnings = daemon.cli("logs", "--level", "warning", "--event", "job.*", "--json")
    found = [json.loads(line) for line in warnings.stdout.splitlines()]
    assert [(line["event"], line["level"]) for line in found] == [
        ("job.failed", "WARNING"), ("job.failed", "ERROR")
    ]  # fmt: skip
    assert all(line["job_id"] == failing for line in found)

    last = daemon.cli("logs", "-n", "2", "--event", "job.completed")
    assert len(last.stdout.splitlines()) == 2

    bad = daemon.cli("logs", "--level", "loud")
    assert bad.returncode == 2


def test_logs_without_a_log_says_so(home: Path) -> None:
    result = run_cli(home, "logs")
    assert result.returncode == 1
    assert f"{home} is not a procpool home: the directory does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigusr1_reopens_the_log_for_logrotate(
    make_daemon: Callable[..., Daemon], followers: list[Follower]
) -> None:
    daemon = make_daemon()
    follower = Follower(daemon.home, "--json", "--event", "job.completed")
    followers.append(follower)
    first = submit(daemon, "echo")
    wait_until(lambda: len(follower.lines) == 1, what="the follower to print the first job")
    log = daemon.home / "logs" / "procpool.jsonl"
    moved = log.with_name("procpool.jsonl-20261128")
    os.rename(log, moved)  # what logrotate does, before it sends SIGUSR1
    daemon.signal(signal.SIGUSR1)
    wait_until(log.exists, what="a new log file after SIGUSR1")
    second = submit(daemon, "echo")
    wait_until(lambda: len(follower.lines) == 2, what="the follower to print the second job")
    assert [line["job_id"] for line in follower.json_lines()] == [first, second]
    assert second in log.read_text()
    assert second not in moved.read_text()
    assert follower.interrupt()[0] == 0


# --------------------------------------------------------------------- progress


def test_wait_progress_prints_a_line_per_update_off_a_terminal(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # The job runs until the test has seen `wait` print it running: a job of a fixed
    # length could end before `wait` starts on a loaded machine.
    daemon, gate = make_daemon(args=FAULTS), tmp_path / "gate"
    job_id = submit(daemon, "gated", json.dumps({"gate": str(gate)}))
    command = [sys.executable, "-m", "procpool", "wait", "--home", str(daemon.home), job_id,
               "--progress"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=clean_env()) as wait:
        assert wait.stdout is not None
        out = []
        for line in wait.stdout:
            out.append(line)
            if re.fullmatch(rf"{job_id}\s+\d+%\s+running\s+.* s left", line.rstrip("\n")):
                gate.touch()
        code = wait.wait(timeout=60)
    stdout = "".join(out)
    assert code == 0, stdout
    lines = stdout.splitlines()
    running = [line for line in lines if re.fullmatch(rf"{job_id}\s+\d+%\s+running\s+.* s left",
                                                      line)]  # fmt: skip
    assert running, stdout
    percents = [int(re.search(r"(\d+)%", line).group(1)) for line in running]  # type: ignore[union-attr]
    assert percents == sorted(percents)
    assert re.fullmatch(rf"{job_id}\s+100%\s+completed", lines[-2])
    assert lines[-1] == f"{job_id} completed"
    assert "\x1b" not in stdout and "\r" not in stdout


def read_pty(
    command: list[str], timeout: float = 60, seen: Callable[[str], None] = lambda output: None
) -> tuple[int, str]:
    """Run a command with its standard output on a terminal; return its code and output.
    `seen` is called with the output so far after each read."""
    primary, secondary = pty.openpty()
    process = subprocess.Popen(command, stdout=secondary, stderr=secondary, env=clean_env())
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            output += chunk
            seen(output.decode(errors="replace"))
        elif process.poll() is not None:
            break
    os.close(primary)
    return process.wait(timeout=10), output.decode()


def open_gate_when(gate: Path, pattern: str) -> Callable[[str], None]:
    """A `seen` callback that opens a gated job's gate once the output matches."""

    def seen(output: str) -> None:
        if re.search(pattern, output):
            gate.touch()

    return seen


def test_wait_progress_draws_bars_on_a_terminal(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon, gate = make_daemon(args=FAULTS), tmp_path / "gate"
    slow = submit(daemon, "gated", json.dumps({"gate": str(gate)}))
    quick = submit(daemon, "sleep", '{"seconds": 0.5}')
    # The gated job's bar may still be empty (0-4 %) when it is seen running.
    running_bar = rf"{slow}\s+\[#*\.+\]\s+\d+%\s+running"
    code, output = read_pty(
        [sys.executable, "-m", "procpool", "wait", "--home", str(daemon.home), slow, quick,
         "--progress"],
        seen=open_gate_when(gate, running_bar),
    )  # fmt: skip
    assert code == 0, output
    assert "\x1b[2A" in output, "the two bars are redrawn in place"
    assert re.search(running_bar, output), output
    assert re.search(rf"{slow}\s+\[#{{20}}\] 100%\s+completed", output)
    assert re.search(rf"{quick}\s+\[#{{20}}\] 100%\s+completed", output)


def test_status_and_list_show_progress(daemon: Daemon) -> None:
    job_id = submit(daemon, "sleep", '{"seconds": 30}')
    wait_until(lambda: (j := daemon.job(job_id)) and j.progress and j.progress["fraction"] > 0,
               what="a progress report")  # fmt: skip
    status = daemon.cli("status", job_id)
    assert re.search(r"^progress\s+\d+% [\d.]+ s left$", status.stdout, re.MULTILINE), status.stdout
    listing = daemon.cli("list")
    assert re.search(rf"^{job_id}\s+sleep\s+running\s+.*\d+% [\d.]+ s left$", listing.stdout,
                     re.MULTILINE), listing.stdout  # fmt: skip
    assert daemon.cli("cancel", job_id).returncode == 0


# ------------------------------------------------------------ retry and history


def test_retry_creates_a_new_job_and_leaves_the_old_one(daemon: Daemon) -> None:
    old = submit(daemon, "fail", '{"message": "flaky"}', "--id", "report-7", "--max-attempts",
                 "1", "--priority", "3", "--timeout", "30")  # fmt: skip
    wait_terminal(daemon, old)
    before = daemon.cli("status", old, "--json").stdout

    first = daemon.cli("retry", old)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "report-7.retry-1\n"
    new = daemon.wait_status("report-7.retry-1", "failed")
    original = daemon.job(old)
    assert (new.type, new.payload, new.max_attempts, new.timeout, new.priority) == (
        original.type, original.payload, original.max_attempts, original.timeout,
        original.priority,
    )  # fmt: skip
    assert new.retry_of == old
    assert json.loads(daemon.cli("status", new.id, "--json").stdout)["retry_of"] == old
    assert daemon.cli("status", old, "--json").stdout == before, "the old job is untouched"
    assert json.loads(before)["retry_of"] is None

    # A second retry of the same job takes the next free number of its line.
    assert daemon.cli("retry", old).stdout == "report-7.retry-2\n"
    wait_terminal(daemon, "report-7.retry-2")
    # A retry of `X.retry-K` is `X.retry-(K+1)`: the number says how far down the
    # original's line it is. Here that id is report-7's second retry, so the line
    # forks under report-7.retry-1 rather than skipping to a number of another job's.
    assert daemon.cli("retry", "report-7.retry-1").stdout == "report-7.retry-1.retry-1\n"
    assert daemon.cli("retry", "report-7.retry-2").stdout == "report-7.retry-3\n"
    wait_terminal(daemon, "report-7.retry-1.retry-1", "report-7.retry-3")
    assert daemon.job("report-7.retry-1.retry-1").retry_of == "report-7.retry-1"
    assert daemon.job("report-7.retry-3").retry_of == "report-7.retry-2"
    assert daemon.cli("retry", "report-7.retry-3").stdout == "report-7.retry-4\n"
    further = daemon.cli("retry", "report-7.retry-1.retry-1")
    assert further.stdout == "report-7.retry-1.retry-2\n"

    waiting = submit(daemon, "echo", "--delay", "3600")
    refused = daemon.cli("retry", waiting)
    assert refused.returncode == 1
    assert "pending" in refused.stderr
    unknown = daemon.cli("retry", "no-such-job")
    assert (unknown.returncode, unknown.stderr) == (1, "procpool: no job 'no-such-job'\n")
    assert daemon.cli("retry").returncode == 2
    assert daemon.cli("retry", old, "--all-failed").returncode == 2


def test_retry_all_failed_in_bulk(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    flaky = [submit(daemon, "fail", "--id", f"flaky-{n}", "--max-attempts", "1") for n in (1, 2)]
    broken = submit(daemon, "cpu", '{"seconds": "x"}', "--id", "broken")  # PermanentError
    done = submit(daemon, "echo")
    wait_terminal(daemon, *flaky, broken, done)
    listing = daemon.cli("list", "--status", "failed")
    assert re.search(r"^broken\s+cpu\s+failed\s+1/3\s+\S+ \S+\s+.*payload.seconds must be a number",
                     listing.stdout, re.MULTILINE), listing.stdout  # fmt: skip
    assert re.search(r"^flaky-1\s+fail\s+failed\s+1/1\s+\S+ \S+\s+RuntimeError: failed on purpose",
                     listing.stdout, re.MULTILINE)  # fmt: skip
    assert daemon.stop() == 0

    # With the daemon stopped, the retries wait in the inbox, and count as retries there.
    by_type = daemon.cli("retry", "--all-failed", "--type", "fail")
    assert by_type.returncode == 0, by_type.stderr
    assert by_type.stdout.splitlines() == ["flaky-1.retry-1", "flaky-2.retry-1"]
    again = daemon.cli("retry", "--all-failed", "--type", "fail")
    assert (again.returncode, again.stdout) == (0, "")
    assert "no failed jobs to retry" in again.stderr

    restarted = make_daemon()
    wait_terminal(restarted, "flaky-1.retry-1", "flaky-2.retry-1")
    everything = restarted.cli("retry", "--all-failed")
    assert sorted(everything.stdout.splitlines()) == [
        "broken.retry-1", "flaky-1.retry-2", "flaky-2.retry-2"
    ], "each failed job not yet retried, once"  # fmt: skip
    assert restarted.job("flaky-1.retry-1").retry_of == "flaky-1"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of a daemon and its CLI on each store. Asked for before
    make_daemon, so that the daemons stop before the database goes."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("pg_url")
    monkeypatch.setenv("PROCPOOL_DATABASE_URL", url)  # for the test's own Client
    return {"PROCPOOL_DATABASE_URL": url}


def test_retry_all_failed_retries_each_line_of_retries_once(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon(workers=1, env=store_env)

    def cli(*args: str) -> str:
        done = daemon.cli(*args, env=store_env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    submit(daemon, "fail", "--id", "rep", "--max-attempts", "1")
    wait_terminal(daemon, "rep")
    for expected in ("rep.retry-1", "rep.retry-2"):  # both repeat rep
        assert cli("retry", "rep") == f"{expected}\n"
        assert daemon.wait_status(expected, "failed").retry_of == "rep"
    # rep.retry-1 has no retry of its own, but the work has moved on to rep.retry-2.
    assert cli("retry", "--all-failed") == "rep.retry-3\n"
    wait_terminal(daemon, "rep.retry-3")

    submit(daemon, "fail", "--id", "other", "--max-attempts", "1")
    wait_terminal(daemon, "other")
    assert cli("retry", "other") == "other.retry-1\n"
    wait_terminal(daemon, "other.retry-1")
    blocker = submit(daemon, "sleep", '{"seconds": 3600}')
    daemon.wait_started(blocker)
    # other.retry-2 waits behind the blocker (pending, or handed to the busy worker).
    assert cli("retry", "other") == "other.retry-2\n"
    assert daemon.job("other.retry-2").status in ("pending", "running")
    second = cli("retry", "--all-failed")
    assert second == "rep.retry-4\n", "nothing of a line with a job queued or running"

    daemon.client.cancel(blocker)
    wait_terminal(daemon, blocker, "other.retry-2", "rep.retry-4")
    blocker = submit(daemon, "sleep", '{"seconds": 3600}')
    daemon.wait_started(blocker)
    third = cli("retry", "--all-failed", "--type", "fail")
    assert sorted(third.splitlines()) == ["other.retry-3", "rep.retry-5"]
    assert daemon.job("other.retry-3").retry_of == "other.retry-2"
    assert cli("retry", "--all-failed") == "", "each line once, while its retry waits"
    daemon.client.cancel(blocker)
    wait_terminal(daemon, "other.retry-3", "rep.retry-5")


def test_show_lists_every_attempt(daemon: Daemon) -> None:
    twice = submit(daemon, "fail", '{"times": 1, "message": "first try"}')
    timed_out = submit(daemon, "sleep", '{"seconds": 60}', "--timeout", "0.5",
                       "--max-attempts", "1")  # fmt: skip
    wait_terminal(daemon, twice, timed_out)

    shown = daemon.cli("show", twice, "--json")
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)["history"]
    assert [(a["attempt"], a["outcome"]) for a in history] == [(1, "retry"), (2, "completed")]
    assert history[0]["error"] == "RuntimeError: first try (attempt 1)"
    assert history[1]["error"] is None
    for attempt in history:
        assert attempt["worker_pid"] > 0
        assert attempt["started_at"] <= attempt["ended_at"]
        assert attempt["duration"] >= 0
        assert attempt["exit_signal"] is None

    table = daemon.cli("show", twice).stdout
    assert re.search(r"^  1  \S+ \S+  \S+ \S+\s+[\d.]+ s  retry\s+\d+\s+RuntimeError: first try",
                     table, re.MULTILINE), table  # fmt: skip
    assert re.search(r"^  2  \S+ \S+  \S+ \S+\s+[\d.]+ s  completed\s+\d+$", table, re.MULTILINE)
    assert daemon.cli("status", twice).stdout == table, "status shows the attempts too"
    assert "history" not in json.loads(daemon.cli("status", twice, "--json").stdout)

    [ended] = json.loads(daemon.cli("show", timed_out, "--json").stdout)["history"]
    assert ended["outcome"] == "failed"
    assert ended["error"].startswith("timed out")
    assert ended["exit_signal"] in ("SIGTERM", "SIGKILL")

    running = submit(daemon, "sleep", '{"seconds": 60}')
    daemon.wait_status(running, "running")
    [current] = json.loads(daemon.cli("show", running, "--json").stdout)["history"]
    assert (current["outcome"], current["ended_at"]) == ("running", None)
    assert daemon.cli("cancel", running).returncode == 0
    [canceled] = json.loads(daemon.cli("show", running, "--json").stdout)["history"]
    assert canceled["outcome"] == "canceled"
    assert canceled["exit_signal"] in ("SIGTERM", "SIGKILL")
    assert daemon.cli("show", "nope").returncode == 1


# ------------------------------------------------------------ retention, prune


def age_jobs(home: Path, job_ids: list[str], days: float, created_too: bool = False) -> None:
    """Test setup only, with the daemon stopped: make jobs look `days` old."""
    moment = time.time() - days * DAY
    with sqlite3.connect(home / "procpool.db") as db:
        for job_id in job_ids:
            db.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (moment, job_id))
            if created_too:
                db.execute("UPDATE jobs SET created_at = ? WHERE id = ?", (moment, job_id))
    db.close()


def runs_of(home: Path, job_id: str) -> int:
    with sqlite3.connect(f"file:{home / 'procpool.db'}?mode=ro", uri=True) as db:
        count = db.execute("SELECT count(*) FROM runs WHERE job_id = ?", (job_id,)).fetchone()[0]
    db.close()
    return count


def test_retention_deletes_exactly_the_old_jobs(make_daemon: Callable[..., Daemon]) -> None:
    first = make_daemon()
    old = [submit(first, "echo", "--id", f"old-{n}") for n in range(3)]
    recent = [submit(first, "fail", "--id", f"recent-{n}", "--max-attempts", "1") for n in range(2)]
    waiting = submit(first, "echo", "--id", "waiting", "--delay", "3600")
    wait_terminal(first, *old, *recent)
    first.wait_status(waiting, "pending")
    assert runs_of(first.home, "old-0") == 1
    assert first.stop() == 0

    # A job finished 10 days ago was created then or before (retention seeks by both).
    age_jobs(first.home, old, days=10, created_too=True)
    age_jobs(first.home, [waiting], days=10, created_too=True)
    second = make_daemon(env={"PROCPOOL_RETENTION_DAYS": "7"})
    wait_until(lambda: all(second.job(job_id) is None for job_id in old), what="retention")
    assert sum(e["count"] for e in second.wait_events("jobs.pruned")) == 3
    assert all(runs_of(second.home, job_id) == 0 for job_id in old), "attempt history too"
    assert [second.job(job_id).status for job_id in recent] == ["failed", "failed"]
    assert second.job(waiting).status == "pending", "a pending job is never deleted"
    assert runs_of(second.home, "recent-0") == 1


def test_prune_by_hand(make_daemon: Callable[..., Daemon]) -> None:
    first = make_daemon()
    finished = [submit(first, "echo") for _ in range(3)]
    finished.append(submit(first, "fail", "--max-attempts", "1"))
    waiting = submit(first, "echo", "--delay", "3600")
    wait_terminal(first, *finished)
    first.wait_status(waiting, "pending")
    assert first.stop() == 0
    old, recent = finished[:2], finished[2:]
    age_jobs(first.home, old, days=3, created_too=True)
    age_jobs(first.home, [waiting], days=3, created_too=True)

    daemon = make_daemon()
    result = daemon.cli("prune", "--older-than", "2", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted 2 jobs finished before ")
    assert all(daemon.job(job_id) is None for job_id in old)
    assert all(daemon.job(job_id) is not None for job_id in recent)
    assert daemon.job(waiting).status == "pending", "a pending job is never deleted"
    assert daemon.events("prune.requested", days=2.0)

    assert daemon.stop() == 0
    later = daemon.cli("prune")
    assert later.returncode == 0
    assert "takes effect when the daemon starts" in later.stdout
    assert json.loads((daemon.home / "inbox" / "prune.json").read_text()) == {"prune": 7.0}
    assert daemon.cli("prune", "--older-than", "-1").returncode == 2


def test_prune_older_than_zero_deletes_every_finished_job(daemon: Daemon) -> None:
    finished = [submit(daemon, "echo") for _ in range(3)]
    waiting = submit(daemon, "echo", "--delay", "3600")
    wait_terminal(daemon, *finished)
    result = daemon.cli("prune", "--older-than", "0", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted 3 jobs finished before ")
    assert all(daemon.job(job_id) is None for job_id in finished)
    assert daemon.job(waiting).status == "pending"


# ---------------------------------------------------------------------- systemd


def test_systemd_readiness_status_and_stopping(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(0.2)
    received: list[str] = []

    def got(prefix: str) -> Any:
        with contextlib.suppress(TimeoutError):
            received.extend(listener.recv(4096).decode().splitlines())
        return [line for line in received if line.startswith(prefix)]

    daemon = make_daemon(env={"NOTIFY_SOCKET": address, **FAST_METRICS}, start=False)
    daemon.start(wait_ready=False)
    try:
        wait_until(lambda: got("READY=1"), what="READY=1")
        assert f"MAINPID={daemon.pid}" in received
        daemon.wait_events("daemon.started")
        wait_until(lambda: any("workers" in line for line in got("STATUS=")), what="STATUS=")
        daemon.signal(signal.SIGTERM)
        wait_until(lambda: got("STOPPING=1"), what="STOPPING=1")
        assert daemon.wait_exit() == 0
    finally:
        listener.close()


def test_the_unit_file() -> None:
    text = (REPO / "config" / "procpool.service").read_text()
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["ExecStart"][0].endswith("procpool run --home /var/lib/procpool")
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert float(settings["TimeoutStopSec"][0]) > 30.0, "above the default shutdown_timeout"
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("PrivateTmp", "yes"), ("ProtectHome", "yes"),
                       ("ReadWritePaths", "/var/lib/procpool")):  # fmt: skip
        assert settings[key] == [value]
    verify = shutil.which("systemd-analyze")
    procpool = shutil.which("procpool")
    if verify and procpool:
        local = Path(os.environ.get("TMPDIR", "/tmp")) / f"procpool-{os.getpid()}.service"
        local.write_text(text.replace("/usr/local/bin/procpool", procpool))
        try:
            result = subprocess.run([verify, "verify", str(local)], capture_output=True,
                                    text=True, timeout=60, check=False)  # fmt: skip
        finally:
            local.unlink()
        assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------- client


def test_the_python_client(daemon: Daemon) -> None:
    with Client(daemon.home) as client:
        job_id = client.submit("sleep", {"seconds": 0.3}, priority=2)
        updates: list[str] = []
        [job] = client.wait([job_id], timeout=30, on_poll=lambda jobs: updates.append(
            "inbox" if jobs[0] is None else jobs[0].status))  # fmt: skip
        assert job.status == "completed"
        assert job.result == {"slept": 0.3}
        assert updates[-1] == "completed"
        assert client.get(job_id) == job
        assert client.get("nope") is None
        assert [j.id for j in client.list(status="completed", type="sleep")] == [job_id]
        [attempt] = client.attempts(job_id)
        assert attempt.outcome == "completed"

        retried = client.retry(job_id)
        assert retried == f"{job_id}.retry-1"
        [again] = client.wait([retried], timeout=30)
        assert (again.retry_of, again.priority, again.payload) == (job_id, 2, {"seconds": 0.3})

        pending = client.submit("echo", delay=3600)
        daemon.wait_status(pending, "pending")
        with pytest.raises(JobNotTerminal):
            client.retry(pending)
        client.cancel(pending)
        [canceled] = client.wait([pending], timeout=30)
        assert canceled.status == "canceled"
        with pytest.raises(TimeoutError):
            client.wait([client.submit("sleep", {"seconds": 30})], timeout=0.2)
        assert client.stats(cpu_sample=0).jobs["completed"] == 2
