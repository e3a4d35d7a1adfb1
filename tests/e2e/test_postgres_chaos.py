"""Chaos on PostgreSQL (issue 23): two daemons with a 3 s lease on one database run a
workload of `span` jobs (tests/pg_handlers.py) through a seeded random sequence of
faults, each at least once: kill -9 of a daemon (then started again), SIGSTOP of one
daemon's supervisor alone past its lease (then SIGCONT), a running job's row held
FOR UPDATE from outside for a few seconds, and a restart of the database. The kill and
the stop land while that daemon runs a handler holding the GIL in one long C call.

Once the faults are over every job completes, no run found its job's lock taken, no
two runs of one job overlapped in time by the marks they wrote (a run without an end
mark ended when its pid was first seen gone), every daemon is still up and, once they
stopped, no process of theirs is left. PROCPOOL_PG_CHAOS_SEED replays a sequence.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from conftest import Daemon, alive, wait_until
from test_postgres_daemons import start  # noqa: F401 (the fixture)

from procpool import Client

FAULTS = ("kill", "stop", "row_lock", "restart")
EXTRA_FAULTS = 2  # drawn at random on top of one of each
RESTARTS = 4  # restarts of the database at most for one fault, until one lands in a turn
Run = tuple[str, str, int]  # job id, attempt, worker pid


class Witness(threading.Thread):
    """Watches the runs while they go: reads the marks the runs append to spans/spans
    and polls the pid of each run without an end mark every 10 ms. A run's
    end is its end mark, else the first moment its pid was seen gone (taken after the
    look, so never earlier than the death). Also keeps every pid of the daemons'
    process trees, for the check that none outlives them."""

    def __init__(self, directory: Path) -> None:
        super().__init__(daemon=True)
        self.path = directory / "spans"
        self.daemons: dict[str, Daemon] = {}  # by name, the one running now
        self.starts: dict[Run, float] = {}
        self.ends: dict[Run, float] = {}
        self.gone: dict[Run, float] = {}
        self.overlap_marks: list[str] = []
        self.seen: dict[int, float] = {}  # pid: its process's start (pids are reused)
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self._offset = 0
        self._looks = 0

    def run(self) -> None:
        while not self.halt.wait(0.01):
            self.look()

    def look(self) -> None:
        with self.lock:
            self._read_marks()
            for run in self.starts.keys() - self.ends.keys() - self.gone.keys():
                if not alive(run[2]):
                    self.gone[run] = time.time()
            self._looks += 1
            if self._looks % 10 == 0:
                self.see_trees()

    def see_trees(self) -> None:
        for daemon in list(self.daemons.values()):
            for process in tree(daemon):
                self.see(process)

    def see(self, process: psutil.Process) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.seen.setdefault(process.pid, process.create_time())

    def left(self) -> list[int]:
        """Pids seen that still run (the same process, not a reuse of its pid)."""
        found = []
        for pid, began in self.seen.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                if process.create_time() == began and process.status() != psutil.STATUS_ZOMBIE:
                    found.append(pid)
        return found

    def _read_marks(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as marks:
            marks.seek(self._offset)
            data = marks.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits
        self._offset += len(complete)
        for line in complete.decode().splitlines():
            job_id, attempt, pid, what, at = line.split()
            run = (job_id, attempt, int(pid))
            if what == "start":
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.see(psutil.Process(run[2]))
                self.starts[run] = float(at)
            elif what == "end":
                self.ends[run] = float(at)
            else:
                self.overlap_marks.append(line)

    def open_runs(self) -> set[Run]:
        """Runs that started and have neither ended nor been seen gone."""
        with self.lock:
            return set(self.starts.keys() - self.ends.keys() - self.gone.keys())

    def overlaps(self) -> list[str]:
        """Each pair of runs of one job whose spans overlap, or whose first has no end."""
        with self.lock:
            runs: dict[str, list[tuple[float, float | None, Run]]] = defaultdict(list)
            for run, began in self.starts.items():
                runs[run[0]].append((began, self.ends.get(run, self.gone.get(run)), run))
        found = []
        for spans_of_job in runs.values():
            spans_of_job.sort(key=lambda s: s[0])
            for (_, ended, first), (began, _, second) in itertools.pairwise(spans_of_job):
                if ended is None or ended > began:
                    found.append(f"{first} ended at {ended}, {second} began at {began}")
        return found


def tree(daemon: Daemon) -> list[psutil.Process]:
    """The daemon's supervisor and every process under it (workers, watchdog)."""
    try:
        process = psutil.Process(daemon.pid)
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def lost_inside(daemon: Daemon) -> int:
    """Turns whose connection broke between their BEGIN and their COMMIT."""
    return sum("connection" in e["error"] for e in daemon.events("store.lost"))


