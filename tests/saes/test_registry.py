"""Architecture registry: names, knobs and checkpoint rebuilds."""

import numpy as np
import pytest
import torch

from saescope.errors import SaescopeError
from saescope.saes import ARCHITECTURES, JumpReLUSAE, make_sae, sae_from_params, sae_from_state
from saescope.train.job import parse_knobs


def test_registry_names_the_jumprelu_family():
    assert ARCHITECTURES["jumprelu"] is JumpReLUSAE
    assert isinstance(make_sae("jumprelu", 8, 16), JumpReLUSAE)


def test_unknown_arch_raises_with_valid_names():
    with pytest.raises(SaescopeError, match=r"unknown SAE architecture 'sparsemax'.*batchtopk.*topk"):
        make_sae("sparsemax", 8, 16)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_parameter_is_contiguous(arch):
    # A transposed parameter makes autograd copy every gradient into its layout and slows each
    # product that reads it: the default run's step was 15% slower with a transposed W_enc.
    for transcoder in ("none", "skip"):
        sae = make_sae(arch, 8, 64, transcoder=transcoder)
        assert all(p.is_contiguous() for p in sae.parameters()), [n for n, p in sae.named_parameters()]


def test_state_round_trip_keeps_weights_and_knobs():
    sae = make_sae("jumprelu", 8, 16, l0_coefficient=5e-4, bandwidth=0.01)
    with torch.no_grad():
        sae.threshold.uniform_(0.1, 0.2)
    again = sae_from_state("jumprelu", 8, 16, sae.knobs(), sae.state_dict())
    assert again.knobs() == sae.knobs()
    for k, v in sae.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)


def test_state_with_wrong_shape_or_keys_is_a_saescope_error():
    state = make_sae("jumprelu", 8, 16).state_dict()
    with pytest.raises(SaescopeError, match="has shape"):
        sae_from_state("jumprelu", 8, 32, {}, state)
    with pytest.raises(SaescopeError, match="another architecture"):
        sae_from_state("jumprelu", 8, 16, {}, {k: v for k, v in state.items() if k != "threshold"})


def test_sae_from_params_builds_a_folded_sae():
    params = make_sae("jumprelu", 8, 16).folded(2.0).params_npz()
    sae = sae_from_params("jumprelu", {k: np.asarray(v) for k, v in params.items()})
    assert not sae.pre_encoder_bias
    np.testing.assert_array_equal(sae.params_npz()["threshold"], params["threshold"])


@pytest.mark.parametrize(
    "arch, name",
    [
        ("jumprelu", "unit_decoder"),
        ("jumprelu", "relative_threshold"),
        ("jumprelu", "revive_bias"),
        ("relu", "unit_decoder"),
    ],
)
def test_a_flag_knob_that_is_not_true_or_false_is_refused(arch, name):
    """`--knobs revive_bias=flase` reaches the SAE as the string 'flase', which bool() would take
    for true; it is a one-line error instead, and `false` still parses."""
    with pytest.raises(SaescopeError, match=f"{name} is true or false, got 'flase'"):
        make_sae(arch, 8, 16, **parse_knobs(f"{name}=flase"))
    assert getattr(make_sae(arch, 8, 16, **parse_knobs(f"{name}=false")), name) is False
