"""Per-type defaults through a real daemon (CONTRACT section 13): a job's own field
wins, then its handler's default, then the configuration's, for jobs that come as
inbox files and over the socket (`procpool submit`); `procpool handlers [--json]`
lists what each type gets. Handlers: tests/default_handlers.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, run_cli, wait_until

from procpool import Client

CONFIG = {"PROCPOOL_MAX_ATTEMPTS": "6", "PROCPOOL_TIMEOUT": "50"}
MODULE = ("--handlers", "default_handlers")


def _fields(daemon: Daemon, job_id: str) -> tuple[object, ...]:
    job = daemon.wait_status(job_id, "completed", "failed")
    return job.max_attempts, job.timeout, job.priority


def _done(client: Client, job_id: str) -> Any:
    return wait_until(
        lambda: (job := client.get(job_id)).status in ("completed", "failed") and job,
        30,
        what=f"job {job_id} to end",
    )


def _fields_of(client: Client, job_id: str) -> tuple[object, ...]:
    job = _done(client, job_id)
    return job.max_attempts, job.timeout, job.priority


@pytest.mark.timeout(150)
def test_jobs_that_leave_a_field_out_get_their_handlers_default(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(2, env=CONFIG, args=MODULE)
    # Inbox files: one that says nothing, one that says everything.
    daemon.drop("file-default.json", {"type": "tight", "payload": 1})
    daemon.drop(
        "file-own.json",
        {"type": "tight", "payload": 2, "max_attempts": 5, "timeout": 20, "priority": 0},
    )
    daemon.drop("file-urgent.json", {"type": "urgent", "id": "file-urgent"})
    daemon.drop("file-urgent-0.json", {"type": "urgent", "id": "file-urgent-0", "priority": 0})
    # Over the socket, as a user types it.
    submitted = {
        "cli-default": ("tight", "1"),
        "cli-own": ("tight", "1", "--max-attempts", "4", "--timeout", "9", "--priority", "-2"),
        "cli-echo": ("echo", "1"),
        "cli-urgent-0": ("urgent", "1", "--priority", "0"),
        "cli-urgent": ("urgent", "1"),
    }
    for job_id, args in submitted.items():
        done = daemon.cli("submit", *args, "--id", job_id)
        assert (done.returncode, done.stdout.strip()) == (0, job_id), done.stderr

    assert _fields(daemon, "file-default") == (2, 1.0, 0)  # the handler's
    assert _fields(daemon, "file-own") == (5, 20.0, 0)  # the job's own
    assert _fields(daemon, "cli-default") == (2, 1.0, 0)
    assert _fields(daemon, "cli-own") == (4, 9.0, -2)
    assert _fields(daemon, "cli-echo") == (6, 50.0, 0)  # no handler default: the config's
    assert _fields(daemon, "file-urgent") == _fields(daemon, "cli-urgent") == (6, 50.0, 7)
    # A priority of 0 given is the job's own, not "none": the handler's 7 does not apply.
    assert _fields(daemon, "file-urgent-0") == _fields(daemon, "cli-urgent-0") == (6, 50.0, 0)


@pytest.mark.timeout(150)
def test_the_handlers_timeout_and_attempts_are_enforced(
    make_daemon: Callable[..., Daemon],
) -> None:
    """A run of `tight` past its handler's 1 s is killed, and the second such end is its
    last: the job fails after the handler's 2 attempts, not the configuration's 6."""
    daemon = make_daemon(2, env=CONFIG, args=MODULE)
    done = daemon.cli("submit", "tight", '{"sleep": 30}', "--id", "slow")
    assert done.returncode == 0, done.stderr
    job = daemon.wait_status("slow", "failed", timeout=60)
    assert job.attempts == 2
    assert "timed out" in (job.last_error or "")
    assert daemon.cli("submit", "echo", "1", "--id", "after").returncode == 0
    daemon.wait_status("after", "completed")  # the pool still works


def test_procpool_handlers_lists_each_types_effective_values(home: Path) -> None:
    """Without a daemon: from the configuration and the handler modules it names."""
    env = {**CONFIG, "PROCPOOL_LIMITS": "echo=3", "PROCPOOL_KEY_LIMITS": "urgent=4"}
    listed = run_cli(home, "handlers", "--json", *MODULE, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["type"]: row for row in json.loads(listed.stdout)}
    assert list(rows) == sorted(rows)
    assert {"echo", "sleep", "cpu", "fail", "tight", "urgent"} <= set(rows)
    assert rows["tight"] == {
        "type": "tight", "timeout": 1.0, "max_attempts": 2, "priority": 0, "limit": None,
        "key_limit": 1,
    }  # fmt: skip
    assert rows["urgent"] == {
        "type": "urgent", "timeout": 50.0, "max_attempts": 6, "priority": 7, "limit": 2,
        "key_limit": 4,
    }  # fmt: skip
    assert rows["echo"] == {
        "type": "echo", "timeout": 50.0, "max_attempts": 6, "priority": 0, "limit": 3,
        "key_limit": 1,
    }  # fmt: skip
    table = run_cli(home, "handlers", *MODULE, env=env)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TYPE", "TIMEOUT", "MAX_ATTEMPTS", "PRIORITY", "LIMIT", "KEY_LIMIT"]
    assert ["tight", "1", "2", "0", "-", "1"] in [line.split() for line in lines]


def test_procpool_handlers_refuses_a_bad_configuration(home: Path) -> None:
    unknown = run_cli(home, "handlers", *MODULE, env={"PROCPOOL_LIMITS": "tigth=1"})
    assert unknown.returncode == 2
    assert "'limits.tigth'" in unknown.stderr and "did you mean 'tight'" in unknown.stderr
    missing = run_cli(home, "handlers", "--handlers", "no_such_module_here")
    assert missing.returncode != 0
    assert "cannot import handler module 'no_such_module_here'" in missing.stderr


@pytest.mark.timeout(150)
def test_a_client_writing_a_postgresql_store_gets_the_handlers_defaults(
    pg_url: str, make_daemon: Callable[..., Daemon], home: Path
) -> None:
    """With database_url, the client and `procpool submit` write the jobs themselves,
    knowing no handler: they read the defaults the daemon publishes beside its limits."""
    env = {**CONFIG, "PROCPOOL_DATABASE_URL": pg_url}
    make_daemon(2, env=env, args=MODULE)
    client = Client(home, database_url=pg_url)
    try:
        client.submit("echo", 1, id="first")  # a turn after the start: the table is written
        _done(client, "first")
        client.submit("tight", 1, id="client-default")
        client.submit("tight", 1, id="client-own", max_attempts=5, timeout=20, priority=0)
        client.submit_many(
            [{"type": "urgent", "id": "many-default"}, {"type": "echo", "id": "many-echo"}]
        )
        for job_id, args in {
            "cli-default": ("tight", "1"),
            "cli-urgent-0": ("urgent", "1", "--priority", "0"),
        }.items():
            done = run_cli(home, "submit", *args, "--id", job_id, env=env)
            assert (done.returncode, done.stdout.strip()) == (0, job_id), done.stderr
        assert (
            _fields_of(client, "client-default") == _fields_of(client, "cli-default") == (2, 1.0, 0)
        )
        assert _fields_of(client, "client-own") == (5, 20.0, 0)
        # This process's client has no CONFIG: the configuration's values are its own.
        assert _fields_of(client, "many-default") == (3, None, 7)
        assert _fields_of(client, "many-echo") == (3, None, 0)
        assert _fields_of(client, "cli-urgent-0") == (6, 50.0, 0)
    finally:
        client.close()
