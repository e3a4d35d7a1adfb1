"""A test-only wall clock for the daemon, so that an end-to-end test can step the
daemon's clock back or forward (CONTRACT section 14) without touching the machine's.

    $PROCPOOL_TEST_CLOCK_OFFSET_FILE unset ─▶ the `time` module (always, in production)
    set ─▶ OffsetFileClock: time.time() + the seconds the file holds; monotonic real

Nothing but the daemon's wiring (entrypoints/daemon.py) reads it: clients, the CLI
and the workers keep the real clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from procpool.application.supervisor.wait import Clock
from procpool.domain.errors import ConfigError

VARIABLE = "PROCPOOL_TEST_CLOCK_OFFSET_FILE"


class OffsetFileClock:
    """time.time() plus the offset in `path` (seconds, a decimal number such as "-5" or
    "300"; no file: 0). The file is read again only when its inode, size or mtime
    changes, a stat per reading: a test replaces it whole (os.replace), so that no
    half-written offset is ever read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        """Raises ConfigError: the file holds no number."""
        return time.time() + self._read()

    def _read(self) -> float:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._offset = None, 0.0
            return 0.0
        seen = (info.st_ino, info.st_size, info.st_mtime_ns)
        if seen != self._seen:
            text = self.path.read_text()
            try:
                self._offset = float(text)
            except ValueError:
                raise ConfigError(
                    f"{VARIABLE}: {self.path} holds {text!r}, not a number of seconds"
                ) from None
            self._seen = seen
        return self._offset


def clock_from(environ: Mapping[str, str]) -> Clock:
    """The daemon's clock: the `time` module unless `environ` names an offset file."""
    path = environ.get(VARIABLE)
    return time if not path else OffsetFileClock(Path(path))
