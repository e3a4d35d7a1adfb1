"""Huey with SQLite storage, the durable peer of the benchmark (`pip install '.[bench]'`).

Its consumer imports this module: `huey_consumer bench_huey.huey -k process -w 2`.
The store is the file named by BENCH_HUEY_DB, with `fsync=True` (SQLite's
`synchronous=FULL`, as procpool's default), so that both durable queues pay for
the same guarantee. The tasks call the very job functions procpool's workers
run (bench_jobs.py).
"""

from __future__ import annotations

import os
from typing import Any

import bench_jobs
from huey import SqliteHuey

huey = SqliteHuey(
    "bench", filename=os.environ.get("BENCH_HUEY_DB", "bench-huey.db"), fsync=True, results=True
)


@huey.task()
def noop(payload: Any) -> Any:
    return bench_jobs.noop(payload)


@huey.task()
def cpu(iterations: int) -> Any:
    return bench_jobs.cpu(iterations)
