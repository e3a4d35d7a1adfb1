"""The error hierarchy. Every error procpool raises on purpose derives from ProcpoolError."""


class ProcpoolError(Exception):
    """Root of procpool's own errors."""


class PermanentError(ProcpoolError):
    """Raised by a handler to fail its job at once, whatever attempts are left."""


class InvalidTransition(ProcpoolError):
    """A status change that the transition table forbids."""


class InvalidJobFile(ProcpoolError):
    """An inbox file, or one line of it, that cannot become a job. The message says why."""


class ConfigError(ProcpoolError):
    """A configuration key that is unknown or has a wrong value. The message names the key."""
