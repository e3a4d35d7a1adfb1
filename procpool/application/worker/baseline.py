"""Each job starts in a clean worker: what a job changed in its process is put back.

A worker outlives its jobs, and a handler may reconfigure the process it runs
in: `logger.remove()` (the first line of many scripts' `main`), `os.chdir`, a
variable set in `os.environ`, a directory put on `sys.path`, SIGTERM ignored or
SIGPIPE reset, fd 1 closed, a memory limit set to sandbox its own work. Taken
once the worker is set up, the baseline is compared with the process after
each job, and what differs is put back:

- fd 1 and 2, `sys.stdout`, `sys.stderr`: see `OutputCapture.restore`;
- loguru's sinks, patcher, extra and activation: compared by identity (loguru
  replaces them on every change); on a change every sink is removed (the job's
  files closed) and the worker's added anew;
- the handler Python has for each signal, the signal mask, the wake-up fd:
  reinstalled with `signal.signal`, `pthread_sigmask`, `set_wakeup_fd`;
- the working directory: `os.getcwd()` compared, `fchdir` to a descriptor of
  the old one kept open;
- `os.environ`: compared by value, each key that differs set or unset (in the
  process's environment too, which subprocesses inherit);
- `sys.path`: compared by value and identity, the saved list put back;
- the umask: set back (one system call);
- the soft and hard limits on address space, CPU time, file size and open
  files (`resource.setrlimit`): set back; a hard limit a job lowered cannot be
  raised again, and retires the worker;
- the standard library's root logger (`logging.basicConfig`): its handlers
  (those a job added are closed), level, and `logging.disable`;
- the warning filters (`warnings.simplefilter("error")` would turn a later
  job's DeprecationWarning into its failure): compared by value, set back.

About 20 us after a job that changed nothing (a dozen system calls; measured
on a 2-core machine at load 8, 30 to 60 us at load 14). What cannot be put back (a lowered hard
limit; the kept descriptors closed; a signal whose handler, set by C code, a
job replaced) is returned by `restore`: the worker then retires after the job
(main.py), so the next job never meets it. Not covered: state a handler keeps
in its own modules, threads it left running, modules it imported, timers it
armed (`signal.alarm`, `setitimer`), its scheduling priority and CPU affinity,
and what C code changes behind Python's back (`setenv`, `sigaction`).
"""

from __future__ import annotations

import _signal  # signal's own functions wrap each value in an enum: 40x slower
import logging
import os
import resource
import signal
import sys
import warnings
from collections.abc import Callable

from loguru import logger

_SIGNALS = tuple(s for s in signal.Signals if s not in (signal.SIGKILL, signal.SIGSTOP))
# The limits a handler sets to sandbox its own work, and that would end or starve a
# later job; each getrlimit is a system call, so not all sixteen.
_LIMITS = {
    "RLIMIT_AS": resource.RLIMIT_AS,
    "RLIMIT_CPU": resource.RLIMIT_CPU,
    "RLIMIT_FSIZE": resource.RLIMIT_FSIZE,
    "RLIMIT_NOFILE": resource.RLIMIT_NOFILE,
}


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:  # the directory was removed
        return None


