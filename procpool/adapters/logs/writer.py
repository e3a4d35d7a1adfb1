"""The daemon's logs: flat JSON lines in logs/procpool.jsonl, a readable line on stderr.

Only the supervisor writes them (DESIGN decision 1); workers send their lines
up their channels. Both sinks write synchronously: loguru's `enqueue=True`
would start a thread in a process that forks (DESIGN decision 2). The file is
written with plain `os.write` on an O_APPEND descriptor, so a forked worker
holds no buffered copy of it that could be flushed twice.

Neither output may stop the daemon (issue 14). What an output does not take
now (a full disk, a paused terminal, a pipe nobody reads) waits for the next
flush, up to a limit (1 MiB for the file, 256 KiB for stderr, which drains a
pipe's worth per loop turn); lines beyond it are dropped and counted.
Standard error is written through a descriptor of its own that never blocks;
once it is gone (its reader closed the pipe, the terminal hung up) it is left
for good. Each trouble is logged once when it starts, and again when it ends:

    daemon.stderr_lost      stderr gone or closed at start (file only)
    daemon.stderr_full      stderr took no more lines: dropping them (file only)
    daemon.stderr_resumed   stderr drained, with the number of lines dropped
    log.write_failed        the file cannot be written (stderr at once, file later)
    log.write_recovered     the file is written again, with the lines lost
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from procpool.adapters.home.files import HomeDir, UnsafeHomeFile, open_regular
from procpool.application import events
from procpool.domain.timefmt import rfc3339, rfc3339_each

_encoder = msgspec.json.Encoder()
_RESERVED = frozenset(("ts", "level", "event", "msg"))
LOG_NAME = "logs/procpool.jsonl"  # in the home
_APPEND = os.O_WRONLY | os.O_APPEND
STDERR_DRAIN_AT_EXIT = 1.0  # seconds the daemon waits, as it exits, for stderr to take its lines
HELD_AT = 1024  # events held at the most before their lines are made (DaemonLogs)
_HEADS_KEPT = 256  # readable lines' heads kept (DaemonLogs): the daemon's events are fewer


def _encode(line: dict[str, Any]) -> bytes:
    """A line's JSON; a value JSON cannot hold is shown by its repr, and text that is not
    valid Unicode (a lone surrogate, from a file name say) with backslash escapes: a
    line that cannot be made would take its turn's other lines with it."""
    try:
        return _encoder.encode(line)
    except (TypeError, ValueError):
        return _encoder.encode({k: _loggable(v) for k, v in line.items()})


