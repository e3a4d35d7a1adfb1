"""The socket door (DESIGN decision 12): submit, wait, cancel and submit_many over
HOME/procpool.sock while the daemon runs, the inbox when it does not, one intake for
both, and a daemon that no client can hurt through it. Real daemons, real sockets."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from conftest import Daemon, wait_until

from procpool import BatchJobRefused, Client, DuplicateId, InvalidJobFile, JobRejected
from procpool.application.wire.door_messages import Submit, Wait

SOCKET = "procpool.sock"


def connection(home: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    try:
        sock.connect(str(home / SOCKET))
    except OSError:
        sock.close()
        raise
    return sock


def frame(message: object) -> bytes:
    payload = msgspec.msgpack.encode(message)
    return struct.pack("!I", len(payload)) + payload


def inbox_files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "inbox").iterdir() if not p.name.startswith("."))


def test_the_socket_is_the_owners_alone_and_goes_with_the_daemon(daemon: Daemon) -> None:
    path = daemon.home / SOCKET
    info = os.lstat(path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(daemon.home).st_mode) == 0o700
    assert daemon.stop() == 0
    assert not path.exists(), "a graceful stop removes the socket"


def test_submit_wait_and_cancel_go_over_the_socket(daemon: Daemon) -> None:
    client = daemon.client
    job_id = client.submit("echo", {"x": 1}, id="fast")
    # Answered after the commit: the job is in the store when submit returns, and no
    # file went through the inbox.
    assert client.get(job_id) is not None
    assert inbox_files(daemon.home) == []
    [job] = client.wait([job_id], timeout=20)
    assert (job.status, job.result) == ("completed", {"x": 1})
    submitted = daemon.wait_events("job.submitted", job_id="fast")[0]
    assert (submitted["via"], submitted["type"]) == ("socket", "echo")

    client.submit("sleep", {"seconds": 60}, id="long")
    wait_until(lambda: (j := client.get("long")).status == "running" and j.progress, what="start")
    client.cancel("long")
    assert inbox_files(daemon.home) == [], "the cancel went over the socket"
    [canceled] = client.wait(["long"], timeout=20)
    assert canceled.status == "canceled"

    # A job queued for later is canceled at once, before cancel returns.
    client.submit("echo", None, id="later", delay=3600)
    client.cancel("later")
    assert client.get("later").status == "canceled"


def test_submit_many_is_all_or_none(daemon: Daemon) -> None:
    client = daemon.client
    ids = client.submit_many(
        [{"type": "echo", "payload": n} for n in range(50)] + [{"type": "echo", "id": "named"}]
    )
    assert len(ids) == 51 and ids[-1] == "named" and len(set(ids)) == 51
    assert {job.status for job in client.wait(ids, timeout=30)} == {"completed"}

    with pytest.raises(BatchJobRefused, match=r'job 2 of 3: unknown job type "nope"') as refused:
        client.submit_many([{"type": "echo", "id": "b1"}, {"type": "nope"}, {"type": "echo"}])
    assert refused.value.number == 2  # the fact as a field: nothing parses the message
    assert refused.value.reason.startswith('unknown job type "nope"')
    assert client.get("b1") is None, "nothing of a refused batch is stored"
    with pytest.raises(InvalidJobFile, match=r"job 2: unknown field \"paylod\""):
        client.submit_many([{"type": "echo"}, {"type": "echo", "paylod": 1}])
    assert client.submit_many([]) == []


class _CountedReads:
    """A client's store reader that counts its calls by name."""

    def __init__(self, reader: object) -> None:
        self._reader = reader
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> object:
        self.calls.append(name)
        return getattr(self._reader, name)


def test_wait_reads_the_store_once_when_the_daemon_says_the_jobs_ended(daemon: Daemon) -> None:
    client = daemon.client
    ids = [client.submit("sleep", {"seconds": 0.3}) for _ in range(3)]
    counted = _CountedReads(client._reader)
    client._reader = counted  # type: ignore[assignment]
    jobs = client.wait(ids, timeout=30)
    assert [job.status for job in jobs] == ["completed"] * 3
    # Asked first, answered when all three ended, then their rows read once: no look at
    # their statuses while they run, none after the answer.
    assert counted.calls == ["get_many"]
    # Jobs that have ended already: the daemon says so at once.
    counted.calls.clear()
    assert [job.id for job in client.wait(ids[::-1], timeout=30)] == ids[::-1]
    assert counted.calls == ["get_many"]


def test_the_daemon_judges_as_it_judges_files(daemon: Daemon) -> None:
    client = daemon.client
    with pytest.raises(InvalidJobFile, match=r'unknown job type "ech"; registered: cpu, echo'):
        client.submit("ech", {}, id="typo")
    assert client.get("typo") is None
    assert not list((daemon.home / "rejected").iterdir()), "a refusal leaves no file behind"
    daemon.wait_events("submit.refused")


