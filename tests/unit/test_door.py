"""The socket door (application/supervisor/door.py) in this process: its listener when
descriptors run out, with a scripted accept(2) (paused, tried again, said once; the real
daemon out of descriptors: tests/e2e/test_loop_faults.py); its group commit across
clients, with real sockets and a clock that steps at each reading; and the socket's file
(adapters/home/door_socket.py): found only once it listens."""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from procpool.adapters.home import door_socket
from procpool.adapters.stores.memory import MemoryJobStore
from procpool.application.supervisor.door import Door
from procpool.application.supervisor.intake import Verdict
from procpool.application.wire.channel import frame
from procpool.application.wire.door_messages import Submit, Wait
from procpool.domain.spec import JobDefaults


class _Listener:
    """A listening socket whose accept(2) fails as the script says (errno, or None for
    EAGAIN), each try taking the next entry."""

    def __init__(self, script: list[int | None]) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.script = script
        self.tries = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        pass

    def accept(self) -> tuple[socket.socket, object]:
        self.tries += 1
        code = self.script.pop(0)
        if code is None:
            raise BlockingIOError(errno.EAGAIN, "again")
        raise OSError(code, os.strerror(code))

    def close(self) -> None:
        self._sock.close()


def test_a_listener_out_of_descriptors_is_paused_and_tried_again() -> None:
    """Door._accept: a failed accept stops the listener being watched for ACCEPT_PAUSE
    (no spin on the connection that stays queued), said once; each try after the pause
    that fails again is counted, not said; the spell ends at the first try that finds
    descriptors again (EAGAIN: no connection waits), with the count."""
    said: list[tuple[str, str, dict[str, object]]] = []
    selector = selectors.DefaultSelector()
    listener = _Listener([errno.EMFILE, errno.EMFILE, errno.ENFILE, None])
    door = Door(listener, selector, lambda level, event, msg, **f: said.append((level, event, f)))  # type: ignore[arg-type]
    try:
        door.ready("door", selectors.EVENT_READ)
        assert door.paused_until is not None
        assert listener not in [key.fileobj for key in selector.get_map().values()]
        start = door.paused_until
        door.watch_again(start - 0.01)  # not yet
        assert listener.tries == 1
        for tries in (2, 3):
            door.watch_again(door.paused_until)
            assert listener.tries == tries
        assert [event for _, event, _ in said] == ["socket.accept_failed"]
        door.watch_again(door.paused_until)
        assert listener.tries == 4
        assert door.paused_until is None
        assert listener in [key.fileobj for key in selector.get_map().values()]
        assert [(event, f.get("failed")) for _, event, f in said] == [
            ("socket.accept_failed", None),
            ("socket.accept_resumed", 3),
        ]
    finally:
        door.close()
        selector.close()


def test_the_socket_file_is_there_only_once_it_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that connects between bind(2) and listen(2) is refused and uses the
    inbox: the socket must not be found by its name in between."""
    found_before_listen = []
    listen = socket.socket.listen

    def listen_and_look(sock: socket.socket, backlog: int) -> None:
        found_before_listen.append((tmp_path / door_socket.SOCKET_NAME).exists())
        listen(sock, backlog)

    monkeypatch.setattr(socket.socket, "listen", listen_and_look)
    (tmp_path / "procpool.sock.binding").write_bytes(b"")  # left by a daemon that died
    listener = door_socket.listen(tmp_path)
    try:
        assert found_before_listen == [False]
        assert sorted(path.name for path in tmp_path.iterdir()) == [door_socket.SOCKET_NAME]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(tmp_path / door_socket.SOCKET_NAME))
    finally:
        listener.close()


def test_a_home_too_long_for_a_socket_address_is_reached_through_proc(tmp_path: Path) -> None:
    home = tmp_path / ("h" * 60) / ("o" * 60)
    home.mkdir(parents=True)
    listener = door_socket.listen(home)
    try:
        assert len(str(home / door_socket.SOCKET_NAME)) > 108
        assert sorted(path.name for path in home.iterdir()) == [door_socket.SOCKET_NAME]
        connection = door_socket.DoorConnection(home)
        accepted, _ = listener.accept()
        accepted.close()
        connection.close()
    finally:
        listener.close()


class _SteppingClock:
    """A monotonic clock that moves 0.1 ms at each reading, and counts them."""

    def __init__(self) -> None:
        self.now = 100.0
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        self.now += 0.0001
        return self.now


class _AcceptingIntake:
    """Stores nothing: each submission is accepted with its jobs' ids."""

    def submissions(
        self, batches: list[list[bytes]], defaults: JobDefaults, wall: float, max_bytes: int
    ) -> list[Verdict]:
        return [Verdict(ids=[json.loads(job)["id"] for job in jobs]) for jobs in batches]