def renewed_since(pg_url: str, pid: int, moment: Any) -> bool:
    """Whether the daemon of this pid committed a renewal of its lease after `moment`
    (a row of the database's clock): it is back on the database."""
    with psycopg.connect(pg_url, autocommit=True) as db:
        row = db.execute(
            "SELECT count(*) FROM procpool_daemons WHERE pid = %s AND state = 'alive'"
            " AND heartbeat_at > %s",
            (pid, moment[0]),
        ).fetchone()
    return bool(row and row[0])


def dead_rows(pg_url: str, pid: int) -> int:
    with psycopg.connect(pg_url, autocommit=True) as db:
        row = db.execute(
            "SELECT count(*) FROM procpool_daemons WHERE pid = %s AND state = 'dead'", (pid,)
        ).fetchone()
    return int(row[0]) if row else 0


class Chaos:
    """The faults, on the daemons the witness watches, and the jobs submitted so far."""

    def __init__(self, seed: int, launch: Callable[..., Daemon], pg_url: str, pg_cluster: Any,
                 directory: Path, witness: Witness) -> None:  # fmt: skip
        self.seed, self.rng = seed, random.Random(seed)
        self.start, self.pg_url, self.pg_cluster = launch, pg_url, pg_cluster
        self.spans, self.witness = directory, witness
        self.daemons = witness.daemons
        self.ids: list[str] = []
        self.done: list[str] = []  # the faults so far
        self.restarts = 0  # of the database
        self.inside = 0  # restarts that landed inside a turn

    def story(self) -> str:
        return (
            f"seed {self.seed}; faults {self.done}; {self.restarts} restarts of the database,"
            f" {self.inside} inside a turn"
        )

    @staticmethod
    def tail(daemon: Daemon) -> str:
        """What a failure shows of a daemon: whether it runs, its last events, stderr."""
        code = daemon.process.poll() if daemon.process else None
        events = "\n".join(f"{e['ts']} {e['event']} {e['msg']}" for e in daemon.log()[-40:])
        return f"exit code {code}\n{events}\n{daemon.stderr()[-3000:]}"

    def submit(self, job_id: str, payload: dict[str, Any]) -> str:
        # A client of its own each time: the database may have restarted since the last.
        with Client(self.daemons["a"].home, database_url=self.pg_url) as jobs:
            jobs.submit("span", {"dir": str(self.spans), **payload}, id=job_id, max_attempts=20)
        self.ids.append(job_id)
        return job_id

    def wave(self, number: int) -> None:
        """Short sleeps, progress reports (a turn every few tens of ms, so that a fault
        lands inside one) and short GIL-holding sums."""
        for n in range(5):
            payload: dict[str, Any] = {"seconds": self.rng.uniform(0.2, 1.5)}
            if n == 3:
                payload["progress_every"] = 0.02
            elif n == 4:
                payload["sum"] = self.rng.randrange(10**6, 5 * 10**6)
            self.submit(f"w{number}-{n}", payload)

    def running(self, job_id: str | None = None) -> tuple[Run, Daemon]:
        """A run going on a daemon now (of `job_id`, if given), once there is one."""

        def found() -> tuple[Run, Daemon] | None:
            for run in sorted(self.witness.open_runs()):
                if job_id in (None, run[0]):
                    for daemon in self.daemons.values():
                        if run[2] in daemon.worker_pids():
                            return run, daemon
            return None

        what = f"{job_id or 'a job'} to run on a daemon ({self.story()})"
        return wait_until(found, 60, interval=0.05, what=what)

    def long_gil_run(self, number: int) -> tuple[Run, Daemon]:
        """A job whose first attempt never ends by itself: one C call holding the GIL."""
        return self.running(self.submit(f"gil{number}", {"sum": 10**12, "seconds": 0.2}))

    def ended(self, run: Run) -> None:
        wait_until(lambda: run in self.witness.gone, 60, what=f"{run} to end ({self.story()})")

    def kill(self, number: int) -> None:
        run, daemon = self.long_gil_run(number)
        daemon.kill()
        name = next(n for n, d in self.daemons.items() if d is daemon)
        self.daemons[name] = self.start(name)
        self.ended(run)

    def stop(self, number: int) -> None:
        """The supervisor alone (its workers and watchdog run on) until the others
        declared it dead."""
        run, daemon = self.long_gil_run(number)
        declared = dead_rows(self.pg_url, daemon.pid)
        daemon.signal(signal.SIGSTOP)
        try:
            wait_until(
                lambda: dead_rows(self.pg_url, daemon.pid) > declared,
                60,
                interval=0.1,
                what=f"the stopped daemon to be declared dead ({self.story()})",
            )
        finally:
            daemon.signal(signal.SIGCONT)
        lost = len(daemon.events("daemon.lease_lost"))
        daemon.wait_events("daemon.lease_lost", count=lost + 1, timeout=60)
        self.ended(run)

    def row_lock(self, number: int) -> None:
        run, _ = self.running()
        with psycopg.connect(self.pg_url) as operator:
            operator.execute("SET lock_timeout = '20s'")
            operator.execute("SELECT 1 FROM procpool_jobs WHERE id = %s FOR UPDATE", (run[0],))
            time.sleep(self.rng.uniform(1.5, 5))  # how long the operator holds it: the fault
            operator.commit()

    def restart(self, number: int) -> None:
        """Again until one lands inside a turn (about 1 in 3 does), RESTARTS at most."""
        for again in range(RESTARTS):
            # A progress report every 20 ms: a turn to land in.
            self.running(self.submit(f"r{number}-{again}", {"seconds": 2, "progress_every": 0.02}))
            inside = {name: lost_inside(d) for name, d in self.daemons.items()}
            self.pg_cluster.pg_ctl("restart")
            self.restarts += 1
            with psycopg.connect(self.pg_url, autocommit=True) as db:
                restarted = db.execute("SELECT clock_timestamp()").fetchone()
            for name, daemon in self.daemons.items():
                try:
                    wait_until(
                        lambda d=daemon, t=restarted: renewed_since(self.pg_url, d.pid, t), 60
                    )
                except pytest.fail.Exception:
                    pytest.fail(f"{name} not back on the database ({self.story()}):\n"
                                f"{self.tail(daemon)}")  # fmt: skip
            if any(lost_inside(d) > inside[n] for n, d in self.daemons.items()):
                self.inside += 1
                return


