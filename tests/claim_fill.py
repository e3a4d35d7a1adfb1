"""A claim test's starting point: jobs stored, some of them running, types paused."""

from __future__ import annotations

from collections.abc import Sequence

from procpool.application.ports import JobStore
from procpool.domain import job as jobs
from procpool.domain.job import Job
from procpool.domain.pauses import Pause


def fill(
    store: JobStore,
    running: Sequence[Job],
    waiting: Sequence[Job],
    pauses: Sequence[Pause] = (),
    *,
    started_at: float,
) -> None:
    """Stores `running` (started at `started_at`, leases 1, 2...) and `waiting`
    (pending), and `pauses`, in one transaction."""
    with store.transaction():
        store.insert([*running, *waiting])
        for lease, job in enumerate(running, start=1):
            started = jobs.start(job, lease=lease, worker_pid=100 + lease, now=started_at)
            assert store.save(started, expected=job.status, expected_lease=job.lease)
        for pause in pauses:
            store.pause(pause)
