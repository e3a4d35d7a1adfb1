"""The benchmark of issues 6 and 15: procpool against its peers, in one run.

Every procpool figure runs a real `procpool run --workers 2` daemon in a fresh
temporary home and measures from the outside, as a user would: through
`procpool.Client` (one `submit` per job, `wait` for the results), or by dropping
files into the inbox and watching the store through a read-only SQLite
connection. The peers (bench_peers.py) run the same job functions
(scripts/bench_jobs.py): `concurrent.futures.ProcessPoolExecutor` with 2
workers, Huey with SQLite storage (the durable peer; `pip install '.[bench]'`)
and pebble. What each figure starts and stops on is in scripts/README.md.

Usage: python scripts/bench.py [--quick] [--only NAME[,NAME]] [--repeat N] [--json-only]
Prints one JSON line per figure as it is measured, then a table (unless
--json-only). Exit code 0 when every benchmark ran, whether or not the targets
are met; 1 when one failed to run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_jobs
import bench_peers
import lean_loop
import psutil

from procpool import Client
from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.client import new_job_id
from procpool.domain import job as job_model
from procpool.domain.job import Job
from procpool.domain.spec import JobDefaults, JobSpec, to_job

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
CPU_JOB_SECONDS = 0.025
# Sleeps of the pollers: short enough not to blur the figure, long enough not
# to steal a core from the daemon on a 2-core machine.
TIGHT_POLL = 0.0002
BULK_POLL = 0.002
SPARSE_POLL = 0.05
RSS_INTERVAL = 0.05
DEADLINE = 600.0
FAR_FUTURE = 10 * 365 * 86400.0
# What a measure reports beside its figure, copied into the figure's detail.
SOURCE_DETAILS = ("load_1m", "supervisor_cpu_us_per_job", "peak_rss_mb")


@dataclass(frozen=True)
class Sizes:
    jobs: int = 5_000
    cpu_jobs: int = 200
    latency_samples: int = 200
    cancel_samples: int = 50
    ingestion: int = 100_000
    preload: int = 1_000_000
    real_files: int = 900  # the real batch: compress and hash of each, 2 jobs per file
    batched: int = 20_000  # the supervisor's batched CPU per job: one submit_many, one .jsonl
    paced: int = 500  # 2 ms CPU jobs submitted at PACED_RATE


QUICK = Sizes(jobs=500, cpu_jobs=40, latency_samples=20, cancel_samples=10,
              ingestion=10_000, preload=50_000, real_files=50, batched=2_000,
              paced=50)  # fmt: skip
PRODUCER_THREADS = 4
# The supervisor's CPU per job (issue 25): its targets in microseconds, the paced
# workload's job length and rate, and how many workers the saturation run forks.
ONE_CPU_TARGET_US = 300.0
# Issue 25's targets for the client's figures, where they differ from issue 15's (2x
# Huey one at a time; the real batch within 1.10x the executor): procpool at least
# Huey's rate one submit at a time, the real batch within 1.05x the executor.
ONE_SUBMIT_HUEY_FACTOR = 1.0
REAL_BATCH_RATIO = 1.05
BATCHED_CPU_TARGET_US = 40.0
CAPACITY_TARGET = 25_000.0
# Jobs a turn carries in the batched store floor: about what a turn of one submit_many takes.
FLOOR_TURN_JOBS = 100
PACED_JOB_SECONDS = 0.002
PACED_RATE = 250.0
# One job's latency (issue 25): back to back on a warm pool, and after the pool sat idle
# this many seconds; each with its p50 and p99 targets in milliseconds (None: none).
LATENCY_CASES = (("latency", 0.0, 1.0, 2.0), ("latency.after_idle", 0.1, 3.0, None))
SATURATION_WORKERS = 3 * (os.cpu_count() or 1)


class BenchError(Exception):
    """A measurement could not be taken (a daemon died, a deadline passed)."""


@dataclass
class Figure:
    """One line of the table: a procpool figure beside its reference, and its target."""

    name: str
    label: str
    value: float
    unit: str
    reference: float | None = None
    reference_name: str | None = None
    target: str | None = None
    met: bool | None = None
    runs: list[float] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    # value / reference; paired measures give the median of their paired ratios instead.
    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.reference:
            self.ratio = self.value / self.reference

    def as_json(self) -> dict[str, Any]:
        return {
            "figure": self.name,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "reference": self.reference,
            "reference_name": self.reference_name,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "runs": self.runs,
            "detail": self.detail,
        }


# ----------------------------------------------------------------- the daemon


def _daemon_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_")}
    # The example handlers of the real batch are imported from scripts/.
    paths = [str(REPO / "scripts"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env.update(extra)
    return env


class StoreWatch:
    """The store seen through a read-only connection, as `procpool status` sees it."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 5000")

    def count(self, status: str) -> int:
        return self._db.execute("SELECT count(*) FROM jobs WHERE status = ?", (status,)).fetchone()[
            0
        ]

    def job(self, job_id: str) -> tuple[str, int | None] | None:
        row = self._db.execute(
            "SELECT status, worker_pid FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def has_progress(self, job_id: str) -> bool:
        """Whether the handler has reported: proof that the job started in its worker."""
        row = self._db.execute(
            "SELECT progress IS NOT NULL FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return bool(row and row[0])

    def close(self) -> None:
        self._db.close()


def _wait(
    predicate: Callable[[], Any], interval: float, what: str, timeout: float = DEADLINE
) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


class PeakRss(threading.Thread):
    """Samples a process's RSS every 50 ms; `peak` is the largest sample."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._process = psutil.Process(pid)
        self._stop_event = threading.Event()
        self.peak = 0

    def _sample(self) -> None:
        try:
            self.peak = max(self.peak, self._process.memory_info().rss)
        except psutil.NoSuchProcess:
            self._stop_event.set()

    def run(self) -> None:
        self._sample()
        while not self._stop_event.wait(RSS_INTERVAL):
            self._sample()

    def stop(self) -> int:
        self._sample()
        self._stop_event.set()
        self.join()
        return self.peak


class Daemon:
    """`procpool run --workers 2 --log-level L` on a home of its own."""

    # The daemon's own default; --log-level WARNING measures it without the per-job lines.
    log_level = "INFO"
    # What runs the daemon, after the interpreter: `python -m procpool run ...`, or a
    # script that wraps it (profile_turn.py times a turn's phases so).
    entry: tuple[str, ...] = ("-m", "procpool")

    def __init__(
        self,
        home: Path,
        env: dict[str, str] | None = None,
        handlers: tuple[str, ...] = (),
        workers: int = WORKERS,
    ) -> None:
        self.home = home
        self.workers = workers
        self.inbox = home / "inbox"
        self.env = env or {}
        self.handlers = handlers
        self.stderr_path = home.parent / "daemon-stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.rss: PeakRss | None = None
        self.store: StoreWatch | None = None
        self.client = Client(home)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Daemon:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.inbox.mkdir(mode=0o700, exist_ok=True)
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, *self.entry, "run", "--home", str(self.home),
                 "--workers", str(self.workers), "--log-level", self.log_level,
                 *(arg for module in self.handlers for arg in ("--handlers", module))],
                # `python -m` puts the working directory first on sys.path: this checkout.
                cwd=REPO, env=_daemon_env(self.env), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        self.rss = PeakRss(self.pid)
        self.rss.start()
        self._wait_warm()
        return self

    def _alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.stderr_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"the daemon exited with {self.process.returncode}:\n{tail}")

    def _workers(self) -> int:
        self._alive()
        try:
            children = psutil.Process(self.pid).children()
            return sum(1 for c in children if c.status() != psutil.STATUS_ZOMBIE)
        except psutil.Error:
            return 0

    def _wait_warm(self) -> None:
        """Warm means both workers forked and one job done end to end."""
        _wait(lambda: self._workers() >= self.workers, 0.01, "the daemon's workers", 300)
        self.client.submit("echo", {"warm": True}, id="warm-up")
        self.store = _wait(
            lambda: (self.home / "procpool.db").exists() and StoreWatch(self.home / "procpool.db"),
            0.01,
            "the store",
        )
        self.wait_status("warm-up", "completed", 0.001)

    def wait_status(self, job_id: str, status: str, interval: float) -> float:
        """Poll until the job has `status`; returns the perf_counter of the first sight."""
        assert self.store is not None
        store = self.store
        deadline = time.monotonic() + DEADLINE
        while True:
            row = store.job(job_id)
            if row is not None and row[0] == status:
                return time.perf_counter()
            if time.monotonic() > deadline:
                self._alive()
                raise BenchError(f"job {job_id} not {status} after {DEADLINE:g} s: {row}")
            time.sleep(interval)

    def wait_count(self, status: str, count: int, interval: float) -> float:
        """Poll until `count` jobs have `status`; returns the perf_counter of the first sight.

        Every poll is a query that takes CPU from the two workers (the executor's
        baseline waits on its futures for free), so the gap between polls follows
        the time the rest should take at the rate seen so far: a quarter of it,
        never more than 50 ms nor less than `interval`. Near the end it is
        `interval`, which keeps the measure as sharp as polling all along.
        """
        assert self.store is not None
        store = self.store
        began = time.monotonic()
        deadline = began + DEADLINE
        first = seen = store.count(status)
        checks = 0
        while seen < count:
            checks += 1
            if checks % 500 == 0:
                self._alive()
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"fewer than {count} jobs {status} after {DEADLINE:g} s")
            rest = (count - seen) * (now - began) / (seen - first) if seen > first else 0.0
            time.sleep(min(max(interval, rest / 4), SPARSE_POLL))
            seen = store.count(status)
        return time.perf_counter()

    def cpu_seconds(self) -> float:
        """CPU time the supervisor process (not its workers) has used so far."""
        return bench_peers.cpu_seconds(self.pid)

    def stop(self) -> int:
        """SIGTERM, wait; returns the peak RSS of the supervisor over its life."""
        peak = self.rss.stop() if self.rss is not None else 0
        if self.store is not None:
            self.store.close()
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return peak


@contextmanager
def running_daemon(
    workdir: Path,
    env: dict[str, str] | None = None,
    template: Path | None = None,
    handlers: tuple[str, ...] = (),
    workers: int = WORKERS,
) -> Iterator[Daemon]:
    """A warm daemon on a fresh home (with a copy of `template` as its store, if given)."""
    base = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    home = base / "home"
    try:
        if template is not None:
            home.mkdir(mode=0o700)
            store = home / "procpool.db"
            shutil.copyfile(template, store)
            # A store that was already there is on disk: without this, the daemon's
            # first checkpoint would pay for writing back the whole fresh copy.
            with open(store, "rb+") as copy:
                os.fsync(copy.fileno())
        daemon = Daemon(home, env, handlers, workers)
        try:
            yield daemon.start()
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _write_hidden(inbox: Path, name: str, data: bytes) -> Path:
    hidden = inbox / f".{name}.tmp"
    hidden.write_bytes(data)
    return hidden


def _jsonl(lines: Iterator[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)


# ----------------------------------------------------------------- measures


def procpool_throughput(
    workdir: Path, jobs: int, *, files: bool = False, env: dict[str, str] | None = None,
    template: Path | None = None, workers: int = WORKERS,
) -> dict[str, float]:  # fmt: skip
    """No-op jobs/s from the drop to the last `completed` commit, the peak RSS, and the
    supervisor's CPU: per job, and as a share of one core over the run (`core_share`)."""
    with running_daemon(workdir, env, template, workers=workers) as daemon:
        done_before = daemon.store.count("completed")  # type: ignore[union-attr]
        cpu_before = daemon.cpu_seconds()
        if files:
            hidden = [
                _write_hidden(
                    daemon.inbox, f"tp-{i}.json", b'{"type":"echo","payload":{"i":%d}}' % i
                )
                for i in range(jobs)
            ]
            start = time.perf_counter()
            for path in hidden:
                os.rename(path, daemon.inbox / path.name[1:-4])
        else:
            data = _jsonl({"type": "echo", "payload": {"i": i}} for i in range(jobs))
            path = _write_hidden(daemon.inbox, "tp.jsonl", data)
            start = time.perf_counter()
            os.rename(path, daemon.inbox / "tp.jsonl")
        end = daemon.wait_count("completed", done_before + jobs, BULK_POLL)
        cpu = daemon.cpu_seconds() - cpu_before
        assert daemon.rss is not None
        peak = daemon.rss.stop()
    return {
        "rate": jobs / (end - start),
        "seconds": end - start,
        "peak_rss_mb": peak / 2**20,
        "supervisor_cpu_us_per_job": cpu / jobs * 1e6,
        "core_share": cpu / (end - start),
    }


def paired_throughput(
    workdir: Path, jobs: int, reference: dict[str, Any], subject: dict[str, Any]
) -> dict[str, float]:
    """`procpool_throughput` with the reference options, then with the subject's, back
    to back so that both see the same machine load; the ratio is subject / reference."""
    ref = procpool_throughput(workdir, jobs, **reference)
    mine = procpool_throughput(workdir, jobs, **subject)
    return {
        **mine,
        "reference_rate": ref["rate"],
        "reference_peak_rss_mb": ref["peak_rss_mb"],
        "ratio": mine["rate"] / ref["rate"],
    }


def executor_throughput(jobs: int) -> dict[str, float]:
    with concurrent.futures.ProcessPoolExecutor(WORKERS) as executor:
        list(executor.map(bench_jobs.noop, range(WORKERS * 4)))
        start = time.perf_counter()
        futures = [executor.submit(bench_jobs.noop, {"i": i}) for i in range(jobs)]
        for future in futures:
            future.result()
        end = time.perf_counter()
    return {"rate": jobs / (end - start), "seconds": end - start}


def calibrate_cpu(seconds: float = CPU_JOB_SECONDS) -> dict[str, float]:
    """The `iterations` that take `seconds` (CPU_JOB_SECONDS) in this process."""
    iterations = 100_000
    for _ in range(3):
        samples = []
        for _ in range(5):
            start = time.perf_counter()
            bench_jobs.cpu(iterations)
            samples.append(time.perf_counter() - start)
        iterations = max(1000, round(iterations * seconds / statistics.median(samples)))
    return {"iterations": iterations}


def procpool_cpu(workdir: Path, jobs: int, iterations: int) -> dict[str, float]:
    """One `Client.submit` per job, then `Client.wait` for all of them."""
    with running_daemon(workdir) as daemon:
        client = daemon.client
        cpu_before = daemon.cpu_seconds()
        start = time.perf_counter()
        ids = [client.submit("cpu", {"iterations": iterations}) for _ in range(jobs)]
        client.wait(ids, timeout=DEADLINE)
        end = time.perf_counter()
        cpu = daemon.cpu_seconds() - cpu_before
    return {"seconds": end - start, "supervisor_cpu_us_per_job": cpu / jobs * 1e6}


def procpool_paced(workdir: Path, jobs: int, iterations: int) -> dict[str, float]:
    """`cpu` jobs, one `Client.submit` each at PACED_RATE a second, then `Client.wait`:
    the supervisor's CPU per job when each turn carries about one job."""
    with running_daemon(workdir) as daemon:
        client = daemon.client
        cpu_before = daemon.cpu_seconds()
        start = time.perf_counter()
        ids = []
        for n in range(jobs):
            time.sleep(max(0.0, start + n / PACED_RATE - time.perf_counter()))
            ids.append(client.submit("cpu", {"iterations": iterations}))
        client.wait(ids, timeout=DEADLINE)
        end = time.perf_counter()
        cpu = daemon.cpu_seconds() - cpu_before
    return {"seconds": end - start, "supervisor_cpu_us_per_job": cpu / jobs * 1e6}


def executor_cpu(jobs: int, iterations: int) -> dict[str, float]:
    return bench_peers.executor_run([(bench_jobs.cpu, iterations)] * jobs)


def paired_cpu(workdir: Path, jobs: int, iterations: int) -> dict[str, float]:
    """The baseline and procpool back to back, so that both see the same machine load."""
    base = executor_cpu(jobs, iterations)["seconds"]
    mine = procpool_cpu(workdir, jobs, iterations)
    return {**mine, "baseline_seconds": base, "ratio": mine["seconds"] / base}


def procpool_latency(workdir: Path, samples: int, pause: float = 0.0) -> dict[str, float]:
    """Client.submit to Client.wait returning it completed, one job at a time, the daemon
    idle `pause` seconds before each (0: back to back); percentiles in milliseconds."""
    with running_daemon(workdir) as daemon:
        latencies, submits = [], []
        for i in range(samples + 5):
            time.sleep(pause)
            start = time.perf_counter()
            job_id = daemon.client.submit("echo", {"i": i}, id=f"lat-{i}")
            submitted = time.perf_counter()
            [job] = daemon.client.wait([job_id], timeout=DEADLINE)
            end = time.perf_counter()
            if job.status != "completed":
                raise BenchError(f"job {job_id} ended {job.status}")
            if i >= 5:  # the first few warm the client's and the reader's caches
                latencies.append(end - start)
                submits.append(submitted - start)
    result = bench_peers.percentiles(latencies)
    result["submit_p50"] = statistics.median(submits) * 1000
    return result


def durable_commits_floor(workdir: Path, samples: int, pause: float = 0.0) -> dict[str, float]:
    """The disk's part of a job's latency: two durable commits (its submit's and its
    end's), each a 4 KiB write and an fdatasync of one file, as a commit appends to
    SQLite's WAL with `synchronous=FULL`; the disk idle `pause` seconds before each pair
    (after an idle spell a flush waits longer: issue 25). Percentiles in milliseconds."""
    path = workdir / "durable-commits"
    page = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def two_commits(_: int) -> None:
        for _commit in range(2):
            os.write(fd, page)
            os.fdatasync(fd)

    try:
        return bench_peers.latencies(two_commits, samples, pause)
    finally:
        os.close(fd)
        path.unlink()


def procpool_waiting(workdir: Path, window: float) -> dict[str, float]:
    """The supervisor's CPU, in % of one core, while every worker is busy on a long job
    and a due job waits for one: the loop should sleep until a worker is free."""
    with running_daemon(workdir, {"PROCPOOL_SHUTDOWN_TIMEOUT": "0.5"}) as daemon:
        for n in range(WORKERS):
            daemon.client.submit("sleep", {"seconds": 120}, id=f"busy-{n}")
        for n in range(WORKERS):
            daemon.wait_status(f"busy-{n}", "running", 0.01)
        # Past the prefetch horizon, so the waiting job stays in the store.
        time.sleep(0.5)
        daemon.client.submit("echo", None, id="waiting")
        daemon.wait_status("waiting", "pending", 0.01)
        before, start = daemon.cpu_seconds(), time.monotonic()
        time.sleep(window)  # the measuring window itself
        used = daemon.cpu_seconds() - before
        return {"percent": 100 * used / (time.monotonic() - start), "window": window}


executor_latency = bench_peers.executor_latency


def procpool_cancel(workdir: Path, samples: int) -> dict[str, float]:
    """Client.cancel of a running `sleep` job to Client.wait returning it canceled, and
    to its worker process gone (reaped)."""
    latencies, reported = [], []
    with running_daemon(workdir) as daemon:
        store = daemon.store
        assert store is not None
        for i in range(samples):
            job_id = daemon.client.submit("sleep", {"seconds": 600}, id=f"cancel-{i}")
            # Running in the store is not enough: a job marked running but not yet started
            # by its worker is withdrawn without a kill, so there would be no child to reap.
            row = _wait(
                lambda job_id=job_id: (
                    (r := store.job(job_id))
                    and r[0] == "running"
                    and r[1]
                    and store.has_progress(job_id)
                    and r
                ),
                0.001,
                f"job {job_id} to start in its worker",
            )
            pid = row[1]
            start = time.perf_counter()
            daemon.client.cancel(job_id)
            [job] = daemon.client.wait([job_id], timeout=DEADLINE)
            reported.append(time.perf_counter() - start)
            if job.status != "canceled":
                raise BenchError(f"job {job_id} ended {job.status}, not canceled")
            while psutil.pid_exists(pid):
                time.sleep(TIGHT_POLL)
            latencies.append(time.perf_counter() - start)
    told = bench_peers.percentiles(reported)
    return {**told, "reaped_p50": statistics.median(latencies) * 1000}


def procpool_ingestion(workdir: Path, jobs: int) -> dict[str, float]:
    """One .jsonl file of delayed jobs, from the drop to all committed `pending`."""
    with running_daemon(workdir) as daemon:
        store = daemon.store
        assert store is not None
        data = _jsonl({"type": "echo", "payload": {"i": i}, "delay": 3600} for i in range(jobs))
        path = _write_hidden(daemon.inbox, "in.jsonl", data)
        cpu_before = daemon.cpu_seconds()
        start = time.perf_counter()
        os.rename(path, daemon.inbox / "in.jsonl")
        # The last line's job shows cheaply when the file is in; the count then proves it.
        last = f"in-{jobs}"
        end = daemon.wait_status(last, "pending", BULK_POLL)
        if store.count("pending") < jobs:
            end = daemon.wait_count("pending", jobs, BULK_POLL)
        cpu = daemon.cpu_seconds() - cpu_before
    return {
        "rate": jobs / (end - start),
        "seconds": end - start,
        "supervisor_cpu_us_per_job": cpu / jobs * 1e6,
    }


def store_floor(workdir: Path, jobs: int) -> dict[str, float]:
    """What the store alone costs per job, in this process and with no daemon: the
    statements of one job's life as the supervisor issues them (insert; due query;
    start; begin, completion and history), one durable commit per job (each turn
    taking in one submission and the previous job's end, the best case of one
    submit at a time). CPU time, so the figure below the supervisor's own."""
    path = workdir / "floor.db"
    for leftover in workdir.glob("floor.db*"):
        leftover.unlink()
    store = SqliteJobStore(path)
    defaults = JobDefaults()
    previous: Job | None = None
    cpu = time.process_time()
    for n in range(jobs):
        wall = time.time()
        spec = JobSpec(type="echo", payload={"i": n}, run_at=None, delay=None)
        with store.transaction():
            store.insert([to_job(spec, job_id=f"floor-{n}", defaults=defaults, now=wall)])
            (due,) = store.due(wall, 3)
            running = job_model.start(due, lease=n + 1, worker_pid=1, now=wall)
            store.save(running, expected=due.status, expected_lease=due.lease,
                       fields=job_model.changed_fields(due, running))  # fmt: skip
            if previous is not None:
                begun = job_model.begin(previous, now=wall)
                done = job_model.complete(begun, result=b"null", now=wall)
                store.save(done, expected=previous.status, expected_lease=previous.lease,
                           fields=job_model.changed_fields(previous, done))  # fmt: skip
                store.record_runs([job_model.run_of(begun, done, now=wall)])
        previous = running
    spent = time.process_time() - cpu
    store.close()
    return {"cpu_us_per_job": spent / jobs * 1e6}


def store_floor_batched(
    workdir: Path, jobs: int, per_turn: int = FLOOR_TURN_JOBS
) -> dict[str, float]:
    """What the store alone costs per job when a turn carries `per_turn` of them, as in a
    batched submission (issue 25's batched target): in each transaction the ids looked
    up and the jobs inserted, the due query, their starts in one statement, and the
    previous turn's jobs begun, completed (one statement) and their history; one durable
    commit a turn. The jobs are built before the clock starts: the statements and the
    transitions the supervisor calls them with, nothing of judging a submission. CPU
    time per job, in this process and with no daemon."""
    path = workdir / "floor-batched.db"
    for leftover in workdir.glob("floor-batched.db*"):
        leftover.unlink()
    store = SqliteJobStore(path)
    defaults, wall = JobDefaults(), time.time()
    spec = JobSpec(type="echo", payload={}, run_at=None, delay=None)
    ready = [to_job(spec, job_id=new_job_id(), defaults=defaults, now=wall) for _ in range(jobs)]
    turns = [ready[first : first + per_turn] for first in range(0, jobs, per_turn)]
    lease, previous = 0, list[Job]()
    cpu = time.process_time()
    for new in [*turns, []]:  # a last turn ends the jobs of the one before
        wall = time.time()
        running: list[Job] = []
        with store.transaction():
            if new:
                store.digests([job.id for job in new])
                store.insert(new)
                due = store.due(wall, len(new) + 1)
                for job in due:
                    lease += 1
                    running.append(job_model.start(job, lease=lease, worker_pid=1, now=wall))
                starts = [
                    (job, old.status, old.lease) for job, old in zip(running, due, strict=True)
                ]
                store.save_many(starts, job_model.changed_fields(due[0], running[0]))
            if previous:
                begun = [job_model.begin(job, now=wall) for job in previous]
                done = [job_model.complete(job, result=b"null", now=wall) for job in begun]
                ends = [
                    (job, old.status, old.lease) for job, old in zip(done, previous, strict=True)
                ]
                store.save_many(ends, job_model.changed_fields(previous[0], done[0]))
                runs = zip(begun, done, strict=True)
                store.record_runs([job_model.run_of(old, job, now=wall) for old, job in runs])
        previous = running
    spent = time.process_time() - cpu
    store.close()
    return {"cpu_us_per_job": spent / jobs * 1e6}


def _commit_and_answer(path: Path, jobs: int, server: socket.socket) -> None:
    """The server side of commit_round_trip_floor: one request, one job stored, one answer."""
    store = SqliteJobStore(path)
    defaults = JobDefaults()
    now = time.time()
    spec = JobSpec(type="echo", payload={}, run_at=None, delay=None)
    ready = [to_job(spec, job_id=f"floor-{n}", defaults=defaults, now=now) for n in range(jobs)]
    server.sendall(b"r")
    for job in ready:
        if not server.recv(64):
            break
        with store.transaction():
            store.insert([job])
        server.sendall(b"k")
    store.close()


def commit_round_trip_floor(workdir: Path, jobs: int) -> dict[str, float]:
    """The most a producer submitting one job at a time can reach when each submit
    returns only once its job is durable (issue 15, item 5): a request over a Unix
    socket, one insert of a ready-made job into procpool's store and its commit
    (synchronous=FULL), an answer; nothing judged, logged, dispatched or run."""
    path = workdir / "round-trip.db"
    for leftover in workdir.glob("round-trip.db*"):
        leftover.unlink()
    client, server = socket.socketpair()
    process = multiprocessing.get_context("fork").Process(
        target=_commit_and_answer, args=(path, jobs, server)
    )
    process.start()
    server.close()
    try:
        client.recv(1)  # the server's store is open and its jobs built
        start = time.perf_counter()
        for n in range(jobs):
            client.sendall(b"%d" % n)
            if not client.recv(1):
                raise BenchError("the round-trip server died")
        seconds = time.perf_counter() - start
    finally:
        client.close()
        process.join(DEADLINE)
        if process.is_alive():
            process.kill()
            process.join()
    if process.exitcode != 0:
        raise BenchError(f"the round-trip server exited with {process.exitcode}")
    return {"rate": jobs / seconds, "seconds": seconds}


def procpool_submit(workdir: Path, jobs: int, how: str) -> dict[str, float]:
    """No-op jobs through the client: `one` Client.submit per job, `many` in one
    Client.submit_many, or `threads`: PRODUCER_THREADS threads, a Client and a slice
    each, one submit per job; then Client.wait for all. From the first call to the
    wait's return."""
    with running_daemon(workdir) as daemon:
        client = daemon.client
        cpu_before = daemon.cpu_seconds()
        start = time.perf_counter()
        if how == "one":
            ids = [client.submit("echo", {"i": i}) for i in range(jobs)]
        elif how == "many":
            ids = client.submit_many({"type": "echo", "payload": {"i": i}} for i in range(jobs))
        else:
            ids = _threaded_submits(daemon.home, jobs)
        client.wait(ids, timeout=DEADLINE)
        end = time.perf_counter()
        cpu = daemon.cpu_seconds() - cpu_before
    return {
        "rate": jobs / (end - start),
        "seconds": end - start,
        "supervisor_cpu_us_per_job": cpu / jobs * 1e6,
    }


def _threaded_submits(home: Path, jobs: int) -> list[str]:
    slices: list[list[str]] = [[] for _ in range(PRODUCER_THREADS)]

    def produce(n: int) -> None:
        with Client(home) as client:
            slices[n] = [client.submit("echo", {"i": i}) for i in range(n, jobs, PRODUCER_THREADS)]

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(PRODUCER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [job_id for part in slices for job_id in part]


def real_batch(workdir: Path, files: int) -> list[tuple[str, dict[str, Any]]]:
    """The real batch: `compress` (gzip -9, into `workdir`) and `hash` (sha256) of each of
    the first `files` .py files of the standard library, by path."""
    library = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in library.rglob("*.py") if "site-packages" not in p.parts)
    out = workdir / "compressed"
    out.mkdir(exist_ok=True)
    jobs: list[tuple[str, dict[str, Any]]] = []
    for n, source in enumerate(sources[:files]):
        target = str(out / f"{n}.gz")
        jobs.append(("compress", {"source": str(source), "target": target, "level": 9}))
        jobs.append(("hash", {"path": str(source), "algorithm": "sha256"}))
    return jobs


def procpool_real(workdir: Path, jobs: list[tuple[str, dict[str, Any]]]) -> dict[str, float]:
    """The real batch in one Client.submit_many, then Client.wait."""
    with running_daemon(workdir, handlers=("example_handlers",)) as daemon:
        client = daemon.client
        cpu_before = daemon.cpu_seconds()
        start = time.perf_counter()
        ids = client.submit_many({"type": kind, "payload": payload} for kind, payload in jobs)
        done = client.wait(ids, timeout=DEADLINE)
        end = time.perf_counter()
        cpu = daemon.cpu_seconds() - cpu_before
    bad = [job for job in done if job.status != "completed"]
    if bad:
        raise BenchError(f"{len(bad)} jobs of the real batch did not complete: {bad[0]}")
    return {"seconds": end - start, "supervisor_cpu_us_per_job": cpu / len(jobs) * 1e6}


def paired_real(workdir: Path, files: int) -> dict[str, float]:
    """The executor and procpool back to back on the same batch."""
    jobs = real_batch(workdir, files)
    base = bench_peers.executor_run([(bench_jobs.real, job) for job in jobs])["seconds"]
    mine = procpool_real(workdir, jobs)
    return {**mine, "baseline_seconds": base, "ratio": mine["seconds"] / base,
            "jobs": len(jobs), "job_ms": base * WORKERS / len(jobs) * 1000}  # fmt: skip


def build_preloaded_store(path: Path, jobs: int) -> float:
    """A store holding `jobs` pending echo jobs due in ten years; returns seconds taken."""
    start = time.perf_counter()
    store = SqliteJobStore(path, synchronous="OFF")
    defaults = JobDefaults()
    now = time.time()
    chunk = 50_000
    for first in range(0, jobs, chunk):
        batch = [
            to_job(
                JobSpec(type="echo", payload={"i": i}, run_at=None, delay=FAR_FUTURE),
                job_id=f"pre-{i}",
                defaults=defaults,
                now=now,
            )
            for i in range(first, min(jobs, first + chunk))
        ]
        with store.transaction():
            store.insert(batch)
    store.close()
    return time.perf_counter() - start


# ----------------------------------------------------------------- the run


class Bench:
    """Runs each measure `repeat` times and turns the medians into figures."""

    def __init__(
        self, sizes: Sizes, repeat: int, workdir: Path, emit: Callable[[Figure], None]
    ) -> None:
        self.sizes = sizes
        self.repeat = repeat
        self.workdir = workdir
        self.emit = emit
        self.figures: list[Figure] = []

    def measure(self, key: str, function: Callable[[], dict[str, float]]) -> dict[str, Any]:
        """Run `function` `repeat` times: the medians of what it returns, and its runs."""
        runs = []
        for n in range(self.repeat):
            log(f"  {key} (run {n + 1}/{self.repeat})")
            load = os.getloadavg()[0]
            runs.append({**function(), "load_1m": load})
        result: dict[str, Any] = {
            name: statistics.median(run[name] for run in runs) for name in runs[0]
        }
        result["runs"] = runs
        return result

    def add(self, figure: Figure, source: dict[str, Any]) -> None:
        """Emit a figure, with what its measure saw of the machine and of the supervisor."""
        for key in SOURCE_DETAILS:
            if key in source:
                figure.detail.setdefault(key, source[key])
        self.figures.append(figure)
        self.emit(figure)

    # Each benchmark below is one name of --only.

    def throughput(self) -> None:
        n = self.sizes.jobs
        base = self.measure("executor.throughput", lambda: executor_throughput(n))
        jsonl = self.measure(
            "procpool.throughput.jsonl", lambda: procpool_throughput(self.workdir, n)
        )
        self.add(Figure(
            "throughput.jsonl", f"no-op jobs/s, {n:,} in one .jsonl file", jsonl["rate"],
            "jobs/s", base["rate"], "ProcessPoolExecutor", ">= 10,000 and >= 0.6x ref",
            jsonl["rate"] >= 10_000 and jsonl["rate"] >= 0.6 * base["rate"],
            [r["rate"] for r in jsonl["runs"]],
        ), jsonl)  # fmt: skip
        files = self.measure(
            "procpool.throughput.files", lambda: procpool_throughput(self.workdir, n, files=True)
        )
        self.add(Figure(
            "throughput.files", f"no-op jobs/s, {n:,} separate .json files", files["rate"],
            "jobs/s", base["rate"], "ProcessPoolExecutor", ">= 3,000", files["rate"] >= 3_000,
            [r["rate"] for r in files["runs"]],
        ), files)  # fmt: skip

    def submit(self) -> None:
        """No-op jobs through Client.submit (one at a time, in one submit_many, from 4
        threads) against the executor, Huey (from 1 and 4 threads) and pebble."""
        n = self.sizes.jobs
        noop = [(bench_jobs.noop, {"i": i}) for i in range(n)]
        huey_calls = [("noop", {"i": i}) for i in range(n)]
        threads = PRODUCER_THREADS
        work = self.workdir
        base = self.measure("executor.submit", lambda: bench_peers.executor_run(noop))
        pebble = self.measure("pebble.submit", lambda: bench_peers.pebble_run(noop))
        huey = self.measure("huey.submit", lambda: bench_peers.huey_run(work, huey_calls))
        huey4 = self.measure(
            "huey.submit.threads", lambda: bench_peers.huey_run(work, huey_calls, threads)
        )
        one = self.measure("procpool.submit.one", lambda: procpool_submit(work, n, "one"))
        many = self.measure("procpool.submit.many", lambda: procpool_submit(work, n, "many"))
        four = self.measure("procpool.submit.threads", lambda: procpool_submit(work, n, "threads"))
        peers = {"executor_rate": base["rate"], "pebble_rate": pebble["rate"],
                 "huey_rate": huey["rate"], "huey_threads_rate": huey4["rate"]}  # fmt: skip
        for name, label, mine, reference, reference_name, factor in (
            ("submit.one", f"no-op jobs/s, {n:,} Client.submit one at a time", one,
             huey["rate"], "Huey (SQLite)", ONE_SUBMIT_HUEY_FACTOR),
            ("submit.many", f"no-op jobs/s, {n:,} in one Client.submit_many", many,
             base["rate"], "ProcessPoolExecutor", 1.0),
            ("submit.threads", f"no-op jobs/s, {n:,} Client.submit from {threads} threads", four,
             huey4["rate"], f"Huey (SQLite), {threads} threads", 3.0),
        ):  # fmt: skip
            ratio = mine["rate"] / reference
            self.add(Figure(
                name, label, mine["rate"], "jobs/s", reference, reference_name,
                f">= {factor:g}x ref", ratio >= factor, [r["rate"] for r in mine["runs"]],
                dict(peers), ratio,
            ), mine)  # fmt: skip
        cpu = one["supervisor_cpu_us_per_job"] / 1000
        self.add(Figure(
            "supervisor.cpu", "supervisor CPU per job, Client.submit one at a time", cpu,
            "ms", target=f"<= {ONE_CPU_TARGET_US / 1000:g} ms", met=cpu <= ONE_CPU_TARGET_US / 1000,
            runs=[r["supervisor_cpu_us_per_job"] / 1000 for r in one["runs"]],
            detail={"log_level": Daemon.log_level,
                    "submit_many_ms": many["supervisor_cpu_us_per_job"] / 1000,
                    "threads_ms": four["supervisor_cpu_us_per_job"] / 1000},
        ), one)  # fmt: skip
        trip = self.measure("submit.floor", lambda: commit_round_trip_floor(work, n))
        self.add(Figure(
            "submit.floor", "of which one durable commit per submit allows, and nothing else",
            trip["rate"], "jobs/s", huey["rate"], "Huey (SQLite)",
            ratio=trip["rate"] / huey["rate"], runs=[r["rate"] for r in trip["runs"]],
        ), trip)  # fmt: skip
        floor = self.measure("store.floor", lambda: store_floor(work, n))
        store_ms = floor["cpu_us_per_job"] / 1000
        self.add(Figure(
            "store.floor", "of which the store alone could be (no daemon, a commit per job)",
            store_ms, "ms", cpu, "the supervisor, above", ratio=store_ms / cpu,
            runs=[r["cpu_us_per_job"] / 1000 for r in floor["runs"]],
        ), floor)  # fmt: skip

    def supervisor(self) -> None:
        """The supervisor's CPU per job (issue 25) in each workload beside its target and
        the peers' rates of the same run; the most jobs a second its batched CPU per job
        allows; and no-op jobs to more workers than cores, where the supervisor saturates."""
        n, batched, work = self.sizes.jobs, self.sizes.batched, self.workdir
        noop = [(bench_jobs.noop, {"i": i}) for i in range(n)]
        peers: dict[str, float | None] = {
            "executor_rate": self.measure(
                "executor.submit", lambda: bench_peers.executor_run(noop)
            )["rate"]
        }
        try:
            huey_calls = [("noop", {"i": i}) for i in range(n)]
            huey = self.measure("huey.submit", lambda: bench_peers.huey_run(work, huey_calls))
            peers["huey_rate"] = huey["rate"]
        except (bench_peers.PeerMissing, sqlite3.Error) as missing:
            # On a loaded machine Huey's producer may wait past its store's lock
            # timeout ("database is locked"): the supervisor's figures stand without it.
            log(f"  without Huey: {missing}")
            peers["huey_rate"] = None
        huey_rate = peers["huey_rate"]
        beside = f"executor {peers['executor_rate']:,.0f}, Huey " + (
            "failed or missing" if huey_rate is None else f"{huey_rate:,.0f}"
        )
        one = self.measure("procpool.submit.one", lambda: procpool_submit(work, n, "one"))
        lean = self.measure("lean.submit.one", lambda: lean_loop.lean_one_at_a_time(work, n))
        many = self.measure("procpool.submit.many", lambda: procpool_submit(work, batched, "many"))
        jsonl = self.measure("procpool.jsonl", lambda: procpool_throughput(work, batched))
        iterations = int(
            self.measure("paced.calibration", lambda: calibrate_cpu(PACED_JOB_SECONDS))[
                "iterations"
            ]
        )
        paced = self.measure(
            "procpool.paced", lambda: procpool_paced(work, self.sizes.paced, iterations)
        )
        for name, title, mine, target in (
            ("supervisor.one", f"supervisor CPU per job, {n:,} Client.submit one at a time",
             one, ONE_CPU_TARGET_US),
            ("supervisor.many", f"supervisor CPU per job, {batched:,} in one submit_many",
             many, BATCHED_CPU_TARGET_US),
            ("supervisor.jsonl", f"supervisor CPU per job, {batched:,} lines in one .jsonl",
             jsonl, BATCHED_CPU_TARGET_US),
            ("supervisor.paced", f"supervisor CPU per job, {self.sizes.paced:,} x 2 ms CPU "
             f"jobs submitted at {PACED_RATE:g}/s", paced, None),
        ):  # fmt: skip
            cpu = mine["supervisor_cpu_us_per_job"]
            detail: dict[str, Any] = {"log_level": Daemon.log_level, **peers}
            label = title
            if "rate" in mine:
                detail["rate"] = mine["rate"]
                label += f" ({mine['rate']:,.0f} jobs/s; {beside})"
            self.add(Figure(
                name, label, cpu, "us", target=None if target is None else f"<= {target:g} us",
                met=None if target is None else cpu <= target,
                runs=[r["supervisor_cpu_us_per_job"] for r in mine["runs"]], detail=detail,
            ), mine)  # fmt: skip
        lean_us = lean["supervisor_cpu_us_per_job"]
        self.add(Figure(
            "supervisor.lean_floor", f"of which a lean loop of the same design could be "
            f"(scripts/lean_loop.py), {n:,} Client.submit one at a time", lean_us, "us",
            one["supervisor_cpu_us_per_job"], "supervisor.one, above",
            ratio=lean_us / one["supervisor_cpu_us_per_job"],
            runs=[r["supervisor_cpu_us_per_job"] for r in lean["runs"]],
        ), lean)  # fmt: skip
        # One core's worth of the supervisor's batched CPU per job: the most jobs a second
        # one daemon can hand out, whatever its workers.
        batched_us = max(many["supervisor_cpu_us_per_job"], jsonl["supervisor_cpu_us_per_job"])
        capacity = 1e6 / batched_us
        self.add(Figure(
            "supervisor.capacity", "most jobs/s one daemon can hand out (1 / batched CPU "
            "per job)", capacity, "jobs/s", target=f">= {CAPACITY_TARGET:,.0f}",
            met=capacity >= CAPACITY_TARGET, detail={"batched_cpu_us": batched_us},
        ), {})  # fmt: skip
        floor = self.measure("store.floor.batched", lambda: store_floor_batched(work, batched))
        self.add(Figure(
            "supervisor.store_floor", f"of which the store alone could be (no daemon, "
            f"{FLOOR_TURN_JOBS} jobs a commit)", floor["cpu_us_per_job"], "us",
            batched_us, "batched CPU per job, above", ratio=floor["cpu_us_per_job"] / batched_us,
            runs=[r["cpu_us_per_job"] for r in floor["runs"]],
        ), floor)  # fmt: skip
        many_workers = SATURATION_WORKERS
        saturated = self.measure(
            "procpool.saturation",
            lambda: procpool_throughput(work, batched, workers=many_workers),
        )
        # The reference is the capacity above: a rate near it with a core share near
        # 100 % is the supervisor saturated; a lower share is the cores shared out.
        self.add(Figure(
            "supervisor.saturation", f"no-op jobs/s, {batched:,} in one .jsonl, "
            f"{many_workers} workers on {os.cpu_count()} CPUs", saturated["rate"], "jobs/s",
            capacity, "capacity, above",
            runs=[r["rate"] for r in saturated["runs"]],
            detail={"workers": many_workers,
                    "supervisor_core_share": saturated["core_share"]},
        ), saturated)  # fmt: skip

    def batch(self) -> None:
        """The real batch: compress and hash of standard-library files."""
        files = self.sizes.real_files
        mine = self.measure("real.paired", lambda: paired_real(self.workdir, files))
        self.add(Figure(
            "batch.real", f"real batch: {int(mine['jobs']):,} compress and hash jobs, wall",
            mine["seconds"], "s", mine["baseline_seconds"], "ProcessPoolExecutor",
            f"<= {REAL_BATCH_RATIO:g}x ref", mine["ratio"] <= REAL_BATCH_RATIO,
            [r["seconds"] for r in mine["runs"]],
            {"jobs": mine["jobs"], "job_cpu_ms": mine["job_ms"]}, mine["ratio"],
        ), mine)  # fmt: skip

    def cpu(self) -> None:
        n = self.sizes.cpu_jobs
        iterations = int(self.measure("cpu.calibration", calibrate_cpu)["iterations"])
        mine = self.measure("cpu.paired", lambda: paired_cpu(self.workdir, n, iterations))
        self.add(Figure(
            "cpu.wall", f"wall time of {n} x 25 ms CPU jobs, Client.submit each",
            mine["seconds"], "s",
            mine["baseline_seconds"], "ProcessPoolExecutor", "<= 1.03x ref",
            mine["ratio"] <= 1.03, [r["seconds"] for r in mine["runs"]],
            {"iterations": iterations, "ideal_seconds": n * CPU_JOB_SECONDS / WORKERS},
            mine["ratio"],
        ), mine)  # fmt: skip

    def latency(self) -> None:
        """One job through the client, submit to result known, one at a time: back to
        back, and after the pool sat idle (LATENCY_CASES)."""
        for case in LATENCY_CASES:
            self._latency(*case)

    def _latency(
        self, name: str, pause: float, p50_target: float, p99_target: float | None
    ) -> None:
        """One case of `latency`, beside the executor, Huey where installed, the disk's
        floor (two durable commits) and a lean loop of the same design, of the same run."""
        samples = self.sizes.latency_samples
        when = "back to back" if not pause else f"after {pause:g} s idle"
        base = self.measure(f"executor.{name}", lambda: executor_latency(samples, pause))
        peer: dict[str, Any] = {}
        try:
            huey = self.measure(
                f"huey.{name}", lambda: bench_peers.huey_latency(self.workdir, samples, pause)
            )
            peer = {"huey_p50_ms": huey["p50"], "huey_p99_ms": huey["p99"]}
        except (bench_peers.PeerMissing, sqlite3.Error) as missing:
            log(f"  without Huey: {missing}")
        mine = self.measure(
            f"procpool.{name}", lambda: procpool_latency(self.workdir, samples, pause)
        )
        floor = self.measure(
            f"floor.{name}", lambda: durable_commits_floor(self.workdir, samples, pause)
        )
        lean = self.measure(
            f"lean.{name}", lambda: lean_loop.lean_latency(self.workdir, samples, pause)
        )
        for cut, limit in (("p50", p50_target), ("p99", p99_target)):
            self.add(Figure(
                f"{name}.{cut}", f"latency {cut}, one job {when}, Client.submit to Client.wait",
                mine[cut], "ms", base[cut], "ProcessPoolExecutor",
                None if limit is None else f"<= {limit:g} ms",
                None if limit is None else mine[cut] <= limit,
                [r[cut] for r in mine["runs"]],
                {"samples": samples, "pause_s": pause, **peer,
                 "client_submit_p50_ms": mine["submit_p50"], "over_100_ms": mine["over_100_ms"]},
            ), mine)  # fmt: skip
        self.add(Figure(
            f"{name}.floor", f"of which the disk's floor p50, two durable commits of 4 KiB {when}",
            floor["p50"], "ms", mine["p50"], "procpool p50, above",
            runs=[r["p50"] for r in floor["runs"]],
            detail={"samples": samples, "pause_s": pause, "p99_ms": floor["p99"]},
        ), floor)  # fmt: skip
        self.add(Figure(
            f"{name}.lean_floor", f"of which a lean loop of the same design could be "
            f"(scripts/lean_loop.py) p50, one job {when}", lean["p50"], "ms", mine["p50"],
            "procpool p50, above", runs=[r["p50"] for r in lean["runs"]],
            detail={"samples": samples, "pause_s": pause, "p99_ms": lean["p99"]},
        ), lean)  # fmt: skip

    def cancel(self) -> None:
        samples = self.sizes.cancel_samples
        mine = self.measure("procpool.cancel", lambda: procpool_cancel(self.workdir, samples))
        detail = {"samples": samples, "over_100_ms": mine["over_100_ms"],
                  "reaped_p50_ms": mine["reaped_p50"]}  # fmt: skip
        self.add(Figure(
            "cancel.p50", "cancel of a running job p50, Client.cancel to reported canceled",
            mine["p50"], "ms", target="<= 10 ms", met=mine["p50"] <= 10.0,
            runs=[r["p50"] for r in mine["runs"]], detail=dict(detail),
        ), mine)  # fmt: skip
        self.add(Figure(
            "cancel.p99", "cancel of a running job p99, Client.cancel to reported canceled",
            mine["p99"], "ms",
            runs=[r["p99"] for r in mine["runs"]], detail=dict(detail),
        ), mine)  # fmt: skip

    def waiting(self) -> None:
        mine = self.measure("procpool.waiting", lambda: procpool_waiting(self.workdir, 3.0))
        self.add(Figure(
            "waiting.cpu", "supervisor CPU, workers busy and a due job waiting",
            mine["percent"], "% of a core", target="< 2 %", met=mine["percent"] < 2.0,
            runs=[r["percent"] for r in mine["runs"]], detail={"window_s": mine["window"]},
        ), mine)  # fmt: skip

    def ingestion(self) -> None:
        n = self.sizes.ingestion
        mine = self.measure("procpool.ingestion", lambda: procpool_ingestion(self.workdir, n))
        self.add(Figure(
            "ingestion", f"ingestion jobs/s, {n:,} delayed jobs in one .jsonl file",
            mine["rate"], "jobs/s", target=">= 50,000", met=mine["rate"] >= 50_000,
            runs=[r["rate"] for r in mine["runs"]], detail={"seconds": mine["seconds"]},
        ), mine)  # fmt: skip

    def scale(self) -> None:
        n = self.sizes.preload
        template = self.workdir / "preloaded.db"
        log(f"  building a store of {n:,} pending jobs")
        built = build_preloaded_store(template, n)
        size_mb = template.stat().st_size / 2**20
        try:
            mine = self.measure(
                "procpool.scale",
                lambda: paired_throughput(
                    self.workdir, self.sizes.jobs, {}, {"template": template}
                ),
            )
        finally:
            template.unlink()
        detail = {"stored_jobs": n, "store_mb": size_mb, "build_seconds": built}
        self.add(Figure(
            "scale.throughput", f"no-op jobs/s with {n:,} jobs stored", mine["rate"], "jobs/s",
            mine["reference_rate"], "empty store", ">= 0.8x ref", mine["ratio"] >= 0.8,
            [r["rate"] for r in mine["runs"]], dict(detail), mine["ratio"],
        ), mine)  # fmt: skip
        rss = mine["peak_rss_mb"]
        self.add(Figure(
            "scale.rss", f"supervisor peak RSS with {n:,} jobs stored", rss, "MB",
            mine["reference_peak_rss_mb"], "empty store", "< 150 MB", rss < 150,
            [r["peak_rss_mb"] for r in mine["runs"]], dict(detail),
        ), mine)  # fmt: skip

    def durability(self) -> None:
        mine = self.measure(
            "procpool.durability",
            lambda: paired_throughput(
                self.workdir, self.sizes.jobs,
                {"env": {"PROCPOOL_SYNCHRONOUS": "NORMAL"}},
                {"env": {"PROCPOOL_SYNCHRONOUS": "FULL"}},
            ),
        )  # fmt: skip
        self.add(Figure(
            "durability", "no-op jobs/s with synchronous=FULL", mine["rate"], "jobs/s",
            mine["reference_rate"], "synchronous=NORMAL", ">= 0.75x ref (cost <= 25 %)",
            mine["ratio"] >= 0.75, [r["rate"] for r in mine["runs"]],
            {"cost": 1 - mine["ratio"]}, mine["ratio"],
        ), mine)  # fmt: skip


BENCHMARKS = (
    "submit", "supervisor", "cpu", "latency", "cancel", "batch", "ingestion", "throughput",
    "waiting", "scale", "durability",
)  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def environment() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "procpool")
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "procpool_commit": None if commit is None else commit + ("-dirty" if dirty else ""),
        "workers": WORKERS,
        "log_level": Daemon.log_level,
    }


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "jobs/s":
        return f"{value:,.0f} {unit}"
    return f"{value:,.2f} {unit}" if value < 100 else f"{value:,.1f} {unit}"


