"""BatchTopK (Bussmann et al., 2024): keep the n*k largest pre-activations of a batch of n tokens
rather than k per token, so tokens that need more latents get them.

A batch-level choice has no per-token meaning at inference, so the SAE tracks one threshold:
a running mean over batches of the smallest positive kept activation (`threshold`, a buffer,
plain mean over the first `threshold_window` batches then an exponential average with that
window, so early batches from a still-moving SAE are forgotten). Inference is JumpReLU with
that threshold for every latent, and the SAE is released as that JumpReLU SAE.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.saes.base import SAE
from saescope.saes.jumprelu import JumpReLUSAE
from saescope.saes.topk import Code, TopKSAE

DEFAULT_THRESHOLD_WINDOW = 100


class BatchTopKSAE(TopKSAE):
    """n*k latents per batch of n tokens; a tracked threshold for inference; AuxK as TopK."""

    arch: ClassVar[str] = "batchtopk"
    knob_names: ClassVar[tuple[str, ...]] = (*TopKSAE.knob_names, "threshold_window")

    def __init__(
        self, d_in: int, d_sae: int, *, threshold_window: int = DEFAULT_THRESHOLD_WINDOW, **topk_knobs: Any
    ) -> None:
        super().__init__(d_in, d_sae, **topk_knobs)
        if isinstance(threshold_window, bool) or not isinstance(threshold_window, int) or threshold_window < 1:
            raise SaescopeError(f"threshold_window must be a positive integer, got {threshold_window!r}")
        self.threshold_window = threshold_window
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    @torch.no_grad()
    def select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """The n*k largest entries of the batch, token-major (flat indices sorted ascending)."""
        n, d_sae = pre.shape
        flat = pre.flatten()
        kept = min(n * self.k, flat.numel())
        # The kept set is everything >= the kept-th largest value: a selection (kthvalue) and a
        # comparison are cheaper than a top-k of n*k entries over n*d_sae candidates.
        cut = flat.kthvalue(flat.numel() - kept + 1).values
        index = (flat >= cut).nonzero().squeeze(1)
        if index.numel() > kept:  # ties at the cut: keep the first ones, as topk would keep some
            index = torch.cat([(flat > cut).nonzero().squeeze(1), (flat == cut).nonzero().squeeze(1)])[:kept]
            index = index.sort().values
        return index // d_sae, index % d_sae

    @torch.no_grad()
    def after_selection(self, code: Code) -> None:
        if not self.training:
            return
        positive = code.acts[code.acts > 0]
        if positive.numel() == 0:
            return
        self.threshold_updates += 1
        weight = 1.0 / min(int(self.threshold_updates), self.threshold_window)
        self.threshold += weight * (positive.min() - self.threshold)

    def release_form(self) -> tuple[type[SAE], dict[str, Tensor], dict[str, Any]]:
        _, arrays, _ = super().release_form()
        threshold = self.threshold.detach().expand(self.d_sae).clone()
        knobs = {"transcoder": self.transcoder} if self.transcoder != "none" else {}
        return JumpReLUSAE, arrays | {"threshold": threshold}, knobs
