"""Token weighting on and off: the same SAEs trained with `--normalize sensitivity-tokens` (each token's
squared error weighted by |x|^p, p the site's norm power) and `--normalize sensitivity` (the per-dimension
weights only, the default), everything else equal: the same store rows in the same order, the same
initialisations (one `saescope compare` per setting with the same sweeps and seeds), evaluated the same way
on the same held-out sequences. Prints, per SAE, both settings' numbers (mean over seeds) and the paired
gap in delta LM loss and KL (weighted minus not, of the seed-averaged SAEs) +- its standard error over
the held-out sequences (saescope/matched.py).

    python experiments/token_weights.py --site att.6 --sweeps "jumprelu=16,topk=16" --seeds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paired import table

from saescope.compare import CompareConfig, compare

SETTINGS = ("sensitivity", "sensitivity-tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="runs/exp6/activations")
    parser.add_argument("--site", default="att.6")
    parser.add_argument("--sweeps", default="jumprelu=16,topk=16")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="runs/token_weights")
    args = parser.parse_args()
    for setting in SETTINGS:
        out = Path(args.out) / f"{args.site.replace('.', '')}_{setting}"
        compare(
            CompareConfig(
                store=args.store, out=str(out), site=args.site, width=4096, sweeps=args.sweeps, seeds=args.seeds,
                family_knobs="topk.dead_tokens=50000", train_tokens=245_760, normalize=setting,
                eval_sequences=32, eval_context_len=256, suite="core",
            )
        )  # fmt: skip
    print(f"\n{args.site}, {args.seeds} seed(s): without token weights (A) and with them (B)")
    print(table(*(Path(args.out) / f"{args.site.replace('.', '')}_{setting}" for setting in SETTINGS)))


if __name__ == "__main__":
    main()