def test_ids_are_one_across_both_doors(daemon: Daemon) -> None:
    client = daemon.client
    # The same submission over the socket, then as a file: one job, the file a duplicate.
    client.submit("echo", {"n": 1}, id="twice", priority=3)
    daemon.drop("twice.json", {"type": "echo", "payload": {"n": 1}, "id": "twice", "priority": 3})
    daemon.wait_events("file.duplicate", job_id="twice")
    wait_until(lambda: inbox_files(daemon.home) == [], what="the duplicate file removed")
    assert client.submit("echo", {"n": 1}, id="twice", priority=3) == "twice"
    assert [j.id for j in client.list(limit=1000)].count("twice") == 1

    # First as a file, then over the socket.
    daemon.drop("filed.json", {"type": "echo", "payload": 2})
    daemon.wait_status("filed", "completed")
    assert client.submit("echo", 2, id="filed") == "filed"

    # Other content under a taken id: an error naming it, over either door.
    with pytest.raises(DuplicateId, match=r'duplicate id "twice" with different content') as err:
        client.submit("echo", {"n": 2}, id="twice")
    assert err.value.job_id == "twice"
    cli = daemon.cli("submit", "echo", '{"n": 2}', "--id", "twice")
    assert (cli.returncode, cli.stdout) == (1, "")
    assert cli.stderr == 'procpool: duplicate id "twice" with different content\n'
    with pytest.raises(DuplicateId, match='"filed"'):
        client.submit_many([{"type": "echo", "id": "fresh"}, {"type": "echo", "id": "filed"}])
    assert client.get("fresh") is None
    daemon.drop("twice.json", {"type": "echo", "payload": {"n": 3}, "id": "twice"})
    report = daemon.home / "rejected" / "twice.json.error.json"
    wait_until(report.exists, what="the conflicting file rejected")
    assert json.loads(report.read_text())["error"] == 'duplicate id "twice" with different content'
    assert json.loads(report.read_text())["duplicate"] == "twice"
    assert client.get("twice").payload == {"n": 1}, "the existing job is untouched"


