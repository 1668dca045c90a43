"""Mean and range over seeds of `saescope compare`'s matched-L0 numbers (`--seeds`).

One seed's frontier moves with its initialisation and the order of its rows (our TopK moved by up to
0.041 nats on res.6 with nothing else changed, README), so a gap between two families is evidence
only where it exceeds both families' range over seeds.
"""

from __future__ import annotations

from collections import defaultdict

# What a matched-L0 table reads off each family's frontier, and the heading of its columns: delta LM loss,
# KL (the same spliced forward, against the clean model's whole next-token distribution), FVU, and FVU
# weighted as the SAE was trained (`fvu_weighted`, saescope/evaluate/rows.py).
FRONTIER = {"delta_loss": "delta LM loss", "kl_div": "KL", "fvu": "FVU", "fvu_weighted": "weighted FVU"}


def seed_spread(per_seed: list[list[dict]]) -> list[dict]:
    """Per family, for each FRONTIER number at each target: {mean, min, max} over the seeds, or None
    where a seed could not read it off (the target outside that seed's L0 range)."""
    by_family: dict[str, list[dict]] = defaultdict(list)
    for families in per_seed:
        for m in families:
            by_family[m["family"]].append(m)
    out = []
    for family, seeds in sorted(by_family.items()):
        entry: dict = {"family": family}
        for key in FRONTIER:
            entry[key] = []
            width = len(seeds[0]["delta_loss"])  # seeds read before a FRONTIER number existed lack it: None
            for values in zip(*(m.get(key, [None] * width) for m in seeds)):
                if len(seeds) < len(per_seed) or any(v is None for v in values):
                    entry[key].append(None)
                else:
                    entry[key].append({"mean": sum(values) / len(values), "min": min(values), "max": max(values)})
        out.append(entry)
    return out


def spread_table(spread: list[dict], targets: list[float]) -> str:
    """A markdown table: one row per family, each FRONTIER number any family has at each target,
    mean [min - max]."""

    def cell(s: dict | None) -> str:
        return "-" if s is None else f"{s['mean']:.4f} [{s['min']:.4f} - {s['max']:.4f}]"

    keys = shown(spread)
    heads = [f"{FRONTIER[key]} @ L0 {t:g}" for key in keys for t in targets]
    lines = ["| family | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for m in spread:
        lines.append(f"| {m['family']} | " + " | ".join(cell(s) for key in keys for s in m[key]) + " |")
    return "\n".join(lines)


def shown(families: list[dict]) -> list[str]:
    """The FRONTIER numbers that some family has at some target (SAEs evaluated before `fvu_weighted`
    existed have none)."""
    return [key for key in FRONTIER if any(v is not None for m in families for v in m.get(key, ()))]
