"""The benchmarks still run with the current code: the training-step one builds every family and SAELens'
step from the package's own knobs, and the harvest one loads the model by the package's dtype rule, so a
new default, new SAE state or a loading change can break them without breaking another test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(Path(__file__).parent / "evaluate"))
from suite_helpers import make_run  # noqa: E402  (tests/evaluate/suite_helpers.py)


def test_train_step_benchmark_runs_every_row_on_tiny_shapes():
    args = ["--d-in", "32", "--width", "256", "--batch", "256", "--steps", "1", "--warmup", "0", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_step.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = ("defaults, path chosen", "probing each batch", "float32 encoder", "plain dense loop", "topk", "SAELens")
    for row in rows:
        assert row in result.stdout, row


def test_sensitivity_benchmark_times_both_gradients_in_fresh_processes():
    """On the real model, short sequences: both variants run and the ratio is printed."""
    args = ["--repeats", "1", "--context-len", "128", "--tokens", "256"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sensitivity.py"), *args], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("chunked", "reference", "reference / chunked"):
        assert row in result.stdout, row


def test_harvest_benchmark_runs_on_one_short_batch():
    """On the real model; on a CPU without native bfloat16 it also times the emulated forward."""
    args = ["--batches", "1", "--batch-size", "1", "--context-len", "128", "--repeats", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "harvest.py"), *args], capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("ours vs naive (a)", "ours vs bare  (b)", "sensitivity pass"):
        assert row in result.stdout, row


def test_logit_chunks_benchmark_checks_both_ways_agree_on_small_shapes():
    args = ["--vocab", "5000", "--d-model", "32", "--positions", "60", "--repeats", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "logit_chunks.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("one product, then _token_ce_kl", "head_ce_kl, by vocabulary blocks"):
        assert row in result.stdout, row


def test_transpose_benchmark_checks_the_tiled_copy_on_each_shape():
    args = ["--shapes", "64x32,50x16", "--repeats", "2"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "transpose.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "64x32" in result.stdout and "50x16" in result.stdout


def test_clean_cache_benchmark_measures_the_same_numbers_both_ways(tmp_path, tiny_model_dir):
    """On a tiny run: kept and recomputed clean distributions give the same delta loss and KL (the
    benchmark exits non-zero otherwise) and both rows are printed."""
    run = make_run(tmp_path, tiny_model_dir)
    args = ["--run", str(run), "--saes", "2", "--sequences", "4", "--context-len", "32"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "clean_cache.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("| kept in memory |", "| recomputed per SAE |", "2 SAEs, 4 sequences of 32"):
        assert row in result.stdout, row


def test_pages_benchmark_prints_each_comparison(tmp_path):
    """Small sizes: every row of benchmarks/pages.py, the huge-page step among them, is printed."""
    args = ["--mb", "8", "--saes", "2", "--dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "pages.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("copy into fresh memory", "3 x allocate+fill", "shard write buffered", "2 SAEs' weight casts + Adam"):
        assert row in result.stdout, row


def test_run_floor_benchmark_prints_every_stage_beside_a_runs_times(tmp_path, tiny_model_dir):
    """On the tiny Gemma 3: each stage's floor is printed, and beside it the stage time read from a run's
    summary.md, as a multiple of the floor."""
    (tmp_path / "summary.md").write_text(
        "# saescope run\n\nTime: harvest 5.6 min, train 20.8 min, evaluate 11.2 min, release 0.1 min, browse 1.0 min\n"
    )
    args = ["--model", str(tiny_model_dir), "--run", str(tmp_path), "--repeats", "1"]
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_floor.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("  ")}
    for stage, minutes in (("harvest", "5.6"), ("train", "20.8"), ("evaluate", "11.2"), ("total", "37.7")):
        floor, ran, ratio = rows[stage]
        assert float(floor) >= 0 and ran == minutes and ratio.endswith("x"), rows[stage]
    assert "20-minute goal" in result.stdout


def test_run_floor_benchmark_stops_at_once_on_a_folder_that_is_no_run(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run_floor.py"), "--run", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "holds no stage times" in result.stderr.strip().splitlines()[-1]
