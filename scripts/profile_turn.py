"""Where a supervisor turn's CPU goes (issue 25): a real daemon, its turn cut into phases.

    python scripts/profile_turn.py [--workload one|many|jsonl|batch|threads] [--jobs N]
                                   [--functions MODULE:QUALNAME,...]

Runs bench.py's workload (`one`: N no-op jobs, one `Client.submit` each; `many`: one
`submit_many`; `threads`: four producer threads, one `Client.submit` a job each;
`jsonl`: one `.jsonl` file; `batch`: the real batch, N `compress` and
`hash` jobs of the standard library's files, half each, in one `submit_many`) against a
daemon started through this script,
which wraps the supervisor's methods before `procpool run` begins: each phase of a turn
(the module docstring of procpool/application/supervisor/loop.py) and each function
named in --functions adds the CPU time of its thread (CLOCK_THREAD_CPUTIME_ID) spent
inside it, inclusive of what it calls. The store's transaction is split into its
BEGIN (`begin`) and its COMMIT (`commit`, the fsync's CPU with it). At the daemon's
exit the sums go to a JSON file that this script reads and prints, per turn and per
call, beside the turns per job and the supervisor's CPU per job (schedstat) of the
same run.

Each wrapped call costs about a microsecond more (two clock reads): the figures are
for comparing parts of one run, and the CPU per job printed here is above bench.py's.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT_VARIABLE = "TURN_PROFILE_OUT"  # not PROCPOOL_: bench.py's daemons drop those
FUNCTIONS_VARIABLE = "TURN_PROFILE_FUNCTIONS"
SUPERVISOR = "procpool.application.supervisor."
PHASES = (
    "_wait",
    "_read",
    "_apply",
    "_decide",
    "_gather_clients",
    "_gather_ends",
    "_commit",
    "_after_commit",
)
DEFAULT_FUNCTIONS = ",".join(
    SUPERVISOR + name
    for name in (
        "inputs:Inputs.select",
        "door:Door.ready",
        "door:Door.serve",
        "intake:Intake.submissions",
        "workers:WorkerManager.serve",
        "workers:WorkerManager.reap",
        "workers:WorkerManager.judge_deadlines",
        "handout:Dispatcher.dispatch",
        "ledger:Ledger.end_run",
        "ledger:Ledger.flush_history",
        "effects:Effects.carry_out",
        "door:Door.committed",
        "workers:WorkerManager.send",
        "workers:WorkerManager.spawn_missing",
        "loop:Supervisor._alarms",
    )
) + (
    ",procpool.adapters.logs.writer:DaemonLogs.write_event"
    ",procpool.adapters.stores.sqlite:SqliteJobStore.insert"
    ",procpool.adapters.stores.sqlite:SqliteJobStore.due"
    ",procpool.adapters.stores.sqlite:SqliteJobStore.save_many"
    ",procpool.adapters.stores.sqlite:SqliteJobStore.record_runs"
)

# ----------------------------------------------------------------- in the daemon

_sums: dict[str, list[int]] = {}  # name -> [ns, calls]


def _add(name: str, ns: int) -> None:
    entry = _sums.setdefault(name, [0, 0])
    entry[0] += ns
    entry[1] += 1


def _timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.thread_time_ns

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = clock()
        try:
            return function(*args, **kwargs)
        finally:
            _add(name, clock() - began)

    return wrapper


def _wrap(owner: Any, attribute: str, name: str) -> None:
    setattr(owner, attribute, _timed(name, getattr(owner, attribute)))


def _hook(functions: str) -> None:
    """Wrap the turn's phases, the transaction's two ends and each of `functions`."""
    from procpool.adapters.stores.sqlite import SqliteJobStore  # noqa: PLC0415
    from procpool.application.supervisor.loop import Supervisor  # noqa: PLC0415

    _wrap(Supervisor, "turn", "turn")
    for phase in PHASES:
        _wrap(Supervisor, phase, f"phase {phase.lstrip('_')}")
    transaction = SqliteJobStore.transaction
    clock = time.thread_time_ns

    @contextmanager
    def timed_transaction(store: SqliteJobStore) -> Iterator[None]:
        began = clock()
        inner = transaction(store)
        inner.__enter__()
        _add("phase begin", clock() - began)
        try:
            yield
        except BaseException as error:
            if not inner.__exit__(type(error), error, error.__traceback__):
                raise
            return
        began = clock()
        inner.__exit__(None, None, None)
        _add("phase commit", clock() - began)

    SqliteJobStore.transaction = timed_transaction  # type: ignore[method-assign]
    for spec in filter(None, functions.split(",")):
        module_name, _, qualified = spec.partition(":")
        owner: Any = importlib.import_module(module_name)
        *outer, attribute = qualified.split(".")
        for part in outer:
            owner = getattr(owner, part)
        _wrap(owner, attribute, qualified)


def daemon(argv: list[str]) -> None:
    """`procpool` (its CLI, argv) with the hooks in; the sums are written at exit."""
    sys.path.insert(0, str(REPO))
    _hook(os.environ.get(FUNCTIONS_VARIABLE, DEFAULT_FUNCTIONS))
    out, pid = os.environ[OUT_VARIABLE], os.getpid()

    def write() -> None:
        if os.getpid() == pid:  # not a worker forked with the hook installed
            Path(out).write_text(json.dumps(_sums))

    import atexit  # noqa: PLC0415

    atexit.register(write)
    from procpool.entrypoints.cli import main  # noqa: PLC0415

    main(args=argv, prog_name="procpool")


# ----------------------------------------------------------------- the driver


def measure(workload: str, jobs: int, functions: str) -> dict[str, Any]:
    import bench  # noqa: PLC0415 (scripts/ is on sys.path: this script's folder)

    bench.Daemon.entry = (str(Path(__file__)), "daemon")
    with tempfile.TemporaryDirectory(prefix="profile-turn-") as work:
        out = Path(work) / "sums.json"
        os.environ[OUT_VARIABLE] = str(out)
        os.environ[FUNCTIONS_VARIABLE] = functions
        if workload == "jsonl":
            figures = bench.procpool_throughput(Path(work), jobs)
        elif workload == "batch":  # bench.py's real batch: compress and hash, half each
            figures = bench.procpool_real(Path(work), bench.real_batch(Path(work), jobs // 2))
        else:
            figures = bench.procpool_submit(Path(work), jobs, workload)
        sums = json.loads(out.read_text())
    return {"figures": figures, "sums": sums}


def report(workload: str, jobs: int, measured: dict[str, Any]) -> None:
    sums: dict[str, list[int]] = measured["sums"]
    turns = sums.pop("turn")[1]
    cpu = measured["figures"]["supervisor_cpu_us_per_job"]
    print(f"workload {workload}, {jobs:,} jobs: {turns:,} turns over the daemon's life"
          f" (warm-up and stop included); supervisor CPU {cpu:,.1f} us per job measured,"
          " with the hooks")  # fmt: skip
    phases = {k: v for k, v in sums.items() if k.startswith("phase ")}
    # `wait` holds the select; `commit` and `begin` are inside no other phase.
    total = sum(ns for name, (ns, _) in phases.items())
    print(f"\n{'phase':<32} {'us/turn':>9} {'share':>7}")
    for name, (ns, _) in phases.items():
        print(f"{name[6:]:<32} {ns / turns / 1000:>9.1f} {ns / total:>7.1%}")
    print(f"{'a turn, all phases':<32} {total / turns / 1000:>9.1f}")
    print(f"\n{'function (inclusive)':<40} {'us/turn':>9} {'calls/turn':>11} {'us/call':>9}")
    others = sorted(((k, v) for k, v in sums.items() if k not in phases), key=lambda kv: -kv[1][0])
    for name, (ns, calls) in others:
        print(f"{name:<40} {ns / turns / 1000:>9.1f} {calls / turns:>11.2f}"
              f" {ns / max(calls, 1) / 1000:>9.1f}")  # fmt: skip


def main() -> None:
    if sys.argv[1:2] == ["daemon"]:
        daemon(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workload", choices=("one", "many", "jsonl", "batch", "threads"), default="one"
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument(
        "--functions",
        default=DEFAULT_FUNCTIONS,
        help="MODULE:QUALNAME,... timed inclusively (default: the hot path's)",
    )
    arguments = parser.parse_args()
    report(arguments.workload, arguments.jobs,
           measure(arguments.workload, arguments.jobs, arguments.functions))  # fmt: skip


if __name__ == "__main__":
    main()
