"""Reading a family's frontier at a matched L0, and how sure a gap between two families is.

Sweeps rarely land two families on the same L0, so a family's number at a target L0 is interpolated
linearly in log L0 between its two measured SAEs around the target (or read at its SAE nearest the
target, if that is within 2% of it). The interpolation is a weighted
sum of those SAEs' numbers (`log_l0_weights`), so the same weights read each held-out sequence's
value off the frontier too (`evaluate` records every SAE's delta loss and KL per sequence, its
`by_sequence`). All SAEs of a comparison are measured on the same sequences, so two families can be
compared sequence by sequence: the gap's standard error over sequences then says whether the text
could have produced it (a paired test; the tokens' noise cancels where two SAEs err alike). Seeds
(`--seeds`) measure the other noise, training's, which this does not see.
"""

from __future__ import annotations

import math

# A TopK SAE with k = 64 measures L0 63.97 on held-out rows (a kept pre-activation can be <= 0): an
# L0 within 0.1% of a target counts as measured at it.
AT_TARGET = 1e-3
# A JumpReLU trained at a target L0 lands within ~1% of it on held-out rows (att.6, target 16: L0 15.9),
# often all its sweep's SAEs on one side: a family's SAE nearest the target, if within 2% of it, is read
# as measured at it. The frontier's slope there (att.6: 0.010 nats of delta loss per unit of log L0)
# makes 2% of L0 worth ~0.0002 nats, under a seventh of the text's noise on 8,192 tokens (SE 0.0014-0.0027).
NEAR_TARGET = 0.02
PAIRED = {"delta_loss": "delta LM loss", "kl_div": "KL"}  # the per-sequence numbers a pair is compared by


def log_l0_weights(l0s: list[float], target: float) -> dict[int, float] | None:
    """Weights on the points (by index into `l0s`) whose weighted sum is the value at L0 = `target`
    on the line through (log L0, value) of the two points around it (a point measured at the target
    itself, or within AT_TARGET of it: its value, or the mean of several); outside [min L0, max L0]
    the nearest point if it is within NEAR_TARGET of the target, else None (no extrapolation). Points
    with L0 <= 0 have no log and are skipped."""
    points = sorted((l0, i) for i, l0 in enumerate(l0s) if l0 > 0)
    at_target = [i for l0, i in points if abs(l0 - target) <= AT_TARGET * target]
    if at_target:
        return {i: 1 / len(at_target) for i in at_target}
    if not points:
        return None
    if not points[0][0] <= target <= points[-1][0]:
        l0, i = min(points, key=lambda p: abs(p[0] - target))
        return {i: 1.0} if abs(l0 - target) <= NEAR_TARGET * target else None
    (l0_a, a), (l0_b, b) = next(pair for pair in zip(points, points[1:]) if pair[0][0] < target < pair[1][0])
    w = math.log(target / l0_a) / math.log(l0_b / l0_a)
    return {a: 1 - w, b: w}


def interpolate_log_l0(points: list[tuple[float, float]], target: float) -> float | None:
    """The value at L0 = `target` of (L0, value) points, by `log_l0_weights`."""
    weights = log_l0_weights([l0 for l0, _ in points], target)
    return None if weights is None else sum(w * points[i][1] for i, w in weights.items())


def sequence_curve(rows: list[dict], key: str, target: float) -> list[float] | None:
    """Each held-out sequence's `key` (per token) at L0 `target` on the frontier of `rows` (one family's
    SAEs, each with its metrics' by_sequence); None where the target is out of range or an SAE has no
    per-sequence numbers (measured before evaluate kept them)."""
    weights = log_l0_weights([r["l0"] for r in rows], target)
    if weights is None or any(not (rows[i].get("by_sequence") or {}).get(key) for i in weights):
        return None
    curves = [rows[i]["by_sequence"][key] for i in weights]
    if len({len(c) for c in curves}) > 1:
        return None  # measured on different texts: nothing to pair
    return [sum(w * (c[s] or 0.0) for w, c in zip(weights.values(), curves)) for s in range(len(curves[0]))]


def paired_gap(ours: list[float], theirs: list[float], tokens: list[int]) -> dict | None:
    """theirs - ours over the whole text (each sequence weighted by its tokens, as the text's mean is)
    and its standard error over the sequences; None with fewer than two sequences holding tokens."""
    used = [(n, t - o) for o, t, n in zip(ours, theirs, tokens) if n > 0]
    if len(used) < 2:
        return None
    total = sum(n for n, _ in used)
    gap = sum(n * d for n, d in used) / total
    spread = sum((n * (d - gap)) ** 2 for n, d in used) * len(used) / (len(used) - 1)
    return {"gap": gap, "se": math.sqrt(spread) / total, "sequences": len(used)}


def seed_curve(seeds: list[dict[str, list[dict]]], family: str, key: str, target: float) -> list[float] | None:
    """`sequence_curve` of `family` averaged over seeds (each a by-family dict of rows); None unless
    every seed has it."""
    return _mean_curve([sequence_curve(rows[family], key, target) if family in rows else None for rows in seeds])


def _mean_curve(curves: list[list[float] | None]) -> list[float] | None:
    """Each sequence's mean over the curves; None if one is missing or they cover different texts."""
    if any(c is None for c in curves) or len({len(c) for c in curves}) > 1:
        return None
    return [sum(v or 0.0 for v in values) / len(values) for values in zip(*curves)]


