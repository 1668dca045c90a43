"""Normalisations: the loss-sensitivity weighting against its definition, and its bad inputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.sensitivity import SENSITIVITY_FILE, read_sensitivity
from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError
from saescope.train.normalize import (
    SENSITIVITY_POWER,
    estimate_sensitivity_scaling,
    estimate_standardization,
    first_rows,
    token_weights,
)


@pytest.fixture()
def store(tmp_path, tiny_tokenizer):
    cfg = HarvestConfig(
        sites="res",
        layers="0,1",
        tokens=2048,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=1024,
        store=str(tmp_path / "store"),
        device="cpu",
    )
    return ActivationStore(harvest(cfg, tiny_model("gemma3_text"), tiny_tokenizer))


def test_sensitivity_weights_each_standardised_dimension_by_the_root_of_its_loss_sensitivity(store):
    site = "res.1"
    std_scale, mean = estimate_standardization(store, site, 2048)
    fisher = read_sensitivity(store.path, site)
    # plant a dimension the loss depends on 100x more than the others, in standardised units
    planted = torch.ones_like(fisher) * len(fisher) / std_scale.double().pow(2)
    planted[3] *= 100
    save_file(
        {site: planted.float(), "res.0": read_sensitivity(store.path, "res.0")}, str(store.path / SENSITIVITY_FILE)
    )
    scale, mean2 = estimate_sensitivity_scaling(store, site, 2048)
    assert torch.equal(mean, mean2)
    weight = (std_scale / scale).double().pow(2)  # the factor each standardised dimension's square is scaled by
    assert weight[3] / weight[0] == pytest.approx(100**SENSITIVITY_POWER, rel=1e-4)
    assert weight[:3] == pytest.approx(weight[4:7], rel=1e-4)
    z = (first_rows(store, site, 2048) - mean) / scale
    assert z.pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=1e-3)  # still E||x||^2 = 1


def test_a_dimension_the_loss_ignores_keeps_a_finite_scale(store):
    fisher = read_sensitivity(store.path, "res.1")
    fisher[5] = 0
    save_file({"res.1": fisher, "res.0": read_sensitivity(store.path, "res.0")}, str(store.path / SENSITIVITY_FILE))
    scale, _ = estimate_sensitivity_scaling(store, "res.1", 2048)
    assert bool(torch.isfinite(scale).all())


def test_missing_damaged_or_misshapen_sensitivities_are_one_line(store):
    path = store.path / SENSITIVITY_FILE
    save_file({"res.1": torch.ones(3)}, str(path))
    with pytest.raises(SaescopeError, match="does not fit") as e:
        estimate_sensitivity_scaling(store, "res.1", 2048)
    assert "\n" not in str(e.value)
    with pytest.raises(SaescopeError, match="no entry for res.0"):
        estimate_sensitivity_scaling(store, "res.0", 2048)
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(SaescopeError, match="damaged"):
        estimate_sensitivity_scaling(store, "res.1", 2048)
    path.unlink()
    with pytest.raises(SaescopeError, match="saescope harvest --out") as e:
        estimate_sensitivity_scaling(store, "res.1", 2048)
    assert "--normalize standardize" in str(e.value)


def test_token_weights_follow_the_norm_power_with_mean_one():
    x = torch.randn(100, 8) * torch.linspace(0.5, 4, 100)[:, None]
    w = token_weights(x, -1.5)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    norms = x.norm(dim=1)
    assert (w[3] / w[90]).item() == pytest.approx((norms[3] / norms[90]).item() ** -1.5, rel=1e-4)
    assert torch.equal(token_weights(x, 0.0), torch.ones(100))
    x[7] = 0  # an all-zero row gets a large, finite weight
    assert bool(torch.isfinite(token_weights(x, -1.5)).all())
