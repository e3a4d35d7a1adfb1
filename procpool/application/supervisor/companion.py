"""A process the supervisor keeps running beside its workers: the HTTP server.

DESIGN decision 13: the HTTP server is a client of the home in a process of its
own, never a thread of the supervisor. With `http_bind` set, the supervisor
owns that process as a child of a second kind:

    supervisor loop ─ tick ─▶ Companion ─ posix_spawn ─▶ `procpool serve ...`
         ▲                         │ SIGTERM at stop, SIGKILL past the grace
         └─ reap (waitpid -1) ─────┘ exited: restart after a backoff

- It is started by posix_spawn (fork + exec at once, nothing of the
  supervisor's memory, descriptors or open transaction survives), in a process
  group of its own, so Ctrl-C on the terminal reaches the supervisor alone,
  with stdout and stderr appended to `logs/http.log`.
- Its exit is reaped by the supervisor's loop like a worker's (every child is
  reaped there, with waitpid(-1)); `exited` claims it and schedules a restart:
  after `backoff_min` seconds, doubling while it keeps dying within `steady`
  seconds of its start, up to `backoff_max`.
- It is no worker's orphan: its pid is kept out of `tree.end_orphans`.
- It dies with the supervisor: it sets PR_SET_PDEATHSIG itself, from
  `PARENT_VARIABLE` (see `procpool.entrypoints.http.server`).
- At a stop it gets SIGTERM once the workers are gone, and SIGKILL if it is
  still there `grace` seconds later; the loop ends once it is reaped.

Every method is non-blocking: the loop calls `tick` each turn and puts
`next_deadline` into its wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from procpool.application.events import emit

PARENT_VARIABLE = "_PROCPOOL_PARENT_PID"  # outside PROCPOOL_*: not a configuration key
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                  signal.SIGCHLD, signal.SIGPIPE)  # fmt: skip


class Companion:
    """One supervised helper process (`name` in the log: `http.started`, ...).

    Args:
        name: the prefix of its log events.
        command: its argv; None: none is run.
        output: the file its stdout and stderr are appended to.
        environ: its environment (the supervisor adds PARENT_VARIABLE).
        backoff_min, backoff_max: seconds before a restart, doubling from the first
            to the second while it dies within `steady` seconds of its start.
        grace: seconds from SIGTERM to SIGKILL at a stop or a reconfiguration.
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str] | None,
        output: Path,
        environ: Mapping[str, str],
        *,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        steady: float = 10.0,
        grace: float = 5.0,
    ) -> None:
        self.name = name
        self.command = list(command) if command else None
        self.output = output
        self.environ = dict(environ)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.steady = steady
        self.grace = grace
        self.pid: int | None = None
        self._started_at = 0.0  # monotonic
        self._not_before = 0.0  # monotonic: no start before then
        self._failures = 0  # exits in a row within `steady` of the start
        self._kill_at: float | None = None  # monotonic: SIGKILL then, if still there
        self._stopped = False  # for good: the supervisor stops

    @property
    def running(self) -> bool:
        return self.pid is not None

    def reconfigure(self, command: Sequence[str] | None) -> None:
        """A new command (SIGHUP): the running process is ended and started anew
        with it; None ends it for good."""
        new = list(command) if command else None
        if new == self.command:
            return
        self.command = new
        self._failures = 0
        self._not_before = 0.0
        if self.pid is not None:
            emit("INFO", f"{self.name}.restarting", f"{self.name} server restarts with the new"
                 " configuration", pid=self.pid)  # fmt: skip
            self._terminate(time.monotonic())

    def tick(self, now: float, stopping: bool) -> None:
        """Once per loop turn, after the commit: start it when due; once `stopping`
        (the workers are gone), end it."""
        if stopping:
            if not self._stopped:
                self._stopped = True
                if self.pid is not None:
                    self._terminate(now)
        elif self.pid is None and self.command is not None and now >= self._not_before:
            self._spawn(now)
        if self._kill_at is not None and now >= self._kill_at and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._kill_at = None

    def next_deadline(self, stopping: bool) -> float | None:
        """The monotonic time `tick` must run by: a kill or a start that is due."""
        if self._kill_at is not None and self.pid is not None:
            return self._kill_at
        if self.pid is None and self.command is not None and not stopping:
            return self._not_before
        return None

    def exited(self, pid: int, status: int, now: float) -> bool:
        """Claim a reaped child. Returns whether it was this one."""
        if pid != self.pid:
            return False
        # Imported here: `procpool serve` reads PARENT_VARIABLE from this module, and the
        # worker's pool would bring it loguru and psutil.
        from procpool.application.worker.pool import describe_exit  # noqa: PLC0415

        self.pid = None
        self._kill_at = None
        how, code, signal_name = describe_exit(status)
        how = how.replace("the worker", f"the {self.name} server")
        if self._stopped:
            emit("INFO", f"{self.name}.stopped", f"{self.name} server stopped", pid=pid)
            return True
        lived = now - self._started_at
        self._failures = self._failures + 1 if lived < self.steady else 1
        delay = min(self.backoff_max, self.backoff_min * 2 ** (self._failures - 1))
        self._not_before = now + delay
        last = self._last_output()
        emit(
            "WARNING" if self.command is not None else "INFO",
            f"{self.name}.exited",
            f"{how} after {lived:.1f} s"
            + (f"; restarting in {delay:g} s" if self.command is not None else "")
            + (f" (last output: {last})" if last else ""),
            pid=pid,
            exit_code=code,
            signal=signal_name,
            restart_in=delay if self.command is not None else None,
        )
        return True

    def _spawn(self, now: float) -> None:
        assert self.command is not None
        environ = {**self.environ, PARENT_VARIABLE: str(os.getpid())}
        # Inherited: no O_CLOEXEC. No link followed, no FIFO waited on: others may write
        # the home (docs/operations.md, "A home shared with a group").
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            self.output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.pid = os.posix_spawn(
                self.command[0],
                self.command,
                environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, str(self.output), flags, 0o600),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                setpgroup=0,
                setsigmask=(),
                setsigdef=_RESET_SIGNALS,
            )
        except OSError as error:
            self._failures += 1
            delay = min(self.backoff_max, self.backoff_min * 2 ** (self._failures - 1))
            self._not_before = now + delay
            emit("ERROR", f"{self.name}.spawn_failed", f"cannot start the {self.name} server:"
                 f" {error}; trying again in {delay:g} s", error=str(error))  # fmt: skip
            return
        self._started_at = now
        emit(
            "INFO",
            f"{self.name}.started",
            f"{self.name} server started (pid {self.pid}), its output in {self.output}",
            pid=self.pid,
            command=" ".join(self.command),
        )

    def _terminate(self, now: float) -> None:
        assert self.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        self._kill_at = now + self.grace

    def _last_output(self, size: int = 300) -> str:
        """The end of the last line it wrote, for the log: why it died, usually."""
        try:
            # Not through a link, nor from a FIFO: what it reads goes into the log.
            fd = os.open(self.output, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as handle:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    return ""
                handle.seek(max(0, info.st_size - size))
                tail = handle.read(size)
        except OSError:
            return ""
        lines = tail.decode("utf-8", "replace").strip().splitlines()
        return lines[-1].strip() if lines else ""


class Companions:
    """The supervisor's companions, as its loop sees them all at once."""

    def __init__(self, companions: Sequence[Companion]) -> None:
        self._all = list(companions)

    @property
    def running(self) -> bool:
        return any(companion.running for companion in self._all)

    def pids(self) -> list[int]:
        """The companions that run: no worker's orphans."""
        return [companion.pid for companion in self._all if companion.pid is not None]

    def tick(self, now: float, stopping: bool) -> None:
        """After each commit: start or restart them; once `stopping` (the workers are
        gone), stop them: the HTTP server answers while running jobs finish."""
        for companion in self._all:
            companion.tick(now, stopping)

    def deadlines(self, stopping: bool) -> list[float]:
        """Each one's `next_deadline`, where it has one (monotonic seconds)."""
        deadlines = [companion.next_deadline(stopping) for companion in self._all]
        return [deadline for deadline in deadlines if deadline is not None]

    def exited(self, pid: int, status: int, now: float) -> bool:
        """Claim a reaped child. Returns whether it was one of them."""
        return any(companion.exited(pid, status, now) for companion in self._all)
