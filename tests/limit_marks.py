"""Reading the marks that tests/limit_handlers.py writes: how many runs were alive at once."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Span:
    job_id: str
    pid: int
    start: float
    end: float  # math.inf: no end mark (the run was killed, or still runs)


def spans(directory: Path) -> list[Span]:
    """Every run, in the order it started (one per start mark)."""
    path = directory / "marks"
    found: dict[tuple[str, int], Span] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        job_id, pid, what, moment = line.split()
        key = (job_id, int(pid))
        if what == "start":
            found[key] = Span(job_id, int(pid), float(moment), math.inf)
        elif key in found:
            found[key].end = float(moment)
    return sorted(found.values(), key=lambda span: span.start)


def most_at_once(runs: list[Span]) -> int:
    """The most runs alive at one moment (an end at the very time of a start is before it)."""
    edges = sorted([(s.start, 1) for s in runs] + [(s.end, -1) for s in runs])
    alive = most = 0
    for _, step in edges:
        alive += step
        most = max(most, alive)
    return most
