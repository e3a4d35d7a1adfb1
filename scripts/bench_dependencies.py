"""What dependencies cost the claim (issue 28): one claim with 100,000 jobs waiting for
a running parent, beside the same claim of a store without them, in the same run; and
the release of all of them when their parent completes.

    python scripts/bench_dependencies.py [--waiting 100000] [--free 1000] [--samples 200]
                                         [--postgresql] [--database-url URL]

Each store holds FREE due jobs of priority 0; the store "with dependents" holds, beside
them, WAITING jobs of priority 10 (ahead of every free job in the claim's order: the
worst case for a claim that would filter them out row by row) whose `after` names one
running parent. A claim is `due(now, 9)` in its transaction, as the supervisor calls it
with a worker free; nothing is started, so every sample sees the same store. Then the
parent completes: the time of the turn's part that releases its dependents (the
supervisor's `Dependents.settle`, one transaction) is printed.

SQLite always (synchronous=OFF: the claim, not the disk, is measured); PostgreSQL with
--postgresql (a throwaway cluster, as the tests start one) or --database-url. One JSON
line per figure, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.application.ports import JobStore
from procpool.application.supervisor.dependents import Dependents
from procpool.domain import job as jobs
from procpool.domain.job import Job

REPO = Path(__file__).resolve().parent.parent
NOW = time.time()


def _job(job_id: str, priority: int = 0, after: tuple[str, ...] = ()) -> Job:
    return Job(
        id=job_id, type="echo", payload=b"null", priority=priority, run_at=NOW - 60,
        created_at=NOW - 60, updated_at=NOW - 60, digest="d", after=after,
    )  # fmt: skip


def _fill(store: JobStore, free: int, waiting: int) -> Job:
    """The free jobs, the parent (running), and `waiting` jobs after it; the parent."""
    parent = _job("parent", priority=100)
    with store.transaction():
        store.insert([parent])
        [claimed] = store.due(NOW, 1)
        running = jobs.start(claimed, lease=1, worker_pid=1, now=NOW)
        store.save(running, expected=claimed.status, expected_lease=claimed.lease)
    batch = 10_000
    for start in range(0, free, batch):
        with store.transaction():
            store.insert([_job(f"free-{n}") for n in range(start, min(free, start + batch))])
    for start in range(0, waiting, batch):
        with store.transaction():
            store.insert(
                [
                    _job(f"child-{n}", priority=10, after=("parent",))
                    for n in range(start, min(waiting, start + batch))
                ]
            )
    return running


def _claims(store: JobStore, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        with store.transaction():
            began = time.perf_counter()
            got = store.due(time.time(), 9)
            times.append(time.perf_counter() - began)
        assert got and all(not job.after for job in got), "the claim took a waiting job"
    return times


def _release(store: JobStore, parent: Job, waiting: int) -> tuple[float, float, int]:
    """The parent completes: the seconds its turn spent on its dependents (the first
    BATCH), the seconds of all the turns that release them, and how many turns."""
    written: list[Job] = []

    def write(new: Job, old: Job) -> bool:  # no cancel happens here: nothing failed
        written.append(new)
        return True

    settle = Dependents(store, write, lambda *args, **fields: None)
    with store.transaction():
        done = jobs.complete(parent, result=b"null", now=time.time())
        store.save(done, expected=parent.status, expected_lease=parent.lease)
        began = time.perf_counter()
        settle.ended(done.id, done.updated_at)
        settle.settle()
        first = total = time.perf_counter() - began
    turns = 1
    while settle.backlog:
        with store.transaction():
            began = time.perf_counter()
            settle.settle(time.time())
            total += time.perf_counter() - began
        turns += 1
    with store.transaction():
        released = store.due(time.time(), 9)
    assert not written and (not waiting or all(job.after for job in released))
    return first, total, turns


def measure(
    name: str,
    open_store: Callable[[str], JobStore],
    free: int,
    waiting: int,
    samples: int,
    settled: Callable[[JobStore], None] = lambda store: None,
) -> list[dict[str, Any]]:
    """`settled`: what the store's own upkeep would have done by then (PostgreSQL's
    autovacuum analyzes a table that grew by 2%: without it, the planner of a table
    just filled guesses)."""
    figures = []
    claims: dict[str, float] = {}
    for label, count in (("without dependents", 0), ("with dependents", waiting)):
        store = open_store(label.replace(" ", "-"))
        try:
            parent = _fill(store, free, count)
            settled(store)
            times = _claims(store, samples)
            claims[label] = statistics.median(times)
            figures.append({
                "store": name, "figure": f"claim {label}", "waiting": count, "free": free,
                "median_us": round(claims[label] * 1e6, 1),
                "p95_us": round(sorted(times)[int(len(times) * 0.95) - 1] * 1e6, 1),
            })  # fmt: skip
            if count:
                first, total, turns = _release(store, parent, count)
                figures.append({
                    "store": name, "figure": "release of the dependents", "waiting": count,
                    "first_turn_seconds": round(first, 3), "seconds": round(total, 3),
                    "turns": turns,
                })  # fmt: skip
        finally:
            store.close()
    figures[-2]["ratio"] = round(claims["with dependents"] / claims["without dependents"], 2)
    return figures


@contextmanager
def _postgresql(url: str | None) -> Iterator[Callable[[str], JobStore]]:
    import psycopg  # noqa: PLC0415

    from procpool.adapters.stores.postgres import PostgresJobStore  # noqa: PLC0415

    cluster = None
    if url is None:
        sys.path.insert(0, str(REPO / "tests"))
        from postgresql import Cluster, _server_bin  # noqa: PLC0415

        bin_dir = _server_bin()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL server binaries: give --database-url")
        cluster = Cluster(bin_dir)
        cluster.start()
        url = cluster.url()
    admin = psycopg.connect(url, autocommit=True)
    home = Path(tempfile.mkdtemp())
    try:

        def open_store(label: str) -> JobStore:
            database = f"bench_{label.replace('-', '_')}"
            admin.execute(f"CREATE DATABASE {database}")
            return PostgresJobStore(url.replace("/postgres?", f"/{database}?"), home)

        yield open_store
    finally:
        admin.close()
        if cluster is not None:
            cluster.stop()


def _analyzed(store: JobStore) -> None:
    with store.transaction():
        store._db.execute("ANALYZE procpool_jobs")  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=100_000)
    parser.add_argument("--free", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--postgresql", action="store_true")
    parser.add_argument("--database-url", default=None)
    options = parser.parse_args()
    figures = []
    with tempfile.TemporaryDirectory() as directory:
        figures += measure(
            "sqlite",
            lambda label: SqliteJobStore(Path(directory) / f"{label}.db", synchronous="OFF"),
            options.free,
            options.waiting,
            options.samples,
        )
    if options.postgresql or options.database_url:
        with _postgresql(options.database_url) as open_store:
            figures += measure(
                "postgresql", open_store, options.free, options.waiting, options.samples,
                _analyzed,
            )  # fmt: skip
    for figure in figures:
        print(json.dumps(figure))
    for figure in figures:
        value = (
            f"{figure['median_us']:>9.1f} us median, {figure['p95_us']:.1f} us p95"
            if "median_us" in figure
            else f"{figure['seconds']:>9.3f} s in {figure['turns']} turns"
            f" ({figure['first_turn_seconds']:.3f} s in the parent's)"
        )
        ratio = f"  ({figure['ratio']}x the claim without)" if "ratio" in figure else ""
        print(f"{figure['store']:<11} {figure['figure']:<27} {value}{ratio}")


if __name__ == "__main__":
    main()
