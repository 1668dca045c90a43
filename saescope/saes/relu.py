"""The standard SAE: ReLU latents and an L1 penalty weighted by decoder row norms.

This is the baseline of every seed paper, in the form of Anthropic's April 2024 update: the
penalty is lambda * sum_i f_i * ||W_dec[i]||, so shrinking activations while growing the decoder
gains nothing, and the decoder needs no unit-norm constraint (`unit_decoder=False`, the default,
makes the trainer's projection and renormalisation no-ops). With `unit_decoder=True` the rows are
kept at unit norm as in Gemma Scope's recipe and the weights are all 1, the classic L1 SAE.

A ReLU SAE is a JumpReLU SAE with threshold 0, so it is released as one (same function).

The step is dense (most latents are active early and the penalty needs every activation); with
`matmul_dtype` "auto" its matmuls run in bfloat16 where the hardware multiplies it natively
(autocast; parameters, squared error and penalty stay float32). Nothing here compares values to
a threshold, so bfloat16 rounding only perturbs values, never which latents are active by more
than one rounding step.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.saes.base import SAE, LossOutput, flag_knob, loss_output, mse_of
from saescope.saes.jumprelu import JumpReLUSAE

# On inputs scaled to E||x||^2 = 1, a coefficient of a few units gives L0 in the tens to
# hundreds after a short run (the compare reproduction sweeps 1 to 10).
DEFAULT_L1_COEFFICIENT = 3.0


def l1_coefficient(value: float | None, default: float) -> float:
    """The sparsity coefficient of an L1 family (ReLU, Gated, ATM): `default` when not given, else >= 0."""
    if value is None:
        return default
    if not value >= 0:
        raise SaescopeError(f"sparsity_coefficient must be >= 0, got {value!r}")
    return float(value)


class ReLUSAE(SAE):
    """f = ReLU(pre); loss = ||y - y_hat||^2 + lambda * sum_i f_i ||W_dec[i]||."""

    arch: ClassVar[str] = "relu"
    knob_names: ClassVar[tuple[str, ...]] = ("sparsity_coefficient", "unit_decoder")

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        sparsity_coefficient: float | None = None,
        unit_decoder: bool = False,
        **common: Any,
    ) -> None:
        super().__init__(d_in, d_sae, **common)
        self.sparsity_coefficient = l1_coefficient(sparsity_coefficient, DEFAULT_L1_COEFFICIENT)
        self.unit_decoder = flag_knob("unit_decoder", unit_decoder)

    def encode(self, x: Tensor) -> Tensor:
        return self.pre_acts(x).relu()

    def _loss(self, x: Tensor, y: Tensor, sparsity_scale: float, weight: Tensor | None = None) -> LossOutput:
        with self.dense_matmuls(x.device):
            f = self.pre_acts(x).relu()
            y_hat = (f @ self.W_dec).float() + self.b_dec
            f = f.float()
        mse = mse_of(y_hat, y, weight)
        weights = self.W_dec.norm(dim=1)
        penalty = sparsity_scale * self.sparsity_coefficient * (f @ weights).mean()
        with torch.no_grad():
            active = f > 0
        return loss_output(mse + penalty, mse, y, active.sum(1), active.any(0), penalty)

    def release_form(self) -> tuple[type[SAE], dict[str, Tensor], dict[str, Any]]:
        _, arrays, knobs = super().release_form()
        threshold = torch.zeros(self.d_sae, device=self.W_enc.device)
        return JumpReLUSAE, arrays | {"threshold": threshold}, {k: v for k, v in knobs.items() if k == "transcoder"}
