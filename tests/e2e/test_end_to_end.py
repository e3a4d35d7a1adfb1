"""The daemon end to end (issue 2), through the real `procpool` command, a real inbox
and real worker processes, two of them unless a test needs one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import TESTS, Daemon, clean_env, run_cli, wait_until

FAULTS = ("--handlers", "fault_handlers")


def moment(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def assert_user_error(result: subprocess.CompletedProcess[str], code: int, *named: str) -> None:
    """The contract's exit code and one readable line on stderr, never a traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip(), "a failed command says why"
    for word in named:
        assert word in result.stderr, result.stderr


def run_many(
    home: Path, commands: Sequence[Sequence[str]]
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent CLI calls at the same time: each pays a Python start-up."""
    started = [
        (
            command,
            subprocess.Popen(
                [sys.executable, "-m", "procpool", command[0], "--home", str(home), *command[1:]],
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for command in commands
    ]
    results = []
    for command, process in started:
        stdout, stderr = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    return results


def rejected_report(daemon: Daemon, name: str) -> dict[str, Any]:
    """Wait for `name` to land in rejected/ (it moves after its report is written)."""
    wait_until((daemon.home / "rejected" / name).exists, what=f"rejected/{name}")
    return json.loads((daemon.home / "rejected" / f"{name}.error.json").read_text())


@pytest.fixture
def faulty(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon(args=FAULTS)


# ------------------------------------------------------------------ jobs and attempts


def test_retries_exhausted(daemon: Daemon) -> None:
    daemon.cli("submit", "fail", '{"message": "boom"}', "--id", "doomed", "--max-attempts", "3")
    waited = daemon.cli("wait", "doomed", "--timeout", "60")
    assert waited.returncode == 1, waited.stderr
    assert waited.stdout.startswith("doomed failed")
    document = json.loads(daemon.cli("status", "doomed", "--json").stdout)
    assert document["status"] == "failed"
    assert document["attempts"] == document["max_attempts"] == 3
    assert "boom (attempt 3)" in document["last_error"]
    failures = daemon.wait_events("job.failed", 3, job_id="doomed")
    assert [e["attempt"] for e in failures] == [1, 2, 3]
    assert all("retry_at" in e for e in failures[:2])
    assert "retry_at" not in failures[2]


def test_a_permanent_error_ends_the_retries(faulty: Daemon) -> None:
    faulty.cli("submit", "permanent", "--id", "hopeless", "--max-attempts", "5")
    job = faulty.wait_status("hopeless", "failed")
    assert (job.attempts, job.max_attempts) == (1, 5)
    assert "this cannot work" in job.last_error
    [failure] = faulty.wait_events("job.failed", job_id="hopeless")
    assert "retry_at" not in failure
    assert len(faulty.events("job.started", job_id="hopeless")) == 1


def test_the_handler_sees_its_attempt_and_id(faulty: Daemon) -> None:
    faulty.cli("submit", "attempt", "--id", "counted")
    assert faulty.wait_status("counted", "completed").result == {"job_id": "counted", "attempt": 1}


def test_explicit_ids(daemon: Daemon) -> None:
    daemon.drop("carrier.json", {"type": "echo", "id": "inner.7", "payload": 7})
    submitted = daemon.cli("submit", "echo", "8", "--id", "given_8")
    assert submitted.stdout == "given_8\n"
    assert daemon.wait_status("inner.7", "completed").result == 7
    assert daemon.wait_status("given_8", "completed").result == 8
    assert daemon.job("carrier") is None
    assert_user_error(daemon.cli("submit", "echo", "--id", "-bad"), 2, "id")


# ------------------------------------------------------------------ the inbox


def test_a_jsonl_file_with_good_and_bad_lines(daemon: Daemon) -> None:
    lines = [
        json.dumps({"type": "echo", "payload": 1}),
        json.dumps({"type": "echo", "colour": "red"}),
        json.dumps({"type": "echo", "payload": 3, "id": "named"}),
        '{"type": "echo", ',
        json.dumps({"type": "teleport"}),
        json.dumps({"type": "echo", "max_attempts": 0}),
        json.dumps({"type": "echo", "payload": 7}),
    ]
    content = ("\n".join(lines) + "\n").encode()
    daemon.drop("batch.jsonl", content)
    report = rejected_report(daemon, "batch.jsonl")
    assert (daemon.home / "rejected" / "batch.jsonl").read_bytes() == content
    assert report["file"] == "batch.jsonl"
    assert [entry["line"] for entry in report["lines"]] == [2, 4, 5, 6]
    errors = [entry["error"] for entry in report["lines"]]
    assert "colour" in errors[0]
    assert "JSON" in errors[1]
    assert "teleport" in errors[2]
    assert "max_attempts" in errors[3]
    for job_id, value in (("batch-1", 1), ("named", 3), ("batch-7", 7)):
        assert daemon.wait_status(job_id, "completed").result == value
    assert [daemon.job(f"batch-{n}") for n in (2, 3, 4, 5, 6)] == [None] * 5
    assert not (daemon.home / "inbox" / "batch.jsonl").exists()
    [event] = daemon.wait_events("file.rejected", file="batch.jsonl")
    assert [entry["line"] for entry in event["lines"]] == [2, 4, 5, 6]


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "unknown-field.json": (b'{"type": "echo", "colour": "red"}', "colour"),
    "wrong-type.json": (b'{"type": "echo", "priority": "high"}', "priority"),
    "bad-value.json": (b'{"type": "echo", "timeout": 0}', "timeout"),
    "bad-id.json": (b'{"type": "echo", "id": "../up"}', "id"),
    "both.json": (b'{"type": "echo", "delay": 1, "run_at": "2030-01-01T00:00:00Z"}', "run_at"),
    "no-type.json": (b'{"payload": 1}', "type"),
    "unknown-type.json": (b'{"type": "teleport"}', "teleport"),
    "not-json.json": (b'{"type": "echo",', "JSON"),
    "not-utf8.json": (b'{"type": "echo", "payload": "\xff"}', "UTF-8"),
    "array.json": (b"[1, 2]", "object"),
    "empty.json": (b"", "empty"),
    "too-big.json": (b'{"type": "echo", "payload": "' + b"x" * 3000 + b'"}', "limit"),
}


def test_bad_json_files_are_rejected_with_the_field_named(make_daemon) -> None:
    daemon = make_daemon(env={"PROCPOOL_MAX_FILE_BYTES": "2048"})
    for name, (content, _) in BAD_FILES.items():
        daemon.drop(name, content)
    for name, (content, named) in BAD_FILES.items():
        report = rejected_report(daemon, name)
        assert report["file"] == name
        assert named in report["error"], (name, report)
        assert "lines" not in report
        assert (daemon.home / "rejected" / name).read_bytes() == content
        assert daemon.job(name.removesuffix(".json")) is None
    assert list((daemon.home / "inbox").glob("*.json")) == []
    rejected = {e["file"] for e in daemon.wait_events("file.rejected", len(BAD_FILES))}
    assert rejected == set(BAD_FILES)


def test_other_names_in_the_inbox_are_left_alone(daemon: Daemon, tmp_path: Path) -> None:
    inbox = daemon.home / "inbox"
    job = json.dumps({"type": "echo"})
    (inbox / "notes.txt").write_text(job)
    (inbox / ".hidden.json").write_text(job)
    (tmp_path / "elsewhere.json").write_text(job)
    (inbox / "link.json").symlink_to(tmp_path / "elsewhere.json")
    os.mkfifo(inbox / "pipe.json")
    daemon.drop("marker.json", {"type": "echo"})
    daemon.wait_status("marker", "completed")
    assert sorted(p.name for p in inbox.iterdir()) == [
        ".hidden.json", "link.json", "notes.txt", "pipe.json",
    ]  # fmt: skip
    assert [daemon.job(i) for i in ("notes", "hidden", ".hidden", "link", "pipe")] == [None] * 5
    assert list((daemon.home / "rejected").iterdir()) == []
    assert (tmp_path / "elsewhere.json").read_text() == job


def test_duplicate_files(daemon: Daemon) -> None:
    inbox = daemon.home / "inbox"
    daemon.drop("twice.json", '{"type": "echo", "payload": {"a": 1, "b": 2}}')
    first = daemon.wait_status("twice", "completed")

    # The very same submission again, keys reordered and the id written out: a no-op.
    daemon.drop("twice.json", '{"payload": {"b": 2, "a": 1}, "id": "twice", "type": "echo"}')
    daemon.wait_events("file.duplicate", job_id="twice")
    wait_until(lambda: not (inbox / "twice.json").exists(), what="the duplicate removed")
    assert daemon.job("twice") == first
    assert list((daemon.home / "rejected").iterdir()) == []

    # The same id with another payload: rejected, the job untouched.
    daemon.drop("twice.json", '{"type": "echo", "payload": {"a": 2}}')
    report = rejected_report(daemon, "twice.json")
    assert "duplicate id" in report["error"]
    assert "twice" in report["error"]
    assert daemon.job("twice") == first
    assert len(daemon.events("job.started", job_id="twice")) == 1


# ------------------------------------------------------------------ when jobs start


def test_priority_order_with_one_worker(make_daemon) -> None:
    daemon = make_daemon(workers=1)
    daemon.cli("submit", "sleep", '{"seconds": 300}', "--id", "blocker")
    daemon.wait_status("blocker", "running")
    for job_id, priority in (("p0", 0), ("p10", 10), ("minus5", -5), ("p3", 3)):
        daemon.client.submit("echo", job_id, id=job_id, priority=priority)
    # Equal priorities: the older run_at first.
    daemon.drop("newer.json", {"type": "echo", "priority": 7, "run_at": "2020-01-01T00:00:01Z"})
    daemon.drop("older.json", {"type": "echo", "priority": 7, "run_at": "2020-01-01T00:00:00Z"})
    expected = ["p10", "older", "newer", "p3", "p0", "minus5"]
    wait_until(
        lambda: all((j := daemon.job(i)) is not None and j.status == "pending" for i in expected),
        what="every job queued behind the blocker",
    )
    assert daemon.job("blocker").status == "running"
    daemon.client.cancel("blocker")  # frees the one worker
    for job_id in expected:
        daemon.wait_status(job_id, "completed")
    starts = [e["job_id"] for e in daemon.wait_events("job.started", 7)]
    assert starts == ["blocker", *expected]


def test_delay(daemon: Daemon) -> None:
    submitted_at = datetime.now(UTC).timestamp()
    daemon.cli("submit", "echo", "--id", "later", "--delay", "1.5")
    job = daemon.wait_status("later", "completed")
    [started] = daemon.wait_events("job.started", job_id="later")
    assert moment(started["ts"]) >= submitted_at + 1.5
    assert moment(job.run_at) >= submitted_at + 1.5


def test_run_at_in_the_future(daemon: Daemon) -> None:
    at = datetime.now(UTC) + timedelta(seconds=1.5)
    written = at.astimezone(timezone(timedelta(hours=2))).isoformat()  # an offset, not Z
    daemon.drop("scheduled.json", {"type": "echo", "run_at": written})
    job = daemon.wait_status("scheduled", "completed")
    assert job.run_at.endswith("Z")
    assert abs(moment(job.run_at) - at.timestamp()) < 0.001
    [started] = daemon.wait_events("job.started", job_id="scheduled")
    assert moment(started["ts"]) >= at.timestamp()


# ------------------------------------------------------------------ the commands


def test_list_and_stats(daemon: Daemon) -> None:
    for n in range(3):
        daemon.client.submit("echo", n, id=f"e{n}")
        daemon.wait_status(f"e{n}", "completed")
    daemon.client.submit("fail", {"message": "nope"}, id="f0", max_attempts=1)
    daemon.wait_status("f0", "failed")
    daemon.client.submit("sleep", {"seconds": 1}, id="s0", delay=300)
    daemon.wait_status("s0", "pending")
    newest_first = ["s0", "f0", "e2", "e1", "e0"]

    human = daemon.cli("list")
    assert human.returncode == 0, human.stderr
    header, *rows = human.stdout.splitlines()
    assert header.split()[:3] == ["ID", "TYPE", "STATUS"]
    assert [row.split()[0] for row in rows] == newest_first
    assert "nope" in rows[1]

    def listed(*args: str) -> list[str]:
        result = daemon.cli("list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["id"] for line in result.stdout.splitlines()]

    assert listed() == newest_first
    assert listed("--status", "failed") == ["f0"]
    assert listed("--status", "completed", "--status", "pending") == ["s0", "e2", "e1", "e0"]
    assert listed("--type", "echo") == ["e2", "e1", "e0"]
    assert listed("--limit", "2") == ["s0", "f0"]
    assert listed("--type", "echo", "--limit", "1") == ["e2"]
    assert listed("--type", "nosuch") == []
    full = json.loads(daemon.cli("list", "--json", "--limit", "1").stdout)
    assert (full["status"], full["type"], full["payload"]) == ("pending", "sleep", {"seconds": 1})

    figures = json.loads(daemon.cli("stats", "--json").stdout)
    assert figures["jobs"] == {
        "pending": 1, "running": 0, "completed": 3, "failed": 1, "canceled": 0,
    }  # fmt: skip
    nonzero = {
        job_type: {status: n for status, n in counts.items() if n}
        for job_type, counts in figures["types"].items()
    }
    assert nonzero == {"echo": {"completed": 3}, "fail": {"failed": 1}, "sleep": {"pending": 1}}
    assert figures["daemon"] == {"running": True, "pid": daemon.pid}
    assert figures["oldest_pending_age"] >= 0
    text = daemon.cli("stats")
    assert text.returncode == 0, text.stderr
    assert f"pid {daemon.pid}" in text.stdout
    assert all(job_type in text.stdout for job_type in ("echo", "fail", "sleep"))


def test_unknown_ids(daemon: Daemon) -> None:
    daemon.client.submit("echo", 1, id="known")
    daemon.wait_status("known", "completed")
    commands = [
        ("status", "nope"),
        ("status", "nope", "--json"),
        ("wait", "nope"),
        ("wait", "known", "nope", "--timeout", "10"),
    ]
    for result in run_many(daemon.home, commands):
        assert_user_error(result, 1, "nope")
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stdout == ""


def test_unknown_ids_without_a_daemon_or_a_home(home: Path) -> None:
    """Without a store the id cannot be looked up: the error names the home instead
    (a mistyped --home is not an empty queue)."""
    for result in run_many(home, [("status", "nope"), ("wait", "nope")]):
        assert_user_error(result, 1, str(home), "not a procpool home")


def test_an_id_no_job_can_have_is_unknown_not_a_traceback(daemon) -> None:
    """300 characters: longer than a file name may be."""
    for result in run_many(daemon.home, [("status", "x" * 300), ("wait", "x" * 300)]):
        assert_user_error(result, 1, "x" * 300)


def test_usage_errors_exit_2(home: Path) -> None:
    commands = [
        ("submit", "echo", "--bogus"),
        ("submit", "echo", "{not json"),
        ("submit", "echo", "--max-attempts", "0"),
        ("submit", "echo", "--priority", "high"),
        ("submit", "echo", "--delay", "-1"),
        ("submit", "echo", "--timeout", "0"),
        ("submit",),
        ("status",),
        ("list", "--status", "bogus"),
        ("list", "--limit", "0"),
        ("wait",),
        ("run", "--workers", "0"),
    ]
    for result in run_many(home, commands):
        assert_user_error(result, 2)
    assert list(home.glob("inbox/*")) == [], "a refused submit writes nothing"


def test_submit_creates_a_private_home(home: Path) -> None:
    submitted = run_cli(home, "submit", "echo", "--id", "first")
    assert submitted.returncode == 0, submitted.stderr
    assert home.stat().st_mode & 0o777 == 0o700
    assert json.loads((home / "inbox" / "first.json").read_text())["type"] == "echo"


def test_wait_timeout_exits_124(daemon: Daemon) -> None:
    daemon.client.submit("echo", None, id="far", delay=300)
    daemon.wait_status("far", "pending")
    assert_user_error(daemon.cli("wait", "far", "--timeout", "0.3"), 124, "timed out")


def test_python_m_procpool(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "procpool", "--help"],
        capture_output=True, text=True, env=clean_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for command in ("run", "submit", "status", "list", "wait", "stats", "stop"):
        assert f"  {command} " in result.stdout


# ------------------------------------------------------------------ stopping


def test_a_graceful_stop_lets_a_running_job_finish(daemon: Daemon) -> None:
    daemon.cli("submit", "sleep", '{"seconds": 1.5}', "--id", "finishing")
    daemon.wait_started("finishing")
    daemon.signal(signal.SIGTERM)
    daemon.wait_events("daemon.stopping")
    daemon.drop("late.json", {"type": "echo"})  # no new job starts once the stop began
    assert daemon.wait_exit() == 0
    job = daemon.job("finishing")
    assert (job.status, job.attempts, job.result) == ("completed", 0, {"slept": 1.5})
    events = [(e["event"], e.get("job_id")) for e in daemon.log()]
    assert (
        events.index(("daemon.stopping", None))
        < events.index(("job.completed", "finishing"))
        < events.index(("daemon.stopped", None))
    )
    assert daemon.events("job.started", job_id="late") == []
    late = daemon.job("late")
    assert late is None or late.status == "pending"
    assert not (daemon.home / "procpool.pid").exists()


def test_a_stop_past_the_shutdown_timeout_returns_the_job_unchanged(make_daemon) -> None:
    daemon = make_daemon(env={"PROCPOOL_SHUTDOWN_TIMEOUT": "0.5"})
    daemon.cli("submit", "sleep", '{"seconds": 4}', "--id", "cut", "--max-attempts", "1")
    daemon.wait_started("cut")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit() == 0
    job = daemon.job("cut")
    assert (job.status, job.attempts, job.last_error, job.worker_pid) == ("pending", 0, None, None)
    assert daemon.events("job.interrupted", job_id="cut")
    # With max_attempts 1, a counted attempt would have failed the job: it runs again instead.
    again = make_daemon()
    assert again.wait_status("cut", "completed").attempts == 0
    assert [e["attempt"] for e in again.events("job.started", job_id="cut")] == [1, 1]


def test_the_stop_command(daemon: Daemon) -> None:
    stopped = daemon.cli("stop", "--timeout", "30")
    assert stopped.returncode == 0, stopped.stderr
    assert str(daemon.pid) in stopped.stdout
    assert daemon.wait_exit(10) == 0
    assert daemon.events("daemon.stopped")
    assert_user_error(daemon.cli("stop"), 1, "not running")


# ------------------------------------------------------------------ logs


def test_log_events_carry_the_contracts_fields(daemon: Daemon) -> None:
    daemon.cli("submit", "echo", '{"k": 1}', "--id", "logged")
    daemon.client.submit("fail", {"times": 1}, id="retried")
    daemon.drop("broken.json", b"{")
    daemon.wait_status("logged", "completed")
    daemon.wait_status("retried", "completed")
    rejected_report(daemon, "broken.json")
    assert daemon.stop() == 0

    log = daemon.log()
    for line in log:
        assert line["ts"].endswith("Z")
        assert moment(line["ts"]) > 0
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        assert isinstance(line["event"], str) and isinstance(line["msg"], str)

    def one(name: str, **match: Any) -> dict[str, Any]:
        found = daemon.events(name, **match)
        assert found, f"no {name} event matching {match}"
        return found[0]

    assert one("daemon.started")["workers"] == 2
    workers = {e["worker_pid"] for e in daemon.events("worker.started")}
    assert len(workers) == 2
    assert {e["worker_pid"] for e in daemon.events("worker.exited")} == workers
    # Submitted over the socket door while the daemon runs (a file would be file.accepted).
    submitted = one("job.submitted", job_id="logged")
    assert (submitted["type"], submitted["via"], submitted["jobs"]) == ("echo", "socket", 1)
    started = one("job.started", job_id="logged")
    assert (started["type"], started["attempt"]) == ("echo", 1)
    assert started["worker_pid"] in workers
    completed = one("job.completed", job_id="logged")
    assert (completed["type"], completed["attempt"]) == ("echo", 1)
    assert completed["worker_pid"] == started["worker_pid"]
    assert completed["duration_ms"] >= 0
    failed = one("job.failed", job_id="retried")
    assert (failed["type"], failed["attempt"], failed["level"]) == ("fail", 1, "WARNING")
    assert "failed on purpose (attempt 1)" in failed["error"]
    assert moment(failed["retry_at"]) >= moment(failed["ts"]) and failed["retry_at"].endswith("Z")
    assert one("job.completed", job_id="retried")["attempt"] == 2
    assert "JSON" in one("file.rejected", file="broken.json")["error"]
    one("daemon.stopping")
    one("daemon.stopped")

    stderr_lines = daemon.stderr().splitlines()
    for line in log:
        assert any(
            text.startswith(line["ts"]) and line["event"] in text and line["msg"] in text
            for text in stderr_lines
        ), f"no readable stderr line for {line}"


def test_handler_log_lines_reach_the_log(faulty: Daemon) -> None:
    faulty.cli("submit", "chatty", "--id", "talker")
    faulty.wait_status("talker", "completed")
    [line] = wait_until(
        lambda: [e for e in faulty.log() if e.get("msg") == "hello from the handler"]
    )
    assert line["job_id"] == "talker"
    assert line["level"] == "INFO"
    assert line["worker_pid"] in {e["worker_pid"] for e in faulty.events("worker.started")}
    wait_until(lambda: "hello from the handler" in faulty.stderr())


# ------------------------------------------------------------------ one daemon per home


def test_a_second_daemon_on_the_same_home_is_refused(daemon: Daemon) -> None:
    second = daemon.cli("run", "--workers", "1", timeout=30)
    assert_user_error(second, 1, str(daemon.pid))
    assert (daemon.home / "procpool.pid").read_text().strip() == str(daemon.pid)
    daemon.client.submit("echo", "still", id="still")
    assert daemon.wait_status("still", "completed").result == "still"


# ------------------------------------------------------------------ scale


def test_two_thousand_jobs_from_one_jsonl(daemon: Daemon) -> None:
    count = 2000
    daemon.drop(
        "bulk.jsonl", "\n".join(json.dumps({"type": "echo", "payload": n}) for n in range(count))
    )
    [accepted] = daemon.wait_events("file.accepted", file="bulk.jsonl")
    assert accepted["jobs"] == count
    ids = [f"bulk-{n + 1}" for n in range(count)]
    waited = daemon.cli("wait", *ids, "--timeout", "120", timeout=150)
    assert waited.returncode == 0, waited.stderr[-2000:]
    jobs = daemon.client.list(type="echo", limit=count + 1)
    assert len(jobs) == count
    assert {j.id: (j.status, j.result) for j in jobs} == {
        f"bulk-{n + 1}": ("completed", n) for n in range(count)
    }
    assert not (daemon.home / "inbox" / "bulk.jsonl").exists()
    assert list((daemon.home / "rejected").iterdir()) == []


# ------------------------------------------------------------------ handlers and config


@pytest.mark.parametrize("route", ["flag", "config", "environment", "entry_point"])
def test_handler_modules_are_loaded(make_daemon, tmp_path: Path, route: str) -> None:
    job_type, payload, result = "attempt", None, {"job_id": "loaded", "attempt": 1}
    if route == "flag":
        daemon = make_daemon(args=FAULTS)
    elif route == "config":
        config = tmp_path / "procpool.toml"
        config.write_text('handlers = ["fault_handlers"]\n')
        daemon = make_daemon(args=("--config", str(config)))
    elif route == "environment":
        daemon = make_daemon(env={"PROCPOOL_HANDLERS": "fault_handlers"})
    else:
        path = os.pathsep.join([str(TESTS), str(TESTS / "example_entry_point")])
        daemon = make_daemon(env={"PYTHONPATH": path})
        job_type, payload, result = "example.reverse", "abc", "cba"
    assert job_type in daemon.wait_events("daemon.started")[0]["handlers"]
    daemon.client.submit(job_type, payload, id="loaded")
    assert daemon.wait_status("loaded", "completed").result == result


def test_a_handler_module_that_cannot_be_imported(home: Path) -> None:
    result = run_cli(home, "run", "--handlers", "no_such_module_here", timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "no_such_module_here" in result.stderr


@pytest.mark.parametrize(
    ("where", "text", "key"),
    [
        ("file", "wrokers = 2\n", "wrokers"),
        ("file", 'workers = "many"\n', "workers"),
        ("home", "max_attempts = 0\n", "max_attempts"),
        ("environment", "lots", "max_attempts"),
    ],
)
def test_a_bad_config_stops_run_with_exit_2(
    home: Path, tmp_path: Path, where: str, text: str, key: str
) -> None:
    args: tuple[str, ...] = ()
    env = None
    if where == "file":
        config = tmp_path / "bad.toml"
        config.write_text(text)
        args = ("--config", str(config))
    elif where == "home":
        home.mkdir(mode=0o700)
        (home / "procpool.toml").write_text(text)
    else:
        env = {"PROCPOOL_MAX_ATTEMPTS": text}
    result = run_cli(home, "run", "--workers", "1", *args, env=env, timeout=30)
    assert_user_error(result, 2, key)
    assert not (home / "procpool.pid").exists()
