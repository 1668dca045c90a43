"""Sparse autoencoder families, trained to the Gemma Scope recipe."""

from saescope.saes.atm import ATMSAE
from saescope.saes.base import SAE, LossOutput
from saescope.saes.batchtopk import BatchTopKSAE
from saescope.saes.gated import GatedSAE
from saescope.saes.jumprelu import JumpReLUSAE
from saescope.saes.matryoshka import MatryoshkaBatchTopKSAE
from saescope.saes.registry import ARCHITECTURES, make_sae, sae_class, sae_from_params, sae_from_state, sweep_knobs
from saescope.saes.relu import ReLUSAE
from saescope.saes.topk import TopKSAE

__all__ = [
    "ARCHITECTURES",
    "ATMSAE",
    "BatchTopKSAE",
    "GatedSAE",
    "JumpReLUSAE",
    "LossOutput",
    "MatryoshkaBatchTopKSAE",
    "ReLUSAE",
    "SAE",
    "TopKSAE",
    "make_sae",
    "sae_class",
    "sae_from_params",
    "sae_from_state",
    "sweep_knobs",
]
