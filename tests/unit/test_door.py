"""The socket door's listener when descriptors run out (application/supervisor/door.py),
in this process with a scripted accept(2): paused, tried again, said once. The real
daemon out of descriptors: tests/e2e/test_loop_faults.py. And the socket's file
(adapters/home/door_socket.py): found only once it listens."""

from __future__ import annotations

import errno
import os
import selectors
import socket
from pathlib import Path

import pytest

from procpool.adapters.home import door_socket
from procpool.application.supervisor.door import Door


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
