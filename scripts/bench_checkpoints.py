"""What a checkpoint costs (issue 28): its round trip, and the throughput of jobs that
each checkpoint once against jobs that do not, measured in the same run.

    python scripts/bench_checkpoints.py [--round-trips 1000] [--jobs 2000] [--rounds 3]
        [--database-url postgresql://...]

A real `procpool run --workers 2` daemon in a fresh temporary home (its SQLite store,
synchronous=FULL as shipped; or the PostgreSQL database given) runs the handlers of
scripts/checkpoint_jobs.py:

- round trip: one job calls `ctx.checkpoint` ROUND_TRIPS times in a row, each call
  timed in the handler from the call to its return (the value sent up, written in the
  supervisor's turn, committed, answered), then as many `ctx.progress` calls, which
  wait for no answer: the baseline of a call that leaves the worker;
- throughput: JOBS jobs submitted in one `submit_many`, timed until the last is done,
  once with jobs that return at once (the baseline) and once with jobs that checkpoint
  once and return; ROUNDS times each, alternately, so that the machine's load falls on
  both alike. The medians are reported.

Prints one JSON line per measure, then a summary line.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from procpool import Client

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2


@contextmanager
def daemon(home: Path, database_url: str | None) -> Iterator[Client]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_")}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "scripts"), env.get("PYTHONPATH")])
    )
    env["PROCPOOL_LOG_LEVEL"] = "WARNING"
    if database_url:
        env["PROCPOOL_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "procpool", "run", "--home", str(home),
               "--workers", str(WORKERS), "--handlers", "checkpoint_jobs"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    client = Client(home, database_url=database_url)
    try:
        deadline = time.monotonic() + 30
        while client.daemon_pid() is None:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the daemon did not start")
            time.sleep(0.05)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(30)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def round_trip(client: Client, count: int) -> dict[str, Any]:
    job_id = client.submit("bench_round_trips", {"n": count})
    [done] = client.wait([job_id], timeout=600)
    if done.status != "completed":
        raise RuntimeError(f"the round-trip job ended {done.status}: {done.last_error}")
    times = done.result

    def summary(name: str) -> dict[str, float]:
        return {f"{name}_us_median": statistics.median(times[name]) * 1e6,
                f"{name}_us_p99": _quantile(times[name], 0.99) * 1e6}  # fmt: skip

    return {"measure": "round_trip", "calls": count, **summary("checkpoint"),
            **summary("progress")}  # fmt: skip


def throughput(client: Client, job_type: str, count: int) -> float:
    """Jobs per second, from one submit_many of COUNT jobs to the last one done."""
    began = time.perf_counter()
    ids = client.submit_many([{"type": job_type, "payload": n} for n in range(count)])
    done = client.wait(ids, timeout=600)
    elapsed = time.perf_counter() - began
    if any(job.status != "completed" for job in done):
        raise RuntimeError(f"a {job_type} job did not complete")
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"bench_plain": [], "bench_once": []}
    with (
        tempfile.TemporaryDirectory() as directory,
        daemon(Path(directory) / "home", args.database_url) as client,
    ):
        trip = round_trip(client, args.round_trips)
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v
                          for k, v in trip.items()}), flush=True)  # fmt: skip
        for _ in range(args.rounds):
            for job_type, found in runs.items():
                found.append(throughput(client, job_type, args.jobs))
            print(json.dumps({"measure": "throughput_jobs_per_s",
                              **{k: round(v[-1], 1) for k, v in runs.items()}}),
                  flush=True)  # fmt: skip
    plain, once = (statistics.median(runs[k]) for k in ("bench_plain", "bench_once"))
    print(json.dumps({
        "store": "postgresql" if args.database_url else "sqlite",
        "load_1m": round(os.getloadavg()[0], 2),
        "checkpoint_round_trip_us_median": round(trip["checkpoint_us_median"], 1),
        "checkpoint_round_trip_us_p99": round(trip["checkpoint_us_p99"], 1),
        "progress_call_us_median": round(trip["progress_us_median"], 1),
        "jobs_per_s_without_checkpoint": round(plain, 1),
        "jobs_per_s_with_one_checkpoint_each": round(once, 1),
        "throughput_ratio": round(once / plain, 3),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
