"""Matryoshka BatchTopK (Bussmann et al., 2025): BatchTopK whose nested prefixes of latents must
each reconstruct the input on their own.

The latents are split at fixed sizes m_1 < m_2 < ... < m_P = d_sae (here d_sae / 2^(P-1), ...,
d_sae / 2, d_sae). The reconstruction loss is the mean over prefixes of ||y - y_hat_{<m_j}||^2,
where y_hat_{<m_j} decodes only the kept latents with index below m_j. Early latents are then
pushed to carry the most general directions, which counters feature absorption. Selection,
AuxK and the inference threshold are BatchTopK's, so it is released as a JumpReLU SAE too.

The mean (rather than the paper's sum) keeps the loss in the units of one squared error, like
every other family's logged loss; with Adam the two train the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.saes.base import mse_of
from saescope.saes.batchtopk import BatchTopKSAE
from saescope.saes.topk import Code

DEFAULT_PREFIXES = 4


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """BatchTopK with nested-prefix reconstruction losses."""

    arch: ClassVar[str] = "matryoshka"
    knob_names: ClassVar[tuple[str, ...]] = (*BatchTopKSAE.knob_names, "prefixes")

    def __init__(self, d_in: int, d_sae: int, *, prefixes: int = DEFAULT_PREFIXES, **batchtopk_knobs: Any) -> None:
        super().__init__(d_in, d_sae, **batchtopk_knobs)
        if (
            isinstance(prefixes, bool)
            or not isinstance(prefixes, int)
            or not 1 <= prefixes
            or d_sae >> (prefixes - 1) < 1
        ):
            raise SaescopeError(f"prefixes must be an integer in 1..{d_sae.bit_length()}, got {prefixes!r}")
        self.prefixes = prefixes

    def prefix_sizes(self) -> list[int]:
        return [self.d_sae >> j for j in reversed(range(self.prefixes))]

    def reconstruction_loss(self, code: Code, y: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        y_hat = self.b_dec.expand_as(y)
        losses = []
        start = 0
        for end in self.prefix_sizes():
            part = (code.cols >= start) & (code.cols < end)  # keeps token-major order
            group = Code(code.rows[part], code.cols[part], code.acts[part], code.n)
            y_hat = y_hat + group.decode(self.W_dec)
            losses.append(mse_of(y_hat, y, weight))
            start = end
        return torch.stack(losses).mean(), losses[-1], y_hat
