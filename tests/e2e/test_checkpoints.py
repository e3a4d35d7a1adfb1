"""Checkpoints (CONTRACT section 16) through a real daemon: what a handler committed
with ctx.checkpoint reaches the next attempt however the first one ended (an
exception, its timeout, SIGKILL of its worker, the memory limit, a hung worker, kill -9
of the daemon); a value that is
too large or not JSON is refused in the handler; a checkpoint from an attempt that no
longer owns its job (canceled) raises StaleAttempt and stores nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Daemon, run_cli, wait_until
from http_helpers import Server

from procpool import Client

HANDLERS = ("--handlers", "checkpoint_handlers")
STEPS = 5


def seen(folder: Path, attempt: int) -> object:
    return json.loads((folder / f"seen-{attempt}").read_text())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("end", ["raise", "timeout", "kill_worker"])
def test_the_next_attempt_sees_the_last_checkpoint(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], tmp_path: Path, end: str
) -> None:
    daemon = make_daemon(2, env=store_env, args=HANDLERS)
    client = Client(daemon.home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    payload = {"dir": str(tmp_path), "n": STEPS, "end": "sleep" if end == "timeout" else end}
    job_id = client.submit("steps", payload, timeout=1.5 if end == "timeout" else None)
    [done] = client.wait([job_id], timeout=60)
    assert (done.status, done.attempts) == ("completed", 1), done
    assert seen(tmp_path, 1) is None
    assert seen(tmp_path, 2) == {"i": STEPS}
    assert done.result == {"resumed_from": {"i": STEPS}}
    assert done.checkpoint_at is not None
    assert client.checkpoint(job_id) == {"i": STEPS}
    client.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("end", "env", "error"),
    [
        ("memory", {"PROCPOOL_MAX_MEMORY_MB": "100"}, "out of memory"),
        (
            "hang",
            {"PROCPOOL_HEARTBEAT_INTERVAL": "0.1", "PROCPOOL_HEARTBEAT_TIMEOUT": "1"},
            "no heartbeat for 1 s",
        ),
    ],
    ids=["memory", "hung"],
)
def test_the_daemon_ends_the_attempt_and_the_next_one_sees_the_last_checkpoint(
    make_daemon: Callable[..., Daemon], tmp_path: Path, end: str, env: dict[str, str], error: str
) -> None:
    daemon = make_daemon(1, env={"PROCPOOL_KILL_GRACE": "1", **env}, args=HANDLERS)
    payload = {"dir": str(tmp_path), "n": STEPS, "end": end, "mb": 400}
    job_id = daemon.client.submit("steps", payload, max_attempts=2)
    [done] = daemon.client.wait([job_id], timeout=60)
    assert (done.status, done.attempts) == ("completed", 1), done
    assert done.last_error.startswith(error), done.last_error  # the daemon's end, not another
    assert seen(tmp_path, 1) is None
    assert seen(tmp_path, 2) == {"i": STEPS}
    assert done.result == {"resumed_from": {"i": STEPS}}
    assert daemon.client.checkpoint(job_id) == {"i": STEPS}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", ["kill -9", "graceful"])
def test_a_checkpoint_survives_the_daemons_end(
    make_daemon: Callable[..., Daemon], tmp_path: Path, stop: str
) -> None:
    env = {"PROCPOOL_SHUTDOWN_TIMEOUT": "0.5"}
    daemon = make_daemon(2, env=env, args=HANDLERS)
    job_id = daemon.client.submit("steps", {"dir": str(tmp_path), "n": STEPS, "end": "wait"})
    wait_until((tmp_path / "checkpointed").exists, 30, what="the checkpoints")
    if stop == "kill -9":
        daemon.kill()
    else:
        assert daemon.stop() == 0  # the running job goes back to pending, attempts kept
    restarted = make_daemon(2, env=env, args=HANDLERS)
    [done] = restarted.client.wait([job_id], timeout=60)
    charged = 1 if stop == "kill -9" else 0  # a crash costs an attempt, a stop does not
    assert (done.status, done.attempts) == ("completed", charged), done
    assert seen(tmp_path, charged + 1) == {"i": STEPS}
    assert done.result == {"resumed_from": {"i": STEPS}}


def test_a_bad_checkpoint_is_refused_in_the_handler_and_nothing_is_stored(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(1, env={"PROCPOOL_MAX_CHECKPOINT_BYTES": "100"}, args=HANDLERS)
    job_id = daemon.client.submit("bad_checkpoints", {"size": 99})
    [done] = daemon.client.wait([job_id], timeout=30)
    assert done.status == "completed"
    infinite, large, a_set = done.result
    assert infinite.startswith('CheckpointError: checkpoint["ok"]: float inf is not a JSON value')
    assert large.startswith("CheckpointError: the checkpoint is larger than max_checkpoint_bytes")
    assert "(100 bytes)" in large
    assert a_set == "CheckpointError: checkpoint: set is not a JSON value"
    assert done.checkpoint_at is None
    assert daemon.client.checkpoint(job_id) is None


def test_a_canceled_attempt_cannot_checkpoint(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon(1, env={"PROCPOOL_KILL_GRACE": "3"}, args=HANDLERS)
    job_id = daemon.client.submit("stale", {"dir": str(tmp_path)})
    wait_until((tmp_path / "checkpointed").exists, 30, what="the first checkpoint")
    daemon.client.cancel(job_id)
    after = tmp_path / "after-term"
    wait_until(after.exists, 30, what="the handler's checkpoint after its cancel")
    assert after.read_text().startswith("StaleAttempt: attempt 1 of job"), after.read_text()
    [done] = daemon.client.wait([job_id], timeout=30)
    assert done.status == "canceled"
    assert daemon.client.checkpoint(job_id) == {"i": 1}, "the refused one was not stored"
    [refused] = daemon.wait_events("checkpoint.refused", job_id=job_id)
    assert refused["attempt"] == 1


@pytest.mark.timeout(120)
def test_retry_resume_and_the_checkpoint_over_http(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], tmp_path: Path, home: Path
) -> None:
    daemon = make_daemon(2, env=store_env, args=HANDLERS)
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    payload = {"dir": str(tmp_path), "n": STEPS, "end": "raise"}
    old = client.submit("steps", payload, max_attempts=1)
    [failed] = client.wait([old], timeout=60)
    assert failed.status == "failed"
    other = client.submit("echo", 1)
    client.wait([other], timeout=30)
    server = Server(home, "--bind", "127.0.0.1:0", env=store_env)
    try:
        shown = server.get(f"/jobs/{old}/checkpoint")
        assert shown.status_code == 200
        body = shown.json()
        assert (body["job_id"], body["checkpoint"]) == (old, {"i": STEPS})
        assert body["checkpoint_at"] == failed.checkpoint_at
        assert server.get(f"/jobs/{other}/checkpoint").status_code == 404
        assert server.get("/jobs/nobody/checkpoint").status_code == 404
        over_http = server.post(f"/jobs/{old}/retry?resume=true")
        assert over_http.status_code == 201
        by_http = over_http.json()["id"]
    finally:
        server.kill()
    result = run_cli(home, "retry", old, "--resume", env=daemon.env)
    assert result.returncode == 0, result.stderr
    by_cli = result.stdout.strip()
    for job in client.wait([by_cli, by_http], timeout=60):
        assert (job.status, job.retry_of) == ("completed", old), job
        assert job.result == {"resumed_from": {"i": STEPS}}
    assert client.checkpoint(old) == {"i": STEPS}, "the old job keeps its own"
    client.close()
