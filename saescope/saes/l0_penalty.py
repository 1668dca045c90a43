"""The L0 term of JumpReLU's loss: Gemma Scope's lambda * L0, Gemma Scope 2's quadratic pull to a
target, and `steered`: lambda * L0 with lambda moved between steps so that the SAE ends at its
target L0.

Why steered: with a fixed lambda the recipe's term trains better SAEs for the L0 they reach than the
mean-quadratic pull does with the same init and optimiser (head-to-head res.6 rows, weighted FVU 0.188
against 0.206 at L0 30; README, round 26), but which L0 a lambda reaches depends on the site, the width
and the budget, so a sweep by lambda lands anywhere. The mean-quadratic pull holds its target, but its
slope is zero at the target and swings sign with each batch's L0 noise (4 lambda / T times a few
latents is ~20x the lambda that holds L0 at 32), so the thresholds get a noisy push instead of a steady
one. Steering keeps the recipe's form and a positive, slowly moving lambda near the target:

    lambda = base * (1 + STEER_GAIN * (r - 1)),   r = running mean of (batch L0 / target)
    log base += STEER_RATE * clamp(log(batch L0 / target), -1, 1)   after every step

The proportional part reacts within tens of steps (and turns negative, pulling thresholds down, below
3/4 of the target); the integral part makes the target the end point. `base` starts at
l0_coefficient / target (0.036: lambda * L0 at the end of fixed-lambda runs on standardised Gemma 3
270M sites). Both live in the SAE's buffers, so a checkpoint resumes them exactly, and the trainer
feeds them the whole batch's L0 (all data ranks) through `after_step`.
"""

from __future__ import annotations

import torch
from torch import Tensor

L0_PENALTIES = ("steered", "l0", "quadratic", "mean-quadratic")
# Gemma Scope's sweeps were named by lambda (folders such as sparsity_coefficient_0p001 in
# google/gemma-scope-2b-pt-res): on inputs with E||x||^2 = 1, L0 of tens to low hundreds, so 1e-3 is the
# recipe's middle. The quadratic penalties have slope lambda at L0 = 1.25 T; mean-quadratic takes 0.1, as
# 0.03 ended short runs below the target (round 16, README). steered: the starting lambda * target.
DEFAULT_L0_COEFFICIENTS = {"steered": 0.036, "l0": 1e-3, "quadratic": 3e-3, "mean-quadratic": 0.1}
STEER_GAIN = 4.0
STEER_RATE = 0.01
STEER_MEMORY = 0.9  # weight of the running L0 ratio kept per step: a memory of ~10 batches


def l0_term(kind: str, coefficient: float, token_l0: Tensor, target: float | None, steer: Tensor | None) -> Tensor:
    """The L0 penalty of a batch from each token's (straight-through) L0. `steer` holds (base, r)
    for kind "steered" and is ignored by the others."""
    if kind == "l0":
        return coefficient * token_l0.mean()
    if kind == "quadratic":
        return coefficient * (2 / target * (token_l0 - target).pow(2)).mean()
    if kind == "mean-quadratic":
        return coefficient * 2 / target * (token_l0.mean() - target).pow(2)
    base, ratio = steer[0], steer[1]
    return (base * (1 + STEER_GAIN * (ratio - 1))).detach() * token_l0.mean()


@torch.no_grad()
def steer_after_step(steer: Tensor, l0: Tensor, target: float) -> None:
    """Move (base, r) in place by one step's batch L0 (the mean over the whole batch)."""
    ratio = l0.float() / target
    steer[1].mul_(STEER_MEMORY).add_((1 - STEER_MEMORY) * ratio)
    steer[0].mul_((STEER_RATE * ratio.clamp(min=1e-3).log().clamp(-1, 1)).exp())
