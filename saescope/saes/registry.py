"""Architecture names to classes, so configs, checkpoints and the CLI can say "jumprelu"."""

from __future__ import annotations

from typing import Any

import torch

from saescope.errors import SaescopeError
from saescope.saes.atm import ATMSAE
from saescope.saes.base import SAE, SHARED_KNOBS
from saescope.saes.batchtopk import BatchTopKSAE
from saescope.saes.gated import GatedSAE
from saescope.saes.jumprelu import JumpReLUSAE
from saescope.saes.matryoshka import MatryoshkaBatchTopKSAE
from saescope.saes.relu import ReLUSAE
from saescope.saes.topk import TopKSAE

# "topk" with knob `k` is also what saescope.release.interop loads SAELens and sparsify TopK
# SAEs into: keep that name and knob.
ARCHITECTURES: dict[str, type[SAE]] = {
    cls.arch: cls for cls in (JumpReLUSAE, ReLUSAE, GatedSAE, TopKSAE, BatchTopKSAE, MatryoshkaBatchTopKSAE, ATMSAE)
}


def sae_class(arch: str) -> type[SAE]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise SaescopeError(f"unknown SAE architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}") from None


def sweep_knobs(arch: str, value: float, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The knob a sparsity sweep sets for this family, given its other knobs: {"target_l0": value}
    for JumpReLU with a penalty toward a target (its default) and {"l0_coefficient": value} with
    l0_penalty=l0, {"sparsity_coefficient": value} for the L1 families, {"k": int(value)} for the
    TopK ones."""
    cls = sae_class(arch)
    knob = cls.sweep_knob_for(knobs or {})
    if cls.sweep_type is int and value != int(value):
        raise SaescopeError(f"{arch} sweeps {knob}, an integer; got {value!r}")
    return {knob: cls.sweep_type(value)}


def make_sae(arch: str, d_in: int, d_sae: int, **knobs: Any) -> SAE:
    """A freshly initialised SAE; unknown knobs fail with the family's valid ones listed."""
    cls = sae_class(arch)
    try:
        return cls(d_in, d_sae, **knobs)
    except TypeError as e:
        valid = ", ".join(sorted({*cls.knob_names, *SHARED_KNOBS}))
        raise SaescopeError(f"bad option for {arch} SAE: {e}; valid knobs: {valid}") from None


def sae_from_state(arch: str, d_in: int, d_sae: int, knobs: dict[str, Any], state: dict[str, torch.Tensor]) -> SAE:
    """Rebuild a training checkpoint: make_sae with the saved knobs, then its state_dict.
    Shape mismatches become one-line errors naming the checkpoint's problem."""
    sae = make_sae(arch, d_in, d_sae, **knobs)
    expected = sae.state_dict()
    if set(state) != set(expected):
        raise SaescopeError(
            f"checkpoint tensors {sorted(state)} do not match a {arch} SAE's {sorted(expected)}: another "
            "architecture, or other knobs (defaults change between saescope versions); pass the run's --knobs "
            "or delete the checkpoint to start over"
        )
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise SaescopeError(
                f"checkpoint {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)} "
                f"for d_in={d_in}, d_sae={d_sae}"
            )
    sae.load_state_dict(state)
    return sae


def sae_from_params(arch: str, params: dict[str, Any], **knobs: Any) -> SAE:
    """A released SAE (Gemma Scope params.npz arrays) of the given family."""
    return sae_class(arch).from_params(params, **knobs)