def _line(ts: str, level: str, event: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
    """An event's JSON line, its fields without the None values and the reserved names."""
    line = {"ts": ts, "level": level, "event": event, "msg": message}
    for key, value in fields.items():
        if value is not None and key not in _RESERVED:
            line[key] = value
    return line


def _loggable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value if isinstance(value, int | float | bool) else repr(value)


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


class _Output(ABC):
    """Lines gathered during one loop turn and written with one write() at its end:
    a syscall per line was a third of the supervisor's time under load.

    `flush` never raises: what the destination did not take stays (a partly written
    line first, so it is completed, not repeated), and `error` says why; lines that
    would take the backlog past LIMIT bytes are counted in `dropped`.
    """

    FLUSH_AT = 256 * 1024
    LIMIT = 1024 * 1024  # bytes that may wait for a destination that does not take them

    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._size = 0  # bytes in _lines
        self._pending = b""  # what the last flush could not write
        self.dropped = 0
        self.error: OSError | None = None  # why the last flush stopped short

    @property
    def waiting(self) -> int:
        """Bytes not written yet."""
        return len(self._pending) + self._size

    def add(self, line: bytes) -> None:
        if self.waiting + len(line) > self.LIMIT:
            self.dropped += 1
            return
        self._lines.append(line)
        self._size += len(line)
        # A destination that refused the last bytes is tried again at the turn's end.
        if self._size >= self.FLUSH_AT and self.error is None:
            self.flush()

    def add_lines(self, data: bytes, lines: Callable[[], Iterable[bytes]]) -> None:
        """Lines made together, `data` their bytes and `lines()` each line's: taken as
        `add` would take each of them, in one piece when they all fit under LIMIT."""
        if self.waiting + len(data) > self.LIMIT:
            for line in lines():
                self.add(line)
            return
        self._lines.append(data)
        self._size += len(data)
        if self._size >= self.FLUSH_AT and self.error is None:
            self.flush()

    def flush(self) -> None:
        data = self._pending
        if self._lines:
            joined = b"".join(self._lines)
            data = data + joined if data else joined
            self._lines.clear()
            self._size = 0
        if not data:
            return
        view = memoryview(data)
        self.error = None
        try:
            while view:
                written = self._write(view)
                if not written:  # a destination that takes nothing must not spin the loop
                    raise BlockingIOError(errno.EAGAIN, "the write took nothing")
                view = view[written:]
        except OSError as error:
            self.error = error
        self._pending = bytes(view) if view else b""

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    @abstractmethod
    def _write(self, data: memoryview) -> int:
        """Write some of `data`; return how many bytes. Raises OSError."""


class JsonLogFile(_Output):
    """logs/procpool.jsonl: one flat JSON object per line, appended.

    Rotated by size: when a write would take the file past `max_bytes`, it is
    renamed to `procpool.jsonl.1` (the older ones move up by one, the oldest
    beyond `keep` is dropped) and a new file is started. The check happens once
    per flush, so a line is never split across two files. The size is what the
    daemon wrote since it opened the file until that count passes `max_bytes`;
    then the file's real size (fstat) decides, and the count starts again from
    it: a file truncated by someone else (logrotate's copytruncate) is not
    rotated early.

    The file and logs/ are opened through HomeDir: a link planted under either
    name is refused (UnsafeHomeFile), never written through.

    Raises OSError (or UnsafeHomeFile) when the file cannot be opened at start;
    later failures to write are kept in `error` (see _Output).
    """

    def __init__(self, home: HomeDir, name: str, max_bytes: int, keep: int) -> None:
        super().__init__()
        self.home = home
        self.name = name  # "logs/procpool.jsonl": a file in a directory of the home
        self.directory, _, self.leaf = name.rpartition("/")
        self.path = home.path / name
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd = self._open()

    def _open(self) -> int:
        fd = self.home.open(self.name, _APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(fd).st_size
        return fd

    def _write(self, data: memoryview) -> int:
        written = os.write(self.fd, data)
        self.size += written
        return written

    def _full(self) -> bool:
        """Whether the file, as it is, would pass max_bytes: asked once the count passes
        it. The count may be stale (the file truncated from outside): one fstat each time
        it passes the limit, not one per write. Raises OSError."""
        self.size = os.fstat(self.fd).st_size
        return bool(self.size) and self.size + self._size > self.max_bytes

    def flush(self) -> None:
        # Never with a partly written line waiting: its end belongs in the same file.
        # A log that cannot rotate (a read-only directory, say) must not stop the
        # daemon: it keeps appending and tries again at the next flush. An empty file is
        # not rotated. The count is looked at first: a suppress() at each flush was two
        # thirds of a flush without lines.
        size = self.size
        if self._lines and not self._pending and size and size + self._size > self.max_bytes:
            with contextlib.suppress(OSError, UnsafeHomeFile):
                if self._full():
                    self._rotate()
        super().flush()

    def _rotate(self) -> None:
        """Shift procpool.jsonl.N-1 to .N ... the current file to .1, then start anew."""
        directory = self.home.directory(self.directory)
        try:
            leaf = self.leaf
            for number in range(self.keep, 1, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(f"{leaf}.{number - 1}", f"{leaf}.{number}",
                              src_dir_fd=directory, dst_dir_fd=directory)  # fmt: skip
            if self.keep:
                os.rename(leaf, f"{leaf}.1", src_dir_fd=directory, dst_dir_fd=directory)
            else:
                os.unlink(leaf, dir_fd=directory)
            # Whatever has the name now was put there since the rename: not ours.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leaf, dir_fd=directory)
            flags = _APPEND | os.O_CREAT | os.O_EXCL
            fd = open_regular(directory, leaf, self.path, flags, 0o600)
        finally:
            os.close(directory)
        old, self.fd, self.size = self.fd, fd, 0
        os.close(old)

    def reopen(self) -> None:
        """For an external logrotate: continue in a new file at the same path.

        Raises OSError (UnsafeHomeFile) if it cannot be opened; the old file is kept then."""
        super().flush()
        fd = self._open()
        old, self.fd = self.fd, fd
        os.close(old)

    def stop(self) -> None:
        self.flush()
        os.close(self.fd)


class StandardError(_Output):
    """The daemon's standard error, written so that it can neither block nor kill it.

    Writes go through a descriptor of their own: a pipe or a terminal is opened
    again (through /proc/self/fd) with O_NONBLOCK, which leaves the shared one
    (the shell's terminal, the workers' stderr) as it was; a socket (journald's
    stream) is sent to with MSG_DONTWAIT. Where neither works, a write waits for
    poll() to say the descriptor takes PIPE_BUF bytes, and writes no more.

    A write that would block leaves the lines waiting (_Output); any other error
    (EPIPE, EIO, ...) means the reader is gone: `lost` says why, nothing is
    written to stderr again, and descriptor 2 becomes /dev/null, so that a stray
    write (Python's own at exit, a worker forked later) cannot fail either.
    """

    # The file has every line: a small backlog drains in a few turns once the reader
    # is back (a pipe takes 64 KiB at a time).
    LIMIT = 256 * 1024

    def __init__(self, fd: int = 2, *, closed: bool = False) -> None:
        super().__init__()
        self._target = fd
        self._fd = -1
        self._socket: socket.socket | None = None
        self._poll = False  # True: a blocking descriptor, written after poll() only
        self.lost: str | None = "it was closed when the daemon started" if closed else None
        self.discarded = False  # it is /dev/null: no line is made for it
        if not closed:
            self._open(fd)

    @property
    def wanted(self) -> bool:
        """Whether a line given to `add` may reach a reader."""
        return self.lost is None and not self.discarded

    def _open(self, fd: int) -> None:
        try:
            info = os.fstat(fd)
        except OSError as error:
            self.lost = f"it is not open ({_reason(error)})"
            return
        mode = info.st_mode
        with contextlib.suppress(OSError):
            self.discarded = stat.S_ISCHR(mode) and info.st_rdev == os.stat(os.devnull).st_rdev
        if stat.S_ISSOCK(mode):
            self._socket = socket.socket(fileno=os.dup(fd))
            return
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            try:
                self._fd = os.open(f"/proc/self/fd/{fd}", flags)
                return
            except OSError:  # no /proc, or a FIFO without a reader (then the write says so)
                self._poll = True
        self._fd = os.dup(fd)  # a regular file never blocks a write

    def _write(self, data: memoryview) -> int:
        if self._socket is not None:
            return self._socket.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        if self._poll:
            poller = select.poll()
            poller.register(self._fd, select.POLLOUT)
            if not poller.poll(0):
                raise BlockingIOError(errno.EAGAIN, "standard error takes no more now")
            data = data[: select.PIPE_BUF]
        return os.write(self._fd, data)

    def add(self, line: bytes) -> None:
        if self.lost is None:
            super().add(line)

    def add_lines(self, data: bytes, lines: Callable[[], Iterable[bytes]]) -> None:
        if self.lost is None:
            super().add_lines(data, lines)

    def flush(self) -> None:
        if self.lost is not None:
            return
        super().flush()
        if self.error is not None and not isinstance(self.error, BlockingIOError):
            self._lose(_reason(self.error))

    def _lose(self, why: str) -> None:
        self.lost = why
        self._lines.clear()
        self._size = 0
        self._pending = b""
        self._close()
        with contextlib.suppress(OSError):
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            os.dup2(null, self._target)
            os.close(null)

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else self._fd

    def drain(self, timeout: float) -> None:
        """Write what waits, waiting up to `timeout` seconds for stderr to take it."""
        deadline = time.monotonic() + timeout
        self.flush()
        while self.lost is None and self.waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            poller = select.poll()
            poller.register(self.fileno(), select.POLLOUT)
            poller.poll(left * 1000)
            self.flush()

    def _close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        elif self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1

    def close_in_child(self) -> None:
        self._close()

    def close(self) -> None:
        self.drain(STDERR_DRAIN_AT_EXIT)
        self._close()


def reserve_standard_fds() -> bool:
    """Open /dev/null on descriptors 0, 1 and 2 where they are closed (`2>&-`), so
    that no file the daemon opens later (the pid file, the store, a worker's socket)
    gets one of their numbers and is written to as stdout or stderr; and give Python
    the streams it left as None, which the code that forks flushes.

    Returns whether standard error was closed."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:  # the lowest free number is the first closed one
        os.set_inheritable(os.open(os.devnull, os.O_RDWR), True)
        name = ("stdin", "stdout", "stderr")[fd]
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))  # noqa: SIM115
    return 2 in closed


def append_event(
    home: HomeDir, name: str, level: str, event: str, message: str, **fields: Any
) -> None:
    """Add one line to HOME/`name`, a log that another process writes (a second daemon
    says why it did not start in the first one's log). One O_APPEND write; errors
    (the file absent, a link, ...) are ignored."""
    line: dict[str, Any] = {"ts": rfc3339(time.time()), "level": level, "event": event,
                            "msg": message, **fields}  # fmt: skip
    with contextlib.suppress(OSError, UnsafeHomeFile):
        fd = home.open(name, _APPEND)
        try:
            os.write(fd, _encode(line) + b"\n")
        finally:
            os.close(fd)


def rotated_files(path: Path) -> list[Path]:
    """The rotated files beside `path` that exist, oldest (highest number) first."""
    numbered = []
    for candidate in path.parent.glob(f"{path.name}.*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), candidate))
    return [candidate for _, candidate in sorted(numbered, reverse=True)]


def _plain(text: str) -> bool:
    """Whether `text` is a plain word: not empty, no quote, no whitespace (str.isspace's,
    which is also what \\s is in a str pattern). `split` with no separator splits at that
    whitespace, in C, and gives back `text` whole only if it has none: a quarter cheaper
    than isprintable's look-up of each character (a job id), half a regular
    expression's match."""
    return text.split(None, 1) == [text] and '"' not in text


def _human_value(value: Any) -> str:
    """A field's value on one readable line: a plain word as it is, anything else
    (text with spaces, quotes or line breaks; numbers, lists, objects) as JSON."""
    if type(value) is int:  # JSON's text of an int (not a bool) is Python's
        return str(value)
    if isinstance(value, str) and _plain(value):
        return value
    try:
        return _encoder.encode(value).decode()
    except (TypeError, ValueError):  # a lone surrogate from a file name, say
        return repr(value)


def _human_fields(fields: dict[str, Any]) -> str:
    """The end of a readable line: the job's fields (job_id, worker_pid, attempt,
    duration_ms), then those a handler gave `ctx.logger` (the JSON line's `fields`),
    each after two spaces. The job's fields are looked up by name, an id that is a
    plain word and an int shown without a call: a quarter less than a loop over the
    names calling _human_value for each (two lines of each job go through here)."""
    text = ""
    if "job_id" in fields:
        job_id = fields["job_id"]
        if type(job_id) is not str or not _plain(job_id):
            job_id = _human_value(job_id)
        text = f"  job_id={job_id}"
    if "worker_pid" in fields:
        pid = fields["worker_pid"]
        text += f"  worker_pid={pid if type(pid) is int else _human_value(pid)}"
    if "attempt" in fields:
        attempt = fields["attempt"]
        text += f"  attempt={attempt if type(attempt) is int else _human_value(attempt)}"
    if "duration_ms" in fields:
        text += f"  duration_ms={_human_value(fields['duration_ms'])}"
    handler_fields = fields.get("fields")
    if isinstance(handler_fields, dict):
        for key, value in handler_fields.items():
            text += f"  {key}={_human_value(value)}"
    return text


def human_line(line: dict[str, Any]) -> str:
    """One event as a person reads it: time, level, event, message, then the job's
    fields, then those a handler gave `ctx.logger` (the JSON line's `fields`)."""
    return (
        f"{line.get('ts', '')} {line.get('level', ''):<7} {line.get('event', ''):<16}"
        f" {line.get('msg', '')}{_human_fields(line)}"
    )


class DaemonLogs:
    """The supervisor's log: each event written twice, as a flat JSON line to the
    file and as a readable line to standard error, at one level that SIGHUP may
    change. Loguru records made in the supervisor's process (a handler module
    logging as it is imported, say) are routed to the same two places.

    Raises OSError (UnsafeHomeFile) if the file cannot be opened; after that, nothing
    raises.
    """

    def __init__(
        self, home: HomeDir, level: str, max_bytes: int, keep: int, *, stderr_closed: bool = False
    ) -> None:
        self.file = JsonLogFile(home, LOG_NAME, max_bytes, keep)
        self.stderr = StandardError(closed=stderr_closed)
        # Events written and not yet made into lines: (time.time(), level, event,
        # message, fields, to stderr too).
        self._held: list[tuple[float, str, str, str, dict[str, Any], bool]] = []
        self._told: set[str] = set()  # the troubles of the outputs already logged
        self._heads: dict[tuple[str, str], str] = {}  # (level, event) -> a readable line's head
        self._file_failed_at = 0.0
        self.set_level(level)

    def set_level(self, level: str) -> None:
        # Imported by the writer alone: reading the log (`procpool logs`) needs no loguru.
        from loguru import logger  # noqa: PLC0415

        self._threshold = events.LEVELS.get(level.upper(), events.LEVELS["INFO"])
        events.configure(self, level)
        logger.remove()  # loguru's default stderr sink, and any earlier configuration
        logger.add(self._from_loguru, level=level, format="{message}", catch=True)

    def _from_loguru(self, message: Any) -> None:
        record = message.record
        extra = dict(record["extra"])
        self.write_event(record["level"].name, extra.pop("event", "log"), record["message"], extra)

    def write_event(
        self, level: str, event: str, message: str, fields: dict[str, Any], stderr: bool = True
    ) -> None:
        """Keep an event, with the time it happened, for the flush: its lines are made
        there with the turn's others (`_write_held`). `fields` is kept until then."""
        held = self._held
        held.append((time.time(), level, event, message, fields, stderr))
        if len(held) >= HELD_AT:
            self._write_held()

    def _write_held(self) -> None:
        """Make the held events' lines: the JSON lines in one encoding, the readable ones
        in one bytes, each line dated by its event's time. Made together in one loop (a
        turn's lines, or HELD_AT), with one encoding and one add per output, a line cost
        about 30 % less in process than made at its event (160 lines a flush). The
        common event's readable line is made from the event, not read back from its
        JSON line's dict (human_line), with its head kept per kind (_head)."""
        held, self._held = self._held, []
        if not held:
            return
        lines: list[dict[str, Any]] = []
        human: list[str] = []
        readable = self.stderr.wanted
        heads = self._heads
        stamps = rfc3339_each([entry[0] for entry in held])
        for ts, (_, level, event, message, fields, stderr) in zip(stamps, held, strict=True):
            # Whether its fields go to the line as they are: no reserved name, no None
            # (told by `is`, not `None in`, for which a value's own __eq__ may raise, an
            # array's say; a loop here is half the time of a type() per value).
            common = _RESERVED.isdisjoint(fields)
            if common:
                for value in fields.values():
                    if value is None:
                        common = False
                        break
            if common:  # the JSON line in one step, the readable one from the event
                lines.append({"ts": ts, "level": level, "event": event, "msg": message,
                              **fields})  # fmt: skip
                if stderr and readable:
                    head = heads.get((level, event)) or self._head(level, event)
                    human.append(f"{ts} {head}{message}{_human_fields(fields)}")
            else:
                line = _line(ts, level, event, message, fields)
                lines.append(line)
                if stderr and readable:
                    human.append(human_line(line))
        try:
            data = _encoder.encode_lines(lines)
        except (TypeError, ValueError):  # a value JSON cannot hold: _encode shows it
            data = b"".join([_encode(line) + b"\n" for line in lines])
        self.file.add_lines(data, lambda: (_encode(line) + b"\n" for line in lines))
        if human:
            self.stderr.add_lines(
                "\n".join(human).encode("utf-8", "replace") + b"\n",
                lambda: (f"{line}\n".encode("utf-8", "replace") for line in human),
            )

    def _head(self, level: str, event: str) -> str:
        """A readable line's level and event, padded as human_line pads them (a format
        spec costs a line more than the rest of its head), kept for the next line of the
        same kind. Text only: 1 and 1.0 would be one key, and are not one text."""
        head = f"{level:<7} {event:<16} "
        if type(level) is str and type(event) is str and len(self._heads) < _HEADS_KEPT:
            self._heads[level, event] = head
        return head

    def _say(
        self, level: str, event: str, message: str, stderr: bool = True, **fields: Any
    ) -> None:
        """An event about the outputs themselves, at the level events.emit would apply."""
        if events.LEVELS[level] >= self._threshold:
            self.write_event(level, event, message, fields, stderr)

    def set_rotation(self, max_bytes: int, keep: int) -> None:
        self.file.max_bytes = max_bytes
        self.file.keep = keep

    def flush(self) -> None:
        """Write what the turn logged; never raises (see the module's docstring)."""
        self._write_held()
        self.stderr.flush()
        self.file.flush()
        said = self._review_stderr()
        if self._review_file() or said:
            self._write_held()
            self.stderr.flush()  # a warning reaches stderr at once
            if self.file.error is None:
                self.file.flush()

    def _review_stderr(self) -> bool:
        """Log the start or the end of a trouble of stderr. Returns whether it did."""
        stderr = self.stderr
        if stderr.lost is not None:
            if "stderr_lost" in self._told:
                return False
            self._told.add("stderr_lost")
            self._say(
                "WARNING",
                "daemon.stderr_lost",
                f"standard error is gone ({stderr.lost}): the daemon goes on, and logs"
                " to this file only",
                stderr=False,
                error=stderr.lost,
            )
        elif stderr.dropped and "stderr_full" not in self._told:
            self._told.add("stderr_full")
            self._say(
                "WARNING",
                "daemon.stderr_full",
                "standard error takes no lines (a paused terminal, a pipe nobody reads):"
                f" past {stderr.LIMIT // 1024} KiB waiting, its lines are dropped until"
                " it drains; this file has them all",
                stderr=False,
            )
        elif "stderr_full" in self._told and not stderr.waiting:
            self._told.discard("stderr_full")
            dropped = stderr.take_dropped()
            self._say(
                "INFO",
                "daemon.stderr_resumed",
                f"standard error takes lines again; {dropped} were dropped from it",
                dropped_lines=dropped,
            )
        else:
            return False
        return True

    def _review_file(self) -> bool:
        """Log the start or the end of a trouble of the file. Returns whether it did."""
        file = self.file
        if file.error is not None and "file" not in self._told:
            self._told.add("file")
            self._file_failed_at = time.monotonic()
            self._say(
                "WARNING",
                "log.write_failed",
                f"cannot write {file.path}: {_reason(file.error)}; the daemon goes on and"
                " tries again at each turn",
                error=_reason(file.error),
            )
        elif file.error is None and "file" in self._told:
            self._told.discard("file")
            dropped = file.take_dropped()
            failed_for = time.monotonic() - self._file_failed_at
            self._say(
                "INFO",
                "log.write_recovered",
                f"{file.path} is written again after {failed_for:.1f} s; {dropped} lines were lost",
                dropped_lines=dropped,
                failed_for_s=round(failed_for, 3),
            )
        else:
            return False
        return True

    def reopen(self) -> None:
        self._write_held()  # the lines logged before the reopen go to the file they did
        try:
            self.file.reopen()
        except (OSError, UnsafeHomeFile) as error:
            reason = _reason(error) if isinstance(error, OSError) else str(error)
            self._say(
                "WARNING",
                "log.reopen_failed",
                f"cannot reopen {self.file.path}: {reason}; still writing the old file",
                error=reason,
            )

    def close_in_child(self) -> None:
        os.close(self.file.fd)
        self.stderr.close_in_child()

    def close(self) -> None:
        from loguru import logger  # noqa: PLC0415 (as in set_level)

        events.configure(None)
        logger.remove()
        self.flush()
        self.stderr.close()
        self.file.stop()
