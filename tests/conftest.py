"""Shared fixtures: a real daemon in a temporary home, the real CLI, and deadlines.

Every wait in these tests polls with a deadline; none sleeps and hopes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procpool import Client, JobRejected
from procpool.adapters.stores.memory import MemoryJobStore
from procpool.adapters.stores.sqlite import SqliteJobStore
from procpool.application.ports import JobStore

# The throwaway PostgreSQL cluster (tests/postgresql.py): pg_cluster, pg_url.
pytest_plugins = ["postgresql"]

TESTS = Path(__file__).parent

# A runner started in the background by a script (`cmd &`, no job control) ignores
# SIGINT, and so would every process a test starts: `procpool logs -f` could not be
# stopped with Ctrl-C as a person stops it. The tests run as if from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Fast timings for tests; each test may override any of them.
FAST_ENV = {
    "PROCPOOL_BACKOFF_BASE": "0.05",
    "PROCPOOL_BACKOFF_MAX": "0.2",
    "PROCPOOL_SHUTDOWN_TIMEOUT": "10",
    "PROCPOOL_HEARTBEAT_INTERVAL": "0.2",
    "PROCPOOL_HEARTBEAT_TIMEOUT": "10",
    "PROCPOOL_KILL_GRACE": "0.5",
    "PROCPOOL_POLL_INTERVAL": "0.5",
}


# The misbehaving handlers of tests/fault_handlers.py, for `make_daemon(args=FAULTS)`.
FAULTS = ("--handlers", "fault_handlers")


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie has already died)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll until `predicate()` is truthy; return its value, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


# The bytecode the tests' subprocesses compile, kept for the next one: each `procpool`
# command they start imports some 45 of procpool's modules (the daemon some 80), and
# compiling them again from source, as every start does under PYTHONDONTWRITEBYTECODE,
# took about a third of each start's CPU. In a directory of this test process, removed
# as it ends, so the source tree stays as the variable keeps it (PYTHONPYCACHEPREFIX).
PYCACHE = Path(tempfile.mkdtemp(prefix="procpool-tests-pycache-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(PYCACHE, ignore_errors=True)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROCPOOL_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env.update(FAST_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`procpool ARGS --home HOME` as a user types it."""
    command = [sys.executable, "-m", "procpool", args[0], "--home", str(home), *args[1:]]
    return subprocess.run(
        command, capture_output=True, text=True, env=clean_env(env), timeout=timeout, check=False
    )


# Linux lists a thread's children in /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN).
_PROC_CHILDREN = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


def _child_count(pid: int) -> int | None:
    """How many children `pid` has, zombies included, in a few small reads; None where
    the kernel does not list them. A child forked or reaped meanwhile may be missed."""
    if not _PROC_CHILDREN:
        return None
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0
    count = 0
    for thread in threads:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            count += len(Path(f"/proc/{pid}/task/{thread}/children").read_text().split())
    return count


