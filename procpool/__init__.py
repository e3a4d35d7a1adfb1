"""procpool: a durable daemon that runs CPU-bound jobs in a pool of forked worker processes."""

from procpool.application.handlers import JobContext, handler
from procpool.client import (
    Client,
    JobInfo,
    JobNotTerminal,
    JobRejected,
    NoJobStore,
    UnknownJob,
)
from procpool.domain.errors import (
    BatchJobRefused,
    DuplicateId,
    InvalidJobFile,
    PermanentError,
    ProcpoolError,
)

__all__ = [
    "BatchJobRefused",
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
    "UnknownJob",
    "handler",
]
