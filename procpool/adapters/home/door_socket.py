"""The socket door's file, `HOME/procpool.sock`: the daemon's listening end, and a
client's connection to it (application/supervisor/door.py serves it; door_messages.py says
what travels).

Security: the socket is created with mode 0600 (the umask is narrowed around the
bind, then the mode is set again) inside the home, which is 0700: only the
daemon's own user (and root) can connect, as only they can write the inbox. A
producer that shares the home through its group is refused by the socket and
uses the inbox, as before.

A Unix socket's path is limited to 107 bytes; a longer home is reached through
`/proc/self/fd/N/procpool.sock`, N a descriptor of the home, which the kernel
resolves like any path.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from procpool.application.wire.channel import Frames, frame
from procpool.application.wire.door_messages import Busy, ToClient, ToDaemon

SOCKET_NAME = "procpool.sock"
_BINDING_NAME = "procpool.sock.binding"  # the socket's name until it listens
_MAX_PATH = 100  # bytes of a path bound directly; sun_path holds 108 with its NUL
_READ_CHUNK = 64 * 1024
# The largest answer a client accepts (a list of a submission's ids, at most).
MAX_ANSWER_BYTES = 256 * 1024 * 1024


class DoorUnavailable(Exception):
    """No daemon answers on the socket (none runs, it refused, or it went away)."""


@contextlib.contextmanager
def _address(home: Path, name: str = SOCKET_NAME) -> Iterator[str]:
    path = str(home / name)
    if len(os.fsencode(path)) <= _MAX_PATH:
        yield path
        return
    fd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def listen(home: Path) -> socket.socket:
    """Bind and listen on `HOME/procpool.sock` (mode 0600), replacing a socket left by a
    daemon that died (the pid file's lock says none runs), or a symbolic link someone
    planted there (replaced, never followed).

    The socket is bound under a name of its own and renamed into place once it
    listens: a client that finds `procpool.sock` can connect. (Bound and not yet
    listening, it refuses, and a client that came then would use the inbox.)

    Raises:
        OSError: the socket cannot be made (e.g. another file has its name).
    """
    path = home / SOCKET_NAME
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not (stat.S_ISSOCK(mode) or stat.S_ISLNK(mode)):
            raise FileExistsError(f"{path} exists and is not a socket; it is left alone")
    binding = home / _BINDING_NAME
    with contextlib.suppress(FileNotFoundError):
        os.unlink(binding)  # left by a daemon that died between bind and rename
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        mask = os.umask(0o177)
        try:
            with _address(home, _BINDING_NAME) as address:
                listener.bind(address)
        finally:
            os.umask(mask)
        os.chmod(binding, 0o600, follow_symlinks=False)
        listener.listen(128)
        os.rename(binding, path)
    except BaseException:
        listener.close()
        with contextlib.suppress(OSError):
            os.unlink(binding)
        raise
    return listener


def identity(home: Path) -> tuple[int, int] | None:
    """The socket file's device and inode, to remove only our own at exit."""
    try:
        info = os.lstat(home / SOCKET_NAME)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def remove(home: Path, ours: tuple[int, int] | None) -> None:
    """Unlink the socket file if it is still the one this daemon made."""
    if ours is not None and identity(home) == ours:
        with contextlib.suppress(OSError):
            os.unlink(home / SOCKET_NAME)


class DoorConnection:
    """A client's connection to the daemon's socket: one request at a time, blocking.

    Raises DoorUnavailable when no daemon answers: the caller uses the inbox.
    """

    def __init__(self, home: Path) -> None:
        self.pid = os.getpid()  # a connection is not shared across a fork
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with _address(home) as address:
                self.sock.connect(address)
        except OSError as error:  # absent, refused (a dead daemon's file), not allowed
            self.sock.close()
            raise DoorUnavailable(str(error)) from None
        self._frames: Frames[ToClient] = Frames(msgspec.msgpack.Decoder(ToClient), MAX_ANSWER_BYTES)
        self._encoder = msgspec.msgpack.Encoder()
        self._ref = 0
        self._answers: list[ToClient] = []

    def next_ref(self) -> int:
        self._ref += 1
        return self._ref

    def send(self, message: ToDaemon) -> None:
        try:
            self.sock.sendall(frame(self._encoder.encode(message)))
        except OSError as error:
            raise DoorUnavailable(str(error)) from None

    def receive(self, ref: int, timeout: float | None) -> ToClient | None:
        """The answer to request `ref`, or None once `timeout` seconds have passed.

        Raises:
            DoorUnavailable: the daemon closed the connection, is busy, or sent garbage.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for n, answer in enumerate(self._answers):
                if isinstance(answer, Busy):
                    raise DoorUnavailable("the daemon serves no more connections")
                if answer.ref == ref:
                    del self._answers[: n + 1]  # earlier ones were for requests given up
                    return answer
            self._answers.clear()
            if deadline is None:
                self.sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(_READ_CHUNK)
            except TimeoutError:
                return None
            except OSError as error:
                raise DoorUnavailable(str(error)) from None
            if not chunk:
                raise DoorUnavailable("the daemon closed the connection")
            self._frames.feed(chunk)
            answers, fault = self._frames.messages()
            if fault is not None:
                raise DoorUnavailable(f"the daemon sent {fault}")
            self._answers.extend(answers)

    def close(self) -> None:
        self.sock.close()
