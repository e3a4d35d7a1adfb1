"""The start register: which run each worker has begun, in a file that outlives us.

A worker says Started over its channel and runs the handler at once; the
supervisor stores the start in its next turn. A handler that kills the daemon
in between (or a kill -9 that lands there) would leave a run that began but
looks unstarted in the store, and recovery would requeue it without charging
an attempt: a job that kills the daemon at once would do so forever. So each
worker also writes the lease of the run it begins into its own 8-byte slot of
a shared file mapping, before it says Started. The write is a store to memory
(no system call), and it survives the death of every process that mapped it:
recovery reads the slots and counts a run whose lease is there as begun.

Leases only grow, so a slot's old value never matches a later run: slots need
no clearing, only a live worker of their own. A power cut loses the page cache
and with it the slots: then a run that began may be taken as unstarted, which
costs the job nothing (the daemon, not the job, died).

The file is opened through HomeDir: a link planted under its name is refused
(UnsafeHomeFile), never mapped and written through.
"""

from __future__ import annotations

import mmap
import os

from procpool.adapters.home.files import HomeDir

SLOT = 8  # bytes: one little-endian lease
SLOTS = 4096  # workers with a slot at once; more run without one (store only)


class StartRegister:
    """`HOME/procpool.starts`: one slot per worker, indexed by the slot number.

    Raises:
        UnsafeHomeFile: the name is a link, not a regular file, or another user's.
        OSError: the file cannot be opened, sized or mapped.
    """

    def __init__(self, home: HomeDir, name: str = "procpool.starts") -> None:
        fd = home.open(name, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != SLOT * SLOTS:
                os.ftruncate(fd, SLOT * SLOTS)
            self._map = mmap.mmap(fd, SLOT * SLOTS, mmap.MAP_SHARED)
        finally:
            os.close(fd)

    def begun(self) -> set[int]:
        """The lease in every slot: the last run each worker of any earlier daemon began."""
        view = memoryview(self._map)
        try:
            leases = {
                int.from_bytes(view[i : i + SLOT], "little") for i in range(0, len(view), SLOT)
            }
        finally:
            view.release()
        return leases - {0}

    def slot(self, index: int) -> memoryview | None:
        """Slot `index`'s bytes, for the worker that owns it (call in the worker); None
        past the last slot."""
        if not 0 <= index < SLOTS:
            return None
        return memoryview(self._map)[index * SLOT : (index + 1) * SLOT]

    def close(self) -> None:
        self._map.close()
