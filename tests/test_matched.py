"""Reading a frontier at a matched L0, and the paired gap between two families over held-out sequences."""

from __future__ import annotations

import math
import random

import pytest

from saescope.matched import (
    at_reference_table,
    interpolate_log_l0,
    log_l0_weights,
    paired_at_reference,
    paired_gap,
    paired_gaps,
    sequence_curve,
)


def test_matched_l0_interpolates_linearly_in_log_l0_and_extrapolates_at_most_2_percent():
    points = [(10.0, 1.0), (40.0, 0.4), (160.0, 0.1)]
    # L0 20 is halfway between 10 and 40 in log L0: halfway between 1.0 and 0.4
    assert interpolate_log_l0(points, 20.0) == pytest.approx(0.7)
    # L0 80 is halfway between 40 and 160 in log L0
    assert interpolate_log_l0(points, 80.0) == pytest.approx(0.25)
    # log(16/10) / log(4) of the way from 1.0 to 0.4
    assert interpolate_log_l0(points, 16.0) == pytest.approx(1.0 - 0.6 * math.log(1.6) / math.log(4))
    assert interpolate_log_l0(points, 40.0) == pytest.approx(0.4)
    assert interpolate_log_l0(points, 10.0) == pytest.approx(1.0) and interpolate_log_l0(points, 160.0) == 0.1
    assert interpolate_log_l0(points, 9.7) is None and interpolate_log_l0(points, 164.0) is None
    # a sweep wholly on one side of the target: its nearest SAE if within 2% (JumpReLU at target 16: 15.9)
    assert interpolate_log_l0(points, 9.9) == 1.0 and interpolate_log_l0(points, 163.0) == 0.1
    assert interpolate_log_l0([(15.9, 0.02), (13.7, 0.03)], 16.0) == 0.02
    assert interpolate_log_l0([(15.6, 0.02)], 16.0) is None
    # within 0.1% of a measured L0 is measured there (TopK k=64 measures 63.97 on held-out rows)
    assert interpolate_log_l0([(16.0, 0.6), (63.968, 0.35)], 64.0) == 0.35
    assert interpolate_log_l0(points, 160.1) == 0.1
    assert interpolate_log_l0([(32.0, 0.5)], 32.0) == 0.5 and interpolate_log_l0([(32.0, 0.5)], 16.0) is None
    assert interpolate_log_l0([], 16.0) is None
    assert interpolate_log_l0([(32.0, 0.4), (32.0, 0.6), (64.0, 0.1), (0.0, 9.0)], 32.0) == pytest.approx(0.5)


def test_sequence_curves_interpolate_with_the_frontiers_weights():
    """The per-sequence curve at a target, weighted by tokens, is the interpolated text-wide number."""
    tokens = [255, 255, 100]
    rows = [
        {"l0": 10.0, "by_sequence": {"tokens": tokens, "delta_loss": [0.9, 1.1, 1.5]}},
        {"l0": 40.0, "by_sequence": {"tokens": tokens, "delta_loss": [0.3, 0.5, 0.4]}},
    ]
    for r in rows:
        r["delta_loss"] = sum(n * d for n, d in zip(tokens, r["by_sequence"]["delta_loss"])) / sum(tokens)
    curve = sequence_curve(rows, "delta_loss", 20.0)
    assert curve == pytest.approx([0.6, 0.8, 0.95])
    whole = interpolate_log_l0([(r["l0"], r["delta_loss"]) for r in rows], 20.0)
    assert sum(n * c for n, c in zip(tokens, curve)) / sum(tokens) == pytest.approx(whole)
    assert log_l0_weights([10.0, 40.0], 20.0) == pytest.approx({0: 0.5, 1: 0.5})
    assert sequence_curve(rows, "delta_loss", 50.0) is None
    assert sequence_curve(rows, "kl_div", 20.0) is None  # not measured per sequence
    assert sequence_curve([{"l0": 20.0, "by_sequence": None}], "delta_loss", 20.0) is None


def test_paired_gap_is_the_token_weighted_mean_gap_and_its_standard_error():
    gap = paired_gap([0.1, 0.2, 0.3, 0.4], [0.2, 0.2, 0.5, 0.5], [10, 10, 10, 10])
    diffs = [0.1, 0.0, 0.2, 0.1]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert gap["gap"] == pytest.approx(mean) and gap["se"] == pytest.approx(sd / 2) and gap["sequences"] == 4
    # an empty sequence carries no weight; one sequence has no spread to measure
    assert paired_gap([0.1, 0.0, 0.3], [0.2, 0.0, 0.5], [10, 0, 30])["gap"] == pytest.approx((1 + 6) / 40)
    assert paired_gap([0.1, 0.0], [0.2, 0.0], [10, 0]) is None
    # the same error on every sequence: a gap, known exactly
    assert paired_gap([0.1, 0.5], [0.3, 0.7], [5, 5]) == pytest.approx({"gap": 0.2, "se": 0.0, "sequences": 2})


