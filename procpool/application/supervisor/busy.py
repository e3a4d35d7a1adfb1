"""A store another process holds: said once, waited for, the turn tried again.

    transaction() ─StoreBusy (BEGIN IMMEDIATE past the store's LOCK_WAIT)─▶ wait:
        `store.busy` once per spell, a pause doubling from PAUSE_MIN to PAUSE_MAX
    the next transaction that begins ─▶ free: `store.available`, with the time waited

The turn that met a busy store had not begun: its inputs wait where they were (the
selector reports them again, signals stay recorded), so nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from procpool.application.events import emit
from procpool.application.ports import StoreBusy

PAUSE_MIN = 0.05  # seconds
PAUSE_MAX = 0.5

Log = Callable[..., None]  # (level, event, message, **fields)


class BusySpell:
    """The spell of turns a busy store held back. `log`: the turn's log lines (said
    after its commit); `monotonic`: the loop's clock."""

    def __init__(
        self, log: Log, flush_logs: Callable[[], None], monotonic: Callable[[], float]
    ) -> None:
        self._log = log
        self._flush_logs = flush_logs
        self._monotonic = monotonic
        self._since: float | None = None  # monotonic: when the store became busy
        self._pause = PAUSE_MIN

    def wait(self, busy: StoreBusy, check_fence: Callable[[], None]) -> None:
        """Say so once, now; `check_fence()` (a lease may run out meanwhile); pause."""
        if self._since is None:
            self._since = self._monotonic()
            self._pause = PAUSE_MIN
            emit(
                "WARNING", "store.busy", f"the store is busy: {busy}; waiting for it,"
                " nothing is lost", error=str(busy),
            )  # fmt: skip
            self._flush_logs()
        check_fence()
        time.sleep(self._pause)
        self._pause = min(2 * self._pause, PAUSE_MAX)

    def free(self) -> None:
        """In a transaction that began: end a busy spell."""
        if self._since is not None:
            waited = self._monotonic() - self._since
            self._since = None
            self._log(
                "INFO", "store.available", f"the store is free again after {waited:.1f} s",
                waited_s=round(waited, 3),
            )  # fmt: skip
