"""Expiry (CONTRACT section 13): a job still pending at its expires_at is canceled with
last_error "expired" within a turn; a running one is never stopped by it; bad values
are refused naming the field. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, wait_until
from limit_marks import spans

from procpool import Client, InvalidJobFile
from procpool.domain.spec import JobSpec, digest


@pytest.fixture
def limited(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path
) -> Iterator[tuple[Daemon, Client]]:
    daemon = make_daemon(
        2, env={**store_env, "PROCPOOL_LIMITS": "capped=1"}, args=("--handlers", "limit_handlers")
    )
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    yield daemon, client
    client.close()


@pytest.mark.timeout(120)
def test_pending_jobs_expire_and_a_running_one_goes_on(
    limited: tuple[Daemon, Client], tmp_path: Path
) -> None:
    daemon, client = limited
    gated = {"dir": str(tmp_path), "seconds": 60, "gate": "open"}
    client.submit("capped", gated, id="runs", expires_in=1.0)
    wait_until(lambda: spans(tmp_path), 30, what="the first job running")
    client.submit("capped", gated, id="held", expires_in=1.0)  # held back by the limit
    client.submit("echo", 1, id="later", delay=3600, expires_in=1.0)  # not due: nothing wakes
    began = time.monotonic()
    for job_id in ("held", "later"):
        job = wait_until(
            lambda job_id=job_id: (j := client.get(job_id)).status == "canceled" and j,
            30,
            what=f"{job_id} to expire",
        )
        assert (job.last_error, job.attempts) == ("expired", 0)
    assert time.monotonic() - began < 25  # within a turn of the second; generous on a busy box
    daemon.wait_events("job.expired", 2)
    assert client.get("runs").status == "running"  # its expiry passed while it ran
    metrics = daemon.home / "metrics.prom"
    wait_until(
        lambda: metrics.exists() and "procpool_jobs_expired_total 2" in metrics.read_text(),
        30,
        what="the expired jobs in metrics.prom",
    )
    (tmp_path / "open").write_text("")
    [runs] = client.wait(["runs"], timeout=30)
    assert runs.status == "completed" and runs.expires_at is not None
    assert [s.job_id for s in spans(tmp_path)] == ["runs"]  # `held` never started


def test_bad_expiry_is_refused_naming_the_field(limited: tuple[Daemon, Client]) -> None:
    daemon, client = limited
    for kwargs, words in [
        ({"expires_at": "2001-01-01T00:00:00Z"}, 'expires_at "2001-01-01T00:00:00Z" has passed'),
        ({"expires_at": "2999-01-01T00:00:00Z", "expires_in": 5},
         "expires_at and expires_in cannot be given together"),
        ({"expires_in": 0}, "expires_in must be > 0, got 0"),
        ({"expires_at": "soon"}, "expires_at must be an RFC 3339 time"),
    ]:  # fmt: skip
        with pytest.raises(InvalidJobFile, match=words.replace("(", r"\(")):
            client.submit("echo", 1, **kwargs)  # type: ignore[arg-type]
    result = daemon.cli("submit", "echo", "--expires-at", "2001-01-01T00:00:00Z", env=daemon.env)
    assert (
        result.returncode != 0 and "expires_at" in result.stderr and "has passed" in result.stderr
    )


def test_a_job_file_past_its_expiry_is_rejected_whole(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    content = json.dumps({"type": "echo", "expires_at": "2001-01-01T00:00:00Z"})
    daemon.drop("old.json", content)
    report = daemon.home / "rejected" / "old.json.error.json"
    wait_until(report.exists, 30, what="the rejection")
    assert "has passed" in json.loads(report.read_text())["error"]
    assert (daemon.home / "rejected" / "old.json").read_text() == content


def test_the_new_fields_leave_old_submissions_their_digest() -> None:
    """A file read again after the upgrade is still the same submission: the digest of a
    spec without concurrency_key, expires_at and expires_in is the one d24dbf8 kept."""
    assert digest(JobSpec(type="echo", payload=1, priority=3)) == "c8be655ea8497603b4e83871ac65a5db"
    assert digest(JobSpec(type="echo", payload=1, priority=3, expires_in=5.0)) != digest(
        JobSpec(type="echo", payload=1, priority=3)
    )