def test_paired_gaps_see_a_small_steady_gap_under_large_shared_noise():
    """Two families whose sequences vary far more than they differ: the gap stands out against its
    paired standard error, though the families' own spreads over sequences are 20x wider."""
    rng = random.Random(0)
    n = 64
    text = [rng.gauss(0.0, 0.05) for _ in range(n)]  # how hard each sequence is, shared by both
    tokens = [255] * n

    def family(name: str, shift: float) -> list[dict]:
        return [
            {
                "family": name,
                "l0": l0,
                "by_sequence": {
                    "tokens": tokens,
                    "delta_loss": [0.02 + t + shift + rng.gauss(0, 0.002) for t in text],
                    "kl_div": [0.03 + t + rng.gauss(0, 0.002) for t in text],
                },
            }
            for l0 in (8.0, 32.0)
        ]

    by_family = {"jumprelu": family("jumprelu", 0.0), "topk": family("topk", 0.003)}
    (entry,) = paired_gaps([by_family], "jumprelu", [16.0, 64.0])
    loss16, loss64 = entry["delta_loss"]
    assert loss64 is None and entry["family"] == "topk"
    assert loss16["gap"] == pytest.approx(0.003, abs=0.001) and loss16["se"] < 0.0005
    assert abs(entry["kl_div"][0]["gap"]) < 3 * entry["kl_div"][0]["se"]  # no gap in KL: within its error
    assert paired_gaps([by_family], "gated", [16.0]) == []
    other = {"jumprelu": by_family["jumprelu"], "topk": family("topk", 0.0)}
    other["topk"][0]["by_sequence"]["tokens"] = tokens[:-1] + [10]  # measured on another text: no pairs
    assert paired_gaps([other], "jumprelu", [16.0])[0]["delta_loss"] == [None]


def test_paired_at_reference_reads_peers_at_the_l0_each_seed_landed_on():
    """Our SAE lands 3% above the target in one seed: the matched table cannot read it at 64, but the
    peer read at our own L0, seed by seed, is paired with it; the gap is the seeds' mean gap."""
    tokens = [100, 100, 100]

    def sae(family: str, value: float, l0: float, loss: list[float]) -> dict:
        by_sequence = {"tokens": tokens, "delta_loss": loss, "kl_div": [v / 2 for v in loss]}
        return {"family": family, "value": value, "l0": l0, "by_sequence": by_sequence}

    def peer(shift: float) -> list[dict]:  # delta loss falls linearly in log L0 from 32 to 128
        return [sae("peer", 1.0, 32.0, [0.3 + shift, 0.4, 0.5]), sae("peer", 2.0, 128.0, [0.1 + shift, 0.2, 0.3])]

    seeds = [
        {"jumprelu": [sae("jumprelu", 64.0, 64.0, [0.19, 0.3, 0.4])], "peer": peer(0.0)},
        {"jumprelu": [sae("jumprelu", 64.0, 65.92, [0.18, 0.29, 0.4])], "peer": peer(0.01)},
    ]
    assert paired_gaps(seeds, "jumprelu", [64.0])[0]["delta_loss"] == [None]  # seed 2 is 3% off the target
    at = paired_at_reference(seeds, "jumprelu")
    assert at["values"] == [64.0] and at["l0"] == [pytest.approx(64.96)]
    (entry,) = at["families"]
    w = math.log(65.92 / 32) / math.log(4)  # seed 2's peer, interpolated to L0 65.92
    theirs = [[0.2, 0.3, 0.4], [0.3 + 0.01 - 0.2 * w, 0.4 - 0.2 * w, 0.5 - 0.2 * w]]
    ours = [[0.19, 0.3, 0.4], [0.18, 0.29, 0.4]]
    gaps = [sum(t[s] - o[s] for t, o in zip(theirs, ours)) / 2 for s in range(3)]
    assert entry["delta_loss"][0]["gap"] == pytest.approx(sum(gaps) / 3)
    assert entry["kl_div"][0]["gap"] == pytest.approx(sum(gaps) / 6)
    assert "| peer | " in at_reference_table(at, "jumprelu") and "@ jumprelu 64 (L0 65.0)" in at_reference_table(
        at, "jumprelu"
    )
    # two reference SAEs at one sweep value in a seed: which one is meant is unknown, so nothing is read
    seeds[0]["jumprelu"].append(sae("jumprelu", 64.0, 63.0, [0.2, 0.3, 0.4]))
    assert paired_at_reference(seeds, "jumprelu") == {}
