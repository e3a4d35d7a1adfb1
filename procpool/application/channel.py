"""A framed, typed channel over one Unix stream socket: a 4-byte length, then msgpack.

The supervisor's side reads without blocking and keeps partial frames in a
buffer, so a worker stopped or killed in the middle of a write can never block
the loop; it only ever sees whole messages, or an end of file.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Generic, TypeVar

import msgspec

from procpool.application.messages import ToSupervisor, ToWorker

_HEADER = struct.Struct("!I")
# A send that cannot proceed for this long means the peer is stopped or wedged.
SEND_TIMEOUT = 5.0
_READ_CHUNK = 256 * 1024
T = TypeVar("T")


class ChannelClosed(Exception):
    """The peer closed its end, or died."""


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class _Frames(Generic[T]):
    """Bytes in, whole decoded messages out; a partial frame waits for its rest."""

    def __init__(self, decoder: msgspec.msgpack.Decoder[T]) -> None:
        self._buffer = bytearray()
        self._decoder = decoder

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk

    def messages(self) -> list[T]:
        messages: list[T] = []
        view = memoryview(self._buffer)
        offset = 0
        while len(view) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(view, offset)
            end = offset + _HEADER.size + size
            if end > len(view):
                break
            messages.append(self._decoder.decode(view[offset + _HEADER.size : end]))
            offset = end
        view.release()
        del self._buffer[:offset]
        return messages


class SupervisorEnd:
    """The supervisor's end of one worker's channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(SEND_TIMEOUT)
        self._frames = _Frames(msgspec.msgpack.Decoder(ToSupervisor))
        self._encoder = msgspec.msgpack.Encoder()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, messages: list[ToWorker]) -> None:
        try:
            self.sock.sendall(b"".join(_frame(self._encoder.encode(m)) for m in messages))
        except OSError as error:  # includes the timeout
            raise ChannelClosed(str(error)) from error

    def receive(self) -> tuple[list[ToSupervisor], bool]:
        """Read what is there now. Returns the whole messages and whether the peer closed."""
        closed = False
        while True:
            try:
                chunk = self.sock.recv(_READ_CHUNK, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            self._frames.feed(chunk)
            if len(chunk) < _READ_CHUNK:
                break
        return self._frames.messages(), closed

    def close(self) -> None:
        self.sock.close()


class WorkerEnd:
    """The worker's end: blocking reads; sends from several threads, one frame at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self._lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._frames = _Frames(msgspec.msgpack.Decoder(ToWorker))

    def send(self, *messages: ToSupervisor) -> None:
        with self._lock:
            self.sock.sendall(b"".join(_frame(self._encoder.encode(m)) for m in messages))

    def receive(self, *, block: bool) -> list[ToWorker]:
        """Every whole message that has arrived; with `block`, wait for at least one."""
        while True:
            try:
                chunk = self.sock.recv(_READ_CHUNK, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                raise ChannelClosed("the supervisor closed the channel")
            if chunk:
                self._frames.feed(chunk)
            messages = self._frames.messages()
            if messages or not block:
                return messages
