"""One `saescope compare` run's SAEs measured on several disjoint samples of held-out text (copies of
the run evaluated with different --eval-offset), pooled: each SAE's per-sequence numbers are joined
over the samples, and compare's paired tables (saescope/matched.py) are computed on all the sequences
together, so a gap's standard error is the whole text's. The first folder's config.json gives the
matched-L0 targets.

    python experiments/pooled.py runs/att6_c64 runs/att6_c64_next runs/att6_c64_o64 runs/att6_c64_o96
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saescope.compare import collect, families, parse_targets
from saescope.io import read_json
from saescope.matched import PAIRED, paired_section, seed_curve


def pooled_rows(folders: list[Path], seed: str) -> list[dict]:
    """One seed's rows (`seed`: its folder name, or "" for a one-seed run) with each SAE's
    per-sequence numbers joined over the folders, which must hold the same SAEs."""
    runs = [collect(folder / seed) for folder in folders]
    names = [r["name"] for r in runs[0]]
    for folder, rows in zip(folders, runs):
        if [r["name"] for r in rows] != names or any(r["by_sequence"] is None for r in rows):
            raise SystemExit(f"pooled: {folder / seed} does not hold {folders[0] / seed}'s SAEs, each evaluated")
    return [
        parts[0] | {"by_sequence": {k: sum((p["by_sequence"][k] for p in parts), []) for k in ("tokens", *PAIRED)}}
        for parts in zip(*runs)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="compare runs of the same SAEs on disjoint text")
    args = parser.parse_args()
    targets = parse_targets(read_json(args.folders[0] / "config.json")["matched_l0"])
    seeds = sorted(p.name for p in args.folders[0].glob("seed*")) or [""]
    per_seed = [families(pooled_rows(args.folders, seed)) for seed in seeds]
    tokens = per_seed[0][min(per_seed[0])][0]["by_sequence"]["tokens"]
    print(f"{len(tokens)} held-out sequences, {sum(tokens):,} tokens, {len(seeds)} seed(s)\n")
    print("| family | " + " | ".join(f"{PAIRED[k]} @ L0 {t:g}" for k in PAIRED for t in targets) + " |")
    print("|---|" + "---:|" * (len(PAIRED) * len(targets)))
    for family in sorted(per_seed[0]):
        cells = []
        for key in PAIRED:
            for t in targets:
                curve = seed_curve(per_seed, family, key, t)
                cells.append("-" if curve is None else f"{sum(c * n for c, n in zip(curve, tokens)) / sum(tokens):.4f}")
        print(f"| {family} | " + " | ".join(cells) + " |")
    print(paired_section(per_seed, targets)[0])


if __name__ == "__main__":
    main()
