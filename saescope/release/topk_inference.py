"""The TopK SAE forward, for loading TopK SAEs released by SAELens and sparsify.

Scope: inference only. saescope does not train TopK yet; when `saescope.saes.registry` gains a
"topk" family, `family_class("topk")` returns that class instead and this one is no longer used.
It exists so that a TopK SAE someone else trained can be loaded, compared and re-exported today.

Forward: `pre = (x - b_dec if pre_encoder_bias) @ W_enc + b_enc`, keep the k largest entries of
`pre` per token, apply ReLU to them, zero the rest; `recon = acts @ W_dec + b_dec`. SAELens takes
the top k and then applies ReLU; sparsify applies ReLU and then takes the top k. Both give the
same activations (they differ only in which zero entries are "kept"), and so does this.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.saes.base import SAE, LossOutput


class TopKInferenceSAE(SAE):
    """A TopK SAE that can encode, decode, fold and be released, but not be trained."""

    arch = "topk"

    def __init__(self, d_in: int, d_sae: int, *, k: int, pre_encoder_bias: bool = True) -> None:
        super().__init__(d_in, d_sae, pre_encoder_bias=pre_encoder_bias)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= d_sae:
            raise SaescopeError(f"TopK k must be an integer in 1..{d_sae}, got {k!r}; fix k in the SAE's config")
        self.k = k

    def knobs(self) -> dict[str, Any]:
        return super().knobs() | {"k": self.k}

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def loss(self, x: Tensor, sparsity_scale: float = 1.0) -> LossOutput:
        raise SaescopeError("this TopK SAE was loaded for inference only; saescope cannot train TopK SAEs yet")
