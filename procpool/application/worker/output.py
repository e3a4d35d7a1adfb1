"""A worker's standard output and error, caught and sent up its channel as lines.

```
 print(), sys.stderr.write ─▶ sys.stdout / sys.stderr (line-buffered, over fd 1 / fd 2)
 C extensions, subprocesses ─▶ fd 1 / fd 2 ──▶ two pipes ──▶ output thread ──▶ OutputLine
```

Fd 1 and 2 are replaced by pipes, so whatever writes there, Python or not, is
caught: the handler's `print`, a C library writing to fd 2, a subprocess that
inherited them, a thread's uncaught-exception report. The output thread reads
both pipes, cuts the bytes into lines (`\\n`, `\\r\\n`, or a lone `\\r`, which
progress bars use to redraw; empty lines are dropped), decodes them as UTF-8
with invalid bytes escaped (`\\xe9`), cuts a line longer than
`OUTPUT_LINE_LIMIT` characters, and sends each line as an `OutputLine` bound to
the run current when it was read.

`bind` moves the binding from one run to the next: it reads what the pipes
hold first, and sends a partial line (a `print(..., end="")`) as a line of its
own, so that everything written before a job ended is bound to that job. A
line written by a thread or process that outlives its job is bound to the job
running when it is read: the streams are the process's, not the job's.

A job cannot take the streams from the jobs after it (`restore`, after each
job): fd 1 and 2 are put back from copies the capture keeps (a handler that
closed or redirected them), and so are `sys.stdout` and `sys.stderr` (a handler
that replaced, closed, detached or reconfigured them). Their buffers ignore
`close()`: a handler's own wrapper over `sys.stdout.buffer`, collected whenever
it is, never closes the worker's stream under a later job.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import select
import sys
import threading
from collections.abc import Callable

from procpool.application.wire.messages import OutputLine

OUTPUT_LINE_LIMIT = 10_000  # characters of one line; the rest is cut
_MAX_UTF8 = 4  # bytes of one character at most
_READ = 65_536
_BREAK = re.compile(rb"\r\n|\r|\n")
STREAMS = {1: "stdout", 2: "stderr"}


class _Lines:
    """Bytes in, whole lines out; at most OUTPUT_LINE_LIMIT characters kept per line."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._cut = 0  # bytes dropped from the current line
        self._after_cr = False  # a chunk ended in \r: a \n that starts the next is its pair

    def feed(self, chunk: bytes) -> list[str]:
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        lines = []
        parts = _BREAK.split(chunk)
        for part in parts[:-1]:
            self._add(part)
            line = self.flush()
            if line is not None:
                lines.append(line)
        self._add(parts[-1])
        return lines

    def _add(self, part: bytes) -> None:
        room = OUTPUT_LINE_LIMIT * _MAX_UTF8 - len(self._pending)
        if len(part) > room:
            self._cut += len(part) - max(room, 0)
            part = part[: max(room, 0)]
        self._pending += part

    @property
    def holds_text(self) -> bool:
        return bool(self._pending or self._cut)

    def flush(self) -> str | None:
        """The line gathered so far (None if it is empty), ended here."""
        text = self._pending.decode("utf-8", "backslashreplace")
        cut = self._cut
        self._pending.clear()
        self._cut = 0
        if len(text) > OUTPUT_LINE_LIMIT:
            cut += len(text[OUTPUT_LINE_LIMIT:].encode("utf-8", "backslashreplace"))
            text = text[:OUTPUT_LINE_LIMIT]
        if cut:
            return f"{text}... [line cut: {cut} more bytes]"
        return text or None


Send = Callable[[list[OutputLine]], None]
Run = tuple[str, int]  # job id, attempt