def table(figures: list[Figure], env: dict[str, Any]) -> str:
    rows = [("figure", "procpool", "reference", "ratio", "target", "met")]
    for f in figures:
        ref = "-" if f.reference is None else f"{_format(f.reference, f.unit)} ({f.reference_name})"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}x"
        met = "-" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.label, _format(f.value, f.unit), ref, ratio, f.target or "-", met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        f"procpool {env['procpool_commit']}, {env['workers']} workers, python {env['python']},"
        f" {env['cpus']} CPUs, load {env['load_average']}",
        "",
    ]
    for n, row in enumerate(rows):
        lines.append(" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--only", help=f"comma-separated names among {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measure; medians kept")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON lines")
    parser.add_argument(
        "--log-level", default="INFO", help="the daemon's log level (default: its default, INFO)"
    )
    args = parser.parse_args(argv)
    Daemon.log_level = args.log_level.upper()
    chosen = BENCHMARKS if not args.only else tuple(n.strip() for n in args.only.split(","))
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown or args.repeat < 1:
        parser.error(f"unknown benchmark {unknown}" if unknown else "--repeat must be >= 1")

    env = environment()
    print(json.dumps({"environment": env}), flush=True)

    def emit(figure: Figure) -> None:
        print(json.dumps(figure.as_json()), flush=True)

    failed = []
    with tempfile.TemporaryDirectory(prefix="procpool-bench-") as workdir:
        bench = Bench(QUICK if args.quick else Sizes(), args.repeat, Path(workdir), emit)
        for name in chosen:
            log(f"{name}:")
            try:
                getattr(bench, name)()
            except (BenchError, bench_peers.PeerMissing) as error:
                failed.append(name)
                log(f"{name} failed: {error}")
                print(json.dumps({"benchmark": name, "error": str(error)}), flush=True)
    if not args.json_only:
        print()
        print(table(bench.figures, env))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
