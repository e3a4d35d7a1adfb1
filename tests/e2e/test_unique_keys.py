"""Unique keys (CONTRACT section 16) through a real daemon, on SQLite and on PostgreSQL:
concurrent submitters of one key get one job, every other submission its id; the key
is free the moment its job is terminal, whatever ended it; every door says so."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, run_cli, wait_until
from http_helpers import Server

from procpool import Client


@pytest.fixture
def keyed(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon], home: Path
) -> Iterator[tuple[Daemon, Client]]:
    daemon = make_daemon(2, env=store_env)
    client = Client(home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
    yield daemon, client
    client.close()


def live_ids(client: Client, job_type: str) -> list[str]:
    return [j.id for j in client.list(type=job_type, limit=1000) if not j.is_terminal]


@pytest.mark.timeout(180)
def test_a_hundred_concurrent_submitters_of_one_key_get_one_job(
    keyed: tuple[Daemon, Client], store_env: dict[str, str]
) -> None:
    daemon, client = keyed
    answers: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(101)  # the 100 submitters and this thread

    def by_client() -> None:
        own = Client(daemon.home, database_url=store_env.get("PROCPOOL_DATABASE_URL"))
        try:
            start.wait(30)
            got = own.submit("sleep", {"seconds": 60}, unique_key="nightly")
            with lock:
                answers.append(got)
        except BaseException as error:  # reported below, with the thread's name
            errors.append(error)
        finally:
            own.close()

    def by_cli() -> None:
        start.wait(30)
        result = run_cli(
            daemon.home, "submit", "sleep", '{"seconds": 60}', "--unique-key", "nightly",
            env=daemon.env,
        )  # fmt: skip
        with lock:
            answers.append(result.stdout.strip() if result.returncode == 0 else result.stderr)

    threads = [threading.Thread(target=by_client) for _ in range(90)]
    threads += [threading.Thread(target=by_cli) for _ in range(10)]
    for thread in threads:
        thread.start()
    start.wait(30)
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(answers) == 100
    [holder] = live_ids(client, "sleep")
    assert set(answers) == {holder}, set(answers)
    assert len(client.list(type="sleep", limit=1000)) == 1, "no duplicate was stored"
    # A file dropped into the inbox is a duplicate too: removed, and logged with both ids.
    daemon.drop("late.json", {"type": "sleep", "payload": {"seconds": 60},
                              "unique_key": "nightly"})  # fmt: skip
    [event] = daemon.wait_events("file.duplicate_key", job_id="late")
    assert event["existing_id"] == holder
    wait_until(lambda: not (daemon.home / "inbox" / "late.json").exists(), 30, what="removal")
    assert client.get("late") is None
    if not store_env:  # the socket door's submissions are logged as the daemon judged them
        assert len(daemon.events("file.duplicate_key", existing_id=holder)) == 100
        metrics = daemon.home / "metrics.prom"
        wait_until(
            lambda: metrics.exists()
            and "procpool_jobs_duplicate_key_total 100" in metrics.read_text(),
            30, what="the duplicates counted in metrics.prom",
        )  # fmt: skip
    status = client.get(holder)
    assert status is not None and (status.unique_key, status.unique_while) == ("nightly", "active")


@pytest.mark.timeout(120)
def test_the_key_is_free_right_after_completion_failure_and_cancel(
    keyed: tuple[Daemon, Client],
) -> None:
    daemon, client = keyed
    # Completion (echo), failure (fail, one attempt), cancel (sleep, canceled while it runs).
    cases = [("echo", 1, None), ("fail", {"message": "no"}, 1), ("sleep", {"seconds": 60}, None)]
    for job_type, payload, attempts in cases:
        first = client.submit(job_type, payload, unique_key="k", max_attempts=attempts)
        if job_type == "sleep":
            daemon.wait_events("job.started", job_id=first)
            assert client.submit(job_type, payload, unique_key="k") == first, "running holds it"
            client.cancel(first)
        [ended] = client.wait([first], timeout=30)
        assert (
            ended.status == {"echo": "completed", "fail": "failed", "sleep": "canceled"}[job_type]
        )
        second = client.submit(job_type, payload, unique_key="k", max_attempts=attempts)
        assert second != first, f"{job_type}: the key was not freed by {ended.status}"
        assert client.get(second) is not None
        client.cancel(second)
        client.wait([second], timeout=30)


def test_a_pending_key_is_free_once_its_job_started(keyed: tuple[Daemon, Client]) -> None:
    daemon, client = keyed
    first = client.submit("sleep", {"seconds": 60}, unique_key="p", unique_while="pending")
    daemon.wait_events("job.started", job_id=first)
    second = client.submit("sleep", {"seconds": 60}, unique_key="p", unique_while="pending")
    assert second != first
    for job_id in (first, second):
        client.cancel(job_id)
    client.wait([first, second], timeout=30)


def test_http_answers_200_with_the_job_that_holds_the_key(
    keyed: tuple[Daemon, Client], store_env: dict[str, str], home: Path
) -> None:
    _daemon, client = keyed
    server = Server(home, "--bind", "127.0.0.1:0", env=store_env)
    try:
        body = {"type": "sleep", "payload": {"seconds": 60}, "unique_key": "h"}
        created = server.post("/jobs", {**body, "id": "h1"})
        assert (created.status_code, created.json()) == (201, {"id": "h1"})
        again = server.post("/jobs", {**body, "id": "h2"})
        assert (again.status_code, again.json()) == (200, {"id": "h1"})
        bad = server.post("/jobs", {**body, "unique_while": "forever"})
        assert bad.status_code == 422 and "unique_while" in bad.json()["error"]
        batch = server.post("/jobs/batch", [{**body, "id": "h3"}, {"type": "echo", "id": "h4"}])
        assert (batch.status_code, batch.json()) == (201, {"ids": ["h1", "h4"]})
        shown = server.get("/jobs/h1").json()
        assert (shown["unique_key"], shown["unique_while"]) == ("h", "active")
    finally:
        server.kill()
    client.cancel("h1")
    assert client.get("h2") is None and client.get("h3") is None


def test_with_no_daemon_submit_prints_the_holder_the_store_shows(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(1)
    holder = daemon.client.submit("sleep", {"seconds": 60}, unique_key="q", delay=3600)
    daemon.stop()
    printed = run_cli(daemon.home, "submit", "sleep", '{"seconds": 60}', "--unique-key", "q")
    assert (printed.returncode, printed.stdout.strip()) == (0, holder)
    assert not [p for p in (daemon.home / "inbox").iterdir() if not p.name.startswith(".")]
    other = run_cli(daemon.home, "submit", "sleep", '{"seconds": 60}', "--unique-key", "r")
    assert other.returncode == 0 and other.stdout.strip() != holder
    assert (daemon.home / "inbox" / f"{other.stdout.strip()}.json").exists()


@pytest.mark.timeout(120)
def test_two_daemons_ingesting_one_key_at_once_make_one_job(
    pg_url: str, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The index decides between daemons: each inbox gets 20 files of one key at once,
    and one job is made on the database, the other 39 logged as its duplicates."""
    env = {"PROCPOOL_DATABASE_URL": pg_url}
    daemons = [make_daemon(1, home=tmp_path / name, env=env) for name in ("a", "b")]
    files = 20
    for n in range(files):  # written first, renamed in at once below
        for daemon in daemons:
            staged = daemon.home / f"{daemon.home.name}-{n}.tmp"
            staged.write_text(json.dumps({"type": "sleep", "payload": {"seconds": 60},
                                          "unique_key": "shared"}))  # fmt: skip
    for n in range(files):
        for daemon in daemons:
            name = f"{daemon.home.name}-{n}"
            (daemon.home / f"{name}.tmp").rename(daemon.home / "inbox" / f"{name}.json")
    client = Client(daemons[0].home, database_url=pg_url)
    wait_until(
        lambda: sum(len(d.events("file.duplicate_key")) for d in daemons) == 2 * files - 1,
        60, what="every file judged",
    )  # fmt: skip
    [holder] = live_ids(client, "sleep")
    assert len(client.list(type="sleep", limit=1000)) == 1
    for daemon in daemons:
        assert {e["existing_id"] for e in daemon.events("file.duplicate_key")} <= {holder}
    client.cancel(holder)
    client.close()