class _Door:
    """A Door with two clients, `a` and `b`, and a turn's steps."""

    def __init__(self, tmp_path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(tmp_path / "door.sock"))
        self.listener.listen()
        self.selector = selectors.DefaultSelector()
        self.clock = _SteppingClock()
        self.door = Door(self.listener, self.selector, lambda *a, **f: None, self.clock)
        self.a, self.b = (socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in "ab")
        for client in (self.a, self.b):
            client.settimeout(10)
            client.connect(str(tmp_path / "door.sock"))
        self.door.ready("door", selectors.EVENT_READ)
        assert len(self.door.connections) == 2
        self.refs = iter(range(1, 1_000_000))

    def submit(self, client: socket.socket) -> str:
        ref = next(self.refs)
        job = json.dumps({"type": "echo", "id": f"job-{ref}"}).encode()
        client.sendall(frame(msgspec.msgpack.encode(Submit(ref, [job]))))
        return f"job-{ref}"

    def read(self, count: int) -> None:
        """What `count` clients sent (one request each), as the turn's read does."""
        read = 0
        while read < count:
            for key, mask in self.selector.select(10):
                self.door.ready(key.data, mask)
                read += 1

    def serve(self) -> None:
        self.door.serve(
            _AcceptingIntake(),
            MemoryJobStore(),
            JobDefaults(),
            1 << 20,
            0.0,
            0.0,  # type: ignore[arg-type]
        )

    def commit(self) -> None:
        self.door.committed(())

    def answer(self, client: socket.socket) -> Any:
        data = client.recv(65536)
        return msgspec.msgpack.decode(data[4:])

    def turn(self, *clients: socket.socket) -> None:
        """A turn where each of `clients` submits, and is answered."""
        for client in clients:
            self.submit(client)
        self.read(len(clients))
        self.serve()
        assert not self.door.gather(), "every client that submits in a loop came"
        self.commit()
        for client in clients:
            assert self.answer(client)[0] == "Accepted"

    def close(self) -> None:
        self.door.close()
        self.selector.close()
        self.a.close()
        self.b.close()


@pytest.fixture
def two_clients(tmp_path: Path) -> Iterator[_Door]:
    made = _Door(tmp_path)
    try:
        # Two turns where both submit: the second shows each is a client that submits in
        # a loop, and how soon after its answer it sends its next submit.
        made.turn(made.a, made.b)
        made.turn(made.a, made.b)
        yield made
    finally:
        made.close()


def test_a_turn_takes_in_the_next_submit_of_a_client_that_submits_in_a_loop(
    two_clients: _Door,
) -> None:
    """Door.gather, after the turn served `a`: `b`'s submit, sent meanwhile, is read and
    served in the same turn, and its answer goes with the same commit."""
    made = two_clients
    made.submit(made.a)
    made.read(1)
    made.serve()
    late = made.submit(made.b)
    assert made.door.gather()
    made.serve()
    made.commit()
    assert made.answer(made.a)[0] == "Accepted"
    assert made.answer(made.b) == ["Accepted", 6, [late]]


def test_a_client_that_does_not_come_is_awaited_once_and_briefly(two_clients: _Door) -> None:
    made = two_clients
    made.submit(made.a)
    made.read(1)
    made.serve()
    before = made.clock.readings
    assert not made.door.gather()
    # A few readings of 0.1 ms: about twice the pause `b` took before, not more.
    assert 2 <= made.clock.readings - before <= 10
    made.commit()
    made.answer(made.a)
    made.submit(made.a)
    made.read(1)
    made.serve()
    before = made.clock.readings
    assert not made.door.gather()
    assert made.clock.readings - before == 1, "b is not awaited again"


def test_anything_else_from_outside_ends_the_wait(two_clients: _Door) -> None:
    made = two_clients
    wake_read, wake_write = os.pipe()
    made.selector.register(wake_read, selectors.EVENT_READ, "wake")
    try:
        made.submit(made.a)
        made.read(1)
        made.serve()
        os.write(wake_write, b"x")
        before = made.clock.readings
        assert not made.door.gather()
        assert made.clock.readings - before == 1
        assert os.read(wake_read, 10) == b"x", "left for the turn that follows"
    finally:
        made.selector.unregister(wake_read)
        os.close(wake_read)
        os.close(wake_write)


def test_a_client_that_waits_after_its_submit_is_not_awaited(two_clients: _Door) -> None:
    made = two_clients
    made.b.sendall(frame(msgspec.msgpack.encode(Wait(99, ["job-1"]))))
    made.submit(made.a)
    made.read(2)
    made.serve()
    before = made.clock.readings
    assert not made.door.gather()
    assert made.clock.readings - before == 1
    made.commit()
    assert made.answer(made.a)[0] == "Accepted"
    assert made.answer(made.b)[0] == "Unknown"
