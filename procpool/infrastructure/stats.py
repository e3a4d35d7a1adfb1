"""`procpool stats`: figures read from the store and the process table."""

from __future__ import annotations

import time
from typing import Any

import psutil

from procpool.client import Client
from procpool.domain.job import Status


def _alive(pid: int, create_time: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 0.01
    except psutil.Error:
        return False


def collect(client: Client) -> dict[str, Any]:
    reader = client._reader
    now = time.time()
    types = reader.counts()
    jobs = {status.value: 0 for status in Status}
    for counts in types.values():
        for status, count in counts.items():
            jobs[status] += count
    pid = client.daemon_pid()
    workers = [w.pid for w in reader.workers() if pid and _alive(w.pid, w.create_time)]
    last_minute = reader.finished_since(now - 60)
    return {
        "daemon": {"running": pid is not None, "pid": pid},
        "jobs": jobs,
        "types": types,
        "workers": {"alive": len(workers), "pids": sorted(workers)},
        "last_minute": {s: last_minute.get(s, 0) for s in ("completed", "failed", "canceled")},
        "oldest_pending_age": reader.oldest_pending_age(now),
    }
