"""Two `saescope compare` runs of the same SAEs with one setting changed, paired: per SAE folder name
both runs hold, both runs' numbers (mean over seeds) and the paired gap in delta LM loss and KL (B minus
A, of the seed-averaged SAEs) +- its standard error over the held-out sequences (saescope/matched.py).
Both runs must train on the same store rows with the same seeds and evaluate on the same sequences.

    python experiments/paired.py runs/h2h_att6_w runs/h2h_att6_tn
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saescope.io import read_json
from saescope.matched import paired_gap


def metrics(out: Path) -> dict[str, list[dict]]:
    """Each SAE folder name's metrics.json, one per seed (a run of several seeds has seed0, seed1, ...)."""
    folders = sorted(out.glob("seed*")) or [out]
    names = sorted(p.name for p in (folders[0] / "saes").iterdir() if (p / "metrics.json").exists())
    return {
        n: [read_json(f / "saes" / n / "metrics.json") for f in folders if (f / "saes" / n / "metrics.json").exists()]
        for n in names
    }


def seed_mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def sequence_mean(rows: list[dict], key: str) -> list[float]:
    return [sum(v) / len(v) for v in zip(*(r["by_sequence"][key] for r in rows))]


def table(a: Path, b: Path) -> str:
    """The markdown table of every SAE both runs hold with as many seeds."""
    runs_a, runs_b = metrics(a), metrics(b)
    lines = [
        f"A = {a}, B = {b}; gap = B - A",
        "| SAE | seeds | L0 | FVU | delta LM loss | KL | gap in delta loss | gap in KL |",
        "|---|---:|---|---|---|---|---:|---:|",
    ]
    for name in sorted(set(runs_a) & set(runs_b)):
        one, two = runs_a[name], runs_b[name]
        if len(one) != len(two):
            continue
        cells = [str(len(one))]
        cells += [f"{seed_mean(one, k):.{d}f} -> {seed_mean(two, k):.{d}f}" for k, d in (("l0", 1), ("fvu", 4))]
        cells += [f"{seed_mean(one, k):.4f} -> {seed_mean(two, k):.4f}" for k in ("delta_loss", "kl_div")]
        tokens = one[0]["by_sequence"]["tokens"]
        for key in ("delta_loss", "kl_div"):
            g = paired_gap(sequence_mean(one, key), sequence_mean(two, key), tokens)
            cells.append(f"{g['gap']:+.4f} +- {g['se']:.4f}" if g else "n/a")
        lines.append(f"| {name.split('__')[0]} {name.split('__c')[-1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="the run without the change")
    parser.add_argument("b", type=Path, help="the run with it")
    args = parser.parse_args()
    print(table(args.a, args.b))


if __name__ == "__main__":
    main()
