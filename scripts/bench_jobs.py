"""The job functions of the benchmark, shared by every peer.

procpool's workers run the built-in `echo` and `cpu` handlers, and the example
handlers `compress` and `hash` (scripts/example_handlers.py) for the real batch;
the peers call the very same functions through these wrappers, so that every
peer does the same work per job and the benchmark compares only the machinery
around it.
"""

from __future__ import annotations

from typing import Any

import example_handlers

from procpool.application.handlers import JobContext
from procpool.entrypoints.builtin_handlers import cpu as cpu_handler
from procpool.entrypoints.builtin_handlers import echo as echo_handler

# The handlers ignore their context for these payloads; one is made per process.
_CONTEXT = JobContext("bench", 1, lambda fraction, message: None)


def noop(payload: Any) -> Any:
    """The `echo` job: returns its payload."""
    return echo_handler(_CONTEXT, payload)


def cpu(iterations: int) -> Any:
    """The `cpu` job with `{"iterations": N}`: pure-Python arithmetic."""
    return cpu_handler(_CONTEXT, {"iterations": iterations})


def real(job: tuple[str, Any]) -> Any:
    """A job of the real batch, `(type, payload)`: `compress` or `hash`."""
    kind, payload = job
    function = example_handlers.compress if kind == "compress" else example_handlers.hash_tree
    return function(_CONTEXT, payload)
