"""PostgreSQL beside SQLite (issue 17): throughput and latency through the Client.

Three set-ups, measured in one run on this machine: one daemon on its own SQLite
store (the default, the baseline), one daemon on PostgreSQL, and three daemons on
one PostgreSQL database. Every daemon is a real `procpool run` with 2 workers on a
home of its own; jobs are the built-in `echo` (no work: the figures are the
machinery's). Submissions go through `procpool.Client`, one `submit` per job, from
one thread: over the daemon's socket with SQLite, straight into the database with
PostgreSQL (the daemons are woken by NOTIFY).

- throughput: N jobs, from the first submit to the last job seen `completed`;
- latency: one job at a time on an idle set-up, from submit to `completed` seen by
  a poller that reads the store every 0.2 ms; p50 and p99.

PostgreSQL: `--database-url URL` (an empty database the benchmark may fill), or by
default a throwaway cluster started from the server binaries on the machine (as the
tests do: tests/postgresql.py), with fsync on, as a real server has it.

Usage: python scripts/bench_postgresql.py [--quick] [--database-url URL]
Prints one JSON line per figure, then a table. Exit code 0 when every figure was
measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from bench import DEADLINE, BenchError, _wait  # the benchmark's own poll with a deadline

from procpool import Client

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
POLL = 0.0002


class Setup:
    """Daemons on one store, and a way to count the jobs they completed."""

    def __init__(self, name: str, workdir: Path, daemons: int, url: str | None) -> None:
        self.name = name
        self.url = url
        self.homes = [workdir / f"{name}-{n}" for n in range(daemons)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.client = Client(self.homes[0], database_url=url)
        self._sqlite: sqlite3.Connection | None = None
        self._pg = psycopg.connect(url, autocommit=True) if url else None

    def start(self) -> Setup:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_")}
        if self.url:
            env["PROCPOOL_DATABASE_URL"] = self.url
        for home in self.homes:
            home.mkdir(mode=0o700, parents=True)
            command = [sys.executable, "-m", "procpool", "run", "--home", str(home),
                       "--workers", str(WORKERS)]  # fmt: skip
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.processes.append(process)
        for home, process in zip(self.homes, self.processes, strict=True):
            _wait(lambda h=home, p=process: _started(h, p), 0.005, f"{home} to start")
        warm = [self.client.submit("echo", n, id=f"warm-{n}") for n in range(4 * len(self.homes))]
        self.client.wait(warm, timeout=DEADLINE)
        return self

    def completed(self, prefix: str) -> int:
        if self._pg is not None:
            row = self._pg.execute(
                "SELECT count(*) FROM procpool_jobs WHERE status = 'completed' AND id LIKE %s",
                (f"{prefix}%",),
            ).fetchone()
            return int(row[0]) if row else 0
        if self._sqlite is None:
            database = self.homes[0] / "procpool.db"
            self._sqlite = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        row = self._sqlite.execute(
            "SELECT count(*) FROM jobs WHERE status = 'completed' AND id LIKE ?", (f"{prefix}%",)
        ).fetchone()
        return int(row[0])

    def status(self, job_id: str) -> str | None:
        job = self.client.get(job_id)
        return None if job is None else job.status

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(60)
        self.client.close()
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()


def throughput(setup: Setup, jobs: int) -> dict[str, float]:
    began = time.perf_counter()
    for n in range(jobs):
        setup.client.submit("echo", n, id=f"tp-{n}")
    submitted = time.perf_counter()
    _wait(lambda: setup.completed("tp-") >= jobs, 0.002, "the jobs to complete")
    ended = time.perf_counter()
    return {
        "jobs_per_s": round(jobs / (ended - began), 1),
        "submits_per_s": round(jobs / (submitted - began), 1),
    }


def latency(setup: Setup, samples: int) -> dict[str, float]:
    times = []
    for n in range(samples):
        job_id = f"lat-{n}"
        began = time.perf_counter()
        setup.client.submit("echo", n, id=job_id)
        _wait(lambda job_id=job_id: setup.status(job_id) == "completed", POLL, job_id)
        times.append(time.perf_counter() - began)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "p99_ms": round(times[min(len(times) - 1, int(0.99 * len(times)))] * 1000, 2),
    }


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """An empty database: the given one, or one on a throwaway cluster."""
    if url:
        yield url
        return
    sys.path.insert(0, str(REPO / "tests"))
    from postgresql import Cluster, _server_bin  # noqa: PLC0415

    bin_dir = _server_bin()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL server binaries: give --database-url")
    cluster = Cluster(bin_dir, durable=True)
    cluster.start()
    try:
        with psycopg.connect(cluster.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench")
        yield cluster.url("bench")
    finally:
        cluster.stop()


def _started(home: Path, process: subprocess.Popen[bytes]) -> bool:
    """Whether the daemon of `home` listens; BenchError at once if it exited, with
    the reason its log gives (else the benchmark waited out its whole deadline)."""
    if process.poll() is not None:
        log = home / "logs" / "procpool.jsonl"
        last = log.read_text().splitlines()[-1:] if log.exists() else []
        raise BenchError(f"the daemon of {home} exited {process.returncode}: {last}")
    return (home / "procpool.sock").exists()


def _reset(url: str) -> None:
    """Drop every table and sequence of procpool's schema, whatever its migrations
    made: a list of names written here went stale when a migration added a table,
    and the next set-up's daemons failed to start on the half-dropped schema."""
    with psycopg.connect(url, autocommit=True) as db:
        for kind, catalog in (("TABLE", "pg_tables"), ("SEQUENCE", "pg_sequences")):
            column = "tablename" if kind == "TABLE" else "sequencename"
            names = [row[0] for row in db.execute(
                f"SELECT {column} FROM {catalog} WHERE schemaname = current_schema()"
                f" AND {column} LIKE 'procpool\\_%'"
            )]  # fmt: skip
            if names:
                db.execute(f"DROP {kind} IF EXISTS {', '.join(names)} CASCADE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    parser.add_argument("--database-url", help="an empty PostgreSQL database to use")
    args = parser.parse_args(argv)
    jobs, samples = (200, 20) if args.quick else (2000, 200)
    rows = []
    with ExitStack() as stack, database(args.database_url) as url:
        workdir = Path(tempfile.mkdtemp(prefix="procpool-bench-pg-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        for name, daemons, store in (
            ("sqlite-1", 1, None),
            ("postgresql-1", 1, url),
            ("postgresql-3", 3, url),
        ):
            if store:
                _reset(store)
            setup = Setup(name, workdir, daemons, store).start()
            try:
                figures = {"setup": name, "daemons": daemons, "workers": daemons * WORKERS,
                           **throughput(setup, jobs), **latency(setup, samples)}  # fmt: skip
            finally:
                setup.stop()
            print(json.dumps(figures), flush=True)
            rows.append(figures)
    base = rows[0]
    print(f"\n{jobs} echo jobs, one Client.submit each; latency over {samples} jobs")
    print(f"{'setup':<14}{'jobs/s':>9}{'x sqlite':>10}{'submits/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for row in rows:
        ratio = row["jobs_per_s"] / base["jobs_per_s"]
        print(f"{row['setup']:<14}{row['jobs_per_s']:>9}{ratio:>10.2f}{row['submits_per_s']:>11}"
              f"{row['p50_ms']:>9}{row['p99_ms']:>9}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
