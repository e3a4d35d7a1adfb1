"""The fate table, cell by cell (domain/fate.py; CONTRACT section 3).

Each cell is written out here by hand, not computed by the rule under test.
"""

from __future__ import annotations

import pytest

from procpool.domain.fate import FATES, Cause, Fate, Phase, Report, fate

C, FA, F, X, R = Fate.COMPLETED, Fate.FAILED_ATTEMPT, Fate.FAILED, Fate.CANCELED, Fate.REQUEUED

# For a started run: rows are the supervisor's reason, columns the worker's report
# (ok, error, permanent, none).
STARTED: dict[Cause, tuple[Fate, Fate, Fate, Fate]] = {
    Cause.NONE: (C, FA, F, FA),
    Cause.CANCEL: (X, X, X, X),
    Cause.TIMEOUT: (FA, FA, FA, FA),
    Cause.HUNG: (FA, FA, FA, FA),
    Cause.MEMORY: (FA, FA, FA, FA),
    Cause.BROKEN: (FA, FA, FA, FA),
    Cause.SHUTDOWN: (R, R, R, R),
    Cause.OTHER_RUN: (R, R, R, R),
}
REPORTS = (Report.OK, Report.ERROR, Report.PERMANENT, Report.NONE)


def expected(phase: Phase, report: Report, cause: Cause) -> Fate:
    if phase is Phase.QUEUED:  # never started: never charged, never completed
        return X if cause is Cause.CANCEL else R
    return STARTED[cause][REPORTS.index(report)]


def test_the_table_covers_every_combination() -> None:
    assert len(FATES) == len(Phase) * len(Report) * len(Cause)
    assert set(STARTED) == set(Cause)


@pytest.mark.parametrize(("phase", "report", "cause"), sorted(FATES))
def test_every_cell(phase: Phase, report: Report, cause: Cause) -> None:
    assert fate(phase, report, cause) is expected(phase, report, cause)
    assert FATES[(phase, report, cause)] is expected(phase, report, cause)


def test_the_supervisors_reason_wins_over_what_the_handler_did() -> None:
    """A handler that turns SIGTERM into an exception, or returns, cannot change a
    cancel into a failure or a stop into a lost attempt."""
    for report in Report:
        assert fate(Phase.STARTED, report, Cause.CANCEL) is Fate.CANCELED
        assert fate(Phase.STARTED, report, Cause.SHUTDOWN) is Fate.REQUEUED


def test_a_run_that_never_started_is_never_charged() -> None:
    for report in Report:
        for cause in Cause:
            assert fate(Phase.QUEUED, report, cause) in (Fate.REQUEUED, Fate.CANCELED)
