"""What a worker is told at its fork, with its defaults (the config file's take them).

Apart from main.py so that reading the configuration does not import the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker is told at its fork; a reload reaches the workers forked after it."""

    heartbeat_interval: float = 1.0  # seconds
    max_result_bytes: int = 16_777_216  # of a result encoded as JSON
    tree_mark: str | None = None  # inherited by every process a handler starts (tree.py)
    # With a shared store: the fence's shared map (application/fence.py), whose first
    # 8 bytes hold the CLOCK_BOOTTIME second its lease may run out (a double; 0: none).
    # The watchdog kills the worker's group then; the worker's own heartbeat thread too,
    # should the watchdog be stopped while the handler lets the thread run (DESIGN 16).
    fence: Any = None
    max_checkpoint_bytes: int = 1_048_576  # of a checkpoint encoded as JSON
