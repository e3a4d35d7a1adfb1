"""What a handler returns, prints, logs and reports reaches the daemon checked,
bounded and bound to its job; nothing of it can take a worker or the daemon down."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import FAULTS, Daemon, alive, run_cli, wait_until


def _pool_serves(daemon: Daemon, job_id: str) -> None:
    daemon.client.submit("echo", job_id, id=job_id)
    assert daemon.wait_status(job_id, "completed").result == job_id


# ------------------------------------------------------------------ results


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("set", 'result["tags"]: set is not a JSON value'),
        ("nan", 'result["score"]: float nan is not a JSON value (numbers must be finite)'),
        ("inf", "result[1]: float -inf is not a JSON value (numbers must be finite)"),
        ("bytes", 'result["data"]: bytes is not a JSON value'),
        ("datetime", 'result["when"][0]: datetime.datetime is not a JSON value'),
        ("int_key", "result: the key 1 (int) is not a string; JSON object keys are strings"),
    ],
)
def test_a_result_that_is_not_json_fails_naming_the_type_and_where(
    make_daemon, case: str, error: str
) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    daemon.client.submit("result_of", case, id=case, max_attempts=1)
    job = daemon.wait_status(case, "failed")
    assert job.last_error == error
    assert job.result is None
    [failed] = daemon.wait_events("job.failed", job_id=case)
    assert failed["error"] == error


def test_a_result_with_a_lone_surrogate_fails_and_says_why(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    daemon.client.submit("result_of", "surrogate", id="odd-name", max_attempts=1)
    job = daemon.wait_status("odd-name", "failed")
    assert job.last_error.startswith(
        "result[\"file\"]: str holds the lone surrogate '\\udce9' at index 3, which is not"
        " valid Unicode"
    )
    _pool_serves(daemon, "after-surrogate")


def test_tuples_enums_and_bools_are_json(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    daemon.client.submit("result_of", "accepted", id="fine")
    job = daemon.wait_status("fine", "completed", "failed")
    assert job.status == "completed", job.last_error
    assert job.result == {"pair": [1, 2], "color": 1, "flag": True, "none": None}


def test_a_result_over_max_result_bytes_fails_naming_size_and_limit(make_daemon) -> None:
    daemon = make_daemon(workers=1, env={"PROCPOOL_MAX_RESULT_BYTES": "1000"})
    daemon.client.submit("echo", "x" * 2000, id="long", max_attempts=1)
    daemon.client.submit("echo", "é" * 600, id="wide", max_attempts=1)  # 1202 bytes as UTF-8
    daemon.client.submit("echo", "x" * 900, id="short", max_attempts=1)
    assert daemon.wait_status("long", "failed").last_error == (
        "the result is larger than max_result_bytes (1000 bytes):"
        " at least 2002 bytes encoded as JSON"
    )
    assert daemon.wait_status("wide", "failed").last_error == (
        "the result is 1202 bytes encoded as JSON, over max_result_bytes (1000 bytes)"
    )
    assert daemon.wait_status("short", "completed").result == "x" * 900


def test_max_result_bytes_must_be_positive(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "procpool.toml"
    config.write_text("max_result_bytes = 0\n")
    result = run_cli(home, "run", "--config", str(config), timeout=30)
    assert result.returncode == 2
    assert "config key 'max_result_bytes' must be > 0, got 0" in result.stderr


# ------------------------------------------------------------------ output


def _outputs(daemon: Daemon, job_id: str) -> list[dict[str, Any]]:
    return daemon.events("job.output", job_id=job_id)


def test_what_a_handler_writes_is_logged_as_lines_of_its_job(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    daemon.client.submit("talk", None, id="talker")
    assert daemon.wait_status("talker", "completed").result == "talked"
    daemon.wait_events("job.completed", job_id="talker")
    lines = _outputs(daemon, "talker")
    by_text = {line["msg"]: line for line in lines}
    expected = {
        "printed line": "stdout",
        "stderr line": "stderr",
        "fd one line": "stdout",
        "not utf-8: caf\\xe9": "stderr",
        "child stdout": "stdout",
        "child stderr": "stderr",
        "thread line": "stdout",
        "name caf\\udce9.jpg": "stdout",
        "no newline at the end": "stdout",
    }
    for text, stream in expected.items():
        assert text in by_text, f"{text!r} not in {sorted(by_text)}"
        assert by_text[text]["stream"] == stream
        assert by_text[text]["attempt"] == 1
        assert by_text[text]["level"] == "INFO"
    [long_line] = [line for line in lines if line["msg"].startswith("xxx")]
    assert long_line["msg"] == "x" * 10_000 + "... [line cut: 40000 more bytes]"
    # Every line comes before the result, and none reached the daemon's terminal raw.
    completed = daemon.events("job.completed", job_id="talker")[0]
    assert all(line["ts"] <= completed["ts"] for line in lines)
    raw = daemon.stderr().splitlines()
    assert "printed line" not in raw and "child stderr" not in raw
    assert any("job.output" in text and "printed line" in text for text in raw)


# ------------------------------------------------------------------ logs and progress


def test_handler_log_fields_never_clash_with_the_daemons(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    daemon.client.submit("clash", None, id="clasher", max_attempts=1)
    assert daemon.wait_status("clasher", "completed").result == "logged"
    [line] = daemon.wait_events("job.log", job_id="clasher", msg="resized")
    assert line["level"] == "INFO"
    assert line["attempt"] == 1
    assert line["worker_pid"] in daemon.worker_pids()
    assert line["fields"] == {
        "event": "resize",
        "level": "custom",
        "message": "mine",
        "msg": "also mine",
        "ts": 1,
        "worker_pid": -1,
        "job_id": "someone-else",
    }
    [long] = [e for e in daemon.events("job.log", job_id="clasher") if e["msg"].startswith("y")]
    assert long["msg"] == "y" * 10_000 + "... [cut: 10000 more characters]"
    assert long["fields"]["big"] == "z" * 10_000 + "... [cut: 10000 more characters]"
    assert daemon.process.poll() is None
    _pool_serves(daemon, "after-clash")


def test_a_long_progress_message_is_cut(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    daemon.client.submit("clash", None, id="wordy")
    seen = wait_until(lambda: (j := daemon.job("wordy")) and j.progress and j.progress)
    assert seen["message"] == "p" * 1_000 + "... [cut: 4000 more characters]"


def test_a_progress_message_that_is_not_unicode_is_escaped_and_the_worker_lives_on(
    make_daemon,
) -> None:
    daemon = make_daemon(
        workers=1,
        args=FAULTS,
        env={"PROCPOOL_HEARTBEAT_INTERVAL": "0.1", "PROCPOOL_HEARTBEAT_TIMEOUT": "1"},
    )
    worker = daemon.worker_pids()[0]
    daemon.client.submit("surrogate_progress", None, id="cafe", max_attempts=1)
    job = daemon.wait_status("cafe", "completed", "failed")
    assert job.status == "completed", job.last_error
    assert job.progress["message"] == "reading caf\\udce9.jpg"
    [line] = daemon.wait_events("job.log", job_id="cafe")
    assert line["msg"] == "opened caf\\udce9.jpg"
    assert line["fields"] == {"file": "caf\\udce9.jpg"}
    # The heartbeat thread still runs: a job longer than the heartbeat timeout is not hung.
    daemon.client.submit("quiet", {"seconds": 2.5}, id="after-cafe", max_attempts=1)
    after = daemon.wait_status("after-cafe", "completed", "failed")
    assert after.status == "completed", after.last_error
    assert after.worker_pid is None and daemon.worker_pids() == [worker]


def test_a_thread_left_behind_cannot_report_into_the_next_job(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    daemon.client.submit("leave_thread", {"seconds": 4}, id="first")
    daemon.wait_status("first", "completed")
    daemon.client.submit("quiet", {"seconds": 2}, id="second")
    daemon.wait_status("second", "running")
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        job = daemon.job("second")
        if job.status != "running":
            break
        assert job.progress is None, f"the first job's thread reported into the second: {job}"
        time.sleep(0.05)
    assert daemon.wait_status("second", "completed").progress is None
    late = daemon.wait_events("job.log", msg="late line")
    assert {line["job_id"] for line in late} == {"first"}


# ------------------------------------------------------------------ the worker's own life


def test_a_failing_worker_thread_ends_the_worker_with_its_reason(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    worker = daemon.worker_pids()[0]
    daemon.client.submit("break_heartbeat", None, id="breaker", max_attempts=1)
    job = daemon.wait_status("breaker", "failed")
    assert job.last_error == "the worker exited with code 70"
    [line] = daemon.wait_events("job.log", job_id="breaker", level="CRITICAL")
    assert line["msg"] == (
        f"the worker's heartbeat thread failed; worker {worker} exits with code 70"
    )
    assert "RuntimeError: heartbeat broke" in line["fields"]["traceback"]
    assert "heartbeat thread failed" in daemon.stderr()
    _pool_serves(daemon, "after-breaker")


def test_a_worker_in_a_long_c_call_dies_at_once_with_its_daemon(
    make_daemon, tmp_path: Path
) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    pid_file = tmp_path / "gil.pid"
    daemon.client.submit("gil", {"pid_file": str(pid_file)}, id="busy")
    wait_until(lambda: pid_file.exists() and pid_file.read_text())
    worker = int(pid_file.read_text())
    # The handler is inside sum(): it holds the GIL, so no Python code runs in the worker.
    # Judged by the CPU time it has spent since, not by its share of a core, which a
    # loaded machine keeps low.
    spent = psutil.Process(worker).cpu_times().user
    wait_until(lambda: psutil.Process(worker).cpu_times().user > spent + 0.3, 60, what="the C call")
    daemon.kill()
    try:
        wait_until(lambda: not alive(worker), timeout=3, what="the worker to die with it")
    finally:
        if alive(worker):
            os.kill(worker, 9)


def test_an_orphan_of_a_handler_stays_under_its_worker(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    pid_file = tmp_path / "orphan.pids"
    daemon.client.submit("orphan", {"pid_file": str(pid_file), "seconds": 30}, id="parent")
    wait_until(lambda: pid_file.exists() and " " in pid_file.read_text())
    worker, orphan = map(int, pid_file.read_text().split())
    assert psutil.Process(orphan).ppid() == worker
    assert daemon.cli("cancel", "parent", "--timeout", "20").returncode == 0
    wait_until(lambda: not alive(orphan), timeout=5, what="the orphan to go with its run")


# ------------------------------------------------------------------ handler modules


def test_a_handler_module_that_fails_to_import_shows_file_and_line(
    home: Path, tmp_path: Path
) -> None:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "broken_module.py").write_text(
        "import os\n\n\ndef helper():\n    return 1 / 0\n\n\nhelper()\n"
    )
    env = {"PYTHONPATH": str(modules)}
    result = run_cli(home, "run", "--handlers", "broken_module", env=env, timeout=30)
    assert result.returncode == 1
    source = modules / "broken_module.py"
    assert "cannot import handler module 'broken_module'" in result.stderr
    assert f'File "{source}", line 8, in <module>' in result.stderr
    assert f'File "{source}", line 5, in helper' in result.stderr
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "importlib" not in result.stderr


def test_a_handler_that_closes_its_stdout_leaves_a_quiet_worker(make_daemon) -> None:
    daemon = make_daemon(workers=1, args=FAULTS)
    worker = daemon.worker_pids()[0]
    daemon.client.submit("close_stdout", None, id="closer")
    assert daemon.wait_status("closer", "completed").result == "closed"
    # fd 1 is put back after the job (baseline.py); the idle worker must not spin.
    cpu = psutil.Process(worker).cpu_percent(0.5)
    assert cpu < 20, f"the idle worker uses {cpu} % of a CPU"
    _pool_serves(daemon, "after-closer")
