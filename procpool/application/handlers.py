"""Handlers: plain functions `handler(ctx, payload) -> result`, registered by job type."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from loguru import logger

from procpool.domain.errors import ProcpoolError

ENTRY_POINT_GROUP = "procpool.handlers"


class JobContext:
    """What a handler knows of the job it runs, and how it reports back.

    Attributes:
        job_id: the job's id.
        attempt: the 1-based number of this attempt.
        logger: a loguru logger bound to the job; its lines reach the daemon's log.
    """

    __slots__ = ("_report_progress", "attempt", "job_id", "logger")

    def __init__(
        self,
        job_id: str,
        attempt: int,
        report_progress: Callable[[float, str | None], None],
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.logger = logger.bind(job_id=job_id, attempt=attempt)
        self._report_progress = report_progress

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is, from 0.0 to 1.0; shows in `status` and `wait --progress`.

        Cheap to call often: reports are coalesced before they leave the worker.
        """
        fraction = min(1.0, max(0.0, float(fraction)))
        self._report_progress(fraction, None if message is None else str(message))


Handler = Callable[[JobContext, Any], Any]


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, job_type: str, function: Handler) -> None:
        existing = self._handlers.get(job_type)
        if existing is not None and existing is not function:
            raise ProcpoolError(
                f"job type {job_type!r} is registered twice:"
                f" {_qualified_name(existing)} and {_qualified_name(function)}"
            )
        self._handlers[job_type] = function

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def __contains__(self, job_type: str) -> bool:
        return job_type in self._handlers

    def names(self) -> list[str]:
        return sorted(self._handlers)


def _qualified_name(function: Handler) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


registry = HandlerRegistry()
"""The registry that `@handler` fills and the daemon serves."""


def handler(job_type: str) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of `job_type`.

    Example:
        @handler("thumbnail")
        def thumbnail(ctx: JobContext, payload: dict) -> dict:
            ...
    """

    def register(function: Handler) -> Handler:
        registry.register(job_type, function)
        return function

    return register


def load_handler_modules(modules: Iterable[str]) -> list[str]:
    """Import the built-in handlers, the named modules and the entry points of
    group `procpool.handlers`. Returns what was loaded, for the log."""
    loaded = ["procpool.builtin_handlers"]
    importlib.import_module("procpool.builtin_handlers")
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as error:
            raise ProcpoolError(f"cannot import handler module {name!r}: {error}") from error
        loaded.append(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as error:
            raise ProcpoolError(
                f"cannot load entry point {point.name!r} ({point.value}): {error}"
            ) from error
        loaded.append(point.value)
    return loaded
