"""What one HTTP client can hold of `procpool serve` (entrypoints/http/bounds.py):
held half-sent requests end at the request deadline, connections past the cap get a
clear 503, and look-ups of ids in a large backlog neither scan the inbox nor run on
the event loop, so `/healthz` stays fast whatever the others do."""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Daemon, wait_until
from http_helpers import Server

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: local"  # and then nothing, or a byte now and then


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def hold_half_heads(port: int, count: int) -> list[socket.socket]:
    held = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        connection.sendall(HALF_HEAD)
        held.append(connection)
    return held


def ended(connection: socket.socket) -> bool:
    """Whether the server closed it (after a 408, or without a word)."""
    connection.setblocking(False)
    try:
        data = connection.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(b"HTTP/1.1 408")


def read_response(connection: socket.socket) -> tuple[int, bytes]:
    """The status and body of the next response on a connection (a blocking read)."""
    reader = connection.makefile("rb")
    status = int(reader.readline().split()[1])
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, reader.read(length)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[math.ceil(0.99 * len(ordered)) - 1]


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room in this process for the connections a test holds (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard limit of open files is {hard}: too low to hold 1,000 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def fill_inbox(home: Path, files: int, reports: int) -> None:
    """A backlog waiting for a stopped daemon, and rejected files with their reports."""
    inbox, rejected = home / "inbox", home / "rejected"
    inbox.mkdir(parents=True, exist_ok=True)
    rejected.mkdir(exist_ok=True)
    for n in range(files):
        (inbox / f"backlog-{n}.json").write_bytes(b'{"type": "echo"}')
    for n in range(reports):
        (rejected / f"bad-{n}.json").write_bytes(b'{"type": "nope"}')
        report = {"file": f"bad-{n}.json", "error": 'unknown job type "nope"'}
        (rejected / f"bad-{n}.json.error.json").write_text(json.dumps(report))


def healthz_times(server: Server, count: int = 100) -> list[float]:
    """Seconds each of `count` sequential GET /healthz took (no daemon: 503)."""
    times = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(count):
            began = time.perf_counter()
            response = client.get("/healthz")
            times.append(time.perf_counter() - began)
            assert response.json() == {"daemon": "stopped", "pid": None}
    return times


@pytest.mark.timeout(300)
def test_held_half_heads_and_a_scanned_backlog_starve_nobody(
    make_daemon: Callable[..., Daemon], home: Path, servers: list[Server], descriptors: None
) -> None:
    """1,000 connections with half-sent heads (more than a soft limit of 1024 open files
    leaves room for) and four clients asking for ids that only a scan of a 40,000-file
    inbox could rule out: /healthz answers within 50 ms at p99 (plus twice its p99 on
    an idle server at the same moment: the machine the tests share may be loaded), and
    the held connections are closed by the request deadline, however they trickle."""
    daemon = make_daemon(workers=1)
    assert daemon.stop() == 0  # the store exists; the backlog below stays waiting
    fill_inbox(home, files=40_000, reports=300)
    deadline = 15.0
    server = Server(home, "--bind", "127.0.0.1:0", nofile=1024,
                    env={"PROCPOOL_HTTP_REQUEST_TIMEOUT": str(deadline)})  # fmt: skip
    servers.append(server)
    idle = p99(healthz_times(server))
    first = time.monotonic()
    held = hold_half_heads(port_of(server), 1000)
    try:
        stop = threading.Event()
        asked: list[int] = []

        def ask_unknown_ids(worker: int) -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                n = 0
                while not stop.is_set():
                    response = client.get(f"/jobs/missing-{worker}-{n}")
                    assert response.status_code == 404, response.text
                    asked.append(1)
                    n += 1

        load = [threading.Thread(target=ask_unknown_ids, args=(w,), daemon=True) for w in range(4)]
        for thread in load:
            thread.start()
        try:
            wait_until(lambda: len(asked) >= 20, 60, what="the look-ups to run")
            busy = healthz_times(server)
        finally:
            stop.set()
            for thread in load:
                thread.join(60)
        assert time.monotonic() - first < deadline, "measured past the deadline: proves nothing"
        shown = f"p99 {p99(busy) * 1000:.1f} ms (idle {idle * 1000:.1f} ms), {len(asked)} look-ups"
        assert p99(busy) < 0.050 + 2 * idle, shown
        assert not [c for c in held if ended(c)], "a held connection ended before its deadline"

        # Bytes trickling in do not extend the deadline: every held connection ends by it.
        open_ones = list(held)
        while open_ones and time.monotonic() < first + deadline + 60:
            for connection in open_ones:
                with contextlib.suppress(OSError):
                    connection.send(b"l")
            time.sleep(1.0)
            open_ones = [c for c in open_ones if not ended(c)]
        assert not open_ones, f"{len(open_ones)} held connections outlived the deadline"
        assert time.monotonic() >= first + deadline - 1
    finally:
        for connection in held:
            connection.close()
    assert len(os.listdir(home / "inbox")) == 40_000, "the backlog is untouched"
    assert server.process.poll() is None


def test_past_the_cap_a_clear_503_and_a_long_answer_is_never_cut(
    daemon: Daemon, servers: list[Server], descriptors: None
) -> None:
    server = Server(daemon.home, "--bind", "127.0.0.1:0", env={
        "PROCPOOL_HTTP_MAX_CONNECTIONS": "20", "PROCPOOL_HTTP_REQUEST_TIMEOUT": "3"})  # fmt: skip
    servers.append(server)
    # A long poll outlasts the deadline: it is answered, not cut (the deadline covers
    # receiving a request, not answering it).
    daemon.client.submit("sleep", {"seconds": 60}, id="long")
    daemon.wait_status("long", "running")
    poll = socket.create_connection(("127.0.0.1", port_of(server)), timeout=60)
    poll.sendall(b"GET /jobs/long/wait?timeout=6 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    held = hold_half_heads(port_of(server), 19)  # with the long poll: 20, the cap
    refused = httpx.get(f"{server.url}/healthz", timeout=30)
    assert refused.status_code == 503, server.printed()
    assert refused.headers["retry-after"] == "1"
    assert "20 connections" in refused.json()["error"]
    assert "http_max_connections" in refused.json()["error"]
    wait_until(lambda: all(ended(c) for c in held), 30, what="the deadline to end them")
    assert httpx.get(f"{server.url}/healthz", timeout=30).json()["pid"] == daemon.pid
    status, body = read_response(poll)
    assert status == 200, "the long poll was cut"
    assert json.loads(body)["status"] == "running"
    for connection in [*held, poll]:
        connection.close()
    daemon.client.cancel("long")
