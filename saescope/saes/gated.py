"""The Gated SAE (Rajamanoharan et al., 2024): a gate decides which latents fire, a magnitude
path decides how strongly, and the two share encoder directions.

    pi_gate = xc @ W_enc + b_enc            (W_enc, b_enc are the gate's weights)
    pi_mag  = exp(r_mag) * (xc @ W_enc) + b_mag
    f       = 1[pi_gate > 0] * ReLU(pi_mag)

Loss: ||y - y_hat||^2 + lambda * sum_i ReLU(pi_gate)_i (decoder rows unit norm, so this is the
paper's norm-weighted L1) + ||y - y_hat_frozen(ReLU(pi_gate))||^2, the auxiliary loss that
reconstructs from the gate's own activations through a frozen (detached) decoder: without it
the gate receives gradient only from the sparsity term and would just switch off.

Inference is exactly a JumpReLU SAE with W_enc' = exp(r_mag) * W_enc, b_enc' = b_mag and
threshold' = max(0, b_mag - exp(r_mag) * b_enc) (the Jumping Ahead paper's observation), which
is how it is released.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saescope.saes.base import SAE, LossOutput, loss_output, mse_of
from saescope.saes.jumprelu import JumpReLUSAE
from saescope.saes.relu import l1_coefficient

DEFAULT_L1_COEFFICIENT = 1.0


class GatedSAE(SAE):
    """Gate and magnitude paths with tied directions; released as the equivalent JumpReLU."""

    arch: ClassVar[str] = "gated"
    knob_names: ClassVar[tuple[str, ...]] = ("sparsity_coefficient",)

    def __init__(self, d_in: int, d_sae: int, *, sparsity_coefficient: float | None = None, **common: Any) -> None:
        super().__init__(d_in, d_sae, **common)
        self.sparsity_coefficient = l1_coefficient(sparsity_coefficient, DEFAULT_L1_COEFFICIENT)
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag = nn.Parameter(torch.zeros(d_sae))

    def _paths(self, x: Tensor) -> tuple[Tensor, Tensor]:
        proj = self.encoder_input(x) @ self.W_enc
        return proj + self.b_enc, proj * self.r_mag.exp() + self.b_mag

    def encode(self, x: Tensor) -> Tensor:
        pi_gate, pi_mag = self._paths(x)
        return (pi_gate > 0) * pi_mag.relu()

    def _loss(self, x: Tensor, y: Tensor, sparsity_scale: float, weight: Tensor | None = None) -> LossOutput:
        """Dense step; matmuls in bfloat16 under `matmul_dtype` as ReLUSAE's."""
        with self.dense_matmuls(x.device):
            pi_gate, pi_mag = self._paths(x)
            pi_gate, pi_mag = pi_gate.float(), pi_mag.float()
            gate = pi_gate > 0
            f = gate * pi_mag.relu()
            gate_acts = pi_gate.relu()
            y_hat = (f @ self.W_dec).float() + self.b_dec
            y_aux = (gate_acts @ self.W_dec.detach()).float() + self.b_dec.detach()
        mse = mse_of(y_hat, y, weight)
        penalty = sparsity_scale * self.sparsity_coefficient * gate_acts.sum(dim=1).mean()
        aux = mse_of(y_aux, y, weight)
        with torch.no_grad():
            active = f > 0
        return loss_output(mse + penalty + aux, mse, y, active.sum(1), active.any(0), penalty)

    def release_form(self) -> tuple[type[SAE], dict[str, Tensor], dict[str, Any]]:
        scale = self.r_mag.detach().exp()
        arrays = {
            "W_enc": self.W_enc.detach() * scale,
            "W_dec": self.W_dec.detach(),
            "b_enc": self.b_mag.detach(),
            "b_dec": self.b_dec.detach(),
            "threshold": (self.b_mag.detach() - scale * self.b_enc.detach()).clamp(min=0.0),
        }
        knobs = {"transcoder": self.transcoder} if self.transcoder != "none" else {}
        return JumpReLUSAE, arrays, knobs
