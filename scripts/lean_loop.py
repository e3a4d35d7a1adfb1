"""A lean loop of procpool's own design: the floor of the supervisor's CPU per job, one
submit at a time (issue 25), measured beside the real daemon in the same run.

    python scripts/lean_loop.py [--jobs N] [--rounds R]

Issue 25 set its 300 us target for one `Client.submit` at a time from a loop of the
same design that ran on 289 us a job the day it was filed (one thread, one selector,
one BEGIN...COMMIT a turn with `synchronous=FULL`, procpool's schema, SQL, validation
and digest, its real forked workers, its unmodified `Client` over `procpool.sock`, the
same three JSON log lines a job); that loop was not kept. This script is such a loop,
so that the target can be read against what the design costs on the machine at hand.
It stores through `SqliteJobStore` itself (the daemon's statements, with their Python),
and leaves out what a daemon does beside the hot path that a no-op job submitted one
at a time never calls on: the fate table's other outcomes, deadlines, retries,
cancels, limits, pauses, schedules, dependencies, shared stores, signals, the inbox,
lingering and batch sizing.

Each round runs N `echo` jobs through `Client.submit` one at a time, then one
`Client.wait`, against the lean loop and against `procpool run`, alternately; each
prints its supervisor's CPU per job (`/proc/PID/schedstat`), and the ratio of the two.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bench_peers
import msgspec

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from procpool import Client  # noqa: E402
from procpool import client as client_module  # noqa: E402
from procpool.adapters.home import door_socket  # noqa: E402
from procpool.adapters.stores.sqlite import SqliteJobStore  # noqa: E402
from procpool.application import handlers  # noqa: E402
from procpool.application.wire import door_messages as door  # noqa: E402
from procpool.application.wire import messages as wire  # noqa: E402
from procpool.application.wire.channel import Frames, SupervisorEnd, frame  # noqa: E402
from procpool.application.worker import pool  # noqa: E402
from procpool.application.worker.options import WorkerOptions  # noqa: E402
from procpool.domain import job as jobs  # noqa: E402
from procpool.domain import spec  # noqa: E402
from procpool.domain.job import Job  # noqa: E402
from procpool.domain.timefmt import rfc3339  # noqa: E402
from procpool.entrypoints import builtin_handlers  # noqa: E402, F401 (registers echo)

WORKERS = bench_peers.WORKERS
MAX_FRAME = 32 * 1024 * 1024
_client_decoder = msgspec.msgpack.Decoder(door.Submit | door.Wait)
_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


class _Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: Frames[door.Submit | door.Wait] = Frames(_client_decoder, MAX_FRAME)


class LeanLoop:
    """The hot path of a supervisor turn, and nothing else: a client's submits stored
    and answered after the commit, due jobs started (durable before the send) and sent
    to idle workers, each worker's Started and Finished stored, a client's wait answered
    once its jobs are terminal; three log lines a job, written after the commit."""

    def __init__(self, home: Path) -> None:
        self.store = SqliteJobStore(home / "procpool.db")
        self.selector = selectors.DefaultSelector()
        self.log = os.open(home / "lean.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.defaults = spec.JobDefaults()
        self.channels: dict[int, SupervisorEnd] = {}
        self.idle: list[int] = []
        self.running: dict[int, Job] = {}  # worker pid -> its job, as stored
        self.waiters: list[tuple[_Connection, int, set[str]]] = []
        self.lease = 0
        for _ in range(WORKERS):
            forked = pool.spawn(handlers.registry, WorkerOptions(), self.selector.close, MAX_FRAME)
            self.channels[forked.pid] = forked.channel
            self.selector.register(forked.channel.fileno(), selectors.EVENT_READ, forked.pid)
        # The socket last: once it is there, the loop turns (the harness waits for it).
        self.listener = door_socket.listen(home)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "listener")

    def run(self) -> None:
        """Turn until SIGTERM (the workers die with this process: pool.spawn)."""
        while True:
            self.turn(self.selector.select(1.0))

    def turn(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        wall = time.time()
        answers: list[tuple[_Connection, Any]] = []
        sends: list[tuple[int, wire.RunJob]] = []
        lines: list[dict[str, Any]] = []
        ended: list[str] = []
        with self.store.transaction():
            for key, _ in ready:
                if key.data == "listener":
                    self._accept()
                elif isinstance(key.data, _Connection):
                    self._requests(key.data, wall, answers, lines)
                else:
                    self._worker(key.data, wall, lines, ended)
            self._dispatch(wall, sends)
        for connection, message in answers:
            connection.sock.sendall(frame(_encoder.encode(message)))
        for pid, run in sends:
            self.channels[pid].send([run])
        self._answer_waiters(ended)
        now = rfc3339(wall)
        os.write(self.log, b"".join(_json.encode({"ts": now, **line}) + b"\n" for line in lines))

    def _accept(self) -> None:
        sock, _ = self.listener.accept()
        sock.setblocking(False)
        connection = _Connection(sock)
        self.selector.register(sock, selectors.EVENT_READ, connection)

    def _requests(
        self, connection: _Connection, wall: float, answers: list[Any], lines: list[Any]
    ) -> None:
        closed = connection.frames.read_from(connection.sock, MAX_FRAME)
        messages, error = connection.frames.messages()
        for message in messages:
            if isinstance(message, door.Submit):
                new = []
                for data in message.jobs:
                    job_spec = spec.decode(data)
                    assert isinstance(job_spec, spec.JobSpec) and job_spec.id is not None
                    new.append(spec.to_job(job_spec, job_id=job_spec.id, defaults=self.defaults,
                                           now=wall))  # fmt: skip
                ids = [job.id for job in new]
                if self.store.digests(ids):
                    raise SystemExit("the lean loop takes new ids only")
                self.store.insert(new)
                answers.append((connection, door.Accepted(message.ref, ids)))
                lines.append({"level": "INFO", "event": "job.submitted",
                              "message": f"job {ids[0]} submitted", "job_id": ids[0],
                              "type": new[0].type, "jobs": len(ids), "via": "socket"})  # fmt: skip
            else:
                self.waiters.append((connection, message.ref, set(message.job_ids)))
        if closed or error is not None:
            self.selector.unregister(connection.sock)
            connection.sock.close()

    def _worker(self, pid: int, wall: float, lines: list[Any], ended: list[str]) -> None:
        messages, closed, broken = self.channels[pid].receive()
        assert not closed and broken is None, broken
        held: dict[str, tuple[Job, Job]] = {}
        for message in messages:
            if type(message) is wire.Ready:
                self.idle.append(pid)
            elif type(message) is wire.Started:
                job = self.running[pid]
                begun = jobs.begin(job, now=wall)
                held[job.id] = (held.get(job.id, (job, job))[0], begun)
                self.running[pid] = begun
                lines.append({"level": "INFO", "event": "job.started",
                              "message": f"job {job.id} started, attempt {job.attempt}",
                              "job_id": job.id, "type": job.type, "attempt": job.attempt,
                              "worker_pid": pid})  # fmt: skip
            elif type(message) is wire.Finished:
                job = self.running.pop(pid)
                done = jobs.complete(job, result=message.result or b"null", now=wall)
                held[job.id] = (held.get(job.id, (job, job))[0], done)
                self.store.record_runs([jobs.run_of(job, done, now=wall)])
                self.idle.append(pid)
                ended.append(job.id)
                lines.append({"level": "INFO", "event": "job.completed",
                              "message": f"job {job.id} completed", "job_id": job.id,
                              "type": job.type, "attempt": job.attempt, "worker_pid": pid,
                              "duration_ms": round(message.duration * 1000, 3)})  # fmt: skip
        for stored, latest in held.values():
            fields = jobs.changed_fields(stored, latest)
            assert self.store.save_many([(latest, stored.status, stored.lease)], fields) == 1

    def _dispatch(self, wall: float, sends: list[tuple[int, wire.RunJob]]) -> None:
        if not self.idle:
            return
        for job in self.store.due(wall, len(self.idle)):
            pid = self.idle.pop()
            self.lease += 1
            running = jobs.start(job, lease=self.lease, worker_pid=pid, now=wall)
            fields = jobs.changed_fields(job, running)
            assert self.store.save_many([(running, job.status, job.lease)], fields) == 1
            self.running[pid] = running
            sends.append((pid, wire.RunJob(running.id, running.lease, running.attempt,
                                           running.type, running.payload)))  # fmt: skip

    def _answer_waiters(self, ended: list[str]) -> None:
        still = []
        for connection, ref, asked in self.waiters:
            asked.difference_update(ended)
            statuses = self.store.statuses(sorted(asked)) if asked else {}
            left = {job_id for job_id, status in statuses.items() if not status.is_terminal}
            if left:
                still.append((connection, ref, left))
            else:
                connection.sock.sendall(frame(_encoder.encode(door.Done(ref))))
        self.waiters = still


@contextmanager
def serving(home: Path, command: list[str]) -> Iterator[tuple[Client, int]]:
    """`command` serving a fresh `home`, warm (both workers ready, every path of the hot
    path run once): yields a Client of it and the server's pid; ends it with SIGTERM.

    Raises:
        RuntimeError: the server did not serve, or a job reached the inbox, which the
            lean loop does not read; with the server's standard error.
    """
    home.mkdir(parents=True)
    (home / "inbox").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    errors = home.parent / "server-stderr.log"
    # The client hands a job to the inbox when no answer comes in ANSWER_TIMEOUT (5 s,
    # which a loaded machine's fsync can pass): the lean loop reads no inbox, so here
    # its client waits as long as the measure may last.
    answer_timeout, client_module.ANSWER_TIMEOUT = client_module.ANSWER_TIMEOUT, 600.0
    with open(errors, "wb") as stderr:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                  stderr=stderr)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (home / "procpool.sock").exists():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{' '.join(command[:3])} did not open its socket")
            time.sleep(0.01)
        with Client(home) as client:
            warm = [client.submit("echo", {"warm": n}, id=f"warm-{n}") for n in range(20)]
            client.wait(warm, timeout=120)
            yield client, server.pid
        if any((home / "inbox").iterdir()):
            raise RuntimeError(f"a job went to {home / 'inbox'}, which the server does not read")
    except Exception as error:
        code = server.poll()
        dropped = sorted(path.name for path in (home / "inbox").iterdir())
        raise RuntimeError(
            f"{' '.join(command[:3])} ({'running' if code is None else f'exited {code}'}):"
            f" {error}; in the inbox: {dropped[:5] or 'nothing'}"
            f"\n{errors.read_text(errors='replace')[-3000:]}"
        ) from error
    finally:
        client_module.ANSWER_TIMEOUT = answer_timeout
        server.terminate()
        server.wait(60)


def one_at_a_time(home: Path, command: list[str], jobs_count: int) -> float:
    """The supervisor's CPU per job, in us, of `command` serving `home`: N `echo` jobs
    through Client.submit one at a time, then one Client.wait (bench.py's `one`)."""
    with serving(home, command) as (client, pid):
        before = bench_peers.cpu_seconds(pid)
        ids = [client.submit("echo", {"i": n}, id=f"job-{n}") for n in range(jobs_count)]
        client.wait(ids, timeout=600)
        spent = bench_peers.cpu_seconds(pid) - before
    return spent / jobs_count * 1e6


def _lean_command(workdir: Path) -> tuple[Path, list[str]]:
    home = Path(tempfile.mkdtemp(dir=workdir)) / "home"
    return home, [sys.executable, __file__, "--serve", str(home)]


def lean_one_at_a_time(workdir: Path, jobs_count: int) -> dict[str, float]:
    """The lean loop's CPU per job one submit at a time, in a fresh home under `workdir`
    (bench.py's `supervisor.lean_floor`)."""
    return {"supervisor_cpu_us_per_job": one_at_a_time(*_lean_command(workdir), jobs_count)}


def lean_latency(workdir: Path, samples: int, pause: float) -> dict[str, float]:
    """One job's latency through the lean loop, Client.submit to Client.wait returning,
    one at a time, each after `pause` seconds idle (bench.py's `latency.*.lean_floor`);
    percentiles in milliseconds."""
    with serving(*_lean_command(workdir)) as (client, _):
        return bench_peers.latencies(
            lambda n: client.wait([client.submit("echo", {"i": n}, id=f"job-{n}")], timeout=60),
            samples,
            pause,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the lean loop itself
    args = parser.parse_args()
    if args.serve is not None:
        LeanLoop(args.serve).run()
        return 0
    lean, daemon = [], []
    with tempfile.TemporaryDirectory() as work:
        for n in range(args.rounds):
            lean.append(lean_one_at_a_time(Path(work), args.jobs)["supervisor_cpu_us_per_job"])
            home = Path(work) / f"daemon-{n}"
            daemon.append(one_at_a_time(
                home, [sys.executable, "-m", "procpool", "run", "--home", str(home),
                       "--workers", str(WORKERS)], args.jobs,
            ))  # fmt: skip
            print(f"round {n + 1}: lean loop {lean[-1]:.0f} us, procpool {daemon[-1]:.0f} us"
                  f" a job ({daemon[-1] / lean[-1]:.2f}x)", flush=True)  # fmt: skip
    print(
        f"supervisor CPU per job, {args.jobs:,} Client.submit one at a time, medians of"
        f" {args.rounds}: lean loop {statistics.median(lean):.0f} us, procpool"
        f" {statistics.median(daemon):.0f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
