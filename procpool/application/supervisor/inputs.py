"""The loop's inputs: two selectors, one inside the other.

    workers' channels ──────────────────────────────▶ ┐
    the socket door, the inbox, the wake-up pipe,      │ `workers` (the loop's select)
    the shared store's listener ─▶ `others` ─fileno──▶ ┘

The workers' channels are in the loop's own selector; everything else is in
`others`, whose descriptor the loop's selector watches too. So the loop can wait
for the others alone while the workers' messages gather (group commit: `wait`'s
`linger`), and any other input ends that wait at once.
"""

from __future__ import annotations

import selectors
import time

Selected = list[tuple[selectors.SelectorKey, int]]


class Inputs:
    """`workers`: the selector the worker channels go in (data: the pid); `others`:
    the one the rest goes in (data: "door", "inbox", "wake", "store", a connection)."""

    def __init__(self) -> None:
        self.workers = selectors.DefaultSelector()
        self.others = selectors.DefaultSelector()
        self.workers.register(self.others.fileno(), selectors.EVENT_READ, "others")

    def ready_now(self) -> Selected:
        """What already came from outside (the others), with the workers' news beside
        it, taken without waiting; empty if nothing came from outside. The loop's wait
        would end at once: how long it may last is not worked out (issue 25: a client
        that submits one job at a time has its next request waiting at each turn)."""
        outside = self.others.select(0)
        return self._beside_workers(outside) if outside else []

    def select(self, timeout: float, linger: float) -> Selected:
        """Wait up to `linger` seconds (within `timeout`) for the others alone, then up
        to what is left of `timeout` for every input (not at all if the others came).
        Returns what is ready, the others' keys in place of their selector's."""
        if linger:
            # Whatever comes from outside ends it, and is taken as it is: the others
            # are not asked again (an epoll_wait less per client request: issue 25).
            waited = time.monotonic()
            outside = self.others.select(min(linger, timeout))
            if outside:
                return self._beside_workers(outside)
            timeout = max(0.0, timeout - (time.monotonic() - waited))
        ready = self.workers.select(timeout)
        if any(key.data == "others" for key, _ in ready):
            ready = [pair for pair in ready if pair[0].data != "others"]
            ready += self.others.select(0)
        return ready

    def _beside_workers(self, outside: Selected) -> Selected:
        """The workers' news, taken without waiting, beside what came from outside."""
        ready = self.workers.select(0)
        return [pair for pair in ready if pair[0].data != "others"] + outside

    def close(self) -> None:
        self.workers.close()
        self.others.close()
