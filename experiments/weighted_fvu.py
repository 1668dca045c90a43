"""Round 25: how well each trainer minimised its own objective, apart from what the objective values.

Held-out FVU in the space each SAE was trained in (`fvu_weighted`: rows divided by the SAE's per-dimension
`--normalize` scale, saescope/evaluate/rows.py) at matched L0, for SAEs already trained by `saescope
compare` runs (the head-to-head's and its variants'), computed on the held-out shard of their store without
the model: one number per SAE that moves far less between seeds than delta LM loss on 4,096 held-out tokens.
Run from the repository with the virtual environment active:

    python experiments/weighted_fvu.py --store runs/exp6/activations runs/h2h_res6 runs/v23/fr03 ...

Prints one markdown row per (run, family): weighted FVU, then FVU, at L0 16 / 32 / 64 (linear in log L0
between the run's SAEs, as compare's matched-L0 table).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore
from saescope.compare import family_of
from saescope.evaluate.metrics import load_trained, trained_folders, trained_scale
from saescope.evaluate.rows import store_metrics
from saescope.matched import interpolate_log_l0

TARGETS = (16.0, 32.0, 64.0)


def measure(store: ActivationStore, run: Path, split: str) -> dict[str, list[tuple[float, float, float]]]:
    """Per family of the run: (L0, FVU, weighted FVU) of each of its SAEs on the held-out shard (split
    "eval") or on the training shards ("train": how much better a repeated row fits than a new one)."""
    points: dict[str, list[tuple[float, float, float]]] = {}
    for folder in trained_folders(run):
        sae, meta = load_trained(folder, torch.device("cpu"))
        loader = ShuffledLoader(store, [meta["hook"]], batch_size=4096, split=split, drop_last=False)
        m = store_metrics(sae, loader, meta["hook"], scale=trained_scale(meta, sae.d_in, folder))
        points.setdefault(family_of(meta), []).append((m["l0"], m["fvu"], m["fvu_weighted"]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="runs/exp6/activations")
    parser.add_argument("--split", choices=("eval", "train"), default="eval", help="held-out or training rows")
    parser.add_argument("runs", nargs="+", help="compare run folders (OUT of `saescope compare`)")
    args = parser.parse_args()
    store = ActivationStore(args.store)
    heads = [f"{what} @ L0 {t:g}" for what in ("weighted FVU", "FVU") for t in TARGETS]
    print("| run | family | " + " | ".join(heads) + " |\n|---|---|" + "---:|" * len(heads))
    for run in args.runs:
        for family, points in sorted(measure(store, Path(run), args.split).items()):
            cells = [interpolate_log_l0([(p[0], p[column]) for p in points], t) for column in (2, 1) for t in TARGETS]
            print(f"| {run} | {family} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in cells) + " |")


if __name__ == "__main__":
    main()
