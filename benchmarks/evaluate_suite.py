"""The evaluation suite's wall time against the evaluate stage of `saescope run`, in one run.

    python benchmarks/evaluate_suite.py [--run runs/default]

The baseline is what `saescope run` does after training: core metrics with the position and topic
breakdowns on every SAE (`saescope.evaluate.metrics.evaluate`) with the run's own evaluation
settings (its config.json: the default run reads 4 held-out sequences, `saescope evaluate` 8 unless
told). Then every part of the suite (core, position, topics, probing, TPP, absorption, splitting)
with the same settings, twice: in the baseline's folder, where the core is cached (what a user pays
after `saescope run`), and from scratch in a second copy. Both copies hold the run's SAEs (weights
and config only) with the run's store linked in. Target: the suite at most 2x the baseline. Ratios
are what count; this machine is noisy, so the three are timed back to back.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from machine import cpu  # benchmarks/machine.py, beside this script

from saescope.evaluate.metrics import EvalConfig, evaluate, trained_folders
from saescope.evaluate.suite import SuiteConfig, run_suite
from saescope.io import read_json


def fresh_copy(run: Path) -> Path:
    """RUN's SAEs (weights and config.json only) in a new folder, with RUN's store linked in."""
    copy = Path(tempfile.mkdtemp(prefix="saescope-suite-bench-"))
    (copy / "activations").symlink_to((run / "activations").resolve())
    for folder in trained_folders(run):
        (copy / "saes" / folder.name).mkdir(parents=True)
        for name in ("config.json", "sae.safetensors"):
            shutil.copy2(folder / name, copy / "saes" / folder.name / name)
    return copy


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/default", help="a finished `saescope run` folder")
    args = parser.parse_args()
    run = Path(args.run)
    print(f"CPU: {cpu()}; run {run} ({len(trained_folders(run))} SAEs)")
    settings = {k: v for k, v in read_json(run / "config.json").items() if k.startswith("eval_")}
    print(f"evaluation settings of the run: {settings}")
    copies = [fresh_copy(run), fresh_copy(run)]
    try:
        stage = timed(lambda: evaluate(EvalConfig(out=str(copies[0]), **settings)))
        after = timed(lambda: run_suite(SuiteConfig(out=str(copies[0]), **settings)))
        scratch = timed(lambda: run_suite(SuiteConfig(out=str(copies[1]), **settings)))
    finally:
        for copy in copies:
            shutil.rmtree(copy)
    print("| what | seconds | vs the evaluate stage |\n|---|---:|---:|")
    print(f"| `saescope run`'s evaluate stage (core, position, topics) | {stage:.0f} | 1.00x |")
    print(f"| the whole suite after it (core cached) | {after:.0f} | {after / stage:.2f}x |")
    print(f"| the whole suite from scratch | {scratch:.0f} | {scratch / stage:.2f}x |")


if __name__ == "__main__":
    main()
