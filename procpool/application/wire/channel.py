"""A framed, typed channel over one Unix stream socket: a 4-byte length, then msgpack.

The supervisor's side never blocks: it reads what is there and keeps a partial
frame for later, and it writes what the socket takes and keeps the rest in an
outgoing buffer, flushed when the socket is writable again. A worker stopped or
wedged in the middle of anything can never stall the loop. What a worker sends
is untrusted (DESIGN decision 11): a frame over the size limit, or one that
does not decode into a valid message, is reported as such: the worker is
ended as broken, never the daemon.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import Generic, TypeVar

import msgspec

from procpool.application.wire.messages import ToSupervisor, ToWorker

_HEADER = struct.Struct("!I")
# One recv's size: under glibc's mmap threshold (128 KiB), so that each read is served
# from the heap; 256 KiB cost an mmap, mremap and munmap per read.
_READ_CHUNK = 64 * 1024
_READ_BUDGET = 4 * 1024 * 1024
# A frame's overhead beyond its result: ids, error text, the msgpack framing.
FRAME_OVERHEAD = 1024 * 1024
T = TypeVar("T")


class ChannelClosed(Exception):
    """The peer closed its end, or died."""


class ChannelBroken(Exception):
    """The peer sent what no peer may: a frame too large, or one that is not a message."""


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def send_buffered(sock: socket.socket, outgoing: bytearray) -> None:
    """Send what a non-blocking `sock` takes now of `outgoing`, and drop it from there;
    the rest waits for the socket to be writable.

    Raises:
        OSError: the peer is gone.
    """
    while outgoing:
        try:
            sent = sock.send(outgoing)
        except (BlockingIOError, InterruptedError):
            return
        del outgoing[:sent]


class Frames(Generic[T]):
    """Bytes in, whole decoded messages out; a partial frame waits for its rest."""

    def __init__(self, decoder: msgspec.msgpack.Decoder[T], max_frame: int = 2**32 - 1) -> None:
        self._buffer = bytearray()
        self._decoder = decoder
        self._max_frame = max_frame

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk

    def read_from(self, sock: socket.socket, budget: int) -> bool:
        """Feed what a non-blocking `sock` holds now, up to about `budget` bytes (a peer
        that floods is read a slice per call); returns whether the peer closed."""
        while budget > 0:
            try:
                chunk = sock.recv(_READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self._buffer += chunk
            budget -= len(chunk)
            if len(chunk) < _READ_CHUNK:
                return False
        return False

    def messages(self) -> tuple[list[T], str | None]:
        """The whole messages in the buffer, and what was wrong with the next frame if
        it cannot be a message (then the rest of the stream is garbage)."""
        messages: list[T] = []
        view = memoryview(self._buffer)
        offset = 0
        error = None
        while len(view) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(view, offset)
            if size > self._max_frame:
                error = f"a message of {size} bytes, over the limit of {self._max_frame}"
                break
            end = offset + _HEADER.size + size
            if end > len(view):
                break
            try:
                messages.append(self._decoder.decode(view[offset + _HEADER.size : end]))
            except msgspec.DecodeError as problem:  # a ValidationError is one too
                error = f"a message that is not valid: {problem}"
                break
            offset = end
        view.release()
        del self._buffer[:offset]
        return messages, error


class SupervisorEnd:
    """The supervisor's end of one worker's channel; never blocks.

    Args:
        sock: one end of a socketpair; set non-blocking here.
        max_frame: the largest message the worker may send, in bytes.
    """

    def __init__(self, sock: socket.socket, max_frame: int) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self._frames = Frames(msgspec.msgpack.Decoder(ToSupervisor), max_frame)
        self._encoder = msgspec.msgpack.Encoder()
        self._outgoing = bytearray()
        # What one call reads at most: a worker that floods its channel is read a
        # slice per loop turn, and the buffer never holds more than a slice and a frame.
        self._read_budget = max_frame + _READ_BUDGET

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def backlogged(self) -> bool:
        """Whether bytes wait to be sent: the worker is not reading now."""
        return bool(self._outgoing)

    def send(self, messages: list[ToWorker]) -> None:
        """Queue the messages and send what the socket takes now.

        Raises:
            ChannelClosed: the worker is gone.
        """
        encode = self._encoder.encode
        data = b"".join([frame(encode(message)) for message in messages])
        if self._outgoing:  # behind bytes that wait: in order, after them
            self._outgoing += data
            self.flush()
            return
        # The common case, a socket that takes it all: no copy into the buffer.
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            raise ChannelClosed(str(error)) from error
        if sent < len(data):
            self._outgoing += memoryview(data)[sent:]

    def flush(self) -> None:
        """Send what the socket takes of the outgoing buffer."""
        try:
            send_buffered(self.sock, self._outgoing)
        except OSError as error:
            raise ChannelClosed(str(error)) from error

    def receive(self) -> tuple[list[ToSupervisor], bool, str | None]:
        """Read what is there now, up to a budget. Returns the whole messages, whether
        the peer closed, and what was wrong if it sent what no worker may (a frame
        over the limit, or one that is not a valid message): then the messages
        before it are good, and the worker must be ended as broken."""
        closed = self._frames.read_from(self.sock, self._read_budget)
        messages, error = self._frames.messages()
        return messages, closed, error

    def close(self) -> None:
        self.sock.close()


class WorkerEnd:
    """The worker's end: blocking reads; sends from several threads, one frame at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(True)
        self._lock = threading.Lock()
        self._encoder = msgspec.msgpack.Encoder()
        self._frames = Frames(msgspec.msgpack.Decoder(ToWorker))

    def send(self, *messages: ToSupervisor) -> None:
        with self._lock:
            self.sock.sendall(b"".join(frame(self._encoder.encode(m)) for m in messages))

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
            messages, error = self._frames.messages()
            if error is not None:
                raise ChannelBroken(f"the supervisor sent {error}")
            if messages or not block:
                return messages
