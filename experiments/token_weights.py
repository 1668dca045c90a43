"""Token weighting on and off: the same SAEs trained with `--normalize sensitivity` (each token's squared
error weighted by |x|^p, p the site's norm power) and `--normalize sensitivity-dims` (the per-dimension
weights only, the default before), everything else equal: the same store rows in the same order, the same
initialisations (one `saescope compare` per setting with the same sweeps and seeds), evaluated the same way
on the same held-out sequences. Prints, per SAE, both settings' numbers (mean over seeds) and the paired
gap in delta LM loss and KL (weighted minus not, of the seed-averaged SAEs) +- its standard error over
the held-out sequences (saescope/matched.py).

    python experiments/token_weights.py --site att.6 --sweeps "jumprelu=16,topk=16" --seeds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saescope.compare import CompareConfig, compare
from saescope.io import read_json
from saescope.matched import paired_gap

SETTINGS = ("sensitivity-dims", "sensitivity")


def metrics(out: Path, seeds: int) -> dict[str, list[dict]]:
    """Each SAE folder name's metrics.json, one per seed."""
    folders = [out / f"seed{s}" for s in range(seeds)] if seeds > 1 else [out]
    names = sorted(p.name for p in (folders[0] / "saes").iterdir())
    return {name: [read_json(f / "saes" / name / "metrics.json") for f in folders] for name in names}


def seed_mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def sequence_mean(rows: list[dict], key: str) -> list[float]:
    return [sum(v) / len(v) for v in zip(*(r["by_sequence"][key] for r in rows))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="runs/exp6/activations")
    parser.add_argument("--site", default="att.6")
    parser.add_argument("--sweeps", default="jumprelu=16,topk=16")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/token_weights")
    args = parser.parse_args()
    runs = {}
    for setting in SETTINGS:
        out = Path(args.out) / f"{args.site.replace('.', '')}_{setting}"
        compare(
            CompareConfig(
                store=args.store, out=str(out), site=args.site, width=4096, sweeps=args.sweeps, seeds=args.seeds,
                family_knobs="topk.dead_tokens=50000", train_tokens=245_760, normalize=setting,
                eval_sequences=32, eval_context_len=256, suite="core",
            )
        )  # fmt: skip
        runs[setting] = metrics(out, args.seeds)
    print(f"\n{args.site}, {args.seeds} seed(s): without token weights -> with them; gap = with - without")
    print("| SAE | L0 | FVU | delta LM loss | KL | gap in delta loss | gap in KL |\n|---|---|---|---|---|---:|---:|")
    for name, off in runs["sensitivity-dims"].items():
        on = runs["sensitivity"][name]
        cells = [f"{seed_mean(off, k):.{d}f} -> {seed_mean(on, k):.{d}f}" for k, d in (("l0", 1), ("fvu", 4))]
        cells += [f"{seed_mean(off, k):.4f} -> {seed_mean(on, k):.4f}" for k in ("delta_loss", "kl_div")]
        tokens = off[0]["by_sequence"]["tokens"]
        for key in ("delta_loss", "kl_div"):
            g = paired_gap(sequence_mean(off, key), sequence_mean(on, key), tokens)
            cells.append(f"{g['gap']:+.4f} +- {g['se']:.4f}")
        print(f"| {name.split('__')[0]} {name.split('__c')[-1]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
