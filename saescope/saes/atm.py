"""Adaptive temporal masking (ATM; Li and Ren, "Time-Aware Feature Selection: Adaptive Temporal
Masking for Stable Sparse Autoencoder Training", arXiv 2510.08855, Oct 2025).

What the paper states and is implemented here: a ReLU SAE trained with an L1 penalty, plus
per-latent exponential moving averages of activation magnitude, firing frequency and
reconstruction contribution; an importance score computed from them that evolves over training;
and a probabilistic mask on latents whose importance falls below a statistical threshold.

What we could not recover from the sources available to us (the abstract and summaries, not the
method section), and chose ourselves, each a knob:
- how the three averages combine: here the mean of the three, each divided by its mean over
  latents (so no one statistic's units dominate);
- the threshold: mean(importance) - `mask_z` * std(importance) over latents;
- the masking probability: min(1, (threshold - importance) / std) for latents below it, drawn
  once per latent per batch, applied to the latent's activations in the training forward only;
- the EMA decay (`ema_decay`), the step masking starts at (`mask_start`), and "contribution"
  measured as the mean over tokens of f_i^2 ||W_dec[i]||^2 (the energy the latent adds);
- inference applies no mask (the paper calls ATM a training approach).
The released SAE is the ReLU SAE as JumpReLU with threshold 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.saes.base import LossOutput, loss_output, mse_of
from saescope.saes.relu import ReLUSAE


class ATMSAE(ReLUSAE):
    """ReLU + norm-weighted L1 with adaptive temporal masking of unimportant latents."""

    arch: ClassVar[str] = "atm"
    knob_names: ClassVar[tuple[str, ...]] = (*ReLUSAE.knob_names, "ema_decay", "mask_z", "mask_start")

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        ema_decay: float = 0.99,
        mask_z: float = 1.0,
        mask_start: int = 100,
        **relu_knobs: Any,
    ) -> None:
        super().__init__(d_in, d_sae, **relu_knobs)
        if not 0 < ema_decay < 1 or mask_z < 0 or mask_start < 0:
            raise SaescopeError("ATM needs 0 < ema_decay < 1, mask_z >= 0 and mask_start >= 0")
        self.ema_decay, self.mask_z, self.mask_start = float(ema_decay), float(mask_z), int(mask_start)
        for name in ("ema_magnitude", "ema_frequency", "ema_contribution"):
            self.register_buffer(name, torch.zeros(d_sae))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def importance(self) -> Tensor:
        stats = (self.ema_magnitude, self.ema_frequency, self.ema_contribution)
        return sum(s / s.mean().clamp_min(1e-12) for s in stats) / 3

    @torch.no_grad()
    def mask_probability(self) -> Tensor:
        """Per latent, the chance of being masked in this step (zero before mask_start)."""
        if int(self.steps) < self.mask_start:
            return torch.zeros(self.d_sae, device=self.b_enc.device)
        score = self.importance()
        spread = score.std().clamp_min(1e-12)
        cut = score.mean() - self.mask_z * spread
        return ((cut - score) / spread).clamp(0.0, 1.0)

    @torch.no_grad()
    def _track(self, f: Tensor) -> None:
        active = f > 0
        fired = active.float().mean(0)
        magnitude = f.sum(0) / active.sum(0).clamp_min(1)
        contribution = f.pow(2).mean(0) * self.W_dec.pow(2).sum(1)
        d = self.ema_decay
        for ema, now in (
            (self.ema_magnitude, magnitude),
            (self.ema_frequency, fired),
            (self.ema_contribution, contribution),
        ):
            ema.mul_(d).add_((1 - d) * now)
        self.steps += 1

    def _loss(self, x: Tensor, y: Tensor, sparsity_scale: float, weight: Tensor | None = None) -> LossOutput:
        with self.dense_matmuls(x.device):
            f = self.pre_acts(x).relu().float()
            if self.training:
                keep = torch.rand(self.d_sae, device=f.device) >= self.mask_probability()
                f = f * keep
                self._track(f.detach())
            y_hat = (f @ self.W_dec).float() + self.b_dec
        mse = mse_of(y_hat, y, weight)
        penalty = sparsity_scale * self.sparsity_coefficient * (f @ self.W_dec.norm(dim=1)).mean()
        with torch.no_grad():
            active = f > 0
        return loss_output(mse + penalty, mse, y, active.sum(1), active.any(0), penalty)
