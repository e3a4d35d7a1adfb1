"""Handlers: plain functions `handler(ctx, payload) -> result`, registered by job type."""

from __future__ import annotations

import importlib
import math
import traceback
from collections.abc import Callable, Iterable, KeysView
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from loguru import logger

from procpool.domain.errors import ProcpoolError
from procpool.domain.spec import MAX_ATTEMPTS_LIMIT, MAX_SECONDS, PRIORITY_LIMIT, TypeDefaults

ENTRY_POINT_GROUP = "procpool.handlers"
# The key under which ctx.logger carries its run: (job id, attempt). A handler's
# own fields, even ones named `job_id` or `event`, can never take its place.
RUN_KEY = "procpool_run"


class JobContext:
    """What a handler knows of the job it runs, and how it reports back.

    Attributes:
        job_id: the job's id.
        attempt: the 1-based number of this attempt.
        parents: for a job with `after`, each parent's {"status", "result",
            "last_error"} by id, read when this attempt was handed out; {} otherwise.
        logger: a loguru logger bound to this run; its lines reach the daemon's log
            as `job.log` events of this job, whichever thread logs and whenever.
            Keyword fields (`ctx.logger.info("resized", width=640)`) go under the
            line's `fields` key.
        scheduled_for: for a job made by a schedule (CONTRACT section 14), the
            occurrence's nominal time in the schedule's zone, RFC 3339 with its offset
            ("2026-03-29T03:00:00+02:00"); None for any other job.
        last_checkpoint: the last value an earlier attempt of this job committed with
            `checkpoint` (or `procpool retry --resume` handed over), decoded; None if
            there is none.

    `report_progress` is bound to this run by the worker: a report made after the
    run ended (by a thread the handler left behind) is dropped, never taken for
    another job's.
    """

    __slots__ = (
        "_checkpoint", "_report_progress", "attempt", "job_id", "last_checkpoint", "logger",
        "parents", "scheduled_for",
    )  # fmt: skip

    def __init__(
        self,
        job_id: str,
        attempt: int,
        report_progress: Callable[[float, str | None], None],
        *,
        checkpoint: Callable[[Any], None] | None = None,
        last_checkpoint: Any = None,
        scheduled_for: str | None = None,
        parents: dict[str, Any] | None = None,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.scheduled_for = scheduled_for
        self.parents: dict[str, Any] = parents or {}
        self.logger = logger.bind(job_id=job_id, attempt=attempt, **{RUN_KEY: (job_id, attempt)})
        self._report_progress = report_progress
        self._checkpoint = checkpoint
        self.last_checkpoint = last_checkpoint

    def checkpoint(self, value: Any) -> None:
        """Store `value` as the job's checkpoint; returns once the daemon has committed
        it. A later attempt of the job (after an exception, a timeout, a crash, ...)
        finds it in `ctx.last_checkpoint`. One round trip to the daemon, about a
        millisecond: made for steps of a second or more, not for every item.

        Raises:
            procpool.CheckpointError: `value` is not a JSON value (by the result's
                rules), or is over the config key max_checkpoint_bytes encoded; the
                message names the type and its place, or the size. Nothing is stored.
            procpool.StaleAttempt: this attempt no longer owns the job (canceled, timed
                out, its daemon's lease lost); nothing is stored. Stop the work.
        """
        if self._checkpoint is None:
            raise ProcpoolError("checkpoint needs a job run by a procpool worker")
        self._checkpoint(value)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is, from 0.0 to 1.0; shows in `status` and `wait --progress`.

        Cheap to call often: reports are coalesced before they leave the worker.
        """
        fraction = min(1.0, max(0.0, float(fraction)))
        self._report_progress(fraction, None if message is None else str(message))


Handler = Callable[[JobContext, Any], Any]


@dataclass(frozen=True)
class HandlerOptions:
    """What `@handler` says of its type besides the function: `limit`, the most jobs of
    the type that run at once; `key_limit`, the most with one concurrency_key (None:
    not set here: the configuration's, else unlimited and 1); `timeout` (seconds),
    `max_attempts` and `priority`, the defaults of its jobs that do not say (None: the
    configuration's; priority 0)."""

    limit: int | None = None
    key_limit: int | None = None
    timeout: float | None = None
    max_attempts: int | None = None
    priority: int | None = None

    def job_defaults(self) -> TypeDefaults | None:
        """The defaults it gives its jobs; None if it gives none."""
        if self.timeout is None and self.max_attempts is None and self.priority is None:
            return None
        return TypeDefaults(self.timeout, self.max_attempts, self.priority)


def _check_options(job_type: str, options: HandlerOptions) -> None:
    """Raises ProcpoolError naming the first option out of its bounds."""

    def bad(name: str, rule: str, value: object) -> ProcpoolError:
        return ProcpoolError(f"@handler({job_type!r}, {name}=...) must be {rule}, got {value!r}")

    for name in ("limit", "key_limit"):
        value = getattr(options, name)
        if value is not None and (type(value) is not int or value < 1):
            raise bad(name, "an integer >= 1", value)
    attempts = options.max_attempts
    if attempts is not None and (
        type(attempts) is not int or not 1 <= attempts <= MAX_ATTEMPTS_LIMIT
    ):
        raise bad("max_attempts", f"an integer from 1 to {MAX_ATTEMPTS_LIMIT}", attempts)
    priority = options.priority
    if priority is not None and (
        type(priority) is not int or not -PRIORITY_LIMIT <= priority <= PRIORITY_LIMIT
    ):
        raise bad("priority", f"an integer from {-PRIORITY_LIMIT} to {PRIORITY_LIMIT}", priority)
    timeout = options.timeout
    if timeout is not None and (
        type(timeout) not in (int, float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_SECONDS
    ):
        raise bad("timeout", f"a number of seconds > 0 and <= {MAX_SECONDS:.0f}", timeout)


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._options: dict[str, HandlerOptions] = {}
        self._names: list[str] = []  # sorted once per registration, not per submission

    def register(
        self, job_type: str, function: Handler, options: HandlerOptions | None = None
    ) -> None:
        """Raises ProcpoolError: the type has another handler, or an option is out of its
        bounds (the message names it; see `handler`)."""
        existing = self._handlers.get(job_type)
        if existing is not None and existing is not function:
            raise ProcpoolError(
                f"job type {job_type!r} is registered twice:"
                f" {_qualified_name(existing)} and {_qualified_name(function)}"
            )
        options = options or HandlerOptions()
        _check_options(job_type, options)
        self._handlers[job_type] = function
        self._options[job_type] = options
        self._names = sorted(self._handlers)

    def options(self, job_type: str) -> HandlerOptions:
        return self._options.get(job_type, HandlerOptions())

    def job_defaults(self) -> dict[str, TypeDefaults]:
        """The defaults of the types whose handler gives any, by type."""
        found = {t: o.job_defaults() for t, o in self._options.items()}
        return {t: defaults for t, defaults in found.items() if defaults is not None}

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def types(self) -> KeysView[str]:
        """The registered job types, a live view: `in` at a dict's speed, with no call of
        `__contains__` per job judged."""
        return self._handlers.keys()

    def names(self) -> list[str]:
        """The registered job types, sorted (a copy: the caller may keep or change it)."""
        return list(self._names)


def _qualified_name(function: Handler) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


registry = HandlerRegistry()
"""The registry that `@handler` fills and the daemon serves."""


def handler(
    job_type: str,
    *,
    timeout: float | None = None,
    max_attempts: int | None = None,
    priority: int | None = None,
    limit: int | None = None,
    key_limit: int | None = None,
) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `job_type`.

    `timeout` (seconds, > 0), `max_attempts` (1-1000) and `priority`: the defaults of
    the type's jobs that do not give their own; the configuration's apply where these
    are not set (priority 0). `limit`: at most this many jobs of the type run at once,
    across every daemon of the store; `key_limit`: at most this many with the same
    concurrency_key (default 1). The config tables `[limits]` and `[key_limits]`
    override both limits.

    Example:
        @handler("render", limit=2, timeout=600, max_attempts=1)
        def render(ctx: JobContext, payload: dict) -> dict:
            ...

    Raises:
        ProcpoolError: the type has another handler, or an option is out of its bounds
            (the message names it: "@handler('render', timeout=...) must be ...").
    """

    def register(function: Handler) -> Handler:
        options = HandlerOptions(limit, key_limit, timeout, max_attempts, priority)
        registry.register(job_type, function, options)
        return function

    return register


def load_handler_modules(modules: Iterable[str]) -> list[str]:
    """Import the named modules and the entry points of group `procpool.handlers`.
    Returns what was loaded, for the log. The built-in handlers are not among them:
    whoever serves the registry imports procpool.entrypoints.builtin_handlers (the daemon's
    wiring does), so that the registry does not import its own handlers.

    Raises:
        ProcpoolError: a module or entry point failed to import; the message holds
            the traceback of the failure (file, line, code), without the frames
            of the import machinery.
    """
    loaded: list[str] = []
    for name in modules:
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as error:
            raise ProcpoolError(
                f"cannot import handler module {name!r}:\n{_import_traceback(error)}"
            ) from error
        loaded.append(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except (Exception, SystemExit) as error:
            raise ProcpoolError(
                f"cannot load entry point {point.name!r} ({point.value}):\n"
                f"{_import_traceback(error)}"
            ) from error
        loaded.append(point.value)
    return loaded


def _import_traceback(error: BaseException) -> str:
    """The traceback of a failed import, from the first frame of the imported code on:
    the frames of importlib and of this module say nothing to the handler's author."""
    summary = traceback.TracebackException.from_exception(error)
    frames = [
        frame
        for frame in summary.stack
        if not frame.filename.startswith("<frozen importlib")
        and frame.filename not in (__file__, importlib.__file__)
        and "importlib/metadata" not in frame.filename
    ]
    summary.stack = traceback.StackSummary.from_list(frames)
    return "".join(summary.format()).rstrip("\n")
