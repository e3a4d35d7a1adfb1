"""The benchmark script runs end to end and speaks JSON lines; its numbers are not judged here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
FIGURE_KEYS = {"figure", "label", "value", "unit", "reference", "reference_name", "ratio",
               "target", "met", "runs", "detail"}  # fmt: skip


# Each test runs a benchmark script, given 240 s of its own on a loaded machine.
pytestmark = pytest.mark.timeout(300)


def quick(names: str) -> list[dict]:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", names, "--json-only"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_quick_run_prints_a_json_line_per_figure() -> None:
    lines = quick("throughput,latency,batch")
    assert "environment" in lines[0]
    assert {"cpus", "python", "procpool_commit", "workers"} <= lines[0]["environment"].keys()
    figures = {line["figure"]: line for line in lines[1:]}
    # The disk's floor of a job's latency and a lean loop's, beside procpool's p50 of the
    # same case.
    for case in ("latency", "latency.after_idle"):
        for floor in (figures.pop(f"{case}.floor"), figures.pop(f"{case}.lean_floor")):
            assert set(floor) == FIGURE_KEYS
            assert floor["value"] > 0 and floor["met"] is None
            assert floor["reference"] == figures[f"{case}.p50"]["value"]
    assert set(figures) == {
        "throughput.jsonl",
        "throughput.files",
        "latency.p50",
        "latency.p99",
        "latency.after_idle.p50",
        "latency.after_idle.p99",
        "batch.real",
    }
    for name, figure in figures.items():
        assert set(figure) == FIGURE_KEYS, name
        assert figure["value"] > 0, name
        assert figure["reference_name"] == "ProcessPoolExecutor", name
        # After an idle spell only the p50 has a target (issue 25).
        if name == "latency.after_idle.p99":
            assert figure["met"] is None
        else:
            assert isinstance(figure["met"], bool), name
        assert len(figure["runs"]) == 1, name


def test_the_client_figures_beside_huey_and_pebble() -> None:
    pytest.importorskip("huey", reason="the benchmark's peers: pip install '.[bench]'")
    pytest.importorskip("pebble", reason="the benchmark's peers: pip install '.[bench]'")
    figures = {line["figure"]: line for line in quick("submit")[1:]}
    floor = figures.pop("store.floor")
    trip = figures.pop("submit.floor")
    assert set(figures) == {"submit.one", "submit.many", "submit.threads", "supervisor.cpu"}
    assert figures["submit.one"]["reference_name"] == "Huey (SQLite)"
    assert figures["submit.many"]["reference_name"] == "ProcessPoolExecutor"
    for figure in figures.values():
        assert figure["value"] > 0 and isinstance(figure["met"], bool)
    assert figures["submit.one"]["detail"]["huey_rate"] > 0
    # The store's own share, beside the supervisor's whole CPU per job, untargeted.
    assert floor["value"] > 0 and floor["met"] is None
    assert floor["reference"] == figures["supervisor.cpu"]["value"]
    # A durable round trip and nothing else, beside Huey of the same run, untargeted.
    assert trip["value"] > 0 and trip["met"] is None
    assert trip["reference"] == figures["submit.one"]["reference"]


def test_the_postgresql_benchmark_measures_its_three_setups(pg_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH.parent / "bench_postgresql.py"), "--quick",
         "--database-url", pg_url],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(row["setup"], row["daemons"]) for row in rows] == [
        ("sqlite-1", 1), ("postgresql-1", 1), ("postgresql-3", 3),
    ]  # fmt: skip
    for row in rows:
        assert row["jobs_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], row
    assert "x sqlite" in done.stdout


def test_the_supervisor_cpu_per_job_of_each_workload_and_where_it_saturates() -> None:
    figures = {line["figure"]: line for line in quick("supervisor")[1:]}
    assert set(figures) == {
        "supervisor.one", "supervisor.many", "supervisor.jsonl", "supervisor.paced",
        "supervisor.capacity", "supervisor.store_floor", "supervisor.saturation",
        "supervisor.lean_floor",
    }  # fmt: skip
    for name in ("supervisor.one", "supervisor.many", "supervisor.jsonl", "supervisor.paced"):
        figure = figures[name]
        assert figure["unit"] == "us" and figure["value"] > 0, name
        # The peers' rates of the same run beside it (Huey's only where it is installed).
        assert figure["detail"]["executor_rate"] > 0, name
        assert "huey_rate" in figure["detail"], name
    assert figures["supervisor.one"]["target"] == "<= 300 us"
    assert figures["supervisor.many"]["target"] == figures["supervisor.jsonl"]["target"]
    assert figures["supervisor.paced"]["met"] is None
    batched = max(figures["supervisor.many"]["value"], figures["supervisor.jsonl"]["value"])
    capacity = figures["supervisor.capacity"]
    assert capacity["value"] == pytest.approx(1e6 / batched)
    assert isinstance(capacity["met"], bool)
    # The store's own share of a batched job, measured beside the daemon's figure.
    floor = figures["supervisor.store_floor"]
    assert floor["unit"] == "us" and floor["value"] > 0
    assert floor["reference"] == batched
    # A lean loop of the same design, one submit at a time, beside the daemon's figure.
    lean = figures["supervisor.lean_floor"]
    assert lean["unit"] == "us" and lean["value"] > 0 and lean["met"] is None
    assert lean["reference"] == figures["supervisor.one"]["value"]
    saturation = figures["supervisor.saturation"]
    assert saturation["reference"] == capacity["value"]
    assert saturation["detail"]["workers"] > (os.cpu_count() or 1)
    assert 0 < saturation["detail"]["supervisor_core_share"] <= 1.0
