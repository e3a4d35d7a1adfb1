"""The error hierarchy. Every error procpool raises on purpose derives from ProcpoolError."""

from __future__ import annotations


class ProcpoolError(Exception):
    """Root of procpool's own errors."""


class PermanentError(ProcpoolError):
    """Raised by a handler to fail its job at once, whatever attempts are left."""


class StaleAttempt(ProcpoolError):
    """Raised by `ctx.checkpoint` when this attempt no longer owns its job (canceled,
    timed out, its daemon's lease lost, the job taken over): nothing was stored, and
    the attempt's work no longer counts."""


class InvalidTransition(ProcpoolError):
    """A status change that the transition table forbids."""


class InvalidJobFile(ProcpoolError):
    """An inbox file, or one line of it, that cannot become a job. The message says why."""


class DuplicateId(InvalidJobFile):
    """A job with this id exists with other content (type, payload or options); it is
    left as it is. `job_id` names it. Submitting the very same job again is no error."""

    def __init__(self, message: str, job_id: str) -> None:
        super().__init__(message)
        self.job_id = job_id

    @classmethod
    def of(cls, job_id: str) -> DuplicateId:
        """The error for `job_id`, in the words of an inbox rejection."""
        return cls(f'duplicate id "{job_id}" with different content', job_id)


class BatchJobRefused(InvalidJobFile):
    """A job of a batch of several is bad, so none of the batch was stored: `number` is
    its place in the batch (from 1), `reason` what is wrong with it, without the words
    that place it in the batch."""

    def __init__(self, message: str, number: int, reason: str) -> None:
        super().__init__(message)
        self.number = number
        self.reason = reason


class ConfigError(ProcpoolError):
    """A configuration key that is unknown or has a wrong value. The message names the key."""
