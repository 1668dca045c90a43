"""The training-step benchmark still runs with the current defaults (it builds every family and SAELens'
step from the package's own knobs, so a new default or new SAE state can break it without breaking a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_train_step_benchmark_runs_every_row_on_tiny_shapes():
    args = ["--d-in", "32", "--width", "256", "--batch", "256", "--steps", "1", "--warmup", "0", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_step.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("saescope defaults, path chosen", "plain dense loop", "topk", "SAELens"):
        assert row in result.stdout, row
