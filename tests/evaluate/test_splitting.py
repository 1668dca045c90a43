"""Feature splitting across widths on hand-built SAEs whose answer is known: a narrow latent split
in two by the wide SAE, copies, and a novel latent; and which SAEs of a run pair up."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from saescope.errors import SaescopeError
from saescope.evaluate.splitting import feature_splitting, splitting_pairs, splitting_table, width_pairs
from saescope.saes.registry import make_sae

D_IN = 8


def relu_sae(encoder: list[torch.Tensor], bias: list[float], decoder: list[torch.Tensor]):
    """A ReLU SAE with these encoder columns, biases and (normalised) decoder rows; b_dec = 0."""
    sae = make_sae("relu", D_IN, len(encoder))
    with torch.no_grad():
        sae.W_enc.copy_(torch.stack(encoder, 1))
        sae.b_enc.copy_(torch.tensor(bias))
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.stack(decoder), dim=1))
        sae.b_dec.zero_()
    return sae


def e(i: int) -> torch.Tensor:
    return torch.eye(D_IN)[i]


@pytest.fixture(scope="module")
def split() -> dict:
    """Narrow: latents 0-3 fire on x0-x3 (each 0 or 1). Wide: latents 0 and 1 are the halves of
    narrow 0 (direction e0 +/- e4, firing where x0 = 1 and x4 = +1 or -1), 2-4 copy narrow 1-3, and
    5 is novel (direction e5, firing only where x5 = 1 and no narrow latent fires). The rows are
    every combination of x0-x3, x5 in {0, 1} and x4 = +/-1."""
    narrow = relu_sae([e(i) for i in range(4)], [-0.5] * 4, [e(i) for i in range(4)])
    novel_in = e(5) - e(0) - e(1) - e(2) - e(3)
    wide = relu_sae(
        [e(0) + e(4), e(0) - e(4), e(1), e(2), e(3), novel_in],
        [-1.5, -1.5, -0.5, -0.5, -0.5, -0.5],
        [e(0) + e(4), e(0) - e(4), e(1), e(2), e(3), e(5)],
    )
    rows = torch.tensor(
        [[*bits[:4], x4, bits[4], 0.0, 0.0] for bits in itertools.product((0.0, 1.0), repeat=5) for x4 in (1.0, -1.0)]
    )
    return feature_splitting(narrow, wide, rows)


def test_a_width_two_split_is_found_both_ways(split):
    half = round(1 / math.sqrt(2), 4)  # cosine of e0 +/- e4 with e0, and firing cosine of a half
    for key in ("decoder", "coactivation"):
        m = split[key]
        assert m["children"][0] == [[0, half], [1, half]], key
        assert [len(c) for c in m["children"]] == [2, 1, 1, 1], key
        assert m["children_histogram"] == [0, 3, 1] and m["split_parents"] == 1 and m["max_children"] == 2
        assert m["coverage"] == [1.0, 1.0, 1.0, 1.0] and m["coverage_mean"] == m["coverage_weighted"] == 1.0
        assert [p[0] for p in m["parent"][:5]] == [0, 0, 1, 2, 3]
        assert m["matched"] == 5 and m["unmatched_fraction"] == pytest.approx(1 / 6)
    assert split["coactivation"]["containment"][:5] == [1.0] * 5
    assert split["agreement"] == 1.0
    assert split["narrow_width"] == 4 and split["wide_width"] == 6 and split["rows"] == 64


def test_a_novel_latent_has_no_parent(split):
    assert split["novel_fraction"] == pytest.approx(1 / 6)
    assert split["decoder"]["parent"][5][1] == 0.0  # its nearest narrow latent is orthogonal
    assert all(5 not in [c for c, _ in kids] for kids in split["decoder"]["children"])
    assert split["coactivation"]["parent"][5] is None  # it never fires with a narrow latent
    # it fires on 2 of the 64 rows (x5 = 1, x0-x3 = 0), of the wide latents' 16 + 16 + 3 * 32 + 2 firings
    assert split["decoder"]["unmatched_firing_share"] == pytest.approx(2 / 130)


def test_results_are_json_and_tabulate(split):
    assert json.loads(json.dumps(split)) == split
    table = splitting_table({"res.1__w4__c8 -> res.1__w6__c8": split})
    assert "| res.1__w4__c8 -> res.1__w6__c8 | decoder cosine | 5 | 16.7% |" in table
    assert "| 0 / 3 / 1 / 0 | 1.25 | 2 | 1.000 / 1.000 |" in table


def test_a_raised_threshold_drops_the_halves():
    narrow = relu_sae([e(0)], [-0.5], [e(0)])
    wide = relu_sae([e(0) + e(4), e(0) - e(4)], [-1.5, -1.5], [e(0) + e(4), e(0) - e(4)])
    rows = torch.tensor([[1.0, 0, 0, 0, s, 0, 0, 0] for s in (1.0, -1.0)])
    r = feature_splitting(narrow, wide, rows, min_cosine=0.8)
    assert r["decoder"]["children"] == [[]] and r["novel_fraction"] == 1.0 and r["decoder"]["coverage"] == [None]
    assert r["coactivation"]["children_histogram"] == [0, 0, 1]  # co-activation still sees the split


def test_bad_inputs_are_one_line():
    with pytest.raises(SaescopeError, match="different sites"):
        feature_splitting(make_sae("relu", 8, 4), make_sae("relu", 16, 8), torch.zeros(4, 8))
    with pytest.raises(SaescopeError, match="no held-out rows"):
        feature_splitting(make_sae("relu", 8, 4), make_sae("relu", 8, 8), torch.zeros(0, 8))


def config(width: int, site: str = "res", coefficient: float = 8.0, family: str = "topk") -> dict:
    return {"family": family, "site": site, "layer": 1, "d_sae": width, "sparsity_coefficient": coefficient}


def write_run(root: Path, configs: dict[str, dict]) -> Path:
    for name, c in configs.items():
        (root / "saes" / name).mkdir(parents=True)
        (root / "saes" / name / "config.json").write_text(json.dumps(c))
    return root


def test_no_pairs_when_widths_are_unique(tmp_path):
    run = write_run(
        tmp_path,
        {
            "res.1__w64__c8": config(64),
            "mlp.1__w256__c8": config(256, site="mlp"),
            "res.1__w256__c16": config(256, coefficient=16.0),  # another sparsity value: not a width pair
            "relu__res.1__w256__c8": config(256, family="relu"),  # another family
        },
    )
    assert splitting_pairs(run) == []
    assert splitting_pairs(tmp_path / "empty") == []


def test_pairs_are_consecutive_widths_of_one_family_site_and_sparsity():
    configs = {f"res.1__w{w}__c8": config(w) for w in (256, 64, 1024)} | {"mlp.1__w64__c8": config(64, "mlp")}
    assert width_pairs(configs) == [("res.1__w256__c8", "res.1__w1024__c8"), ("res.1__w64__c8", "res.1__w256__c8")]
