"""What one HTTP client can hold of the server: a deadline per request, a cap on
connections, and the descriptors to keep both.

uvicorn bounds the idle time between two requests of a connection
(`timeout_keep_alive`) and the size of a request head (h11's 16 KiB), but not the
time a client takes to send a request: every byte restarts its idle timer, so a
client that sends half a head and a byte now and then holds its connection, and
its descriptor, for as long as it likes (slowloris). Past the process's descriptor
limit the listener cannot accept, and nobody else gets an answer. Hence:

    connection ──▶ connections open >= cap?  yes: 503, closed (accepted, so the
                                                  listener never stops accepting)
               └─▶ deadline armed ─▶ head and body received ─▶ disarmed while the
                   (http_request_timeout)                      app answers; armed
                   expired: 408, closed                        again for the next
                                                               request (keep-alive)

The deadline is absolute: bytes trickling in do not extend it. It does not run
while a response is being sent, so event streams and long polls are never cut.
At start the descriptor limit is raised (to the hard limit if need be) so that
the cap, plus what the server needs besides, fits below it; if it cannot, the cap
is lowered to fit and the server says so.
"""

from __future__ import annotations

import asyncio
import resource

import h11
import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol

from procpool.entrypoints.http.models import Error

# Descriptors kept beside the connections: the listener, store connections of the
# worker threads (SQLite: up to 3 each), log files, inotify, refused connections
# in their last moment.
RESERVED_DESCRIPTORS = 256
REFUSED_GRACE = 2.0  # seconds a refused connection may take to read its 503


def _canned(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = msgspec.json.encode(Error(error=message))
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


def fit_descriptors(wanted: int) -> int:
    """Raise the soft limit of open descriptors for `wanted` connections (to the hard
    limit at most); return how many connections fit below it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass  # keep the soft limit; the cap shrinks to fit it
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_DESCRIPTORS))


def bounded_protocol(request_timeout: float, max_connections: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline per request and a cap on connections.

    Args:
        request_timeout: seconds from a connection's start, or from the end of its
            last response, to the last byte of its next request's head and body.
        max_connections: connections served at once; one more is answered 503.
    """
    timeout_answer = _canned(
        408, "Request Timeout",
        f"the request was not received within {request_timeout:g} s (http_request_timeout)",
    )  # fmt: skip
    full_answer = _canned(
        503, "Service Unavailable",
        f"the server holds {max_connections} connections, its limit"
        " (http_max_connections): try again later",
        "retry-after: 1\r\n",
    )  # fmt: skip

    class BoundedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _refused = False

        # asyncio types the transport BaseTransport; uvicorn's own connection_made
        # narrows it to Transport, as this one does.
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self._refuse(transport)
                return
            super().connection_made(transport)
            self._watch()

        def _refuse(self, transport: asyncio.Transport) -> None:
            # Answered at once; closed once the client has read it and hung up, or after
            # a grace (a close with its request unread could reset the 503 away).
            self._refused = True
            self.transport = transport
            transport.write(full_answer)
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(REFUSED_GRACE, transport.close)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # read and dropped: the answer is given
            super().data_received(data)
            self._watch()

        def eof_received(self) -> None:
            if self._refused:
                self.transport.close()
                return
            super().eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def _watch(self) -> None:
            """The deadline runs while the client owes a request (or its body)."""
            owes = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
            if owes and not self.transport.is_closing():
                if self._deadline is None:
                    self._deadline = self.loop.call_later(request_timeout, self._expired)
            else:
                self._disarm()

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.conn.our_state is h11.IDLE:  # no answer begun: say why
                self.transport.write(timeout_answer)
            self.transport.close()

        def shutdown(self) -> None:
            if self._refused:
                self.transport.close()
                return
            super().shutdown()

    return BoundedH11Protocol
