"""Which JumpReLU step path is faster for a finished run's SAEs, on its own training rows.

    python experiments/step_paths.py RUN [--repeats 7]

RUN is a `saescope run` folder that still holds its store and training checkpoint. On the run's first
training batch, normalised as training normalises it, each SAE's forward and backward (the loss of its
family, no optimiser step: that costs the same on both paths) is timed on the dense and on the sparse path
(`SAESCOPE_JUMPRELU_PATH`), interleaved, median of --repeats. Printed per SAE: the share of entries active,
the share active or in the estimator's window (what `auto` switches on), both times and the path `auto`
takes; then per site kind, and the sum over all SAEs of each path, of the best path and of `auto`'s choice.
The SAEs are restored after each timing; nothing is written to RUN.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from saescope.memory import keep_freed_memory
from saescope.saes import jumprelu, jumprelu_paths
from saescope.train import normalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bf16_encoder import timed_steps, trainer_at_end  # noqa: E402  (a run's Trainer at its last checkpoint)
from machine import cpu  # noqa: E402  (the CPU line every benchmark prints)


def step_seconds(sae: jumprelu.JumpReLUSAE, x: torch.Tensor, weight: torch.Tensor | None, path: str) -> float:
    """One forward and backward of `sae` on `x` on `path`, its state put back afterwards."""
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    os.environ[jumprelu_paths.PATH_VARIABLE] = path
    start = time.perf_counter()
    sae.loss(x, weight=weight).loss.backward()
    seconds = time.perf_counter() - start
    sae.zero_grad(set_to_none=True)
    sae.load_state_dict(state)
    return seconds


@torch.no_grad()
def shares(sae: jumprelu.JumpReLUSAE, x: torch.Tensor) -> tuple[float, float]:
    """(active, active or in the window) as shares of all [tokens, d_sae] entries."""
    pre, theta = sae.pre_acts(x), sae.effective_threshold()
    return (pre > theta).float().mean().item(), (pre > theta - sae.bandwidth / 2).float().mean().item()


def per_sae(trainer, acts: dict[str, torch.Tensor], repeats: int, widen: float) -> list[tuple]:
    """(key, active, kept, dense s, sparse s, auto's path) per SAE, bandwidths times `widen`."""
    rows = []
    for key, sae in trainer.saes.items():
        site = trainer.site_of[key]
        x = trainer.normalised(site, acts[site])
        weight = normalize.token_weights(acts[site], trainer.powers[site]) if site in trainer.powers else None
        bandwidth, sae.bandwidth = sae.bandwidth, sae.bandwidth * widen
        active, kept = shares(sae, x)
        auto = "dense" if kept > jumprelu_paths.dense_above(sae.uses_bf16(x.device), x.device) else "sparse"
        t: dict[str, list[float]] = {"dense": [], "sparse": []}
        step_seconds(sae, x, weight, "dense"), step_seconds(sae, x, weight, "sparse")  # warm-up
        for i in range(repeats):
            for path in ("dense", "sparse") if i % 2 else ("sparse", "dense"):
                t[path].append(step_seconds(sae, x, weight, path))
        sae.bandwidth = bandwidth
        rows.append((key, active, kept, statistics.median(t["dense"]), statistics.median(t["sparse"]), auto))
    return rows


def forced_path(path: str) -> Callable[[], None]:
    """Sets the path every JumpReLU step takes (`SAESCOPE_JUMPRELU_PATH`)."""
    return lambda: os.environ.__setitem__(jumprelu_paths.PATH_VARIABLE, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--widen", default="1", help="comma-separated factors on every SAE's bandwidth, e.g. 1,2,4")
    parser.add_argument("--steps", type=int, default=0, help="then time this many whole steps on each path")
    args = parser.parse_args()
    keep_freed_memory()  # as every saescope job does
    trainer = trainer_at_end(args.run)
    batches = trainer.loader.iterate(0, trainer.total_steps, epochs=None)
    acts = next(batches).acts
    print(f"{cpu()}; {torch.get_num_threads()} threads; {len(trainer.saes)} SAEs at step {trainer.step}")
    print("| bandwidth x | SAE | active | active or in window | dense s | sparse s | sparse / dense | auto takes |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    summary = []
    for widen in (float(w) for w in args.widen.split(",")):
        rows = per_sae(trainer, acts, args.repeats, widen)
        for key, active, kept, dense, sparse_, auto in rows:
            print(
                f"| {widen:g} | {key} | {active:.4f} | {kept:.4f} | {dense:.4f} | {sparse_:.4f} | "
                f"{sparse_ / dense:.2f} | {auto} |"
            )
        for kind in sorted({r[0].split(".")[0] for r in rows}):
            mine = [r for r in rows if r[0].split(".")[0] == kind]
            ratios = [r[4] / r[3] for r in mine]
            summary.append(
                f"bandwidth x{widen:g}, {kind}: active {statistics.mean(r[1] for r in mine):.4f}, active or in window "
                f"{min(r[2] for r in mine):.4f}-{max(r[2] for r in mine):.4f}, sparse / dense median "
                f"{statistics.median(ratios):.2f} [{min(ratios):.2f} - {max(ratios):.2f}]"
            )
        dense, sparse_ = sum(r[3] for r in rows), sum(r[4] for r in rows)
        auto = sum(r[3] if r[5] == "dense" else r[4] for r in rows)
        summary.append(
            f"bandwidth x{widen:g}, sum over {len(rows)} SAEs' forward and backward: all dense {dense:.3f} s, "
            f"all sparse {sparse_:.3f} s, best per SAE {sum(min(r[3], r[4]) for r in rows):.3f} s, "
            f"as auto chooses {auto:.3f} s"
        )
    print("\n".join(summary))
    if args.steps:
        t = timed_steps(trainer, batches, args.steps, {p: forced_path(p) for p in ("dense", "sparse", "auto")})
        os.environ.pop(jumprelu_paths.PATH_VARIABLE)
        print(
            f"whole training step of {len(trainer.saes)} SAEs, median of {args.steps}: dense {t['dense']:.3f} s, "
            f"sparse {t['sparse']:.3f} s, auto {t['auto']:.3f} s (dense / sparse {t['dense'] / t['sparse']:.2f}x)"
        )


if __name__ == "__main__":
    main()