class OutputCapture:
    """Fd 1 and 2 redirected to pipes that `run` reads; `bind` says which run owns them."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._run: Run | None = None
        self._lines = {fd: _Lines() for fd in STREAMS}
        self._readers: dict[int, int] = {}  # read end -> 1 or 2
        # Kept open, so that a handler that closes fd 1 or 2 never ends a pipe, and
        # `restore` puts each back with one dup2.
        self._write_ends: dict[int, int] = {}  # 1 or 2 -> a write end (close-on-exec)
        self._ended: set[int] = set()  # read ends at their end of file
        # One poll object per thread that polls: one object may not poll in two at once.
        self._waiting = select.poll()
        self._looking = select.poll()
        # Kept to tell the daemon's terminal why the worker ends, should the channel fail.
        self.original_stderr = os.dup(2)
        for fd in STREAMS:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(read_end, False)
            os.dup2(write_end, fd)  # the new fd 1 or 2 is inheritable, as it should be
            self._write_ends[fd] = write_end
            self._readers[read_end] = fd
            self._waiting.register(read_end, select.POLLIN)
            self._looking.register(read_end, select.POLLIN)
        # Python's own streams, anew over the pipes: line-buffered, and a string
        # that cannot be encoded (a file name that is not UTF-8) is escaped, not an
        # error in the handler. The ones inherited from the supervisor are left
        # alone, never flushed here: what their buffers hold is the supervisor's.
        self._streams = {1: _text_stream(1), 2: _text_stream(2)}
        sys.stdout, sys.stderr = self._streams[1], self._streams[2]

    def run(self) -> None:
        """The output thread: read the pipes for as long as the worker lives."""
        while True:
            ready = [read_end for read_end, _ in self._waiting.poll()]
            with self._lock:
                self._read(ready)
                ended = self._ended.intersection(ready)
            for read_end in ended:  # else poll would report its end of file forever
                self._waiting.unregister(read_end)

    def bind(self, run: Run | None) -> None:
        """Send what was written so far as the current run's, then bind to `run`.

        Cheap when nothing was written: two flushes of empty buffers and one poll."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a handler may have replaced or closed it
                stream.flush()
        with self._lock:
            ready = self._looking.poll(0)
            if ready:
                self._read([fd for fd, _ in ready])
            lines = []
            for fd, pending in self._lines.items():
                line = pending.flush() if pending.holds_text else None
                if line is not None:
                    lines.append(self._line(fd, line))
            if lines:
                self._send(lines)
            self._run = run

    def restore(self) -> None:
        """Put fd 1 and 2, `sys.stdout` and `sys.stderr` back as they were before the
        job, after `bind` sent what it wrote: two dup2 calls and a few attribute reads
        when the job left them alone.

        Raises:
            OSError: a copy of fd 1 or 2 is gone (a handler closed every descriptor).
        """
        for fd, write_end in self._write_ends.items():
            # Cheaper than finding out whether it changed: one dup2 onto the same pipe.
            os.dup2(write_end, fd)
        for fd, name in STREAMS.items():
            stream = self._streams[fd]
            if not _intact(stream):
                stream = self._streams[fd] = _text_stream(fd)
            if getattr(sys, name) is not stream:
                setattr(sys, name, stream)

    def _read(self, read_ends: list[int]) -> None:
        """Read each pipe until it is empty for now, and send the whole lines. A pipe
        whose every write end is closed (a handler closed the capture's own copies
        too) joins `_ended`."""
        lines: list[OutputLine] = []
        for read_end in read_ends:
            if read_end in self._ended:
                continue
            fd = self._readers[read_end]
            while True:
                try:
                    chunk = os.read(read_end, _READ)
                except BlockingIOError:
                    break
                if not chunk:
                    self._ended.add(read_end)
                    self._looking.unregister(read_end)  # only ever polled under the lock
                    break
                lines.extend(self._line(fd, text) for text in self._lines[fd].feed(chunk))
                if len(lines) >= 256:
                    self._send(lines)
                    lines = []
        if lines:
            self._send(lines)

    def _line(self, fd: int, text: str) -> OutputLine:
        job_id, attempt = self._run if self._run is not None else (None, None)
        return OutputLine(job_id, attempt, STREAMS[fd], text)


class _Unclosable(io.BufferedWriter):
    """A worker's stream buffer: `close()` only flushes. Wrapping `sys.stdout.buffer`
    in a TextIOWrapper of one's own is a common logging set-up, and that wrapper
    closes the buffer when it is collected."""

    def close(self) -> None:
        self.flush()


def _intact(stream: io.TextIOWrapper) -> bool:
    """Whether `stream` is still as `_text_stream` made it: open, attached, and
    neither re-encoded nor unbuffered by a `reconfigure`."""
    try:
        closed = stream.closed
    except ValueError:  # detached
        return False
    return (
        not closed
        and stream.line_buffering
        and stream.encoding == "utf-8"
        and stream.errors == "backslashreplace"
    )


def _text_stream(fd: int) -> io.TextIOWrapper:
    return io.TextIOWrapper(
        _Unclosable(io.FileIO(fd, "w", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    )
