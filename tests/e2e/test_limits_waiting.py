"""`waiting` (CONTRACT section 13): why a due pending job has not started, read from the
rows when the job is read, the same through `status`, the client and the HTTP API, on
SQLite and on PostgreSQL; and each limit's figures in `stats` and metrics.prom."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, wait_until
from http_helpers import Server
from limit_marks import spans

from procpool import Client

LIMIT = {"reason": "limit", "limit": "capped", "running": 1, "max": 1}
KEY = {"reason": "key_limit", "limit": "keyed", "key": "acme", "running": 1, "max": 1}


@pytest.fixture
def limited(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path
) -> Iterator[tuple[Daemon, Client, Server]]:
    daemon = make_daemon(
        2, env={**store_env, "PROCPOOL_LIMITS": "capped=1"}, args=("--handlers", "limit_handlers")
    )
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    server = Server(home, "--bind", "127.0.0.1:0", env=store_env)
    yield daemon, client, server
    server.stop()
    client.close()


@pytest.mark.timeout(180)
def test_a_held_back_job_says_why_everywhere(
    limited: tuple[Daemon, Client, Server], store_env: dict[str, str], tmp_path: Path
) -> None:
    daemon, client, server = limited
    gated = {"dir": str(tmp_path), "seconds": 60, "gate": "open"}
    client.submit("capped", gated, id="c1")
    client.submit("keyed", gated, id="k1", concurrency_key="acme")
    wait_until(lambda: len(spans(tmp_path)) == 2, 30, what="c1 and k1 running")
    client.submit("capped", gated, id="c2")
    client.submit("keyed", gated, id="k2", concurrency_key="acme")
    client.submit("keyed", gated, id="k3", concurrency_key="other", delay=3600)

    assert client.get("c2").waiting == LIMIT
    assert client.get("k2").waiting == KEY
    assert client.get("c1").waiting is None  # running
    assert client.get("k3").waiting is None  # not due yet
    listed = {job.id: job.waiting for job in client.list(status="pending")}
    assert listed == {"c2": LIMIT, "k2": KEY, "k3": None}

    assert [job.id for job in client.list(waiting="key_limit")] == ["k2"]
    held = daemon.cli("list", "--waiting", "limit", "--json", env=store_env).stdout
    assert [json.loads(line)["id"] for line in held.splitlines()] == ["c2"]
    table = daemon.cli("list", "--status", "pending", env=store_env).stdout
    assert "limit of capped: 1 of 1 running" in table
    refused = daemon.cli("list", "--waiting", "limit", "--status", "failed", env=store_env)
    assert refused.returncode == 2 and "--waiting" in refused.stderr

    shown = daemon.cli("status", "c2", "--json", env=store_env)
    assert json.loads(shown.stdout)["waiting"] == LIMIT
    assert "limit of capped: 1 of 1 running" in daemon.cli("status", "c2", env=store_env).stdout
    assert (
        "key limit of keyed, key 'acme': 1 of 1 running"
        in daemon.cli("status", "k2", env=store_env).stdout
    )

    assert server.get("/jobs/c2").json()["waiting"] == LIMIT
    page = server.get("/jobs", params={"status": "pending"}).json()
    assert {job["id"]: job["waiting"] for job in page["jobs"]}["k2"] == KEY
    schema = server.get("/openapi.json").json()
    job_schema = json.dumps(schema["components"]["schemas"]["JobInfo"])
    assert "waiting" in job_schema and "concurrency_key" in job_schema

    stats = json.loads(daemon.cli("stats", "--json", env=store_env).stdout)
    assert stats["limits"] == [
        {"type": "capped", "max": 1, "running": 1, "waiting": 1},
        {"type": "render", "max": 2, "running": 0, "waiting": 0},  # limit=2 on its handler
    ]
    assert "LIMIT" in daemon.cli("stats", env=store_env).stdout
    metrics = daemon.home / "metrics.prom"
    wait_until(
        lambda: (
            metrics.exists() and 'procpool_limit_waiting{type="capped"} 1' in metrics.read_text()
        ),
        30,
        what="the limit in metrics.prom",
    )
    text = metrics.read_text()
    assert 'procpool_limit_running{type="capped"} 1' in text
    assert 'procpool_limit_max{type="capped"} 1' in text

    (tmp_path / "open").write_text("")
    done = client.wait(["c1", "c2", "k1", "k2"], timeout=60)
    assert {job.status for job in done} == {"completed"}
    assert all(job.waiting is None and job.attempts == 0 for job in done)
    client.cancel("k3")


@pytest.mark.timeout(180)
def test_stats_show_key_limits_and_expired_jobs(
    limited: tuple[Daemon, Client, Server], store_env: dict[str, str], tmp_path: Path
) -> None:
    daemon, client, server = limited
    gated = {"dir": str(tmp_path), "seconds": 60, "gate": "open"}
    client.submit("keyed", gated, id="a1", concurrency_key="a")
    client.submit("keyed", gated, id="b1", concurrency_key="b")
    wait_until(lambda: len(spans(tmp_path)) == 2, 30, what="a1 and b1 running")
    client.submit("keyed", gated, id="a2", concurrency_key="a")  # its key is full
    client.submit("echo", 1, id="gone", delay=3600, expires_in=0.5)
    wait_until(lambda: client.get("gone").status == "canceled", 30, what="gone to expire")

    stats = json.loads(daemon.cli("stats", "--json", env=store_env).stdout)
    keyed = {"type": "keyed", "max": 1, "keys_running": 2, "keys_full": 2, "waiting": 1}
    assert stats["key_limits"] == [keyed]
    assert stats["expired"] == 1
    assert server.get("/stats").json()["key_limits"] == [keyed]
    text = daemon.cli("stats", env=store_env).stdout
    assert "KEY LIMIT" in text and "expired: 1 " in text
    metrics = daemon.home / "metrics.prom"
    wait_until(
        lambda: (
            metrics.exists()
            and 'procpool_key_limit_keys_full{type="keyed"} 2' in metrics.read_text()
        ),
        30,
        what="the key limit in metrics.prom",
    )
    text = metrics.read_text()
    assert 'procpool_key_limit_waiting{type="keyed"} 1' in text
    assert 'procpool_key_limit_max{type="keyed"} 1' in text
    (tmp_path / "open").write_text("")
    assert {j.status for j in client.wait(["a1", "a2", "b1"], timeout=60)} == {"completed"}
