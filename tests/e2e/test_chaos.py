"""The short form of scripts/chaos.py: kill -9 cycles, then every invariant checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "scripts" / "chaos.py"


def test_chaos_short_form() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--cycles", "6", "--jobs", "300", "--max-uptime", "1.0"],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert figures["problems"] == []
    assert sum(figures["statuses"].values()) == 300
