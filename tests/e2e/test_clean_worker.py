"""Each job starts in a clean worker: what a handler changed in its worker's process
(streams, log sink, signals, working directory, environment, sys.path, umask,
resource limits, the root logger, warning filters) is put back after its job, or the worker retires;
the next job on it behaves as in a fresh one."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from conftest import Daemon

HANDLERS = ("--handlers", "clean_worker_handlers")
# Whether a process may raise a hard limit again (root with CAP_SYS_RESOURCE may).
RAISES_HARD_LIMITS = (
    subprocess.run(
        [sys.executable, "-c", "import resource as r; f = r.RLIMIT_FSIZE;"
         " r.setrlimit(f, (2**30, 2**30)); r.setrlimit(f, (2**31, 2**31))"],
        capture_output=True, check=False,
    ).returncode == 0
)  # fmt: skip


def _probe(daemon: Daemon, job_id: str) -> dict[str, Any]:
    """Run the probe as `job_id` and check that it printed on every stream and logged
    through ctx.logger with its field; returns what it saw of its worker."""
    daemon.client.submit("probe", job_id, id=job_id, max_attempts=1)
    job = daemon.wait_status(job_id, "completed", "failed")
    assert job.status == "completed", job.last_error
    [logged] = daemon.wait_events("job.log", job_id=job_id)
    assert logged["msg"] == "probe logged"
    assert logged["fields"] == {"marker": job_id}
    daemon.wait_events("job.output", count=4, job_id=job_id)
    lines = {(e["msg"], e["stream"]) for e in daemon.events("job.output", job_id=job_id)}
    assert lines == {
        (f"{job_id} printed", "stdout"),
        (f"{job_id} on sys.stderr", "stderr"),
        (f"{job_id} on fd 1", "stdout"),
        (f"{job_id} on fd 2", "stderr"),
    }
    return job.result


@pytest.mark.parametrize(
    "kind",
    [
        "drop_buffers",  # a writer of its own over sys.stdout.buffer, dropped: closes it
        "replace_streams",
        "close_fds",  # fd 1 and 2
        "logger_remove",
        "logger_to_stderr",  # remove(), add(sys.stderr), configure(extra=...)
        "sigterm_ignored",  # with SIGPIPE reset and SIGUSR1 blocked
        "sigterm_raises",  # with SIGCHLD ignored
        "chdir",
        "environ",
        "sys_path",
        "sys_path_replaced",
        "umask",
        "soft_limits",  # RLIMIT_CPU and RLIMIT_NOFILE lowered
        "root_logger",  # logging.basicConfig, logging.disable
        "warnings",  # simplefilter("error")
    ],
)
def test_the_next_job_on_the_worker_meets_it_as_it_was(make_daemon, kind: str) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    before = _probe(daemon, "before")
    daemon.client.submit("break", kind, id="breaker", max_attempts=1)
    assert daemon.wait_status("breaker", "completed", "failed").status == "completed"
    after = _probe(daemon, "after")
    assert after == before  # the same worker (pid), in the same state
    assert not daemon.events("worker.exited")


@pytest.mark.parametrize(
    ("kind", "broken"),
    [
        ("close_every_copy_of_stdout", "the standard streams: OSError"),
        pytest.param(
            "hard_limit",
            "the resource limits: ValueError: RLIMIT_FSIZE",
            marks=pytest.mark.skipif(RAISES_HARD_LIMITS, reason="a hard limit can be raised here"),
        ),
    ],
)
def test_a_worker_that_cannot_be_put_back_retires_and_its_queue_waits_unharmed(
    make_daemon, kind: str, broken: str
) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    first = _probe(daemon, "before")
    # The next jobs are queued on the worker behind the breaker.
    daemon.client.submit("break", kind, id="breaker", max_attempts=1)
    for n in range(3):
        daemon.client.submit("probe", f"queued-{n}", id=f"queued-{n}", max_attempts=1)
    assert daemon.wait_status("breaker", "completed", "failed").status == "completed"
    [warning] = daemon.wait_events("job.log", job_id="breaker")
    assert warning["level"] == "WARNING"
    assert "left its worker unfit for another job" in warning["msg"]
    assert broken in warning["msg"]
    [exited] = daemon.wait_events("worker.exited", worker_pid=first["pid"])
    assert exited["exit_code"] == 75
    assert "its last job left it unfit" in exited["msg"]
    for n in range(3):
        job = daemon.wait_status(f"queued-{n}", "completed", "failed")
        assert job.status == "completed", job.last_error
        assert job.attempts == 0  # a queued job that went back was not charged
        assert job.result["pid"] != first["pid"]
    assert _probe(daemon, "after") | {"pid": 0} == first | {"pid": 0}


def test_a_line_at_a_level_of_the_handlers_own_is_logged_at_loguru_s_level_below_it(
    make_daemon,
) -> None:
    daemon = make_daemon(workers=1, args=HANDLERS)
    daemon.client.submit("custom_level", "noticed", id="notice", max_attempts=1)
    job = daemon.wait_status("notice", "completed", "failed")
    assert job.status == "completed", job.last_error
    [line] = daemon.wait_events("job.log", job_id="notice")
    assert (line["level"], line["msg"]) == ("WARNING", "at a level of its own")  # NOTICE is 35
    assert line["fields"] == {"marker": "noticed", "custom_level": "NOTICE"}
    _probe(daemon, "after")  # the same worker serves on
    assert not daemon.events("worker.exited")
