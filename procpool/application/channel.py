"""A framed, typed channel over one Unix stream socket: a 4-byte length, then msgpack.

The supervisor's side reads without blocking and keeps partial frames in a
buffer, so a worker stopped or killed in the middle of a write can never block
the loop; it only ever sees whole messages, or an end of file.
"""

from __future__ import annotations

import socket
import struct
import threading

import msgspec

from procpool.application.messages import ToSupervisor, ToWorker

_HEADER = struct.Struct("!I")
# A send that cannot proceed for this long means the peer is stopped or wedged.
SEND_TIMEOUT = 5.0
_READ_CHUNK = 256 * 1024


class ChannelClosed(Exception):
    """The peer closed its end, or died."""


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class SupervisorEnd:
    """The supervisor's end of one worker's channel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(SEND_TIMEOUT)
        self._buffer = bytearray()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ToSupervisor)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: ToWorker) -> None:
        try:
            self.sock.sendall(_frame(self._encoder.encode(message)))
        except OSError as error:  # includes the timeout
            raise ChannelClosed(str(error)) from error

    def send_many(self, messages: list[ToWorker]) -> None:
        try:
            self.sock.sendall(b"".join(_frame(self._encoder.encode(m)) for m in messages))
        except OSError as error:
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
            self._buffer += chunk
            if len(chunk) < _READ_CHUNK:
                break
        return self._decode_frames(), closed

    def _decode_frames(self) -> list[ToSupervisor]:
        messages: list[ToSupervisor] = []
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

    def close(self) -> None:
        self.sock.close()


class WorkerEnd:
    """The worker's end: blocking reads; sends from several threads, one frame at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self._lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(ToWorker)
        self._reader = sock.makefile("rb")

    def send(self, message: ToSupervisor) -> None:
        with self._lock:
            self.sock.sendall(_frame(self._encoder.encode(message)))

    def receive(self) -> ToWorker:
        header = self._reader.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise ChannelClosed("the supervisor closed the channel")
        (size,) = _HEADER.unpack(header)
        body = self._reader.read(size)
        if len(body) < size:
            raise ChannelClosed("the supervisor closed the channel mid-message")
        return self._decoder.decode(body)