def test_without_a_daemon_the_client_uses_the_inbox(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(start=False)
    client = Client(daemon.home)
    client.submit("echo", "alone", id="alone")
    ids = client.submit_many([{"type": "echo", "payload": n} for n in range(3)])
    client.cancel("never-seen")
    assert inbox_files(daemon.home) == sorted(
        ["alone.json", f"{ids[0]}.batch.json", "cancel-never-seen.json"]
    )
    assert client.is_waiting_in_inbox(ids[2]), "a job of a waiting batch is found"
    # A bad batch waits too, and is rejected whole when the daemon reads it.
    bad = client.submit_many([{"type": "echo", "id": "good1"}, {"type": "nope", "id": "bad2"}])
    daemon.start()
    for job in client.wait(["alone", *ids], timeout=30):
        assert job.status == "completed"
    report = daemon.home / "rejected" / f"{bad[0]}.batch.json.error.json"
    wait_until(report.exists, what="the bad batch rejected")
    for job_id in bad:
        with pytest.raises(JobRejected, match=r'job 2 of 2: unknown job type "nope"'):
            client.wait([job_id], timeout=10)
    # A stale socket left by a killed daemon refuses: the client uses the inbox again.
    daemon.kill()
    assert (daemon.home / SOCKET).exists()
    client.submit("echo", "after", id="after-kill")
    assert "after-kill.json" in inbox_files(daemon.home)
    restarted = make_daemon()
    assert restarted.wait_status("after-kill", "completed").result == "after"
    client.close()


def test_a_wait_is_told_and_survives_the_daemon_going_away(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    client = daemon.client
    client.submit("sleep", {"seconds": 1.5}, id="slow")
    done: list[object] = []

    def wait() -> None:
        with Client(daemon.home) as waiting:
            done.append(waiting.wait(["slow"], 30))

    waiter = threading.Thread(target=wait)
    waiter.start()
    # Stopping now returns the job to pending and closes the socket; the wait goes on
    # (polling the store) and ends when a new daemon has run the job.
    wait_until(lambda: client.get("slow").status == "running", what="slow to run")
    daemon.signal(signal.SIGQUIT)
    assert daemon.wait_exit(30) == 0
    assert client.get("slow").status == "pending"
    assert waiter.is_alive()
    make_daemon()
    waiter.join(60)
    assert not waiter.is_alive() and done[0][0].status == "completed"  # type: ignore[index]


def test_kill_9_while_four_threads_submit_loses_and_doubles_nothing(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    returned: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()

    def produce(n: int) -> None:
        with Client(daemon.home) as client:
            for k in range(100_000):
                if stop.is_set():
                    return
                returned[n].append(client.submit("echo", [n, k], id=f"p{n}-{k}"))

    producers = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for producer in producers:
        producer.start()
    wait_until(lambda: sum(map(len, returned)) >= 300, what="submits to flow")
    daemon.kill()
    time.sleep(0.2)  # the producers go on, into the inbox, while no daemon runs
    stop.set()
    for producer in producers:
        producer.join(30)
    restarted = make_daemon()
    every = [job_id for part in returned for job_id in part]
    assert len(every) == len(set(every))
    wait_until(lambda: inbox_files(restarted.home) == [], timeout=60, what="the inbox read")
    stored = [job.id for job in restarted.client.list(limit=1_000_000)]
    assert len(stored) == len(set(stored)), "no job twice"
    missing = set(every) - set(stored)
    assert not missing, f"{len(missing)} submits returned but are not jobs: {sorted(missing)[:5]}"
    assert not list((restarted.home / "rejected").iterdir())


def test_garbage_and_floods_end_their_connection_not_the_daemon(daemon: Daemon) -> None:
    home = daemon.home
    garbage = connection(home)
    garbage.sendall(struct.pack("!I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
    assert garbage.recv(100) == b"", "the daemon closed the connection"
    huge = connection(home)
    huge.sendall(struct.pack("!I", 2**31))
    assert huge.recv(100) == b""
    daemon.wait_events("socket.closed", count=2)

    # A client that asks and never reads its answers: its connection is dropped once
    # its backlog passes the limit; the daemon serves the others meanwhile.
    deaf = connection(home)
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ask = frame(Wait(1, ["nothing-" + "x" * 100] * 1))
    sent = 0
    with pytest.raises(OSError):
        for _ in range(200_000):
            deaf.sendall(ask * 100)
            sent += 1
    assert daemon.process.poll() is None  # type: ignore[union-attr]
    wait_until(lambda: daemon.events("socket.closed", msg=(
        "closed a connection on the socket: it does not read its answers")),
        what="the deaf client dropped")  # fmt: skip

    valid = connection(home)
    valid.sendall(frame(Submit(7, [b'{"type": "echo", "id": "raw", "payload": 1}'])))
    answer = valid.recv(1000)
    assert msgspec.msgpack.decode(answer[4:]) == ["Accepted", 7, ["raw"]]

    # Many connections at once: past the cap, a client is told to use the inbox.
    idle = []
    for _ in range(140):
        try:
            idle.append(connection(home))
        except OSError:
            break
    client = Client(home)
    assert client.submit("echo", "still", id="still") == "still"
    for sock in idle:
        sock.close()
    assert daemon.wait_status("still", "completed").result == "still"
    daemon.wait_events("file.accepted", job_id="still")  # through the inbox
    assert daemon.wait_status("raw", "completed").result == 1
    for sock in (garbage, huge, deaf, valid):
        sock.close()
    client.close()


def test_producers_cancels_and_waits_sharing_turns_lose_and_double_nothing(
    daemon: Daemon,
) -> None:
    """Four clients that submit in a loop have their submits taken into one another's
    turns (Door.gather: group commit across clients), beside a client that cancels
    jobs as they are made and one that waits for them: every returned submit is one
    job, each ends once, completed or canceled as asked."""
    returned: list[list[str]] = [[] for _ in range(4)]
    canceled: set[str] = set()
    done = threading.Event()
    failures: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            with Client(daemon.home) as client:
                for k in range(150):
                    job_id = f"p{n}-{k}"
                    if k % 5 == 0:
                        returned[n].append(client.submit("sleep", {"seconds": 0.01}, id=job_id))
                    else:
                        returned[n].append(client.submit("echo", [n, k], id=job_id))
        except BaseException as error:
            failures.append(error)

    def cancel_some() -> None:
        rng = random.Random(25)
        try:
            with Client(daemon.home) as client:
                while not done.is_set():
                    made = [job_id for part in returned for job_id in part[-10:]]
                    if made:
                        job_id = rng.choice(made)
                        client.cancel(job_id)
                        canceled.add(job_id)
                    time.sleep(0.002)
        except BaseException as error:
            failures.append(error)

    def wait_for_the_first() -> None:
        try:
            with Client(daemon.home) as client:
                while not done.is_set():
                    if returned[0]:
                        client.wait(returned[0][-1:], timeout=60)
                    time.sleep(0.005)
        except BaseException as error:
            failures.append(error)

    producers = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    others = [threading.Thread(target=cancel_some), threading.Thread(target=wait_for_the_first)]
    for thread in producers + others:
        thread.start()
    for thread in producers:
        thread.join(120)
    done.set()
    for thread in others:
        thread.join(120)
    assert not failures, failures
    every = [job_id for part in returned for job_id in part]
    assert len(every) == len(set(every)) == 600
    jobs = {job.id: job for job in daemon.client.wait(every, timeout=120)}
    assert len(jobs) == 600
    assert {job.status for job in jobs.values()} <= {"completed", "canceled"}
    assert {j.id for j in jobs.values() if j.status == "canceled"} <= canceled
    assert all(job.attempts <= 1 for job in jobs.values()), "no job ran twice"
    for job in jobs.values():
        if job.status == "completed" and job.type == "echo":
            assert job.result == job.payload
    assert daemon.process.poll() is None  # type: ignore[union-attr]
    assert daemon.client.wait([daemon.client.submit("echo", "after")])[0].result == "after"
