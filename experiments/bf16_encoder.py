"""What the bfloat16 encoder product of JumpReLU's dense step does to a finished run's SAEs, and what it saves.

    python experiments/bf16_encoder.py RUN [--steps 12]

RUN is a `saescope run` folder that still holds its store and training checkpoint. On the first training batch,
normalised as training normalises it, each SAE's pre-activations from a bfloat16 product are set against the
float32 ones: the error's standard deviation and maximum, the share of active and of in-window entries that the
rounding moves across an edge, how far from the threshold those sit, and L0 both ways. Then the whole training
step of all the run's SAEs is timed with the float32 and the bfloat16 encoder product (the threshold
`sparse.BF16_PRE_MIN_BANDWIDTH` moved out of reach and back), interleaved batch by batch, median over --steps
batches each. The SAEs keep training while they are timed; nothing is written to RUN.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import torch

from saescope.memory import keep_freed_memory
from saescope.saes import sparse
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from machine import cpu  # noqa: E402  (the CPU line every benchmark prints)


def trainer_at_end(run: Path) -> Trainer:
    """The run's Trainer with its last checkpoint loaded."""
    saved = json.loads((run / "train" / "config.json").read_text())
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(
        **{k: v for k, v in saved.items() if k in names} | {"store": str(run / "activations"), "out": str(run)}
    )
    trainer = Trainer(cfg)
    if not trainer.load_checkpoint():
        raise SystemExit(f"{run} has no training checkpoint")
    return trainer


@torch.no_grad()
def rounding_rows(trainer: Trainer, acts: dict[str, torch.Tensor]) -> list[str]:
    rows = []
    for key, sae in trainer.saes.items():
        site = trainer.site_of[key]
        xc = sae.encoder_input(trainer.normalised(site, acts[site]))
        theta, half = sae.effective_threshold(), sae.bandwidth / 2
        pre32 = sparse.dense_pre(xc, sae.W_enc, sae.b_enc, False)
        pre16 = sparse.dense_pre(xc, sae.W_enc, sae.b_enc, True)
        err = pre16 - pre32
        active32, active16 = pre32 > theta, pre16 > theta
        window32, window16 = (pre32 - theta).abs() < half, (pre16 - theta).abs() < half
        moved = (active32 != active16) | (window32 != window16)
        edge = torch.stack([(pre32 - theta).abs(), ((pre32 - theta).abs() - half).abs()]).amin(0)
        rows.append(
            f"| {site} | {sae.bandwidth} | {err.std():.5f} | {err.abs().max():.4f} | "
            f"{(active32 != active16).sum() / active32.sum():.4f} | "
            f"{(window32 != window16).sum() / window32.sum():.4f} | "
            f"{edge[moved].max() if moved.any() else 0:.4f} | {active32.sum(1).float().mean():.2f} | "
            f"{active16.sum(1).float().mean():.2f} |"
        )
    return rows


def timed_steps(trainer: Trainer, batches, steps: int, variants: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Median seconds per training step of every SAE under each variant (a callable that sets it up),
    the variants taking turns in a rotating order on each batch."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    trainer.train_step(next(batches).acts)  # warm-up: first-touch memory
    for i in range(steps):
        acts = next(batches).acts
        for name in names[i % len(names) :] + names[: i % len(names)]:
            variants[name]()
            start = time.perf_counter()
            trainer.train_step(acts)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bandwidth_floor(value: float) -> Callable[[], None]:
    """Sets the bandwidth from which the dense path's encoder product runs in bfloat16."""
    return lambda: setattr(sparse, "BF16_PRE_MIN_BANDWIDTH", value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    keep_freed_memory()  # as every saescope job does
    trainer = trainer_at_end(args.run)
    batches = trainer.loader.iterate(0, trainer.total_steps, epochs=None)
    print(f"{cpu()}; {torch.get_num_threads()} threads; {len(trainer.saes)} SAEs at step {trainer.step}")
    print(
        "| site | bandwidth | error std | error max | active moved | window moved | moved: max distance to edge "
        "| L0 float32 | L0 bfloat16 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rounding_rows(trainer, next(batches).acts)))
    wide = sparse.BF16_PRE_MIN_BANDWIDTH
    variants = {"float32": bandwidth_floor(float("inf")), "bfloat16": bandwidth_floor(wide)}
    t = timed_steps(trainer, batches, args.steps, variants)
    sparse.BF16_PRE_MIN_BANDWIDTH = wide
    print(
        f"training step of {len(trainer.saes)} SAEs, median of {args.steps}: float32 encoder product "
        f"{t['float32']:.3f} s, bfloat16 {t['bfloat16']:.3f} s ({t['float32'] / t['bfloat16']:.2f}x)"
    )


if __name__ == "__main__":
    main()
