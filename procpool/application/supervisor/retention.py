"""Retention: terminal jobs older than `retention_days` are deleted, a batch at a time.

    every RETENTION_INTERVAL (1 s while a batch came back full) ─▶ ledger.prune
        ─deleted some─▶ store.vacuum_step: the file gives back a few pages
    `procpool prune --older-than D` (an inbox request) ─▶ asked: the next turn prunes

Small batches keep each turn short: a turn that deleted a million rows at once
would hold the loop, and every worker's message with it, for seconds.
"""

from __future__ import annotations

import math

from procpool.application.ports import JobStore
from procpool.application.supervisor.ledger import Ledger

RETENTION_INTERVAL = 60.0  # seconds between prunes that found less than a batch
RETENTION_BATCH = 500  # jobs deleted by one turn at most
VACUUM_PAGES = 256  # pages given back after a batch


class Retention:
    """When the next prune is due (`next_at`, monotonic), and down to what age a
    request asked for (days)."""

    def __init__(self, ledger: Ledger, store: JobStore) -> None:
        self._ledger = ledger
        self._store = store
        self.next_at = 0.0
        self._older_than: float | None = None  # days, asked for by `procpool prune`

    def asked(self, days: float, now: float) -> None:
        """A prune request: jobs finished more than `days` ago go, from this turn on."""
        self._older_than = days if self._older_than is None else min(self._older_than, days)
        self.next_at = now

    def prune(self, now: float, wall: float, retention_days: float) -> None:
        """In the turn's transaction, once due: one batch deleted."""
        if now < self.next_at:
            return
        asked = math.inf if self._older_than is None else self._older_than
        deleted = self._ledger.prune(min(retention_days, asked), wall, RETENTION_BATCH)
        if deleted:
            self._store.vacuum_step(VACUUM_PAGES)
        full = deleted == RETENTION_BATCH
        if not full:
            self._older_than = None
        self.next_at = now + (1.0 if full else RETENTION_INTERVAL)
