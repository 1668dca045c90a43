"""A peer family read at the L0 our SAE landed on, seed by seed, from `saescope compare` folders.

    python experiments/at_our_l0.py runs/mlp6_c64 runs/mlp6_c64_next [--ours jumprelu --peer saelens-jumprelu]

compare's matched-L0 tables read every family at a fixed target and leave "-" where a family's SAEs
all lie more than 2% to one side of it; our JumpReLU trained at target 64 lands at 64.8-65.3 on
held-out rows, so a seed can drop out of the three-seed table. Here the peer is interpolated (linear in
log L0, `saescope/matched.py`) to the L0 of our one SAE in each seed instead: the same L0 for both.
Positive gaps: the peer is behind ours.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saescope.matched import interpolate_log_l0

KEYS = ("delta_loss", "kl_div", "fvu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="`saescope compare` folders with seed*/compare.json")
    parser.add_argument("--ours", default="jumprelu", help="the family with one SAE per seed")
    parser.add_argument("--peer", default="saelens-jumprelu", help="the family read at its L0")
    args = parser.parse_args()
    print(f"| folder | seed | {args.ours} L0 | " + " | ".join(f"{k}: ours / peer / gap" for k in KEYS) + " |")
    print("|---|---:|---:|" + "---:|" * len(KEYS))
    for folder in args.folders:
        gaps: dict[str, list[float]] = {k: [] for k in KEYS}
        for path in sorted(Path(folder).glob("seed*/compare.json")):
            rows = json.loads(path.read_text())["rows"]
            ours = next((r for r in rows if r["family"] == args.ours), None)
            peer = [r for r in rows if r["family"] == args.peer]
            if ours is None or not peer:
                families = sorted({r["family"] for r in rows})
                raise SystemExit(
                    f"at_our_l0: {path} has no {args.ours if ours is None else args.peer} SAEs: pick from {families}"
                )
            cells = []
            for k in KEYS:
                value = interpolate_log_l0([(r["l0"], r[k]) for r in peer], ours["l0"])
                if value is None:
                    cells.append(f"{ours[k]:.4f} / - / -")
                    continue
                gaps[k].append(value - ours[k])
                cells.append(f"{ours[k]:.4f} / {value:.4f} / {value - ours[k]:+.4f}")
            print(f"| {folder} | {path.parent.name} | {ours['l0']:.1f} | " + " | ".join(cells) + " |")
        means = [f"{sum(g) / len(g):+.4f}" if g else "-" for g in gaps.values()]
        print(f"| {folder} | mean gap | | " + " | ".join(means) + " |")


if __name__ == "__main__":
    main()