class Daemon:
    """A `procpool run` process serving a temporary home."""

    def __init__(self, home: Path, workers: int | None = 2, env: dict[str, str] | None = None,
                 args: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.home = home
        self.workers = workers
        self.env = env or {}
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.stderr_path = home.parent / f"{home.name}-stderr.log"
        self.client = Client(home)
        # What log() has read: the file (device, inode), how far, and its lines.
        self._log_file: tuple[int, int] | None = None
        self._log_read = 0
        self._log_lines: list[dict[str, Any]] = []

    def start(self, wait_ready: bool = True) -> Daemon:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "procpool", "run", "--home", str(self.home),
                 *(["--workers", str(self.workers)] if self.workers else []), *self.args],
                env=clean_env(self.env),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        if wait_ready:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        wanted = self.workers or 1

        def ready() -> bool:
            if self.process.poll() is not None:  # type: ignore[union-attr]
                return True
            # psutil's children() reads every process of the machine: a poll every 20 ms
            # cost the test about 0.1 s of CPU per start. Ask it once enough children are.
            counted = _child_count(self.pid)
            return (counted is None or counted >= wanted) and len(self.worker_pids()) >= wanted

        wait_until(ready, timeout, what="the daemon's workers")
        if self.process.poll() is not None:  # type: ignore[union-attr]
            pytest.fail(f"the daemon exited with {self.process.returncode}:\n{self.stderr()}")  # type: ignore[union-attr]
        wait_until(lambda: self.events("worker.started"), timeout, what="worker.started")

    def worker_pids(self) -> list[int]:
        """The daemon's live child processes (its workers)."""
        try:
            return [
                c.pid
                for c in psutil.Process(self.pid).children()
                if c.status() != psutil.STATUS_ZOMBIE
            ]
        except psutil.NoSuchProcess:
            return []

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def log(self) -> list[dict[str, Any]]:
        """The lines of the current log file, parsed (shared between calls: read them,
        do not change them). Each call reads on from where the last one stopped: tests
        poll this every 20 ms, and parsing the whole file again took 7 ms per 1,000
        lines. A line not ended yet (being written) is read by a later call."""
        path = self.home / "logs" / "procpool.jsonl"
        try:
            with open(path, "rb") as file:
                found = os.fstat(file.fileno())
                if (found.st_dev, found.st_ino) != self._log_file or found.st_size < self._log_read:
                    # A new file (rotated, or made again): read it from its start.
                    self._log_file, self._log_read = (found.st_dev, found.st_ino), 0
                    self._log_lines = []
                file.seek(self._log_read)
                data = file.read()
        except FileNotFoundError:
            self._log_file, self._log_read, self._log_lines = None, 0, []
            return []
        ended = data.rfind(b"\n") + 1
        for line in data[:ended].split(b"\n")[:-1]:
            try:
                self._log_lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # cut short by a crash, as a kill -9 may leave it
        self._log_read += ended
        return list(self._log_lines)

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e for e in self.log()
            if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]  # fmt: skip

    def wait_events(
        self, name: str, count: int = 1, timeout: float = 20.0, **match: Any
    ) -> list[dict[str, Any]]:
        """The log is written just after the commit it speaks of: a test that saw a
        status change in the store waits for the matching log line."""
        return wait_until(
            lambda: len(found := self.events(name, **match)) >= count and found,
            timeout,
            what=f"{count} {name} events matching {match}",
        )

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """kill -9 the supervisor, as a crash would."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def cli(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, env=env, timeout=timeout)

    def drop(self, name: str, content: Any) -> Path:
        """Write a job file the way a producer should: a dot-file, then a rename."""
        inbox = self.home / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        temporary = inbox / f".{name}.tmp"
        data = content if isinstance(content, bytes) else (
            content if isinstance(content, str) else json.dumps(content)
        ).encode()  # fmt: skip
        temporary.write_bytes(data)
        final = inbox / name
        os.rename(temporary, final)
        return final

    def job(self, job_id: str) -> Any:
        """The job, or None while the store has none (in the inbox, unknown, or rejected)."""
        try:
            return self.client.get(job_id)
        except JobRejected:
            return None

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 30.0) -> Any:
        return wait_until(
            lambda: (j := self.job(job_id)) is not None and j.status in statuses and j,
            timeout,
            what=f"job {job_id} to become {'/'.join(statuses)}",
        )

    def wait_started(self, job_id: str, timeout: float = 30.0) -> Any:
        """The job once its handler runs. `running` begins at the hand-over, before the
        worker says Started: a run ended in between never began and is not charged."""
        self.wait_events("job.started", job_id=job_id, timeout=timeout)
        return self.wait_status(job_id, "running", timeout=timeout)


# The tiers, in the order the suite runs them: tests/e2e, tests/integration, tests/unit.
TIERS = ("e2e", "integration", "unit")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`--numprocesses=auto`: one worker more than the cores this process may use (at
    most `--maxprocesses`). The suite mostly waits on the daemons it starts: a whole
    run on 2 cores took 617 s with 2 workers and 489 s with 3 (quiet), 717 s with 3
    beside two CPU hogs, all green."""
    return len(os.sched_getaffinity(0)) + 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first: those given a deadline above the suite's, then the
    end-to-end tier, the integration tier and the unit tier, each in its files' order.
    Under `--dist=worksteal` each xdist worker starts on its own stretch of this list
    and an idle one takes the far end of another's, so short tests are left to fill
    the gaps and no long one starts last while the other cores idle."""
    default = float(config.getini("timeout") or 0)

    def rank(item: pytest.Item) -> tuple[float, int]:
        marker = item.get_closest_marker("timeout")
        deadline = float(marker.args[0]) if marker and marker.args else default
        tier = next((n for n, name in enumerate(TIERS) if name in item.path.parts), 0)
        return (-deadline, tier)

    items.sort(key=rank)  # stable: a file's tests keep their order


def _leftover_processes(root_pids: list[int]) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in root_pids and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def make_daemon(home: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons on `home`; at the end, stop them and make sure no process is left."""
    started: list[Daemon] = []
    groups: set[int] = set()

    def make(workers: int | None = 2, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
             start: bool = True, **kwargs: Any) -> Daemon:  # fmt: skip
        daemon = Daemon(kwargs.get("home", home), workers, env, args)
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    for daemon in started:
        if daemon.process is None:
            continue
        if daemon.process.poll() is None:
            groups.update(daemon.worker_pids())
            # SIGQUIT: stop now, ending every running job with its process tree. A kill -9
            # would leave what handlers started to the next start (by design: the workers
            # die at once, their handlers' processes at the next start's recovery).
            daemon.process.send_signal(signal.SIGQUIT)
            try:
                daemon.process.wait(15)
            except subprocess.TimeoutExpired:
                daemon.process.kill()
                daemon.process.wait(10)
        daemon.client.close()
    # Workers die with the supervisor; give them the second the design allows, then check.
    if groups:
        deadline = time.monotonic() + 5
        while _leftover_processes(list(groups)) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = _leftover_processes(list(groups))
        for process in left:
            process.kill()
        assert not left, f"processes outlived the daemon: {left}"


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that puts a home's jobs in its SQLite file, or in a database
    (a throwaway cluster's, `pg_url`): a test that takes it runs on both stores."""
    if request.param == "sqlite":
        return {}
    return {"PROCPOOL_DATABASE_URL": request.getfixturevalue("pg_url")}


@pytest.fixture(params=["memory", "sqlite"])
def claim_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    """Each store a claim is tested on in-process (PostgreSQL's claim has tests of its
    own, against a real server)."""
    made: JobStore = (
        MemoryJobStore() if request.param == "memory" else SqliteJobStore(tmp_path / "p.db")
    )
    yield made
    made.close()
