"""Are the latents a run's evaluation calls dead really dead, or rare ones the held-out shard misses?

For every SAE of a run with latents that never fire on the held-out shard, prints how many tokens
each had been silent at the end of training (the trainer's counter in the last checkpoint; the
revival term acts above `dead_tokens`) and how often it fires on the training shards:

    python experiments/rare_latents.py RUN        # RUN: a `saescope run` folder (README, round 20)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore, run_store
from saescope.evaluate.metrics import load_trained, trained_folders
from saescope.evaluate.rows import store_metrics


def training_firing(sae, store: ActivationStore, site: str, eval_shards: int) -> tuple[int, torch.Tensor]:
    """(tokens, firing count per latent) over the training shards, read as the evaluation reads rows."""
    loader = ShuffledLoader(store, [site], batch_size=4096, split="train", eval_shards=eval_shards, drop_last=False)
    with torch.no_grad():
        m = store_metrics(sae, loader, site)
    return m["tokens"], (torch.tensor(m["firing_frequency"]) * m["tokens"]).round().long()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run folder with train/checkpoint.pt and evaluated saes/ (and its store)")
    args = p.parse_args(argv)
    run = Path(args.run)
    config = json.loads((run / "train" / "config.json").read_text())
    store = run_store(run)
    counters = torch.load(run / "train" / "checkpoint.pt", map_location="cpu", weights_only=False)["saes"]
    total = within = 0
    for folder in trained_folders(run):
        dead = torch.tensor(json.loads((folder / "metrics.json").read_text())["firing_frequency"]) == 0
        if not dead.any():
            continue
        sae, meta = load_trained(folder, torch.device("cpu"))
        silent = counters[folder.name]["tokens_since_fired"][dead]
        tokens, fired = training_firing(sae, store, f"{meta['site']}.{meta['layer']}", config["eval_shards"])
        window = sae.dead_tokens
        total, within = total + int(dead.sum()), within + int((silent <= window).sum())
        print(
            f"{folder.name}: latents {dead.nonzero().flatten().tolist()} silent for {silent.tolist()} tokens "
            f"at the end (revived above {window}); fired {fired[dead].tolist()} times in {tokens} training tokens"
        )
    print(f"{within} of {total} held-out-dead latents had fired within their revival window at the end of training")


if __name__ == "__main__":
    main()
