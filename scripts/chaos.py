"""Chaos: kill -9 the supervisor at random moments, restart it, check nothing was lost.

Runs a mixed workload (echo, cpu, sleep, always-failing and self-killing jobs,
and hostile handlers: SIGTERM turned into an exception, a child left in its own
session, a multiprocessing fork pool logging from its children, log fields
named like the daemon's, a result that is not JSON), one job per inbox file,
dropped in waves while the daemon runs, with cancel requests for some of them,
through CYCLES rounds of "start, wait a random moment, kill -9". Then a last
daemon finishes the work and stops gracefully, and the invariants are checked:

- every accepted job is terminal, and there is exactly one job per file;
- no two attempts of one job ever ran at the same time (per-job kernel locks);
- failed jobs (only the always-failing kinds may fail) used exactly max_attempts;
- only jobs whose cancel was asked for are canceled;
- no process of any daemon run is left, nor any child a handler started.

Usage: python scripts/chaos.py [--cycles 50] [--jobs 5000] [--workers 2] [--seed N]
Exit code 0 when every invariant holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

SCRIPTS = Path(__file__).resolve().parent
KINDS = [("echo", 40), ("cpu", 20), ("sleep", 20), ("fail", 10), ("kill_self", 10),
         ("sigterm_raises", 5), ("session_child", 5), ("fork_and_log", 2), ("clashing_log", 5),
         ("odd_result", 3)]  # fmt: skip
FAILING = ("fail", "odd_result")
FAIL_ATTEMPTS = 3
CANCEL_SHARE = 0.03


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SCRIPTS), env.get("PYTHONPATH")])),
        PROCPOOL_BACKOFF_BASE="0.01",
        PROCPOOL_BACKOFF_MAX="0.1",
        PROCPOOL_POLL_INTERVAL="0.2",
        PROCPOOL_LOG_LEVEL="WARNING",
        PROCPOOL_KILL_GRACE="0.2",
    )
    return env


def _start(home: Path, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "procpool", "run", "--home", str(home),
             "--workers", str(workers), "--handlers", "chaos_handlers"],
            env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


def _group_members(pids: set[int]) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in pids and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def _drop(inbox: Path, spans: Path, numbers: range, rng: random.Random, canceled: set[str]) -> None:
    kinds = [kind for kind, weight in KINDS for _ in range(weight)]
    for n in numbers:
        kind = rng.choice(kinds)
        job = {
            "type": "chaos",
            "payload": {"kind": kind, "dir": str(spans), "seconds": rng.uniform(0, 0.1)},
            "max_attempts": FAIL_ATTEMPTS if kind in FAILING else 20,
        }
        _write(inbox, f"job{n:06d}", job)
        if n and rng.random() < CANCEL_SHARE:  # an earlier job: pending, running or done
            target = f"job{rng.randrange(max(0, n - 50), n):06d}"
            canceled.add(target)
            _write(inbox, f"cancel-{n:06d}", {"cancel": target})


def _write(inbox: Path, stem: str, document: dict[str, Any]) -> None:
    temporary = inbox / f".{stem}.tmp"
    temporary.write_text(json.dumps(document))
    os.rename(temporary, inbox / f"{stem}.json")


def _jobs(home: Path) -> dict[str, tuple[str, int, int, str]]:
    db = sqlite3.connect(f"file:{home / 'procpool.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, status, attempts, max_attempts, payload FROM jobs").fetchall()
    finally:
        db.close()
    return {r[0]: (r[1], r[2], r[3], json.loads(r[4])["kind"]) for r in rows}


def _check(home: Path, spans: Path, total: int, seen: set[int], canceled: set[str]) -> list[str]:
    problems = []
    jobs = _jobs(home)
    expected = {f"job{n:06d}" for n in range(total)}
    if set(jobs) != expected:
        missing, extra = len(expected - set(jobs)), len(set(jobs) - expected)
        problems.append(f"{missing} files without a job, {extra} extra jobs")
    left = [p.name for p in (home / "inbox").iterdir() if not p.name.startswith(".")]
    if left:
        problems.append(f"{len(left)} files left in the inbox")
    rejected = list((home / "rejected").iterdir())
    if rejected:
        problems.append(f"{len(rejected)} files in rejected/")
    for job_id, (status, attempts, max_attempts, kind) in jobs.items():
        if status not in ("completed", "failed", "canceled"):
            problems.append(f"{job_id} is {status}")
        elif status == "canceled" and job_id not in canceled:
            problems.append(f"{job_id} ({kind}) was canceled unasked")
        elif status == "failed" and (kind not in FAILING or attempts != max_attempts):
            problems.append(f"{job_id} ({kind}) failed with {attempts}/{max_attempts} attempts")
        elif status == "completed" and kind in FAILING:
            problems.append(f"{job_id} should never complete")
    if (spans / "OVERLAP").exists():
        problems.append("overlapping attempts:\n" + (spans / "OVERLAP").read_text())
    leftovers = _group_members(seen)
    if leftovers:
        problems.append(f"processes left: {leftovers}")
    children = spans / "children"
    alive = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    alive = [pid for pid in alive if _alive(pid)]
    if alive:
        problems.append(f"children of handlers still running: {alive}")
    return problems


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-uptime", type=float, default=1.5,
                        help="longest random time a daemon runs before its kill -9")  # fmt: skip
    parser.add_argument("--finish-timeout", type=float, default=600)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="procpool-chaos-"))
    home, spans, log = root / "home", root / "spans", root / "daemon.log"
    spans.mkdir()
    (home / "inbox").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    started = time.monotonic()
    waves = [range(i * args.jobs // (args.cycles + 1), (i + 1) * args.jobs // (args.cycles + 1))
             for i in range(args.cycles + 1)]  # fmt: skip
    seen: set[int] = set()
    canceled: set[str] = set()
    for cycle in range(args.cycles):
        daemon = _start(home, args.workers, log)
        seen.add(daemon.pid)
        _drop(home / "inbox", spans, waves[cycle], rng, canceled)
        deadline = time.monotonic() + rng.uniform(0.05, args.max_uptime)
        while time.monotonic() < deadline and daemon.poll() is None:
            try:
                seen.update(c.pid for c in psutil.Process(daemon.pid).children())
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
        daemon.kill()
        daemon.wait()
    _drop(home / "inbox", spans, waves[-1], rng, canceled)
    daemon = _start(home, args.workers, log)
    seen.add(daemon.pid)
    deadline = time.monotonic() + args.finish_timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            jobs = _jobs(home)
        except sqlite3.OperationalError:
            jobs = {}
        if len(jobs) == args.jobs and all(
            j[0] in ("completed", "failed", "canceled") for j in jobs.values()
        ):
            break
        time.sleep(0.2)
    with contextlib.suppress(psutil.NoSuchProcess):
        seen.update(c.pid for c in psutil.Process(daemon.pid).children())
    daemon.terminate()
    code = daemon.wait(60)
    time.sleep(0.5)  # the design allows workers a moment to follow their supervisor
    problems = _check(home, spans, args.jobs, seen, canceled)
    if code != 0:
        problems.append(f"the final daemon exited with {code}")
    jobs = _jobs(home)
    statuses = Counter(status for status, *_ in jobs.values())
    attempts = Counter(a for _, a, _, _ in jobs.values())
    runs = len((spans / "spans").read_text().splitlines()) if (spans / "spans").exists() else 0
    figures = {
        "seed": seed,
        "cycles": args.cycles,
        "jobs": args.jobs,
        "workers": args.workers,
        "seconds": round(time.monotonic() - started, 1),
        "statuses": dict(statuses),
        "failed_attempts_histogram": dict(sorted(attempts.items())),
        "recorded_runs": runs,
        "cancels_asked": len(canceled),
        "processes_seen": len(seen),
        "problems": problems,
        "home": str(home),
    }
    print(json.dumps(figures, indent=2))
    print("OK: every invariant holds" if not problems else f"FAILED: {len(problems)} problems")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