class Baseline:
    """The worker's state between jobs, taken at construction; `restore` after each job.

    `add_sink` adds the worker's loguru sink (the baseline adds it itself, and
    again after a job removed it); `restore_streams` puts back the standard
    streams (`OutputCapture.restore`).
    """

    def __init__(self, add_sink: Callable[[], object], restore_streams: Callable[[], None]) -> None:
        self._add_sink = add_sink
        logger.remove()
        add_sink()
        self._parts: tuple[tuple[str, Callable[[], None]], ...] = (
            ("the standard streams", restore_streams),
            ("the log sink", self._restore_log),
            ("the signal handlers", self._restore_signals),
            ("the working directory", self._restore_cwd),
            ("the environment", self._restore_environ),
            ("sys.path", self._restore_path),
            ("the umask", self._restore_umask),
            ("the resource limits", self._restore_limits),
            ("the root logger", self._restore_logging),
            ("the warning filters", self._restore_warnings),
        )
        # loguru has no public view of its configuration; its core swaps in a new
        # object on every change (copy on write), so identity says what changed.
        core = logger._core  # type: ignore[attr-defined]
        self._log = (core.handlers, core.patcher, core.activation_list, core.activation_none)
        self._log_extra = dict(core.extra)
        self._handlers = tuple(map(_signal.getsignal, _SIGNALS))
        self._mask = _signal.pthread_sigmask(signal.SIG_BLOCK, ())
        self._cwd = _cwd()
        self._cwd_fd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._environ = os.environ
        # os.environ's own bytes dict, compared in about 1 us where the mapping's
        # equality decodes every key and value.
        self._environ_data: dict[bytes, bytes] = os.environ._data  # type: ignore[attr-defined]
        self._environ_copy = dict(self._environ_data)
        self._path_list = sys.path
        self._path = list(sys.path)
        self._umask = os.umask(0)
        os.umask(self._umask)
        self._limits = tuple(map(resource.getrlimit, _LIMITS.values()))
        root = logging.getLogger()
        self._root_handlers = list(root.handlers)
        self._root_level = root.level
        self._logging_disabled = logging.root.manager.disable
        self._warnings_list = warnings.filters
        self._warnings = list(warnings.filters)

    def restore(self) -> list[str]:
        """Put back what the job changed. Returns what could not be, as
        "what: why" texts (empty when the worker is clean again)."""
        unfit = []
        for what, restore in self._parts:
            try:
                restore()
            except Exception as error:  # whatever it is, the next job must not meet it
                unfit.append(f"{what}: {type(error).__name__}: {error}")
        return unfit

    def _restore_log(self) -> None:
        core = logger._core  # type: ignore[attr-defined]
        handlers, patcher, activation, activation_none = self._log
        if (
            core.handlers is handlers
            and core.patcher is patcher
            and core.activation_list is activation
            and core.activation_none == activation_none
            and core.extra == self._log_extra
        ):
            return
        logger.remove()  # the job's sinks are stopped (their files closed) with the worker's
        self._add_sink()
        with core.lock:
            core.patcher = patcher
            core.extra.clear()
            core.extra.update(self._log_extra)
            core.activation_list = activation
            core.activation_none = activation_none
            core.enabled = {}  # loguru's cache of each module's activation
        self._log = (core.handlers, patcher, activation, activation_none)

    def _restore_signals(self) -> None:
        handlers = tuple(map(_signal.getsignal, _SIGNALS))
        if handlers != self._handlers:
            for signum, before, now in zip(_SIGNALS, self._handlers, handlers, strict=True):
                if now is before:
                    continue
                if before is None:
                    raise ValueError(f"{signum.name} had a handler Python cannot reinstall")
                signal.signal(signum, before)
        _signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        signal.set_wakeup_fd(-1)  # the worker has none; an asyncio loop left open sets one

    def _restore_cwd(self) -> None:
        if _cwd() != self._cwd:
            os.fchdir(self._cwd_fd)

    def _restore_environ(self) -> None:
        if os.environ is not self._environ:
            os.environ = self._environ  # noqa: B003 (the same mapping back)
        data, saved = self._environ_data, self._environ_copy
        if data == saved:
            return
        # os.environb shares os.environ's dict and sets the process's own environment
        # too, which subprocesses inherit.
        for key in data.keys() - saved.keys():
            del os.environb[key]
        for key, value in saved.items():
            if data.get(key) != value:
                os.environb[key] = value

    def _restore_path(self) -> None:
        if sys.path is not self._path_list or sys.path != self._path:
            self._path_list[:] = self._path
            sys.path = self._path_list

    def _restore_umask(self) -> None:
        os.umask(self._umask)

    def _restore_limits(self) -> None:
        limits = tuple(map(resource.getrlimit, _LIMITS.values()))
        if limits == self._limits:
            return
        for (name, which), before, now in zip(_LIMITS.items(), self._limits, limits, strict=True):
            if now != before:
                try:
                    resource.setrlimit(which, before)
                except ValueError as error:  # a lowered hard limit stays lowered
                    raise ValueError(f"{name} {now}, was {before}: {error}") from None

    def _restore_logging(self) -> None:
        root = logging.getLogger()
        if (
            root.handlers == self._root_handlers
            and root.level == self._root_level
            and logging.root.manager.disable == self._logging_disabled
        ):
            return
        for added in [h for h in root.handlers if h not in self._root_handlers]:
            root.removeHandler(added)
            added.close()
        for removed in [h for h in self._root_handlers if h not in root.handlers]:
            root.addHandler(removed)
        root.setLevel(self._root_level)
        logging.disable(self._logging_disabled)

    def _restore_warnings(self) -> None:
        if warnings.filters is self._warnings_list and warnings.filters == self._warnings:
            return
        # typeshed types warnings.filters as a Sequence; it is the list that warnings
        # itself changes in place.
        self._warnings_list[:] = self._warnings  # type: ignore[index]
        warnings.filters = self._warnings_list
        # What catch_warnings does on its way out: modules' caches of which warning
        # was shown are judged anew.
        warnings._filters_mutated()  # type: ignore[attr-defined]
