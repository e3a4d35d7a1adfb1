"""`procpool wait --progress`: what the handlers' `ctx.progress` reports look like.

On a terminal, one bar per job, redrawn in place; anywhere else (a pipe, a CI
log), one plain line each time a job's status, fraction or message changes.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import TextIO

from procpool.client import JobInfo

BAR_WIDTH = 20


def first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _state(job: JobInfo | None) -> tuple[str, float, str]:
    """(status, fraction, note) of one job; None is a job still in the inbox."""
    if job is None:
        return "queued", 0.0, "waiting in the inbox"
    progress = job.progress or {}
    fraction = 1.0 if job.status == "completed" else float(progress.get("fraction") or 0.0)
    if job.status == "running":
        note = progress.get("message") or ""
    elif job.status == "pending" and job.last_error:
        note = f"attempt {job.attempts} of {job.max_attempts} failed: {first_line(job.last_error)}"
    elif job.status == "failed":
        note = first_line(job.last_error)
    else:
        note = ""
    return job.status, max(0.0, min(1.0, fraction)), note


class ProgressDisplay:
    def __init__(self, job_ids: Sequence[str], stream: TextIO, terminal: bool) -> None:
        self.job_ids = list(job_ids)
        self.stream = stream
        self.terminal = terminal
        self._width = max(len(job_id) for job_id in self.job_ids)
        self._shown: Sequence[tuple[str, float, str] | None] = [None] * len(self.job_ids)
        self._drawn = 0

    def _bar_line(self, job_id: str, state: tuple[str, float, str]) -> str:
        status, fraction, note = state
        filled = int(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"{job_id:<{self._width}}  [{bar}] {fraction:>4.0%}  {status:<9}  {note}".rstrip()
        # A line that wraps would break the cursor arithmetic of the next redraw.
        return line[: max(20, shutil.get_terminal_size().columns - 1)]

    def update(self, jobs: Sequence[JobInfo | None]) -> None:
        states = [_state(job) for job in jobs]
        if states == self._shown:
            return
        if self.terminal:
            if self._drawn:
                self.stream.write(f"\x1b[{self._drawn}A\r")
            for job_id, state in zip(self.job_ids, states, strict=True):
                self.stream.write(f"\x1b[2K{self._bar_line(job_id, state)}\n")
            self._drawn = len(states)
        else:
            for job_id, state, shown in zip(self.job_ids, states, self._shown, strict=True):
                if state != shown:
                    status, fraction, note = state
                    line = f"{job_id:<{self._width}}  {fraction:>4.0%}  {status:<9}  {note}"
                    self.stream.write(line.rstrip() + "\n")
        self.stream.flush()
        self._shown = states
