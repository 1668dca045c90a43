"""The default run's unavoidable model and SAE products on this machine: a floor under `make run`'s time
that no change to the sparse steps, loaders or bookkeeping can go below.

    python benchmarks/run_floor.py [--model embedded] [--run runs/default] [--repeats 3]

Each stage's floor is one piece of real work timed here and multiplied by how often the default run
(`RUN_SCALE`, the harvest's and evaluation's defaults) does it:

- harvest: the model's forward up to the last layer's sites (no LM head), per token, times the tokens;
- train: each SAE's dense encoder product (`dense_pre`, in the dtype the sparse step uses on this CPU),
  per step, times the steps; the sparse step's other products are smaller than this one;
- evaluate: each SAE's encoder product over the held-out shard, and each site's zero-ablation pass and
  spliced pass over the held-out text (the layers from the site's on plus the LM head's CE and KL),
  timed at the first and last layer, linear in between.

With `--run`, the stage times that run wrote in its summary.md are printed beside, as multiples of the
floor: what is left to gain by making saescope's own work faster, against what only a faster CPU gives.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from machine import cpu  # benchmarks/machine.py, beside this script

from saescope.activations.harvest import HarvestConfig
from saescope.errors import SaescopeError
from saescope.evaluate.heldout import HeldOutText
from saescope.evaluate.metrics import EvalConfig
from saescope.models.loading import compute_dtype, load_model, native_bf16_matmul
from saescope.models.sites import Site, n_layers, parse_sites, run_to_sites, site_width
from saescope.run import RUN_SCALE, stage_minutes
from saescope.saes.sparse import dense_pre

GOAL_MINUTES = 20  # issue 12: harvest, train, evaluate and release of `make run`


def best_of(repeats: int, fn) -> float:
    """Fastest of `repeats` timed calls, after one untimed call that warms caches and allocators."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def harvest_floor(model, sites: list[Site], repeats: int) -> float:
    cfg = HarvestConfig()
    ids = torch.randint(0, model.config.vocab_size, (cfg.forward_batch, cfg.context_len))
    per_batch = best_of(repeats, lambda: run_to_sites(model, ids, None, sites, lambda _s, _x: None))
    return per_batch / ids.numel() * RUN_SCALE["tokens"]


def encoder_seconds(model, sites: list[Site], rows: int, bf16: bool, repeats: int) -> float:
    """One encoder product (`dense_pre`) of `rows` tokens for every site's SAE."""
    width, total = RUN_SCALE["widths"][0], 0.0
    for d_in in sorted({site_width(model, s.kind) for s in sites}):
        x, w, b = torch.randn(rows, d_in), torch.randn(d_in, width) / d_in**0.5, torch.zeros(width)
        count = sum(site_width(model, s.kind) == d_in for s in sites)
        total += count * best_of(repeats, lambda x=x, w=w, b=b: dense_pre(x, w, b, bf16))
    return total


def train_floor(model, sites: list[Site], repeats: int) -> float:
    steps = RUN_SCALE["train_tokens"] // RUN_SCALE["batch_size"]
    return steps * encoder_seconds(model, sites, RUN_SCALE["batch_size"], native_bf16_matmul("cpu"), repeats)


def evaluate_floor(model, tokenizer, sites: list[Site], repeats: int) -> float:
    """Every SAE encodes the held-out shard in float32, then splices into the held-out text."""
    cfg = EvalConfig(eval_sequences=RUN_SCALE["eval_sequences"])
    text = HeldOutText(model, tokenizer, HarvestConfig().dataset, "text", RUN_SCALE["tokens"], cfg)
    last = n_layers(model) - 1
    first_s, last_s = (
        best_of(repeats, lambda layer=layer: text.loss_with(Site(layer, "res"), torch.zeros_like))
        for layer in (0, last)
    )
    per_pass = [last_s + (first_s - last_s) * (last - s.layer) / max(last, 1) for s in sites]
    held_out = encoder_seconds(model, sites, cfg.eval_shards * RUN_SCALE["shard_rows"], False, repeats)
    return held_out + 2 * sum(per_pass)  # the zero ablation and the splice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=HarvestConfig().model, help="model name or path (the embedded Gemma 3 270M)")
    parser.add_argument("--run", type=Path, help="a default run folder whose stage times to print beside")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:  # before two minutes of timing, not after
        measured = stage_minutes(args.run) if args.run else {}
    except SaescopeError as e:
        raise SystemExit(f"run_floor: {e}") from None
    torch.manual_seed(0)
    dtype = compute_dtype(HarvestConfig().dtype, torch.device("cpu"))
    model, tokenizer = load_model(args.model, dtype, "cpu")
    if compute_dtype(EvalConfig().eval_dtype, torch.device("cpu")) != dtype:
        raise SystemExit("run_floor: harvest and evaluation run the model in different dtypes on this CPU")
    sites = parse_sites(model, HarvestConfig().sites, HarvestConfig().layers)
    floors = {
        "harvest": harvest_floor(model, sites, args.repeats) / 60,
        "train": train_floor(model, sites, args.repeats) / 60,
        "evaluate": evaluate_floor(model, tokenizer, sites, args.repeats) / 60,
    }
    sae_dtype = "bfloat16" if native_bf16_matmul("cpu") else "float32"
    print(f"CPU: {cpu()}; model in {dtype}, SAE encoder products in {sae_dtype}")
    print(f"  {len(sites)} sites, best of {args.repeats}")
    print(f"  {'stage':10s} {'floor min':>10s}" + (f" {'run min':>8s} {'run/floor':>9s}" if measured else ""))
    for stage, floor in floors.items():
        row = f"  {stage:10s} {floor:10.1f}"
        if stage in measured:
            row += f" {measured[stage]:8.1f} {measured[stage] / floor:8.2f}x"
        print(row)
    total = sum(floors.values())
    row = f"  {'total':10s} {total:10.1f}"
    if measured:
        ran = sum(measured.get(stage, 0.0) for stage in (*floors, "release"))
        row += f" {ran:8.1f} {ran / total:8.2f}x"
    print(row)
    print(f"  the floor is {total / GOAL_MINUTES:.2f}x the {GOAL_MINUTES}-minute goal")


if __name__ == "__main__":
    main()
