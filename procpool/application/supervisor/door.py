"""The socket door: clients submit, wait and cancel over a Unix socket while the daemon
runs (DESIGN decision 12). The inbox stays the other door; one intake judges both.

    client ─Submit/Wait/Cancel─▶ connection ─▶ requests of the turn ─▶ intake, store
    client ◀─Accepted/Refused/Done/Unknown/CancelAnswer── after the commit ◀─┘

It lives in the supervisor's loop, which is single-threaded (DESIGN decision 2):
the listening socket and every connection are in the loop's selector, and nothing
here blocks. A connection's bytes are read up to a budget per turn, framed and
decoded as the workers' channels are (channel.py); a frame too large or one that
is not a request closes that connection. What a connection does not read waits in
its own buffer, up to MAX_BACKLOG; past it the connection is closed. At most
MAX_CONNECTIONS are served; one more is told Busy and closed, and its client uses
the inbox.

Every answer is sent after the commit of the turn that decided it, before the
turn's other effects: an Accepted means the jobs are on disk, a Done that the
terminal state of each job is. The
requests that arrive in one turn share its commit, so concurrent producers share
one fsync. A turn that answers a submit also waits, before its commit, for the next
submits of other clients that submit in a loop, when each is due within about a
millisecond (`gather`; PostgreSQL's commit_delay and commit_siblings do the same
for its backends): four threads submitting one job at a time would otherwise come
in turns of one or two each, one durable commit apiece.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgspec

from procpool.application.ports import JobStore
from procpool.application.supervisor import wait
from procpool.application.supervisor.fleet import Decision
from procpool.application.supervisor.intake import Intake
from procpool.application.wire.channel import Frames, frame, send_buffered
from procpool.application.wire.door_messages import (
    MAX_REQUEST_BYTES,
    Accepted,
    Busy,
    Cancel,
    CancelAnswer,
    Done,
    Refused,
    Submit,
    ToClient,
    ToDaemon,
    Unknown,
    Wait,
)
from procpool.domain.spec import JobDefaults
from procpool.domain.wording import plural

MAX_CONNECTIONS = 128
# After the listener fails to take a connection (out of descriptors: EMFILE, ENFILE;
# out of memory), it is not watched for this long (seconds), or until one of the
# door's connections closes and frees a descriptor: the pending connection stays
# queued, and watched it would wake every turn to fail again.
ACCEPT_PAUSE = 0.25
# Bytes of answers that may wait for a client that does not read them.
MAX_BACKLOG = 4 * 1024 * 1024
# Bytes read from one connection per turn: a flooding client is read a slice at a time.
READ_BUDGET = 4 * 1024 * 1024
# Job ids one connection may wait for at once.
MAX_WAITING = 1_000_000
_ACCEPT_PER_TURN = 64

Log = Callable[..., None]  # (level, event, message, **fields)


@dataclass(eq=False)
class Connection:
    """One client's connection. Its identity is its key in the selector's data."""

    sock: socket.socket
    frames: Frames[ToDaemon]
    outgoing: bytearray = field(default_factory=bytearray)
    waiting: int = 0  # job ids it waits for
    waiters: set[_Waiter] = field(default_factory=set)  # its waits not answered yet
    closed: bool = False
    watching_writes: bool = False  # selected for writing too: answers wait to be sent
    # A client that submits in a loop, for group commit (Door.gather): when its last
    # submit's answer went, if nothing came from it since (monotonic seconds), and how
    # long it took from its answer before to its last submit.
    answered_at: float | None = None
    pause: float | None = None

    def fileno(self) -> int:
        return self.sock.fileno()


def _awaited(connections: Iterable[Connection]) -> list[tuple[float, float]]:
    """wait.siblings_wait's `expected`: the clients of `connections` whose last submit was
    answered and who have sent nothing since."""
    return [
        (c.answered_at, c.pause)
        for c in connections
        if c.answered_at is not None and c.pause is not None and not c.closed
    ]


@dataclass(eq=False)
class _Waiter:
    connection: Connection
    ref: int
    left: set[str]


class Door:
    """The listening socket and its connections.

    Args:
        listener: a bound, listening Unix stream socket (set non-blocking here).
        selector: the supervisor's selector; the door registers its sockets there, with
            the data "door" for the listener and the Connection for each client.
        log: the turn's log (level, event, message, **fields).
    """

    def __init__(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        log: Log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self._clock = clock
        self.listener.setblocking(False)
        self._selector = selector
        self._log = log
        self._decoder: msgspec.msgpack.Decoder[ToDaemon] = msgspec.msgpack.Decoder(ToDaemon)
        self._encoder = msgspec.msgpack.Encoder()
        self.connections: set[Connection] = set()
        self._requests: list[tuple[Connection, ToDaemon]] = []
        self._answers: list[tuple[Connection, ToClient]] = []
        self._waiters: dict[str, list[_Waiter]] = {}
        # A spell of failed accepts: when the listener is watched again (monotonic
        # seconds), how many tries failed, and since when.
        self.paused_until: float | None = None
        self._failed = 0
        self._failing_since = 0.0
        selector.register(listener, selectors.EVENT_READ, "door")

    # ----------------------------------------------------------------- in the turn

    def ready(self, data: object, mask: int) -> None:
        """The selector reported the listener (`data` "door") or a connection."""
        if data == "door":
            self._accept()
        elif isinstance(data, Connection):
            if mask & selectors.EVENT_WRITE:
                self._flush(data)
            if mask & selectors.EVENT_READ and not data.closed:
                self._read(data)

    def watch_again(self, now: float) -> None:
        """Before the loop's wait: once the listener's pause is over, watch it again and
        try it at once. accept(2) takes a descriptor before it looks for a connection,
        so the try says whether descriptors are back even when no client waits (one
        that gave up left the queue): EMFILE pauses again, EAGAIN ends the spell."""
        if self.paused_until is not None and now >= self.paused_until:
            self.paused_until = None
            self._selector.register(self.listener, selectors.EVENT_READ, "door")
            self._accept()

    def _accept(self) -> None:
        for _ in range(_ACCEPT_PER_TURN):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                self._resumed()
                return
            except OSError as error:  # EMFILE, ENFILE, ENOMEM: the connection waits
                self._pause(error)
                return
            sock.setblocking(False)
            if len(self.connections) >= MAX_CONNECTIONS:
                with contextlib.suppress(OSError):
                    sock.send(frame(self._encoder.encode(Busy(0))))
                sock.close()
                continue
            connection = Connection(sock, Frames(self._decoder, MAX_REQUEST_BYTES))
            self.connections.add(connection)
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _pause(self, error: OSError) -> None:
        """The listener failed: stop watching it for ACCEPT_PAUSE, or until a connection
        closes. Said once per spell; `socket.accept_resumed` ends it with the count."""
        now = self._clock()
        if not self._failed:
            self._failing_since = now
            self._log(
                "WARNING", "socket.accept_failed",
                f"cannot take a connection on the socket: {error.strerror}; trying again"
                f" every {ACCEPT_PAUSE:g} s and whenever a connection closes (clients wait,"
                " or use the inbox after 5 s)",
                error=str(error.strerror),
            )  # fmt: skip
        self._failed += 1
        self.paused_until = now + ACCEPT_PAUSE
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self.listener)

    def _resumed(self) -> None:
        """accept(2) found no connection left waiting, with a descriptor to spare: a spell
        of failed accepts is over (not at the first that succeeds: one freed descriptor
        is taken by that connection, and the next fails again)."""
        if self._failed:
            waited = self._clock() - self._failing_since
            self._log(
                "INFO", "socket.accept_resumed",
                f"connections are taken on the socket again, after"
                f" {plural(self._failed, 'failed try', 'failed tries')} in {waited:.1f} s",
                failed=self._failed, waited_s=round(waited, 3),
            )  # fmt: skip
            self._failed = 0

    def _read(self, connection: Connection) -> None:
        closed = connection.frames.read_from(connection.sock, READ_BUDGET)
        messages, error = connection.frames.messages()
        if messages and connection.answered_at is not None:
            submits = isinstance(messages[0], Submit)
            connection.pause = self._clock() - connection.answered_at if submits else None
            connection.answered_at = None
        self._requests.extend((connection, message) for message in messages)
        if error is not None:
            self._log(
                "WARNING", "socket.closed",
                f"closed a connection on the socket: it sent {error}", error=error,
            )  # fmt: skip
            self._close(connection)
        elif closed:
            self._close(connection)

    def gather(self) -> bool:
        """Before the turn's commit (group commit across clients): when the turn answers a
        submit, and other clients that submit in a loop will send their next submit
        within wait.SIBLINGS_WAIT (`wait.siblings_wait`), wait for those, reading each
        as it comes, so that this commit answers them too. Anything else from outside
        (a signal, the inbox, the listener) ends the wait; it stays ready for the next
        turn. Returns whether requests were read (`serve` them in this turn)."""
        if not any(isinstance(message, Accepted | Refused) for _, message in self._answers):
            return False
        expected = [c for c in self.connections if c.pause is not None]
        now = self._clock()
        seconds = wait.siblings_wait(_awaited(expected), now)
        deadline = now + seconds
        while seconds > 0:
            for key, mask in self._selector.select(seconds):
                if not isinstance(key.data, Connection):
                    return bool(self._requests)
                self.ready(key.data, mask)
            now = self._clock()
            seconds = min(deadline - now, wait.siblings_wait(_awaited(expected), now))
        return bool(self._requests)

    def serve(
        self,
        intake: Intake,
        store: JobStore,
        defaults: JobDefaults,
        max_job_bytes: int,
        now: float,
        wall: float,
    ) -> list[Decision]:
        """Carry out the turn's requests in its transaction; their answers wait for its
        commit. Returns the decisions about workers that cancels made."""
        requests, self._requests = self._requests, []
        decisions: list[Decision] = []
        submits = [(c, m) for c, m in requests if isinstance(m, Submit)]
        if submits:
            batches = [message.jobs for _, message in submits]
            verdicts = intake.submissions(batches, defaults, wall, max_job_bytes)
            for (connection, submit), verdict in zip(submits, verdicts, strict=True):
                if verdict.ids is not None:
                    self._answer(connection, Accepted(submit.ref, verdict.ids))
                else:
                    error = verdict.error or "refused"
                    self._answer(
                        connection,
                        Refused(submit.ref, error, verdict.duplicate, verdict.bad_job),
                    )
        for connection, message in requests:
            if isinstance(message, Cancel):
                decisions += self._cancel(connection, message, intake, store, now, wall)
            elif isinstance(message, Wait):
                self._wait(connection, message, store)
        return decisions

    def _cancel(
        self,
        connection: Connection,
        message: Cancel,
        intake: Intake,
        store: JobStore,
        now: float,
        wall: float,
    ) -> list[Decision]:
        if store.get(message.job_id) is None:
            # Perhaps its file still waits in the inbox: the client asks there.
            self._answer(connection, Unknown(message.ref, message.job_id))
            return []
        decisions = intake.cancel(message.job_id, now, wall, via="socket")
        job = store.get(message.job_id)
        status = "canceled" if job is None else str(job.status)
        self._answer(connection, CancelAnswer(message.ref, status))
        return decisions

    def _wait(self, connection: Connection, message: Wait, store: JobStore) -> None:
        if connection.closed:
            return
        wanted = list(dict.fromkeys(message.job_ids))
        statuses = store.statuses(wanted)
        missing = next((job_id for job_id in wanted if job_id not in statuses), None)
        if missing is not None:
            self._answer(connection, Unknown(message.ref, missing))
            return
        left = {job_id for job_id, status in statuses.items() if not status.is_terminal}
        if not left:
            self._answer(connection, Done(message.ref))
            return
        if connection.waiting + len(left) > MAX_WAITING:
            self._log(
                "WARNING", "socket.closed",
                f"closed a connection on the socket: it waits for over {MAX_WAITING} jobs",
            )  # fmt: skip
            self._close(connection)
            return
        waiter = _Waiter(connection, message.ref, left)
        connection.waiting += len(left)
        connection.waiters.add(waiter)
        for job_id in left:
            self._waiters.setdefault(job_id, []).append(waiter)

    @property
    def waiting(self) -> bool:
        """Whether a client waits for a job to end."""
        return bool(self._waiters)

    @property
    def answering(self) -> bool:
        """Whether the turn's commit answers a client."""
        return bool(self._answers)

    def _answer(self, connection: Connection, message: ToClient) -> None:
        self._answers.append((connection, message))

    # ----------------------------------------------------------------- after the commit

    def committed(self, finished: Iterable[str]) -> None:
        """After the turn's commit: tell waiters of the jobs it made terminal, then send
        every answer the turn decided."""
        for job_id in finished:
            for waiter in self._waiters.pop(job_id, ()):
                waiter.left.discard(job_id)
                waiter.connection.waiting -= 1
                if not waiter.left:
                    waiter.connection.waiters.discard(waiter)
                    if not waiter.connection.closed:
                        self._answer(waiter.connection, Done(waiter.ref))
        answers, self._answers = self._answers, []
        touched: dict[int, Connection] = {}
        now = self._clock()
        for connection, message in answers:
            if isinstance(message, Accepted | Refused):
                connection.answered_at = now
            if not connection.closed:
                connection.outgoing += frame(self._encoder.encode(message))
                touched[id(connection)] = connection
        for connection in touched.values():
            self._flush(connection)

    def rolled_back(self) -> None:
        """The turn's transaction is gone (StoreLost): what it would have answered is
        not true. Each client that waited for such an answer loses its connection and
        asks again (a submit is idempotent by its ids), or uses the inbox."""
        answers, self._answers = self._answers, []
        for connection in {id(c): c for c, _ in answers}.values():
            self._close(connection)

    def _flush(self, connection: Connection) -> None:
        try:
            send_buffered(connection.sock, connection.outgoing)
        except OSError:
            self._close(connection)
            return
        if len(connection.outgoing) > MAX_BACKLOG:
            self._log(
                "WARNING", "socket.closed",
                "closed a connection on the socket: it does not read its answers",
            )  # fmt: skip
            self._close(connection)
            return
        backlogged = bool(connection.outgoing)
        if backlogged is connection.watching_writes:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if backlogged else 0)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(connection.sock, events, connection)
            connection.watching_writes = backlogged

    def _close(self, connection: Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self.connections.discard(connection)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        connection.sock.close()
        if self.paused_until is not None:
            self.paused_until = 0.0  # a descriptor is free: try the listener at once
        for waiter in connection.waiters:
            for job_id in waiter.left:
                kept = [w for w in self._waiters.get(job_id, ()) if w is not waiter]
                if kept:
                    self._waiters[job_id] = kept
                else:
                    self._waiters.pop(job_id, None)
        connection.waiters.clear()
        connection.waiting = 0

    def close(self) -> None:
        """The daemon stops: every client finds the inbox from now on."""
        for connection in list(self.connections):
            self._close(connection)
        self.paused_until = None
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self.listener)
        self.listener.close()

    def close_in_child(self) -> None:
        """In a freshly forked worker: drop the door's descriptors, touching nothing else
        (the socket file and the connections stay the supervisor's)."""
        for connection in self.connections:
            connection.sock.close()
        self.listener.close()
