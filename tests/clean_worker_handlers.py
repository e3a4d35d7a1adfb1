"""Handlers that reconfigure the worker they run in, for test_clean_worker.py."""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import resource
import signal
import stat
import sys
import warnings
from typing import Any

from loguru import logger

from procpool import JobContext, handler

EXTRA_PATH = "/clean-worker-test"
VARIABLE = "CLEAN_WORKER_TEST"
WATCHED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE, signal.SIGCHLD, signal.SIGUSR1)


def _name(action: Any) -> str:
    return getattr(action, "__qualname__", repr(action))


@handler("probe")
def probe(ctx: JobContext, payload: Any) -> dict[str, Any]:
    """Write to every stream, log with a field, and return what a job sees of its worker."""
    print(f"{payload} printed")
    print(f"{payload} on sys.stderr", file=sys.stderr)
    os.write(1, f"{payload} on fd 1\n".encode())
    os.write(2, f"{payload} on fd 2\n".encode())
    ctx.logger.info("probe logged", marker=payload)
    return {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "variable": os.environ.get(VARIABLE),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "extra_path": EXTRA_PATH in sys.path,
        "path": sys.path,
        "signals": {s.name: _name(signal.getsignal(s)) for s in WATCHED_SIGNALS},
        "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, ())),
        "stdout": [type(sys.stdout).__name__, sys.stdout.encoding, sys.stdout.closed],
        "umask": _umask(),
        "limits": [resource.getrlimit(r) for r in LIMITS],
        "root_logger": [
            [type(h).__name__ for h in logging.root.handlers],
            logging.root.level,
            logging.root.manager.disable,
        ],
        "warnings": _warns(),
    }


def _warns() -> str:
    """What a DeprecationWarning from a handler's library does: shown, or raised."""
    try:
        warnings.warn("old", DeprecationWarning, stacklevel=1)
    except DeprecationWarning:
        return "raised"
    return "warned"


LIMITS = (resource.RLIMIT_CPU, resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE, resource.RLIMIT_AS)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _Terminated(Exception):
    pass


def _raise(signum: int, frame: object) -> None:
    raise _Terminated


def _drop_buffers() -> None:
    # A logging set-up seen in the wild: a UTF-8 writer over the buffer, then dropped.
    for stream in (sys.stdout, sys.stderr):
        wrapper = io.TextIOWrapper(stream.buffer, encoding="utf-8")
        wrapper.write("through a wrapper of its own\n")
        del wrapper  # collected: closes the buffer under it


def _replace_streams() -> None:
    sys.stdout = io.TextIOWrapper(sys.stdout.buffer, encoding="latin-1")
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (left open on purpose)


def _close_fds() -> None:
    os.close(1)
    os.close(2)


def _close_every_copy_of_stdout() -> None:
    """Close fd 1 and every other write end of its pipe (the worker's kept copy):
    what a handler's closerange(3, ...) would do to it, but keeping the channel."""
    pipe = os.fstat(1).st_ino
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            info = os.fstat(fd)
            writes = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        except OSError:
            continue
        if fd != 1 and stat.S_ISFIFO(info.st_mode) and info.st_ino == pipe and writes:
            os.close(fd)
    os.close(1)


def _logger_remove() -> None:
    logger.remove()


def _logger_to_stderr() -> None:
    logger.remove()
    logger.add(sys.stderr, format="{message}")
    logger.configure(extra={"tag": "from a script"})


def _sigterm_ignored() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def _sigterm_raises() -> None:
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def _chdir() -> None:
    os.chdir("/")


def _environ() -> None:
    os.environ[VARIABLE] = "left by a job"
    del os.environ["PYTHONPATH"]


def _sys_path() -> None:
    sys.path.insert(0, EXTRA_PATH)


def _sys_path_replaced() -> None:
    sys.path = [EXTRA_PATH, *sys.path]


def _umask_changed() -> None:
    os.umask(0o077)


def _soft_limits() -> None:
    # A handler sandboxing its own work: 10 CPU seconds, 64 descriptors.
    for which, soft in ((resource.RLIMIT_CPU, 10), (resource.RLIMIT_NOFILE, 64)):
        resource.setrlimit(which, (soft, resource.getrlimit(which)[1]))


def _hard_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    lower = 2**30 if hard == resource.RLIM_INFINITY else hard - 1
    resource.setrlimit(resource.RLIMIT_FSIZE, (lower, lower))


def _root_logger() -> None:
    logging.basicConfig(level=logging.DEBUG)
    logging.disable(logging.INFO)


def _warnings_as_errors() -> None:
    warnings.simplefilter("error")


BREAKS = {
    "drop_buffers": _drop_buffers,
    "replace_streams": _replace_streams,
    "close_fds": _close_fds,
    "close_every_copy_of_stdout": _close_every_copy_of_stdout,
    "logger_remove": _logger_remove,
    "logger_to_stderr": _logger_to_stderr,
    "sigterm_ignored": _sigterm_ignored,
    "sigterm_raises": _sigterm_raises,
    "chdir": _chdir,
    "environ": _environ,
    "sys_path": _sys_path,
    "sys_path_replaced": _sys_path_replaced,
    "umask": _umask_changed,
    "soft_limits": _soft_limits,
    "hard_limit": _hard_limit,
    "root_logger": _root_logger,
    "warnings": _warnings_as_errors,
}


@handler("break")
def break_worker(ctx: JobContext, payload: str) -> str:
    """Change the worker as `payload` names (a key of BREAKS), and succeed."""
    BREAKS[payload]()
    return payload


@handler("custom_level")
def custom_level(ctx: JobContext, payload: Any) -> str:
    """Log at a level of the handler's own, as a script with logger.level() does."""
    with contextlib.suppress(TypeError):  # defined by an earlier job on this worker
        logger.level("NOTICE", no=35)
    ctx.logger.log("NOTICE", "at a level of its own", marker=payload)
    return payload
