"""The HTTP API (CONTRACT section 10) end to end: a real `procpool serve` and a real
daemon on loopback, every endpoint and status code, through HTTP as a client sends it.

Every test runs twice: on a home with its own SQLite store, and on a home whose
daemon and server share a PostgreSQL database (`database_url`). The few answers
that differ by design (the database is the store: a submission is committed there
at once, with no daemon to judge its type) say so where they are asserted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import Daemon, run_cli, wait_until
from http_helpers import JSON, Server, free_port, sse_events

from procpool import Client


@pytest.fixture
def on_postgresql(store_env: dict[str, str]) -> bool:
    return bool(store_env)


@pytest.fixture
def make_daemon(
    store_env: dict[str, str], make_daemon: Callable[..., Daemon]
) -> Callable[..., Daemon]:
    """conftest's daemons on the test's store (the database, asked for first, outlives
    them); their `client` reads the same store."""

    def make(*args: object, env: dict[str, str] | None = None, **kwargs: object) -> Daemon:
        daemon = make_daemon(*args, env={**store_env, **(env or {})}, **kwargs)
        if store_env:
            daemon.client.close()
            daemon.client = Client(daemon.home, database_url=store_env["PROCPOOL_DATABASE_URL"])
        return daemon

    return make


@pytest.fixture
def serve(home: Path, store_env: dict[str, str]) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Server:
        server = Server(home, "--bind", "127.0.0.1:0", *args, env={**store_env, **(env or {})})
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def api(daemon: Daemon, serve: Callable[..., Server]) -> Server:
    return serve()


def job_ids(page: dict) -> list[str]:
    return [job["id"] for job in page["jobs"]]


# ----------------------------------------------------------------- submitting


def test_submit_answers_201_then_200_for_the_same_job_and_409_for_another(api: Server) -> None:
    created = api.post("/jobs", {"type": "echo", "payload": {"n": 1}, "id": "j1"})
    assert created.status_code == 201
    assert created.json() == {"id": "j1"}
    assert created.headers["location"] == "/jobs/j1"
    # Answered once the daemon has committed it: it is in the store already.
    assert api.get("/jobs/j1").status_code == 200

    again = api.post("/jobs", {"type": "echo", "payload": {"n": 1}, "id": "j1"})
    assert (again.status_code, again.json()) == (200, {"id": "j1"})

    other = api.post("/jobs", {"type": "echo", "payload": {"n": 2}, "id": "j1"})
    assert other.status_code == 409
    assert "j1" in other.json()["error"]
    assert api.get("/jobs/j1/wait").json()["result"] == {"n": 1}  # untouched


def test_submit_keeps_every_option_of_the_job(api: Server) -> None:
    """Each field a job file may give reaches the store through POST /jobs as well."""
    body = {
        "type": "echo", "payload": {"n": 1}, "id": "opts", "max_attempts": 2, "timeout": 30,
        "priority": 5, "delay": 3600, "concurrency_key": "k1", "expires_in": 7200,
        "unique_key": "u1", "unique_while": "pending",
    }  # fmt: skip
    assert api.post("/jobs", body).status_code == 201
    job = api.get("/jobs/opts").json()
    assert job["status"] == "pending" and job["concurrency_key"] == "k1", job
    assert (job["max_attempts"], job["timeout"], job["priority"]) == (2, 30, 5)
    assert (job["unique_key"], job["unique_while"]) == ("u1", "pending")
    assert job["expires_at"] is not None and job["expires_at"] > job["run_at"], job
    # The same object again is the same job: every option counts in its content.
    assert api.post("/jobs", body).status_code == 200
    assert api.post("/jobs", {**body, "concurrency_key": "k2"}).status_code == 409


def test_a_fifo_named_like_the_job_in_the_inbox_does_not_hang_a_submit(
    api: Server, daemon: Daemon
) -> None:
    """A submit looks for a file of the same id waiting in the inbox (its content decides
    200 or 409): the look opens regular files only, as the daemon does."""
    os.mkfifo(daemon.home / "inbox" / "piped.json")
    daemon.wait_events("file.skipped", file="piped.json")
    created = api.post("/jobs", {"type": "echo", "payload": {"n": 1}, "id": "piped"})
    assert created.status_code == 201, created.text
    assert api.get("/jobs/piped/wait").json()["status"] == "completed"


def test_submit_without_an_id_gets_one(api: Server) -> None:
    created = api.post("/jobs", {"type": "echo"})
    assert created.status_code == 201
    job_id = created.json()["id"]
    assert api.get(f"/jobs/{job_id}/wait").json()["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"type": "echo", "max_attempts": 0}, "max_attempts"),
        ({"type": "echo", "priority": "high"}, "priority"),
        ({"type": "echo", "colour": "red"}, "colour"),
        ({"payload": 1}, "type"),
        ({"type": "echo", "id": "../x"}, "id"),
        ({"type": "echo", "delay": 1, "run_at": "2030-01-01T00:00:00Z"}, "run_at"),
        ([1, 2], "object"),
    ],
)
def test_a_bad_job_is_422_naming_the_field(api: Server, body: object, names: str) -> None:
    response = api.post("/jobs", body)
    assert response.status_code == 422, response.text
    assert names in response.json()["error"]


def test_a_type_no_handler_registers(api: Server) -> None:
    """A type no handler registers is refused (422), naming it: on SQLite by the daemon,
    on PostgreSQL by the client, from the types the live daemons on it registered."""
    body = {"type": "no-such-handler", "id": "nope", "max_attempts": 1}
    response = api.post("/jobs", body)
    assert response.status_code == 422, response.text
    assert "unknown job type" in response.json()["error"]
    assert api.get("/jobs/nope").status_code == 404


def test_a_malformed_body_is_422_saying_where(api: Server) -> None:
    response = api.post("/jobs", content=b'{"type": "echo",}')
    assert response.status_code == 422
    assert "line 1 column" in response.json()["error"]
    assert "Traceback" not in response.text


def test_batch_is_all_or_none(api: Server, daemon: Daemon) -> None:
    created = api.post(
        "/jobs/batch", [{"type": "echo", "id": "b1"}, {"type": "echo", "payload": 2}]
    )
    assert created.status_code == 201
    ids = created.json()["ids"]
    assert ids[0] == "b1" and len(ids) == 2
    for job_id in ids:
        assert api.get(f"/jobs/{job_id}/wait").json()["status"] == "completed"

    bad = api.post(
        "/jobs/batch",
        [
            {"type": "echo", "id": "n1"},
            {"type": "echo", "id": "n2"},
            {"type": "echo", "timeout": -1},
        ],
    )
    assert bad.status_code == 422
    assert bad.json()["index"] == 2
    assert bad.json()["error"].startswith("item 2: timeout")

    conflict = api.post("/jobs/batch", [{"type": "echo", "id": "n3"}, {"type": "cpu", "id": "b1"}])
    assert conflict.status_code == 409
    assert conflict.json()["index"] == 1
    # Nothing of the refused batches was queued: a job submitted after them is done,
    # and none of theirs exists.
    api.post("/jobs", {"type": "echo", "id": "after"})
    assert api.get("/jobs/after/wait").json()["status"] == "completed"
    for job_id in ("n1", "n2", "n3"):
        assert api.get(f"/jobs/{job_id}").status_code == 404
    assert not list((daemon.home / "inbox").glob("*.jsonl"))

    for body in ([], {"type": "echo"}, [{"type": "echo", "id": "d"}, {"type": "cpu", "id": "d"}]):
        assert api.post("/jobs/batch", body).status_code == 422


@pytest.mark.parametrize("job_id", ["x" * 300, "T\u033ao\u035e i\u0332nvoke", "..", "-a"])
def test_what_cannot_be_an_id_is_404_on_every_path(api: Server, job_id: str) -> None:
    """An id no job can have (too long for a file name, not of the id's characters)
    is unknown, never a server error (schemathesis found a 500 for a long one)."""
    quoted = httpx.URL(f"/jobs/{job_id}").raw_path.decode()
    for response in (
        api.get(quoted),
        api.get(f"{quoted}/attempts"),
        api.get(f"{quoted}/wait", params={"timeout": 0.1}),
        api.post(f"{quoted}/cancel"),
        api.post(f"{quoted}/retry"),
    ):
        assert response.status_code == 404, (response.request.url, response.text)


def test_a_batch_with_a_type_only_the_daemon_can_refuse_is_refused_whole(api: Server) -> None:
    refused = api.post(
        "/jobs/batch", [{"type": "echo", "id": "u1"}, {"type": "no-such-handler", "id": "u2"}]
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["index"] == 1
    assert refused.json()["error"].startswith("item 1: unknown job type")
    for job_id in ("u1", "u2"):
        assert api.get(f"/jobs/{job_id}").status_code == 404


# ----------------------------------------------------------------- reading


def test_get_list_and_attempts(api: Server) -> None:
    for n in range(5):
        api.post("/jobs", {"type": "echo", "id": f"l{n}", "payload": n})
    api.post("/jobs", {"type": "fail", "id": "bad", "max_attempts": 1})
    assert api.get("/jobs/bad/wait").json()["status"] == "failed"
    for n in range(5):
        api.get(f"/jobs/l{n}/wait")

    job = api.get("/jobs/l3")
    assert job.status_code == 200
    assert {"id", "type", "payload", "status", "attempts", "result", "worker_pid"} <= set(
        job.json()
    )
    assert api.get("/jobs/nope").status_code == 404
    assert api.get("/jobs/nope").json() == {"error": "no job 'nope'"}

    attempts = api.get("/jobs/bad/attempts")
    assert attempts.status_code == 200
    assert [a["outcome"] for a in attempts.json()] == ["failed"]
    assert api.get("/jobs/nope/attempts").status_code == 404

    # Newest first, two at a time, with an opaque cursor; the pages add up.
    seen, cursor = [], None
    while True:
        page = api.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200
        seen += job_ids(page.json())
        cursor = page.json()["next"]
        if cursor is None:
            break
        # A job submitted between pages does not shift the next page.
        api.post("/jobs", {"type": "echo", "id": f"late-{len(seen)}"})
    assert seen == ["bad", "l4", "l3", "l2", "l1", "l0"]

    failed = api.get("/jobs", params={"status": "failed"}).json()
    assert job_ids(failed) == ["bad"]
    both = api.get("/jobs", params=[("status", "failed"), ("status", "completed")]).json()
    assert "bad" in job_ids(both) and "l0" in job_ids(both)
    assert job_ids(api.get("/jobs", params={"type": "fail"}).json()) == ["bad"]

    for params in ({"limit": 0}, {"limit": 1001}, {"status": "done"}, {"cursor": "abc"}):
        response = api.get("/jobs", params=params)
        assert response.status_code == 400, params
        assert set(response.json()) == {"error"}


def test_wait_long_polls(api: Server) -> None:
    api.post("/jobs", {"type": "sleep", "payload": {"seconds": 0.5}, "id": "w1"})
    done = api.get("/jobs/w1/wait", params={"timeout": 20})
    assert (done.status_code, done.json()["status"]) == (200, "completed")

    api.post("/jobs", {"type": "sleep", "payload": {"seconds": 30}, "id": "w2"})
    early = api.get("/jobs/w2/wait", params={"timeout": 0.3})
    assert early.status_code == 200
    assert early.json()["status"] in ("pending", "running")
    assert api.get("/jobs/w2/wait", params={"timeout": 301}).status_code == 400
    assert api.get("/jobs/nope/wait", params={"timeout": 1}).status_code == 404
    api.post("/jobs/w2/cancel")


def test_stats_metrics_and_health(api: Server, daemon: Daemon) -> None:
    stats = api.get("/stats")
    assert stats.status_code == 200
    assert stats.json()["daemon"] == {"running": True, "pid": daemon.pid}
    wait_until((daemon.home / "metrics.prom").exists, what="metrics.prom")
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "procpool_jobs" in metrics.text
    assert api.get("/healthz").json() == {"daemon": "running", "pid": daemon.pid}
    assert api.get("/healthz").status_code == 200
    assert daemon.stop() == 0
    down = api.get("/healthz")
    assert (down.status_code, down.json()) == (503, {"daemon": "stopped", "pid": None})


def test_openapi_document_describes_every_endpoint(api: Server) -> None:
    document = api.get("/openapi.json")
    assert document.status_code == 200
    spec = document.json()
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    assert set(paths) == {
        "/jobs", "/jobs/batch", "/jobs/{job_id}", "/jobs/{job_id}/attempts",
        "/jobs/{job_id}/checkpoint", "/jobs/{job_id}/wait", "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/retry",
        "/events", "/stats", "/metrics", "/healthz", "/pauses", "/pauses/{job_type}",
        "/schedules", "/schedules/{name}", "/schedules/{name}/next", "/schedules/{name}/pause",
        "/schedules/{name}/resume", "/schedules/{name}/trigger",
    }  # fmt: skip
    applied = paths["/schedules"]["post"]["requestBody"]["content"]["application/json"]
    assert (
        "schedule"
        in spec["components"]["schemas"][applied["schema"]["$ref"].split("/")[-1]]["properties"]
    )
    body = paths["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    request = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert request["required"] == ["type"]
    assert {"max_attempts", "unique_key", "unique_while"} <= set(request["properties"])
    assert set(paths["/jobs"]["post"]["responses"]) >= {"200", "201", "409", "413", "415", "422"}
    assert api.get("/schema/openapi.json").status_code == 404


# ----------------------------------------------------------------- steering


def test_cancel_a_running_job_and_retry_it(api: Server, daemon: Daemon) -> None:
    api.post("/jobs", {"type": "sleep", "payload": {"seconds": 60}, "id": "c1"})
    daemon.wait_status("c1", "running")
    worker = api.get("/jobs/c1").json()["worker_pid"]

    asked = api.post("/jobs/c1/cancel")
    assert asked.status_code == 202
    assert asked.json()["id"] == "c1"
    assert asked.json()["cancel_requested"] or asked.json()["status"] == "canceled"
    ended = api.get("/jobs/c1/wait", params={"timeout": 20}).json()
    assert ended["status"] == "canceled"
    wait_until(lambda: not psutil.pid_exists(worker), what="the canceled job's worker to end")

    again = api.post("/jobs/c1/cancel")
    assert again.status_code == 409
    assert "already canceled" in again.json()["error"]
    assert api.post("/jobs/nope/cancel").status_code == 404

    retried = api.post("/jobs/c1/retry")
    assert (retried.status_code, retried.json()) == (201, {"id": "c1.retry-1"})
    assert retried.headers["location"] == "/jobs/c1.retry-1"
    daemon.wait_status("c1.retry-1", "running")
    assert api.post("/jobs/c1.retry-1/retry").status_code == 409
    assert api.post("/jobs/nope/retry").status_code == 404
    api.post("/jobs/c1.retry-1/cancel")
    assert api.get("/jobs/c1.retry-1/wait").json()["status"] == "canceled"


def test_serve_works_while_the_daemon_is_down(
    make_daemon: Callable[..., Daemon], serve: Callable[..., Server], on_postgresql: bool
) -> None:
    api = serve()
    created = api.post("/jobs", {"type": "echo", "payload": "later", "id": "d1"})
    assert created.status_code == 201
    assert api.post("/jobs", {"type": "echo", "payload": "later", "id": "d1"}).status_code == 200
    assert api.post("/jobs", {"type": "echo", "payload": "other", "id": "d1"}).status_code == 409
    waiting = api.get("/jobs/d1")
    if on_postgresql:  # the database is the store: the job is there, pending
        assert (waiting.status_code, waiting.json().get("status")) == (200, "pending"), waiting.text
    else:  # its file waits in the inbox for the daemon
        assert waiting.status_code == 503
        assert "inbox" in waiting.json()["error"]
    assert api.get("/healthz").status_code == 503
    make_daemon()
    assert api.get("/jobs/d1/wait", params={"timeout": 20}).json()["result"] == "later"


# ----------------------------------------------------------------- events


def _collect(url: str, events: list[dict[str, str]], until: Callable[[list], bool],
             **kwargs: object) -> threading.Thread:  # fmt: skip
    """Read an event stream in a thread until `until(events)`; `connected` is set once
    the stream has answered."""

    def read() -> None:
        with httpx.stream("GET", url, timeout=30, **kwargs) as response:  # type: ignore[arg-type]
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            connected.set()
            try:
                for event in sse_events(response):
                    events.append(event)
                    if until(events):
                        return
            except httpx.RemoteProtocolError:
                # A server that stops may cut an endless stream mid-way (uvicorn 0.30
                # does): the client reconnects with Last-Event-ID, nothing is lost.
                return

    connected = threading.Event()
    thread = threading.Thread(target=read, daemon=True)
    thread.connected = connected  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_events_are_delivered_filtered_and_resumable(api: Server, daemon: Daemon) -> None:
    events: list[dict[str, str]] = []
    thread = _collect(f"{api.url}/events?job=e1", events,
                      lambda seen: any(e["event"] == "job.completed" for e in seen))  # fmt: skip
    assert thread.connected.wait(10)  # type: ignore[attr-defined]
    api.post("/jobs", {"type": "echo", "id": "e2"})
    api.post("/jobs", {"type": "echo", "id": "e1", "payload": "hello"})
    thread.join(20)
    assert not thread.is_alive()
    names = [e["event"] for e in events]
    assert names[-2:] == ["job.started", "job.completed"]
    assert all(json.loads(e["data"])["job_id"] == "e1" for e in events)
    assert json.loads(events[-1]["data"])["event"] == "job.completed"

    # Resume: after the id of an event, the log's next lines come, in order.
    lines = (daemon.home / "logs" / "procpool.jsonl").read_text().splitlines()
    after = lines.index(events[0]["data"]) + 1
    expected = lines[after : after + 3]  # fewer where the log ends sooner: wait for those
    resumed: list[dict[str, str]] = []
    thread = _collect(f"{api.url}/events", resumed, lambda seen: len(seen) >= len(expected),
                      headers={"Last-Event-ID": events[0]["id"]})  # fmt: skip
    thread.join(20)
    assert [e["data"] for e in resumed] == expected

    by_type: list[dict[str, str]] = []
    thread = _collect(f"{api.url}/events?type=cpu&event=job.c*", by_type, lambda seen: True)
    assert thread.connected.wait(10)  # type: ignore[attr-defined]
    api.post("/jobs", {"type": "echo", "id": "e3"})
    api.post("/jobs", {"type": "cpu", "payload": {"iterations": 10}, "id": "e4"})
    thread.join(20)
    assert by_type[0]["event"] == "job.completed"
    assert json.loads(by_type[0]["data"])["job_id"] == "e4"

    assert api.get("/events", headers={"Last-Event-ID": "yesterday"}).status_code == 400


def test_events_resume_across_rotations(make_daemon: Callable[..., Daemon],
                                        serve: Callable[..., Server]) -> None:  # fmt: skip
    daemon = make_daemon(env={"PROCPOOL_LOG_MAX_BYTES": "1000", "PROCPOOL_LOG_KEEP": "50"})
    api = serve()
    events: list[dict[str, str]] = []
    thread = _collect(f"{api.url}/events?event=job.completed", events, lambda seen: len(seen) >= 1)
    assert thread.connected.wait(10)  # type: ignore[attr-defined]
    api.post("/jobs", {"type": "echo", "id": "r0"})
    thread.join(20)
    mark = events[0]["id"]
    api.post("/jobs/batch", [{"type": "echo", "id": f"r{n}"} for n in range(1, 40)])
    for n in range(1, 40):
        api.get(f"/jobs/r{n}/wait")
    assert len(list((daemon.home / "logs").glob("procpool.jsonl.*"))) >= 2  # it rotated
    current = (daemon.home / "logs" / "procpool.jsonl").stat().st_ino
    assert mark.split(":")[0] != str(current)  # the mark's file was rotated away

    resumed: list[dict[str, str]] = []
    thread = _collect(f"{api.url}/events?event=job.completed", resumed,
                      lambda seen: len(seen) >= 39, headers={"Last-Event-ID": mark})  # fmt: skip
    thread.join(30)
    done = [json.loads(e["data"])["job_id"] for e in resumed]
    assert sorted(done) == sorted(f"r{n}" for n in range(1, 40))  # each once, none lost


def test_a_slow_event_reader_does_not_grow_the_server(
    home: Path, serve: Callable[..., Server]
) -> None:
    logs = home / "logs"
    logs.mkdir(parents=True)
    log = logs / "procpool.jsonl"
    line = json.dumps({"ts": "x", "level": "INFO", "event": "job.started", "msg": "m" * 900})
    log.write_text(line + "\n")
    api = serve()
    before = psutil.Process(api.process.pid).memory_info().rss
    start = f"{log.stat().st_ino}:0"
    with httpx.stream("GET", f"{api.url}/events", headers={"Last-Event-ID": start},
                      timeout=30) as response:  # fmt: skip
        assert response.status_code == 200
        # 100 MB of log lines while the client reads nothing.
        with open(log, "a") as handle:
            for _ in range(100):
                handle.write((line + "\n") * 1000)
        grown = 0
        for _ in range(20):
            threading.Event().wait(0.1)
            grown = max(grown, psutil.Process(api.process.pid).memory_info().rss - before)
        assert grown < 40 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB"
        # It still streams once the client reads.
        received = 0
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > 5 * 2**20:
                break


# ----------------------------------------------------------------- safety


def test_a_public_bind_needs_a_token(home: Path, tmp_path: Path) -> None:
    refused = run_cli(home, "serve", "--bind", "0.0.0.0:0", timeout=30)
    assert refused.returncode == 2
    assert "without a token" in refused.stderr
    assert "Traceback" not in refused.stderr
    bad = run_cli(home, "serve", "--bind", "nonsense", timeout=30)
    assert bad.returncode == 2 and "--bind" in bad.stderr
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    assert "is empty" in run_cli(home, "serve", "--bind", "0.0.0.0:0", "--token-file",
                                 str(empty), timeout=30).stderr  # fmt: skip


def test_the_daemon_refuses_a_public_http_bind_without_a_token(home: Path) -> None:
    refused = run_cli(home, "run", env={"PROCPOOL_HTTP_BIND": "0.0.0.0:8765"}, timeout=30)
    assert refused.returncode == 2
    assert "without a token" in refused.stderr


def test_the_bearer_token(home: Path, serve: Callable[..., Server], tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    api = serve("--token-file", str(token))
    assert api.get("/healthz").status_code == 401
    assert api.get("/healthz").headers["www-authenticate"] == "Bearer"
    assert api.get("/healthz", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert api.get("/healthz", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
    ok = api.get("/healthz", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 503  # allowed in; no daemon runs
    assert api.post("/jobs", {"type": "echo"}).status_code == 401
    assert api.post("/pauses", {"types": ["echo"]}).status_code == 401
    assert api.client.delete("/pauses/echo").status_code == 401
    assert api.get("/pauses").status_code == 401
    assert api.post("/schedules", {"schedule": []}).status_code == 401
    assert api.get("/schedules").status_code == 401
    assert api.post("/schedules/s/trigger", {}).status_code == 401
    assert api.client.delete("/schedules/s").status_code == 401


def test_dns_rebinding_cors_and_form_posts_are_refused(
    home: Path, serve: Callable[..., Server]
) -> None:
    api = serve(env={"PROCPOOL_MAX_FILE_BYTES": "2000"})
    port = api.url.rsplit(":", 1)[1]
    for host in ("evil.example", "evil.example:" + port, "127.0.0.2"):
        refused = api.get("/healthz", headers={"Host": host})
        assert refused.status_code == 421, host
        assert "Host" in refused.json()["error"]
    for host in ("localhost:" + port, "127.0.0.1:" + port, "LOCALHOST"):
        assert api.get("/healthz", headers={"Host": host}).status_code == 503, host

    form = api.client.post("/jobs", data={"type": "echo"})
    assert form.status_code == 415
    assert "application/json" in form.json()["error"]
    plain = api.client.post(
        "/jobs", content=b'{"type":"echo"}', headers={"Content-Type": "text/plain"}
    )
    assert plain.status_code == 415
    assert api.client.post("/jobs/x/cancel").status_code == 415  # no Content-Type at all
    with_charset = {"Content-Type": "application/json; charset=utf-8"}
    assert api.post("/jobs", content=b'{"type": "echo"}', headers=with_charset).status_code == 201

    big = api.post("/jobs", {"type": "echo", "payload": "x" * 3000})
    assert big.status_code == 413
    assert "2000 bytes" in big.json()["error"]
    chunked = api.post(
        "/jobs", content=iter([b'{"type": "echo", "payload": "', b"y" * 3000, b'"}'])
    )
    assert chunked.status_code == 413

    cors = api.get("/healthz", headers={"Origin": "http://evil.example"})
    preflight = api.client.options("/jobs", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
    for response in (cors, preflight):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_a_unix_socket_is_private(home: Path, tmp_path: Path, store_env: dict[str, str]) -> None:
    path = tmp_path / "api.sock"
    server = Server(home, "--bind", f"unix:{path}", env=store_env)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # Any Host is fine: a browser cannot reach a Unix socket.
        response = server.get("/healthz", headers={"Host": "whatever.example"})
        assert response.status_code == 503
        assert server.post("/jobs", {"type": "echo", "id": "u1"}).status_code == 201
    finally:
        assert server.stop() == 0
    assert not path.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_0_on_a_stop_signal_with_streams_open(api: Server, signum: int) -> None:
    api.post("/jobs", {"type": "sleep", "payload": {"seconds": 60}, "id": "long"})
    api.client.close()  # its idle connection is not one of those counted below
    events: list[dict[str, str]] = []
    thread = _collect(f"{api.url}/events", events, lambda seen: False)
    assert thread.connected.wait(10)  # type: ignore[attr-defined]
    # The long poll is sent by hand, so that the test knows when the server has read
    # it: a request whose bytes are still unread when the stop begins is not in flight
    # for uvicorn, which closes its connection unanswered (what a connection count
    # alone could not tell apart, and failed under load).
    address = httpx.URL(api.url)
    host, port = address.host, address.port
    assert port is not None
    waiting = socket.create_connection((host, port), timeout=60)
    with waiting:
        waiting.sendall(
            f"GET /jobs/long/wait HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        mine = waiting.getsockname()[1]
        wait_until(lambda: _delivered_and_read(port, mine),
                   what="the server to read the long poll's request")  # fmt: skip
        assert api.stop(signum, timeout=15) == 0, api.printed()
        answer = b""
        while chunk := waiting.recv(65536):
            answer += chunk
    thread.join(10)
    assert not thread.is_alive()
    assert answer.startswith(b"HTTP/1.1 200 "), answer


def _delivered_and_read(server_port: int, client_port: int) -> bool:
    """Whether every byte the client sent on one loopback TCP connection was acked (its
    end's send queue is empty) and read by the server (its end's receive queue is
    empty), from /proc/net/tcp{,6}: `tx_queue:rx_queue` in hex, ports in hex."""
    queues: dict[tuple[int, int], tuple[int, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(field.rsplit(":", 1)[1], 16) for field in fields[1:3])
            sending, receiving = (int(value, 16) for value in fields[4].split(":"))
            queues[local, remote] = (sending, receiving)
    client, server = queues.get((client_port, server_port)), queues.get((server_port, client_port))
    return client is not None and server is not None and client[0] == 0 and server[1] == 0


# ----------------------------------------------------------------- under the daemon


def test_run_with_http_bind_supervises_the_server(make_daemon: Callable[..., Daemon]) -> None:
    port = free_port()
    daemon = make_daemon(workers=1, env={"PROCPOOL_HTTP_BIND": f"127.0.0.1:{port}"})
    url = f"http://127.0.0.1:{port}"
    first = daemon.wait_events("http.started")[0]["pid"]

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=5).json().get("pid") == daemon.pid
        except httpx.HTTPError:
            return False

    wait_until(healthy, what="the HTTP API under the daemon")
    created = httpx.post(f"{url}/jobs", json={"type": "sleep", "payload": {"seconds": 60}},
                         headers=JSON, timeout=30)  # fmt: skip
    assert created.status_code == 201
    job_id = created.json()["id"]
    daemon.wait_status(job_id, "running")

    # A worker killed (its job canceled) leaves the server alone: it is no orphan.
    cancel = httpx.post(f"{url}/jobs/{job_id}/cancel", headers=JSON, timeout=30)
    assert cancel.status_code == 202
    daemon.wait_status(job_id, "canceled")
    assert psutil.pid_exists(first)

    # Killed, it is restarted.
    os.kill(first, signal.SIGKILL)
    exited = daemon.wait_events("http.exited")[0]
    assert exited["signal"] == "SIGKILL"
    second = daemon.wait_events("http.started", 2)[1]["pid"]
    assert second != first
    wait_until(healthy, what="the restarted HTTP API")

    assert daemon.stop() == 0
    assert daemon.events("http.stopped", pid=second)
    assert not psutil.pid_exists(second)


def test_the_server_dies_with_a_killed_daemon(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(workers=1, env={"PROCPOOL_HTTP_BIND": f"127.0.0.1:{free_port()}"})
    server = daemon.wait_events("http.started")[0]["pid"]
    wait_until(lambda: "serve" in " ".join(psutil.Process(server).cmdline()), what="serve")
    daemon.kill()

    def ended() -> bool:
        try:
            return psutil.Process(server).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(ended, what="the server's end")
