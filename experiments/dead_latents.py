"""Are a run's dead latents dead? `saescope evaluate` counts a latent dead when it never fires on the
held-out shard (16,384 tokens in the default run), where a latent firing once in 20,000 tokens is
silent more often than not. For every SAE with such latents, this measures how often each fires on the
run's training rows with the same weights: a latent silent on both is dead, one that fires on the
training rows is rare (or specific to the training documents), not dead.

    python experiments/dead_latents.py runs/default
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import run_store
from saescope.evaluate.metrics import load_trained, trained_folders
from saescope.evaluate.rows import store_metrics
from saescope.evaluate.suite import input_site
from saescope.io import read_json


def dead_row(folder, store, eval_shards: int) -> str | None:
    """One table row for an SAE with latents silent on the held-out shard; None when it has none."""
    held_out = torch.tensor(read_json(folder / "metrics.json")["firing_frequency"])
    silent = (held_out == 0).nonzero().squeeze(1)
    if len(silent) == 0:
        return None
    sae, meta = load_trained(folder, torch.device("cpu"))
    site = input_site(meta).name
    loader = ShuffledLoader(store, [site], batch_size=4096, split="train", eval_shards=eval_shards, drop_last=False)
    train = store_metrics(sae, loader, site)
    fires = (torch.tensor(train["firing_frequency"]) * train["tokens"]).round().int()[silent]
    return (
        f"| {folder.name} | {len(silent)} | {train['tokens']:,} | {int((fires == 0).sum())} | "
        f"{', '.join(str(int(f)) for f in sorted(fires.tolist()))} |"
    )


if __name__ == "__main__":
    run = sys.argv[1]
    eval_shards = read_json(Path(run, "config.json")).get("eval_shards", 1)
    store = run_store(run)
    print("| SAE | silent on held-out | training rows | silent on training rows too (dead) | fires on training rows |")
    print("|---|---:|---:|---:|---|")
    for folder in trained_folders(run):
        row = dead_row(folder, store, eval_shards)
        if row:
            print(row, flush=True)