@pytest.fixture
def seed() -> int:
    chosen = os.environ.get("PROCPOOL_PG_CHAOS_SEED")
    return int(chosen) if chosen else random.randrange(1 << 30)


@pytest.fixture
def witness(spans: Path) -> Iterator[Witness]:
    watching = Witness(spans)
    watching.start()
    yield watching
    watching.halt.set()
    watching.join(10)


@pytest.mark.timeout(300)
def test_kills_stops_row_locks_and_database_restarts_run_no_job_twice_and_lose_none(
    start: Callable[..., Daemon],  # noqa: F811
    pg_url: str,
    pg_cluster: Any,
    spans: Path,
    witness: Witness,
    seed: int,
) -> None:
    chaos = Chaos(seed, start, pg_url, pg_cluster, spans, witness)
    daemons = witness.daemons
    for name in ("a", "b"):
        daemons[name] = start(name)
    faults = [*FAULTS, *(chaos.rng.choice(FAULTS) for _ in range(EXTRA_FAULTS))]
    chaos.rng.shuffle(faults)
    for number, fault in enumerate(faults):
        chaos.wave(number)
        getattr(chaos, fault)(number)
        chaos.done.append(fault)

    with Client(daemons["a"].home, database_url=pg_url) as jobs:
        try:
            finished = jobs.wait(chaos.ids, timeout=120)
        except TimeoutError:
            left = [(j.id, j.status) for j in jobs.list(limit=1000) if j.status != "completed"]
            tails = "\n".join(f"{name}: {chaos.tail(d)}" for name, d in daemons.items())
            pytest.fail(f"jobs not finished ({chaos.story()}): {left}\n{tails}")
    story = chaos.story()
    assert {(job.id, job.status) for job in finished} == {(i, "completed") for i in chaos.ids}, (
        story
    )
    witness.look()
    assert not witness.overlap_marks, f"{witness.overlap_marks} ({story})"
    assert not (spans / "OVERLAP").exists(), story
    assert witness.overlaps() == [], story
    for job_id in chaos.ids:  # each job's last attempt ran to its end mark
        assert any(run[0] == job_id for run in witness.ends), f"{job_id} ({story})"
    for name, daemon in daemons.items():
        assert daemon.process is not None and daemon.process.poll() is None, (
            f"{name} exited ({story}):\n{daemon.stderr()[-3000:]}"
        )
        assert not daemon.events("daemon.crashed"), story
        # A fault is a spell of lost turns or two, said once each: never a spin.
        spells = len(faults) + chaos.restarts
        assert len(daemon.events("store.lost")) <= 2 * spells, f"{name} ({story})"
    witness.look()
    witness.see_trees()
    # What the run went through, for -s and for a failure below.
    said = [e["event"] for d in daemons.values() for e in d.log()]
    print(
        story,
        f"{len(chaos.ids)} jobs, {len(witness.starts)} runs, {len(witness.gone)} ended unmarked",
        {e: said.count(e) for e in sorted(set(said)) if e.split(".")[0] in ("store", "daemon")},
    )
    for daemon in daemons.values():
        assert daemon.stop() == 0, story
    witness.halt.set()
    wait_until(
        lambda: not witness.left(), 15, what=f"every process of the daemons to end ({story})"
    )


def test_the_witness_ends_an_unmarked_run_when_its_pid_is_gone(tmp_path: Path) -> None:
    """The judge itself: a run with no end mark ends when its pid is first seen gone
    (after the look), so a later run that began before that overlaps it; one that
    began after does not; a run whose pid still runs has no end and overlaps."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    lines = [
        f"late 1 {gone.pid} start 100.0",
        "late 2 1 start 200.0",  # long before the look below: an overlap
        f"later 1 {gone.pid} start 100.0",
        f"later 2 1 start {time.time() + 3600}",  # after the look: none
        f"ends 1 {os.getpid()} start 100.0",
        f"ends 1 {os.getpid()} end 150.0",
        "ends 2 1 start 150.0",  # marked ends: touching is not overlapping
        f"open 1 {os.getpid()} start 100.0",  # this process: still running
        "open 2 1 start 200.0",
    ]
    (tmp_path / "spans").write_text("".join(f"{line}\n" for line in lines))
    watching = Witness(tmp_path)
    watching.look()
    found = watching.overlaps()
    assert [line.split()[0] for line in found] == ["('late',", "('open',"], found
