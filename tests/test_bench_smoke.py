"""The benchmark script runs end to end and speaks JSON lines; its numbers are not judged here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
FIGURE_KEYS = {"figure", "label", "value", "unit", "reference", "reference_name", "ratio",
               "target", "met", "runs", "detail"}  # fmt: skip


def test_quick_run_prints_a_json_line_per_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "throughput,latency", "--json-only"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert "environment" in lines[0]
    assert {"cpus", "python", "procpool_commit", "workers"} <= lines[0]["environment"].keys()
    figures = {line["figure"]: line for line in lines[1:]}
    assert set(figures) == {"throughput.jsonl", "throughput.files", "latency.p50", "latency.p99"}
    for name, figure in figures.items():
        assert set(figure) == FIGURE_KEYS, name
        assert figure["value"] > 0, name
        assert figure["reference_name"] == "ProcessPoolExecutor", name
        assert isinstance(figure["met"], bool), name
        assert len(figure["runs"]) == 1, name
