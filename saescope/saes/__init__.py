"""Sparse autoencoder families, trained to the Gemma Scope recipe."""

from saescope.saes.base import SAE, LossOutput
from saescope.saes.jumprelu import JumpReLUSAE
from saescope.saes.registry import ARCHITECTURES, make_sae, sae_class, sae_from_params, sae_from_state

__all__ = [
    "ARCHITECTURES",
    "JumpReLUSAE",
    "LossOutput",
    "SAE",
    "make_sae",
    "sae_class",
    "sae_from_params",
    "sae_from_state",
]
