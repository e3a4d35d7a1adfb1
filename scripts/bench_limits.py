"""What concurrency limits cost (issue 26): the claim with a full type in front, and the
supervisor's CPU per unlimited job against an older procpool.

    python scripts/bench_limits.py claim [--pending 100000] [--free 1000]
    python scripts/bench_limits.py overhead --baseline DIR [--jobs 20000] [--rounds 5]
    python scripts/bench_limits.py store --baseline DIR [--jobs 20000] [--rounds 5]

`claim`: a SQLite store with PENDING due jobs of `render` (limit 2, 2 running) ahead
of FREE `echo` jobs, all in one priority; times one claim (`due`, as the supervisor
calls it with a worker free: up to 9 jobs) in its transaction, with the limit, with
`render` paused instead, and, for reference, the plain claim of a store with no
limited or paused job at its head.

`overhead`: the supervisor's CPU per no-op job (`procpool_throughput` of bench.py: one
.jsonl file of JOBS lines, a real daemon with 2 workers), run alternately with the
procpool of this tree and with the one in DIR (an unpacked older commit, e.g.
`git archive d24dbf8 | tar x -C DIR`), ROUNDS times each; prints each run and the
medians. Interleaved so that the machine's load falls on both alike.

`store`: the same comparison for the store alone, in one process (CPU time): JOBS
inserted 1,000 per transaction, then claimed 64 per transaction, each started and
completed as the supervisor writes them; no fsync (synchronous=OFF).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.application.ports import Serving
from procpool.domain import job as jobs
from procpool.domain.job import Job
from procpool.domain.limits import ClaimLimits
from procpool.domain.pauses import Pause

REPO = Path(__file__).resolve().parent.parent
SERVED = ("cpu", "echo", "fail", "render", "sleep")


def _claim_times(store: SqliteJobStore, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        with store.transaction():
            began = time.perf_counter()
            got = store.due(time.time(), 9)
            times.append(time.perf_counter() - began)
        assert got, "the claim found nothing"
    return times


def claim(pending: int, free: int, samples: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteJobStore(Path(directory) / "p.db", synchronous="OFF")
        now = time.time() - 10
        made = [
            Job(
                id=f"r{n}", type="render", run_at=now + n * 1e-6, created_at=now, updated_at=now + 5
            )
            for n in range(pending + 2)
        ]
        made += [
            Job(
                id=f"e{n}",
                type="echo",
                run_at=now + 1 + n * 1e-6,
                created_at=now,
                updated_at=now + 5,
            )
            for n in range(free)
        ]
        with store.transaction():
            store.insert(made)
            for lease, job in enumerate(made[:2], start=1):
                store.save(jobs.start(job, lease=lease, worker_pid=lease, now=now),
                           expected=job.status, expected_lease=0)  # fmt: skip
        store.serve(Serving(ClaimLimits({"render": 2}), SERVED))
        limited = _claim_times(store, samples)
        with store.transaction():
            assert {j.type for j in store.due(time.time(), 9)} == {"echo"}
        store.serve(Serving(ClaimLimits(), SERVED))
        plain = _claim_times(store, samples)  # the render jobs at the head: all unlimited
        with store.transaction():
            store.pause(Pause("render", None, now))
        paused = _claim_times(store, samples)  # the same, render paused instead of full
        store.close()
    return {
        "pending_full": pending, "pending_free": free,
        "limited_claim_us_median": statistics.median(limited) * 1e6,
        "limited_claim_us_max": max(limited) * 1e6,
        "paused_claim_us_median": statistics.median(paused) * 1e6,
        "paused_claim_us_max": max(paused) * 1e6,
        "plain_claim_us_median": statistics.median(plain) * 1e6,
    }  # fmt: skip


_STORE = """
import sys, tempfile, time
from pathlib import Path
from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.domain import job as model
from procpool.domain.spec import JobDefaults, JobSpec, to_job
count, batch = int(sys.argv[1]), 64
with tempfile.TemporaryDirectory() as d:
    store = SqliteJobStore(Path(d) / "s.db", synchronous="OFF")
    now = time.time()
    made = [to_job(JobSpec(type="echo", payload=n), job_id=f"j{n}", defaults=JobDefaults(),
                   now=now) for n in range(count)]
    cpu = time.process_time()
    for start in range(0, count, 1000):
        with store.transaction():
            store.insert(made[start:start + 1000])
    lease = 0
    while True:
        with store.transaction():
            due = store.due(time.time(), batch)
            if not due:
                break
            for job in due:
                lease += 1
                running = model.start(job, lease=lease, worker_pid=1, now=now)
                store.save(running, expected=job.status, expected_lease=job.lease,
                           fields=model.changed_fields(job, running))
                done = model.complete(model.begin(running, now=now), result=b"null", now=now)
                store.save(done, expected=running.status, expected_lease=running.lease,
                           fields=model.changed_fields(running, done))
    print(round((time.process_time() - cpu) / count * 1e6, 2))
"""


def _store_cpu(tree: Path, count: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _STORE, str(count)], env=env,
                         capture_output=True, text=True, check=True, cwd=tree).stdout  # fmt: skip
    return float(out.split()[-1])


_RUN = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1] + "/scripts")
import bench
with tempfile.TemporaryDirectory() as d:
    print(json.dumps(bench.procpool_throughput(Path(d), int(sys.argv[2]))))
"""


def _throughput(tree: Path, count: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "scripts")])}
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(tree), str(count)],
        env=env, capture_output=True, text=True, check=True, cwd=tree,
    ).stdout  # fmt: skip
    return float(json.loads(out.splitlines()[-1])["supervisor_cpu_us_per_job"])


def overhead(baseline: Path, count: int, rounds: int, what: str) -> dict[str, object]:
    measure = _throughput if what == "overhead" else _store_cpu
    runs: dict[str, list[float]] = {"baseline": [], "this": []}
    for _ in range(rounds):
        runs["baseline"].append(measure(baseline, count))
        runs["this"].append(measure(REPO, count))
        print(json.dumps({k: round(v[-1], 2) for k, v in runs.items()}), flush=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    return {"jobs": count, "runs_us": runs, "median_us": medians,
            "difference_us": medians["this"] - medians["baseline"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    one = sub.add_parser("claim")
    one.add_argument("--pending", type=int, default=100_000)
    one.add_argument("--free", type=int, default=1_000)
    one.add_argument("--samples", type=int, default=200)
    for name in ("overhead", "store"):
        two = sub.add_parser(name)
        two.add_argument("--baseline", type=Path, required=True)
        two.add_argument("--jobs", type=int, default=20_000)
        two.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.what == "claim":
        print(json.dumps(claim(args.pending, args.free, args.samples)))
    else:
        print(json.dumps(overhead(args.baseline, args.jobs, args.rounds, args.what)))


if __name__ == "__main__":
    main()
