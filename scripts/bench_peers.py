"""The peers of the benchmark, each through its own public API, one call per job.

- `concurrent.futures.ProcessPoolExecutor(2)`: in memory, nothing survives a crash;
  the reference of the ratio targets.
- Huey with SQLite storage (`fsync=True`, as procpool's `synchronous=FULL`), its
  consumer with 2 process workers: the durable peer. Installed by the benchmark's
  extra, `pip install '.[bench]'`; a benchmark that compares with it fails to run
  without it rather than leaving it out.
- pebble's ProcessPool(2): in memory, with per-task timeouts and cancellation.

Every peer runs the same job functions as procpool's workers (bench_jobs.py).
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bench_jobs
import psutil

WORKERS = 2
SCRIPTS = Path(__file__).resolve().parent
HUEY_POLL = 0.0005  # the producer's look at a pending result, as procpool's bench polled
DEADLINE = 600.0
UNRECORDED = 5  # latency samples taken first and not counted


class PeerMissing(Exception):
    """A peer the benchmark compares with is not installed."""


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": cuts[98] * 1000,
        "over_100_ms": sum(1 for x in ordered if x > 0.1),
    }


def latencies(one: Callable[[int], object], samples: int, pause: float) -> dict[str, float]:
    """`percentiles` of `one(i)`'s wall time over `samples` calls, one at a time, each after
    `pause` seconds idle (0: back to back); UNRECORDED calls first warm what they use."""
    taken = []
    for i in range(samples + UNRECORDED):
        time.sleep(pause)
        start = time.perf_counter()
        one(i)
        if i >= UNRECORDED:
            taken.append(time.perf_counter() - start)
    return percentiles(taken)


def cpu_seconds(pid: int) -> float:
    """CPU time process `pid` (not its children) has used so far.

    The scheduler's own count (/proc/PID/schedstat, field 1, in ns) where there is
    one: exact, where utime + stime are sampled at the tick (1-10 ms)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as stat:
            return int(stat.read().split()[0]) / 1e9
    except OSError:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system


def _quiet_worker() -> None:
    """A peer's worker logs nothing: the example handlers' log lines cost it nothing."""
    from loguru import logger  # noqa: PLC0415

    logger.remove()


# ----------------------------------------------------------------- the executor


def executor_run(
    calls: list[tuple[Callable[[Any], Any], Any]], threads: int = 1
) -> dict[str, float]:
    """Submit each call, then take every result; seconds from the first submit."""
    with concurrent.futures.ProcessPoolExecutor(WORKERS, initializer=_quiet_worker) as executor:
        list(executor.map(bench_jobs.noop, range(WORKERS * 4)))
        start = time.perf_counter()
        futures = _submitted(lambda call: executor.submit(*call), calls, threads)
        for future in futures:
            future.result()
        end = time.perf_counter()
    return {"seconds": end - start, "rate": len(calls) / (end - start)}


def _submitted(submit: Callable[[Any], Any], calls: list[Any], threads: int) -> list[Any]:
    """Each call submitted once, from `threads` producer threads (a slice each)."""
    if threads == 1:
        return [submit(call) for call in calls]
    slices: list[list[Any]] = [[] for _ in range(threads)]

    def produce(n: int) -> None:
        slices[n] = [submit(call) for call in calls[n::threads]]

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [handle for part in slices for handle in part]


def executor_latency(samples: int, pause: float = 0.0) -> dict[str, float]:
    """Submit to result of one no-op job at a time, the pool idle `pause` seconds before
    each (0: back to back); percentiles in milliseconds."""
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as executor:
        list(executor.map(bench_jobs.noop, range(WORKERS * 4)))
        return latencies(
            lambda i: executor.submit(bench_jobs.noop, {"i": i}).result(), samples, pause
        )


# ----------------------------------------------------------------- pebble


def pebble_run(calls: list[tuple[Callable[[Any], Any], Any]]) -> dict[str, float]:
    try:
        from pebble import ProcessPool  # noqa: PLC0415
    except ImportError:
        raise PeerMissing("pebble is not installed: pip install '.[bench]'") from None
    with ProcessPool(max_workers=WORKERS, initializer=_quiet_worker) as pool:
        for future in [pool.schedule(bench_jobs.noop, args=(n,)) for n in range(WORKERS * 4)]:
            future.result()
        start = time.perf_counter()
        futures = [pool.schedule(function, args=(argument,)) for function, argument in calls]
        for future in futures:
            future.result()
        end = time.perf_counter()
    return {"seconds": end - start, "rate": len(calls) / (end - start)}


# ----------------------------------------------------------------- Huey


@contextmanager
def huey_consumer(workdir: Path) -> Iterator[Any]:
    """A Huey consumer with 2 process workers on a fresh store; yields the tasks module.

    The consumer polls its queue from 1 ms, backing off to 10 ms at most (its default
    starts at 100 ms): as quick as Huey goes on this machine.
    """
    database = workdir / "huey.db"
    os.environ["BENCH_HUEY_DB"] = str(database)
    try:
        import bench_huey  # noqa: PLC0415
    except ImportError:
        raise PeerMissing("Huey is not installed: pip install '.[bench]'") from None
    bench_huey.huey.flush()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")]))
    stderr = open(workdir / "huey-consumer.log", "ab")  # noqa: SIM115
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", "bench_huey.huey", "-k", "process",
         "-w", str(WORKERS), "-d", "0.001", "-m", "0.01", "-b", "1.1", "-C", "-n", "-q"],
        cwd=SCRIPTS, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=stderr,
    )  # fmt: skip
    try:
        huey_results([bench_huey.noop({"warm": n}) for n in range(WORKERS * 4)], consumer)
        yield bench_huey, consumer
    finally:
        consumer.terminate()
        try:
            consumer.wait(30)
        except subprocess.TimeoutExpired:
            consumer.kill()
            consumer.wait(10)
        stderr.close()


def huey_results(results: list[Any], consumer: subprocess.Popen[bytes]) -> None:
    """Every result, in order, polled as a producer would (a result is taken once)."""
    deadline = time.monotonic() + DEADLINE
    for n, result in enumerate(results):
        while result.get() is None:
            if n % 64 == 0 and consumer.poll() is not None:
                raise RuntimeError(f"the Huey consumer exited with {consumer.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("Huey did not finish in time")
            time.sleep(HUEY_POLL)


def huey_run(workdir: Path, calls: list[tuple[str, Any]], threads: int = 1) -> dict[str, float]:
    """`calls` of (task name, argument), enqueued one call each, then every result."""
    with huey_consumer(workdir) as (tasks, consumer):
        start = time.perf_counter()
        results = _submitted(lambda call: getattr(tasks, call[0])(call[1]), calls, threads)
        huey_results(results, consumer)
        end = time.perf_counter()
    return {"seconds": end - start, "rate": len(calls) / (end - start)}


def huey_latency(workdir: Path, samples: int, pause: float = 0.0) -> dict[str, float]:
    """As `executor_latency`, through a Huey consumer."""
    with huey_consumer(workdir) as (tasks, consumer):
        return latencies(lambda i: huey_results([tasks.noop({"i": i})], consumer), samples, pause)
