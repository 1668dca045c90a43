"""Core metrics per SAE with the clean model's next-token distributions kept in memory, against
recomputing them for every SAE, in one run.

    python benchmarks/clean_cache.py [--run runs/default] [--saes 3] [--sequences 8]

Every SAE's delta loss and KL compare its spliced forward with the clean one on the same held-out
sequences. `HeldOutText` keeps the clean distributions (and the blocks' outputs before the spliced
layer) while they fit in CLEAN_CACHE_SHARE of the device's memory; beyond, the clean model runs again
for every SAE. Both ways measure the same SAEs of RUN with one loaded model, alternating SAE by SAE
so the machine's drift falls on both; the numbers must agree. Ratios are what count.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from machine import cpu  # benchmarks/machine.py, beside this script

import saescope.evaluate.heldout as heldout
from saescope.evaluate.metrics import EvalConfig, Evaluation, finished_store, trained_folders
from saescope.io import read_json
from saescope.models.loading import load_model


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/default", help="a finished `saescope run` folder")
    parser.add_argument("--saes", type=int, default=3, help="how many of its SAEs to measure each way")
    parser.add_argument("--sequences", type=int, default=8, help="held-out sequences")
    parser.add_argument("--context-len", type=int, default=0, help="tokens per sequence (default: the run's)")
    args = parser.parse_args()
    run = Path(args.run)
    recorded = read_json(run / "config.json") if (run / "config.json").exists() else {}  # a `saescope run`'s
    settings = {k: v for k, v in recorded.items() if k.startswith("eval_")} | {"eval_sequences": args.sequences}
    cfg = EvalConfig(out=str(run), **(settings | ({"eval_context_len": args.context_len} if args.context_len else {})))
    folders = trained_folders(run)[: args.saes]
    print(f"CPU: {cpu()}; run {run}: {len(folders)} SAEs, {args.sequences} sequences of {cfg.eval_context_len}")
    info = finished_store(cfg).info
    loaded = load_model(info["model"], cfg.eval_dtype, cfg.device)
    build_kept, kept = timed(lambda: Evaluation(cfg, loaded))
    share = heldout.clean_cache_bytes
    heldout.clean_cache_bytes = lambda _device: 0  # nothing fits: the clean model runs again per SAE
    try:
        build_again, again = timed(lambda: Evaluation(cfg, loaded))
    finally:
        heldout.clean_cache_bytes = share
    assert kept.text._clean is not None and again.text._clean is None, "the cache did not switch"
    seconds = {"kept": 0.0, "again": 0.0}
    for folder in folders:
        for name, ev in (("kept", kept), ("again", again)):
            spent, m = timed(lambda ev=ev, folder=folder: ev.measure(folder))
            seconds[name] += spent
            got = m["delta_loss"], m["kl_div"]
            if name == "kept":
                want = got
            elif max(abs(a - b) for a, b in zip(got, want)) > 1e-5:
                raise SystemExit(f"{folder.name}: kept {want} and recomputed {got} disagree")
    n = len(folders)
    print("| clean distributions | set-up (s) | per SAE (s) | per SAE vs kept |\n|---|---:|---:|---:|")
    print(f"| kept in memory | {build_kept:.1f} | {seconds['kept'] / n:.1f} | 1.00x |")
    ratio = seconds["again"] / seconds["kept"]
    print(f"| recomputed per SAE | {build_again:.1f} | {seconds['again'] / n:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
