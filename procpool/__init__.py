"""procpool: a durable daemon that runs CPU-bound jobs in a pool of forked worker processes.

The public names load on first use (PEP 562): every `procpool` command imports
this package, and most need neither the client nor the handlers' module (nor
loguru, which that one brings).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from procpool.domain.errors import (
    BatchJobRefused,
    DuplicateId,
    InvalidJobFile,
    PermanentError,
    ProcpoolError,
    StaleAttempt,
)

if TYPE_CHECKING:
    from procpool.application.handlers import JobContext, handler
    from procpool.client import (
        Client,
        JobInfo,
        JobNotTerminal,
        JobRejected,
        NoJobStore,
        UnknownJob,
    )
    from procpool.domain.result import CheckpointError

# Each name loaded on first use, and the module it comes from.
_LAZY = {
    "CheckpointError": "procpool.domain.result",
    "JobContext": "procpool.application.handlers",
    "handler": "procpool.application.handlers",
    "Client": "procpool.client",
    "JobInfo": "procpool.client",
    "JobNotTerminal": "procpool.client",
    "JobRejected": "procpool.client",
    "NoJobStore": "procpool.client",
    "UnknownJob": "procpool.client",
}

__all__ = [
    "BatchJobRefused",
    "CheckpointError",
    "Client",
    "DuplicateId",
    "InvalidJobFile",
    "JobContext",
    "JobInfo",
    "JobNotTerminal",
    "JobRejected",
    "NoJobStore",
    "PermanentError",
    "ProcpoolError",
    "StaleAttempt",
    "UnknownJob",
    "handler",
]


if not TYPE_CHECKING:  # a type checker sees the imports above, and flags a misspelt name

    def __getattr__(name: str) -> Any:
        """A public name on first use (`procpool.Client`, `from procpool import handler`)."""
        if name not in _LAZY:
            raise AttributeError(f"module 'procpool' has no attribute {name!r}")
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next use is a plain lookup
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *__all__})
