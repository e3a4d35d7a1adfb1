"""Counts in what procpool says (issue 12): "1 worker", not "1 workers". Through the
real daemon and CLI: tests/e2e/test_wording.py."""

from __future__ import annotations

from procpool.domain.wording import plural


def test_plural_takes_the_singular_only_for_one() -> None:
    assert [plural(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]
    assert plural(1.0, "day") == "1 day"
    assert plural(0.5, "day") == "0.5 days"
    assert plural(3, "process", "processes") == "3 processes"
    assert plural(1_234_567, "job") == "1234567 jobs"
