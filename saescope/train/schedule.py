"""How the SAEs of a training job are fed and optimised: the options `saescope train`, `run` and
`compare` share (so each default is stated here once), and the learning-rate and sparsity
schedules they define.

The defaults are the recipe's scale (4B tokens, lr 7e-5, 1k-step warm-up); `saescope run` and
`compare` override a few of them for a short CPU run (`saescope/run.py`, `RUN_SCHEDULE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from saescope.config import option


@dataclass
class Schedule:
    train_tokens: int = option(
        4_000_000_000, "training tokens per SAE (the loader repeats epochs if the store is smaller)"
    )
    batch_size: int = option(4096, "tokens per step")
    lr: float = option(7e-5, "Adam learning rate")
    lr_warmup_steps: int = option(1000, "cosine warm-up from 0.1*lr to lr over these steps")
    l0_warmup_steps: int = option(
        0,
        "linear warm-up of the sparsity coefficient from 0 (the recipe: 10000; JumpReLU "
        "starts at its target L0, so it needs none)",
    )
    lr_decay: float = option(
        0.2, "share of the run at its end over which the learning rate falls linearly to 0 (the recipe: none)"
    )
    adam_beta1: float = option(
        0.0, "Adam beta1 of weights and biases (JumpReLU thresholds always take 0: momentum overshoots the target L0)"
    )
    adam_beta2: float = option(0.999, "Adam beta2")
    adam_eps: float = option(
        1e-8,
        "Adam epsilon; with beta1 = 0 an entry whose gradient is far below it moves "
        "by about lr * gradient / eps instead of lr * sign(gradient)",
    )
    normalize: Literal["sensitivity", "sensitivity-tokens", "standardize", "scalar"] = option(
        "sensitivity",
        "sensitivity: standardize, then weight each dimension by the square root of how much the LM "
        "loss depends on it (measured by the harvest); sensitivity-tokens: also weight each token's squared "
        "error by how that dependence scales with the token's norm (better for TopK on attention outputs, "
        "worse for JumpReLU on the residual stream); standardize: subtract each dimension's mean and "
        "divide by its spread (models whose residual stream has a few huge dimensions, as Gemma 3's, "
        "train far better than with scalar); scalar: divide each site by one constant so E||x||^2 = 1 "
        "(the recipe)",
    )
    token_norm: bool = option(
        False,
        "divide each token by its norm / sqrt(d_in) before the SAE and multiply the output back (SAELens' "
        "constant_norm_rescale), so latents fire by direction, not loudness: for sites the model reads "
        "through an RMSNorm",
    )
    seed: int = option(0, "seed for initialisation and shuffling")


def lr_at(step: int, cfg: Schedule, total_steps: int) -> float:
    """Cosine warm-up from 0.1*lr to lr, then constant (the recipe states no decay) until the
    last `lr_decay` share of the run, over which it falls linearly towards 0."""
    decay_steps = round(cfg.lr_decay * total_steps)
    if decay_steps and step >= total_steps - decay_steps:
        return cfg.lr * (total_steps - step) / decay_steps
    if step >= cfg.lr_warmup_steps:
        return cfg.lr
    progress = step / cfg.lr_warmup_steps
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 - math.cos(math.pi * progress)))


def sparsity_scale_at(step: int, cfg: Schedule) -> float:
    return 1.0 if step >= cfg.l0_warmup_steps else step / cfg.l0_warmup_steps
