"""How a run ends: the one fate table, beside the transition table of `job.py`.

A run is one hand-over of a job to a worker (one lease). It ends when the
worker reports on it (finished, or skipped before it started) or when the
worker's process is gone. What becomes of the job is decided here, from three
things only:

- the phase the run reached: `QUEUED` (handed over, never started) or
  `STARTED` (the worker acknowledged starting it);
- what the worker reported: finished ok, finished with an error (or a
  permanent error), or nothing (it exited, or was never asked to start);
- why the supervisor ended it, if it did: a cancel, a timeout, a hung
  worker, the memory limit, a shutdown, a broken channel, or the end of the
  worker for another run it held.

The rule (CONTRACT section 3): when the supervisor ended the run, its reason
decides the fate, whatever the handler did with the signal (raised, exited
0, returned). A cancel request counts as the supervisor's reason as soon as
it is made. A run that never started is never charged an attempt.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    QUEUED = "queued"  # handed to the worker; it has not said Started
    STARTED = "started"


class Report(StrEnum):
    """What the worker said of the run before it ended."""

    OK = "ok"  # Finished with a result
    ERROR = "error"  # Finished with an error
    PERMANENT = "permanent"  # Finished with procpool.PermanentError
    NONE = "none"  # no Finished: the worker exited, or skipped the queued job


class Cause(StrEnum):
    """Why the supervisor ended the run; `NONE` when it did not."""

    NONE = "none"
    CANCEL = "cancel"
    TIMEOUT = "timeout"
    HUNG = "hung"  # no heartbeat, or a state held past its deadline
    MEMORY = "memory"
    SHUTDOWN = "shutdown"
    BROKEN = "broken"  # its channel failed, or it sent what it must not
    OTHER_RUN = "other_run"  # its worker was ended for another run it held


class Fate(StrEnum):
    COMPLETED = "completed"
    FAILED_ATTEMPT = "failed_attempt"  # attempts + 1; retried after a backoff, or failed
    FAILED = "failed"  # failed for good, whatever attempts are left
    CANCELED = "canceled"
    REQUEUED = "requeued"  # back to pending, attempts unchanged


# The supervisor's reason, where it has one, decides alone.
_BY_CAUSE: dict[Cause, Fate] = {
    Cause.CANCEL: Fate.CANCELED,
    Cause.TIMEOUT: Fate.FAILED_ATTEMPT,
    Cause.HUNG: Fate.FAILED_ATTEMPT,
    Cause.MEMORY: Fate.FAILED_ATTEMPT,
    Cause.BROKEN: Fate.FAILED_ATTEMPT,
    Cause.SHUTDOWN: Fate.REQUEUED,
    Cause.OTHER_RUN: Fate.REQUEUED,
}
# Otherwise the worker's report does.
_BY_REPORT: dict[Report, Fate] = {
    Report.OK: Fate.COMPLETED,
    Report.ERROR: Fate.FAILED_ATTEMPT,
    Report.PERMANENT: Fate.FAILED,
    Report.NONE: Fate.FAILED_ATTEMPT,  # the worker died under it
}


def fate(phase: Phase, report: Report, cause: Cause) -> Fate:
    """The fate of a run that has ended.

    A queued run was never started: it goes back to pending, or is canceled if
    that is why it ended. A started run takes the fate of the supervisor's
    reason if there is one, else of the worker's report.
    """
    if phase is Phase.QUEUED:
        return Fate.CANCELED if cause is Cause.CANCEL else Fate.REQUEUED
    if cause is not Cause.NONE:
        return _BY_CAUSE[cause]
    return _BY_REPORT[report]


FATES: dict[tuple[Phase, Report, Cause], Fate] = {
    (phase, report, cause): fate(phase, report, cause)
    for phase in Phase
    for report in Report
    for cause in Cause
}
"""Every cell, for the docs and the table test."""
