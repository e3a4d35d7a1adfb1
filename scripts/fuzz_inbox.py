"""Fuzz a real daemon's inbox with a few thousand hostile files, then account for each.

Starts `procpool run` in a temporary home and drops FILES files into its inbox,
in bursts, while it runs: valid jobs and .jsonl batches, wrong types and
values, unknown fields and types, truncated JSON, random bytes, NaN and
Infinity, lone surrogates, Latin-1, byte order marks, empty files, huge
nesting, files over the size limit, names that are not UTF-8, and names that
are not regular files at all (symlinks, FIFOs, sockets, directories). Then it
checks:

- every regular file ended as a job (a .jsonl file: a job per good line) or in
  rejected/ beside a report with a reason, never both, never neither, its bytes
  unchanged; what had to be rejected was, what had to be accepted was;
- every non-regular name is still in the inbox, unopened (no FIFO has a
  reader), warned about once, and made no job;
- the daemon is alive, a job submitted afterwards completes, and it stops with 0.

Usage: python scripts/fuzz_inbox.py [--files 3000] [--seed N] [--workers 2] [--keep]
Prints its figures; exit code 0 when every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from procpool import Client

ACCEPT, REJECT, EITHER, SKIP = "accept", "reject", "either", "skip"
MiB = 1024 * 1024
BAD_VALUES: list[tuple[str, Any]] = [
    ("max_attempts", 0), ("max_attempts", 1001), ("max_attempts", "3"), ("max_attempts", 2.5),
    ("max_attempts", True), ("timeout", 0), ("timeout", -1), ("timeout", "soon"),
    ("timeout", 1e12), ("priority", 1.5), ("priority", 10**9), ("priority", None),
    ("delay", -3), ("delay", [1]), ("run_at", "yesterday"), ("run_at", 12),
    ("run_at", "2026-02-30T00:00:00Z"), ("id", "../etc/passwd"), ("id", ".hidden"),
    ("id", "-x"), ("id", "x" * 200), ("id", ""), ("id", 7), ("type", "rm -rf /"), ("type", 7),
    ("type", ""), ("type", None), ("paylaod", 1), ("cancel", "x"), ("command", "sh"),
]  # fmt: skip


@dataclass
class Planted:
    name: str  # as on disk; bytes that are not UTF-8 are surrogate-escaped
    kind: str
    expected: str  # ACCEPT, REJECT, EITHER or SKIP
    content: bytes = b""
    lines: list[str] = field(default_factory=list)  # a .jsonl file: each line's fate

    @property
    def stem(self) -> str:
        return self.name.rsplit(".", 1)[0]


# ------------------------------------------------------------------ what to drop


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 3 and roll < 0.2:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3 and roll < 0.4:
        return {f"k{rng.randint(0, 99)}": random_json(rng, depth + 1) for _ in range(3)}
    return rng.choice(
        [None, True, rng.randint(-(2**70), 2**70), rng.uniform(-1e9, 1e9), "text", "ünï\u2028"]
    )


def valid_job(rng: random.Random) -> dict[str, Any]:
    job: dict[str, Any] = {"type": "echo", "payload": random_json(rng)}
    if rng.random() < 0.5:
        job["priority"] = rng.randint(-1_000_000, 1_000_000)
    if rng.random() < 0.3:
        job["max_attempts"] = rng.randint(1, 1000)
    if rng.random() < 0.2:
        job["run_at"] = rng.choice(["2020-01-01T00:00:00Z", "2021-06-01T12:00:00+02:00"])
    return job


def bad_job(rng: random.Random) -> dict[str, Any]:
    name, value = rng.choice(BAD_VALUES)
    return {**valid_job(rng), name: value}


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


Made = tuple[bytes, str]  # the bytes, and what must become of them


def jsonl(rng: random.Random, bad_share: float) -> tuple[bytes, list[str]]:
    fates = [REJECT if rng.random() < bad_share else ACCEPT for _ in range(rng.randint(1, 8))]
    lines = [dumps(bad_job(rng) if fate == REJECT else valid_job(rng)) for fate in fates]
    return b"\n".join(lines) + b"\n", fates


def truncated(rng: random.Random) -> Made:
    data = dumps(valid_job(rng))
    return data[: rng.randint(1, len(data) - 1)], REJECT


def not_json_number(rng: random.Random) -> Made:
    token = rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1" * 5000])
    where = rng.choice(["payload", "timeout", "priority"])
    return f'{{"type": "echo", "{where}": {token}}}'.encode(), REJECT


def lone_surrogate(rng: random.Random) -> Made:
    code = rng.randint(0xD800, 0xDFFF)
    return f'{{"type": "echo", "payload": ["a", "\\u{code:04x}"]}}'.encode(), REJECT


def nested(rng: random.Random) -> Made:
    depth = rng.choice([101, 1000, 10_000, 100_000, 500_000])
    closing = b"]" * depth if rng.random() < 0.5 else b""
    return b'{"type": "echo", "payload": ' + b"[" * depth + closing + b"}", REJECT


def not_an_object(rng: random.Random) -> Made:
    return dumps(rng.choice([[1, 2], "echo", 42, None, True, [valid_job(rng)]])), REJECT


REGULAR: list[tuple[str, int, Callable[[random.Random], Made]]] = [
    ("valid", 30, lambda rng: (dumps(valid_job(rng)), ACCEPT)),
    ("bad value", 20, lambda rng: (dumps(bad_job(rng)), REJECT)),
    ("truncated", 6, truncated),
    ("random bytes", 6, lambda rng: (rng.randbytes(rng.randint(0, 400)), EITHER)),
    ("NaN, Infinity, out of range", 4, not_json_number),
    ("lone surrogate", 3, lone_surrogate),
    ("Latin-1", 2, lambda rng: ('{"type": "echo", "payload": "é"}'.encode("latin-1"), REJECT)),
    ("byte order mark", 2, lambda rng: (b"\xef\xbb\xbf" + dumps(valid_job(rng)), REJECT)),
    ("empty", 2, lambda rng: (rng.choice([b"", b"  ", b"\n"]), REJECT)),
    ("huge nesting", 3, nested),
    ("not an object", 3, not_an_object),
    ("over the limit", 1, lambda rng: (b'{"type": "echo", "payload": "' + b"x" * MiB, REJECT)),
]


MAKERS = {kind: make for kind, _, make in REGULAR}
WEIGHTS = [weight for _, weight, _ in REGULAR]


def plant_regular(rng: random.Random, number: int) -> Planted:
    if rng.random() < 0.12:
        kind = "jsonl, all good" if rng.random() < 0.5 else "jsonl, some bad"
        content, fates = jsonl(rng, 0.0 if kind == "jsonl, all good" else 0.4)
        expected = REJECT if REJECT in fates else ACCEPT
        return Planted(f"f{number}.jsonl", kind, expected, content, fates)
    if rng.random() < 0.01:  # a name that is not UTF-8: not a valid id either
        return Planted(os.fsdecode(b"f%d-\xff.json" % number), "name not UTF-8", REJECT, b"{}")
    kind = rng.choices(list(MAKERS), weights=WEIGHTS)[0]
    content, expected = MAKERS[kind](rng)
    return Planted(f"f{number}.json", kind, expected, content)


def plant_other(rng: random.Random, number: int, inbox: Path, outside: Path) -> Planted:
    """A job-like name that is not a regular file, made in place."""
    path = inbox / f"n{number}.json"
    kind = rng.choice(["symlink to a job", "symlink to /dev/zero", "dangling symlink",
                       "FIFO", "socket", "directory"])  # fmt: skip
    if kind == "symlink to a job":
        path.symlink_to(outside)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "dangling symlink":
        path.symlink_to(outside.parent / "missing.json")
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(path))  # the name stays after the socket closes
    else:
        path.mkdir()
        (path / "inside.json").write_bytes(dumps(valid_job(rng)))
    return Planted(path.name, kind, SKIP)


def drop(inbox: Path, planted: Planted) -> None:
    """As a producer should: a dot-file, then a rename."""
    temporary = inbox / f".{planted.name}.tmp"
    temporary.write_bytes(planted.content)
    os.rename(temporary, inbox / planted.name)


# ------------------------------------------------------------------ the daemon


def start_daemon(home: Path, workers: int, stderr_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_")}
    env.update(PROCPOOL_POLL_INTERVAL="0.5", PROCPOOL_LOG_LEVEL="INFO")
    with open(stderr_path, "ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "procpool", "run", "--home", str(home),
             "--workers", str(workers)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def log_events(home: Path) -> list[dict[str, Any]]:
    events = []
    for line in (home / "logs" / "procpool.jsonl").read_bytes().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# ------------------------------------------------------------------ the accounting


class Ledger:
    def __init__(self, home: Path, job_ids: set[str], skipped: Counter[str]) -> None:
        self.home = home
        self.job_ids = job_ids
        self.skipped = skipped  # file.skipped warnings per name
        self.outcomes: Counter[str] = Counter()
        self.violations: list[str] = []

    def fail(self, planted: Planted, problem: str) -> None:
        self.violations.append(f"{printable(planted.name)} ({planted.kind}): {problem}")

    def check(self, planted: Planted) -> None:
        if planted.expected == SKIP:
            self.check_skipped(planted)
            return
        where = self.home / "rejected" / planted.name
        rejected = os.path.lexists(where)
        report: dict[str, Any] = {}
        if rejected:
            report = json.loads(where.with_name(f"{planted.name}.error.json").read_bytes())
            if not report.get("error"):
                self.fail(planted, f"a report without a reason: {report}")
            if where.read_bytes() != planted.content:
                self.fail(planted, "its bytes changed in rejected/")
        if os.path.lexists(self.home / "inbox" / planted.name):
            self.fail(planted, "still in the inbox")
        if planted.lines:
            self.check_lines(planted, rejected, report)
            return
        made_job = planted.stem in self.job_ids
        if made_job == rejected:
            self.fail(
                planted, "both a job and rejected" if made_job else "neither job nor rejected"
            )
        elif planted.expected not in (EITHER, REJECT if rejected else ACCEPT):
            self.fail(planted, f"expected {planted.expected}; report {report}")
        self.outcomes["rejected" if rejected else "accepted"] += 1

    def check_lines(self, planted: Planted, rejected: bool, report: dict[str, Any]) -> None:
        bad = {entry["line"] for entry in report.get("lines", [])}
        if rejected != bool(bad):
            self.fail(planted, f"rejected is {rejected}, bad lines {sorted(bad)}")
        for number, fate in enumerate(planted.lines, start=1):
            made_job = f"{planted.stem}-{number}" in self.job_ids
            if made_job == (number in bad):
                self.fail(planted, f"line {number}: job {made_job}, reported {number in bad}")
            elif made_job != (fate == ACCEPT):
                self.fail(planted, f"line {number}: expected {fate}; report {report}")
        if rejected and len(bad) < len(planted.lines):
            self.outcomes["rejected, some lines accepted"] += 1
        self.outcomes["rejected" if rejected else "accepted"] += 1

    def check_skipped(self, planted: Planted) -> None:
        path = self.home / "inbox" / planted.name
        if not os.path.lexists(path):
            self.fail(planted, "was moved or removed")
        if os.path.lexists(self.home / "rejected" / planted.name):
            self.fail(planted, "is in rejected/")
        if planted.stem in self.job_ids:
            self.fail(planted, "made a job")
        if self.skipped[planted.name] != 1:
            self.fail(planted, f"warned about {self.skipped[planted.name]} times, not once")
        if planted.kind == "FIFO":
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                self.fail(planted, "someone holds the FIFO open for reading")
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
        self.outcomes["skipped, not a regular file"] += 1


# ------------------------------------------------------------------ the run


@dataclass
class Figures:
    planted: list[Planted]
    ledger: Ledger
    jobs: int
    elapsed: float
    rss_start: int
    rss_end: int
    exit_code: int
    final_took: float


def plant_all(rng: random.Random, count: int, inbox: Path, outside: Path) -> list[Planted]:
    planted: list[Planted] = []
    for number in range(count):
        if rng.random() < 0.15:
            planted.append(plant_other(rng, number, inbox, outside))
        else:
            planted.append(plant_regular(rng, number))
            drop(inbox, planted[-1])
        if number % 250 == 249:  # bursts, with the daemon reading meanwhile
            time.sleep(0.05)
    return planted


def fuzz(home: Path, outside: Path, rng: random.Random, files: int, workers: int) -> Figures:
    daemon = start_daemon(home, workers, home.parent / "stderr.log")
    client = Client(home)
    try:
        wait_for(lambda: (home / "inbox").is_dir() and client.daemon_pid() is not None, 30,
                 "the daemon to start")  # fmt: skip
        supervisor = psutil.Process(daemon.pid)
        rss_start = supervisor.memory_info().rss
        inbox = home / "inbox"
        started = time.monotonic()
        planted = plant_all(rng, files, inbox, outside)
        regular = [p for p in planted if p.expected != SKIP]
        wait_for(
            lambda: not any(os.path.lexists(inbox / p.name) for p in regular),
            600,
            "every regular file to leave the inbox",
        )
        elapsed = time.monotonic() - started
        rss_end = supervisor.memory_info().rss
        alive = daemon.poll() is None
        job_ids = {job.id for job in client.list(limit=10 * files)}
        skipped = Counter(e["file"] for e in log_events(home) if e["event"] == "file.skipped")
        ledger = Ledger(home, job_ids, skipped)
        for one in planted:
            ledger.check(one)
        if "smuggled" in job_ids:
            ledger.violations.append("the job behind a symlink was read")

        final_started = time.monotonic()
        client.submit("echo", "after the fuzz", id="fuzz-final")
        [final] = client.wait(["fuzz-final"], timeout=60)
        final_took = time.monotonic() - final_started
        if final.status != "completed":
            ledger.violations.append(f"the job submitted afterwards ended {final.status}")
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(60)
        traceback = "Traceback" in (home.parent / "stderr.log").read_text(errors="replace")
        if not alive or exit_code != 0 or traceback:
            ledger.violations.append(
                f"daemon alive {alive}, exit code {exit_code}, traceback {traceback}"
            )
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        client.close()
    return Figures(
        planted, ledger, len(job_ids), elapsed, rss_start, rss_end, exit_code, final_took
    )


def print_figures(seed: int, figures: Figures) -> None:
    planted, ledger = figures.planted, figures.ledger
    print(f"seed             {seed}")
    print(f"files            {len(planted)}")
    for kind, count in Counter(p.kind for p in planted).most_common():
        print(f"  {kind:<29}{count}")
    for outcome, count in sorted(ledger.outcomes.items()):
        print(f"{outcome:<33}{count}")
    print(f"jobs created     {figures.jobs}")
    print(f"time             {figures.elapsed:.1f} s from the first file to the last accounted"
          f" for ({len(planted) / figures.elapsed:.0f} files/s)")  # fmt: skip
    print(f"daemon RSS       {figures.rss_start / MiB:.1f} MiB at the start,"
          f" {figures.rss_end / MiB:.1f} MiB after")  # fmt: skip
    print(f"daemon           alive throughout; exit code {figures.exit_code} after SIGTERM;"
          f" a job submitted afterwards completed in {figures.final_took:.2f} s")  # fmt: skip
    print(f"violations       {len(ledger.violations)}")
    for violation in ledger.violations[:20]:
        print(f"  {violation}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home")
    options = parser.parse_args()
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    scratch = Path(tempfile.mkdtemp(prefix="procpool-fuzz-"))
    outside = scratch / "outside.json"
    outside.write_bytes(dumps({"type": "echo", "id": "smuggled"}))
    figures = fuzz(scratch / "home", outside, random.Random(seed), options.files, options.workers)
    print_figures(seed, figures)
    if options.keep:
        print(f"home kept at     {scratch / 'home'}")
    else:
        shutil.rmtree(scratch)
    return 1 if figures.ledger.violations else 0


if __name__ == "__main__":
    sys.exit(main())
