"""Which computation trains a JumpReLU step: the plain autograd reference, or one of the two fast paths
of saescope/saes/sparse.py (`JumpReLUStep`), dense or sparse, by the share of entries the step before kept.

Both fast paths give the reference's values and gradients up to float rounding; which one is faster
depends on how many [tokens, d_sae] entries are active or inside the estimator's window, on the dtype of
the products and on the hardware, never on what the SAE learns.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.models.loading import narrow_float32_cpu

PATH_VARIABLE = "SAESCOPE_JUMPRELU_PATH"
PATHS = ("auto", "sparse", "dense", "plain")

# Above this share of [tokens, d_sae] entries active or inside the window, the sparse step costs more than the
# dense one. With bfloat16 products and in float32 with AVX-512, the forced-path rows of benchmarks/train_step.py
# crossed near 2.5% and 6% on an AMX Xeon; on AVX2 alone the default run's 54 SAEs, which keep 8-13%, stepped
# 1.54x faster sparse, and sparse broke even near 20-25% (experiments/step_paths.py; README, "SAE families").
# With the recipe's init about half of all latents fire at first.
DENSE_ABOVE = {"bfloat16": 0.025, "float32": 0.05, "float32, AVX2": 0.2}
_PROBE_SHARE, _PROBE_MIN_ROWS = 32, 16  # the first step's probe: a 32nd of the batch, at least 16 rows


def dense_above(bf16: bool, device: torch.device) -> float:
    """The share of kept entries from which a step on `device` runs dense (DENSE_ABOVE)."""
    return DENSE_ABOVE["bfloat16" if bf16 else "float32, AVX2" if narrow_float32_cpu(device.type) else "float32"]


@torch.no_grad()
def dense_share(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, theta: Tensor, eps: float, pre_encoder_bias: bool
) -> float:
    """Share of entries active or in the window, estimated on the batch's first rows (a 3% matmul),
    for a first step, which has no share of the step before (`JumpReLUSAE.kept_share`)."""
    rows = x[: max(_PROBE_MIN_ROWS, len(x) // _PROBE_SHARE)]
    xc = rows - b_dec if pre_encoder_bias else rows
    return (torch.addmm(b_enc, xc, W_enc) > theta - eps / 2).float().mean().item()


def step_path() -> str:
    """The path `SAESCOPE_JUMPRELU_PATH` asks for. An environment variable, not a knob: it changes
    how a step is computed, never what the SAE is, so it stays out of configs and released SAEs."""
    path = os.environ.get(PATH_VARIABLE) or "auto"
    if path not in PATHS:
        raise SaescopeError(f"{PATH_VARIABLE}={path} is not one of {', '.join(PATHS)}; unset it for the default")
    return path