def paired_gaps(seeds: list[dict[str, list[dict]]], reference: str, targets: list[float]) -> list[dict]:
    """Per family other than `reference`: for each PAIRED number at each target, its gap to the
    reference family at the same L0 (positive: the family is worse) with the standard error over the
    held-out sequences, or None where either cannot be read off. `seeds` holds each seed's rows by
    family (one for a single comparison): over several, each sequence's value is the seeds' mean, so
    the error is the text's for the seed-averaged SAEs (all seeds measure on the same sequences)."""
    if not all(reference in rows for rows in seeds):
        return []
    return _family_gaps(
        seeds,
        reference,
        targets,
        lambda f, key, t: (seed_curve(seeds, reference, key, t), seed_curve(seeds, f, key, t)),
    )


def _family_gaps(seeds: list[dict[str, list[dict]]], reference: str, points: list, curves) -> list[dict]:
    """Per family other than `reference`, each PAIRED number's paired gap at each point, from
    `curves(family, key, point)`: the (reference's, family's) seed-averaged sequence curves there."""
    out = []
    for family in sorted({f for rows in seeds for f in rows} - {reference}):
        entry: dict = {"family": family}
        tokens = _tokens([r for rows in seeds for r in rows.get(reference, []) + rows.get(family, [])])
        for key in PAIRED:
            entry[key] = []
            for point in points:
                ours, theirs = curves(family, key, point)
                ok = ours is not None and theirs is not None and tokens is not None and len(ours) == len(theirs)
                entry[key].append(paired_gap(ours, theirs, tokens) if ok else None)
        out.append(entry)
    return out


def paired_at_reference(seeds: list[dict[str, list[dict]]], reference: str) -> dict:
    """`paired_gaps` read at the L0 each of `reference`'s SAEs landed on rather than at fixed targets:
    per sweep value of the reference, each seed's other families are read off their frontiers at that
    seed's reference SAE's own L0, so both sides of every pair share one L0 even when the reference
    lands off the targets (a JumpReLU trained at 64 measures 64.8-65.3 on mlp.6, more than 2% above
    64 in a seed, and the matched tables show "-" there). Returns the sweep values, the reference's
    mean L0 at each, and per family each PAIRED number's gap at each (None where unreadable); empty
    unless every seed has exactly one reference SAE per sweep value."""
    values = sorted({r["value"] for rows in seeds for r in rows.get(reference, [])})
    picks = [[[r for r in rows.get(reference, []) if r["value"] == v] for rows in seeds] for v in values]
    if not values or any(len(p) != 1 for pick in picks for p in pick):
        return {}
    refs = [[p[0] for p in pick] for pick in picks]  # [value][seed]

    def curves(family: str, key: str, seed_refs: list[dict]) -> tuple:
        ours = _mean_curve([(r.get("by_sequence") or {}).get(key) for r in seed_refs])
        at_ours = [
            sequence_curve(rows[family], key, r["l0"]) if family in rows else None for rows, r in zip(seeds, seed_refs)
        ]
        return ours, _mean_curve(at_ours)

    l0 = [sum(r["l0"] for r in seed_refs) / len(seed_refs) for seed_refs in refs]
    return {"values": values, "l0": l0, "families": _family_gaps(seeds, reference, refs, curves)}


def _tokens(rows: list[dict]) -> list[int] | None:
    """The held-out sequences' token counts, if every SAE in `rows` was measured on the same ones."""
    counts = {tuple((r.get("by_sequence") or {}).get("tokens") or ()) for r in rows}
    return list(counts.pop()) if len(counts) == 1 and () not in counts else None


def paired_table(gaps: list[dict], reference: str, targets: list[float]) -> str:
    """A markdown table: per family, its gap to `reference` +- the standard error at each target."""
    heads = [f"{PAIRED[key]} @ L0 {t:g}" for key in PAIRED for t in targets]
    return _gap_lines(gaps, reference, heads)


def at_reference_table(at: dict, reference: str) -> str:
    """A markdown table of `paired_at_reference`: per family, its gap at each reference SAE's L0."""
    heads = [
        f"{PAIRED[key]} @ {reference} {v:g} (L0 {l0:.1f})" for key in PAIRED for v, l0 in zip(at["values"], at["l0"])
    ]
    return _gap_lines(at["families"], reference, heads)


def _gap_lines(gaps: list[dict], reference: str, heads: list[str]) -> str:
    def cell(g: dict | None) -> str:
        return "-" if g is None else f"{g['gap']:+.4f} ± {g['se']:.4f}"

    lines = [f"| family minus {reference} | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for g in gaps:
        lines.append(f"| {g['family']} | " + " | ".join(cell(v) for key in PAIRED for v in g[key]) + " |")
    return "\n".join(lines)


def paired_section(seeds: list[dict[str, list[dict]]], targets: list[float]) -> tuple[str, dict]:
    """The paired table's text (empty without a family to pair) and compare.json's entry for it: every
    family against saescope's JumpReLU (or, without one, the first family), over one or more seeds'
    rows by family."""
    names = set().union(*seeds)
    reference = "jumprelu" if "jumprelu" in names else min(names)
    gaps, at = paired_gaps(seeds, reference, targets), paired_at_reference(seeds, reference)
    over = f", each sequence's numbers averaged over the {len(seeds)} seeds" if len(seeds) > 1 else ""
    text = (
        f"\n\nPaired against {reference} on the same held-out sequences{over}: the family's number minus "
        f"{reference}'s at the same L0 (positive: behind {reference}) ± its standard error over the "
        "sequences (the text's noise, not training's; - where either has no per-sequence numbers):\n\n"
        + paired_table(gaps, reference, targets)
        + (f"\n\nThe same at the L0 each {reference} SAE landed on (every seed's own):\n\n" if at else "")
        + (at_reference_table(at, reference) if at else "")
    )
    return (text if gaps else ""), {"reference": reference, "families": gaps, "at_reference": at}
