"""Whether a directory may have changed since it was listed, without listing it again.

A directory's inode and mtime change whenever a name is added, removed or renamed
in it. The mtime is set from the kernel's coarse clock (one tick, 1-10 ms), so two
changes in one tick can leave the same mtime: a listing is trusted only once the
mtime it saw is older than the listing by more than a tick (RACY_NS), as git
treats a "racily clean" index entry. A file rewritten in place under the same
name does not change its directory: the files listed are written once (a rename,
or a link), so their names say all a listing needs.
"""

from __future__ import annotations

import os
from pathlib import Path

RACY_NS = 100_000_000  # 0.1 s: well over one tick of the kernel's coarse clock


class ChangeStamp:
    """The (inode, mtime) of a directory as of its last trusted listing."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._trusted: tuple[int, int] | None = None

    def current(self) -> tuple[int, int] | None:
        """(inode, mtime in ns) of the directory now; None if there is none."""
        try:
            info = os.stat(self.directory)
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns

    def unchanged(self) -> bool:
        """Whether the last listing noted still shows what the directory holds."""
        return self._trusted is not None and self.current() == self._trusted

    def listed(self, before: tuple[int, int] | None, started_ns: int) -> None:
        """Note a listing begun at `started_ns` (time.time_ns()) after `current()`
        returned `before`; it is trusted only if `before` was already stable then."""
        stable = before is not None and before[1] < started_ns - RACY_NS
        self._trusted = before if stable else None
