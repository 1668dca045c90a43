"""The TopK SAE (Gao et al., 2024): each token keeps its k largest pre-activations, then ReLU.

The sparsity is the architecture, so there is no sparsity term and `k` is the knob a sweep
varies. Dead latents are revived by AuxK: the latents that have not fired for `dead_tokens`
tokens reconstruct the main reconstruction's error with their own top `aux_k` pre-activations,
and that loss (weight `aux_coefficient`, 1/32 in the paper) pulls them back towards the data.
How long each latent has gone without firing is a buffer (`tokens_since_fired`), so
checkpoints and resumed runs carry it.

The step is sparse after one dense product: the encoder matmul (optionally bfloat16) and the
selection see every latent; gathering the kept pre-activations, decoding, and every gradient
touch only the n*k kept entries (saescope/saes/sparse.py). With bfloat16 the *selection* uses
the bfloat16 product, so a latent within bfloat16 rounding (~1e-3 relative) of the k-th value
may swap places with it; the kept values are recomputed in float32.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.saes.base import SAE, LossOutput, loss_output, mse_of
from saescope.saes.sparse import dense_pre, exact_pre, gather_pre, sparse_decode

DEFAULT_K = 32
DEFAULT_AUX_K = 512
DEFAULT_AUX_COEFFICIENT = 1 / 32
# Gao et al. call a latent dead after 10M tokens without firing.
DEFAULT_DEAD_TOKENS = 10_000_000


def as_k(value: Any, d_sae: int, name: str = "k") -> int:
    """A sparsity count from a config: an integer, or a float with an integer value (sweeps
    arrive as floats from --l0-coefficients)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 0 < value <= d_sae:
        raise SaescopeError(
            f"TopK {name} must be an integer in 1..{d_sae}, got {value!r}; fix {name} in the SAE's config"
        )
    return int(value)


class Code:
    """A sparse code of a batch: kept entries in token-major order with differentiable values."""

    def __init__(self, rows: Tensor, cols: Tensor, acts: Tensor, n: int) -> None:
        self.rows, self.cols, self.acts, self.n = rows, cols, acts, n

    def decode(self, W_dec: Tensor) -> Tensor:
        return sparse_decode(self.acts, W_dec, self.rows, self.cols, self.n)


class TopKSAE(SAE):
    """k latents per token; AuxK for dead latents."""

    arch: ClassVar[str] = "topk"
    sweep_knob: ClassVar[str] = "k"
    sweep_type: ClassVar[type] = int
    knob_names: ClassVar[tuple[str, ...]] = ("k", "aux_k", "aux_coefficient", "dead_tokens")

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        k: int = DEFAULT_K,
        aux_k: int = DEFAULT_AUX_K,
        aux_coefficient: float = DEFAULT_AUX_COEFFICIENT,
        dead_tokens: int = DEFAULT_DEAD_TOKENS,
        **common: Any,
    ) -> None:
        super().__init__(d_in, d_sae, **common)
        self.k = as_k(k, d_sae)
        if isinstance(aux_k, bool) or not isinstance(aux_k, int) or aux_k < 1:
            raise SaescopeError(
                f"aux_k must be a positive integer (capped by the number of dead latents), got {aux_k!r}"
            )
        self.aux_k = aux_k
        if not aux_coefficient >= 0 or not dead_tokens >= 0:
            raise SaescopeError("aux_coefficient and dead_tokens must be >= 0")
        self.aux_coefficient = float(aux_coefficient)
        self.dead_tokens = int(dead_tokens)
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.int64))

    # ---- inference -------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        values, indices = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    # ---- training --------------------------------------------------------------------------
    @torch.no_grad()
    def select(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        """(rows, cols) of the kept entries in token-major order: the k largest per token."""
        n = pre.shape[0]
        cols = pre.topk(self.k, dim=1, sorted=False).indices.flatten()
        rows = torch.arange(n, device=pre.device).repeat_interleave(self.k)
        return rows, cols

    def code(self, xc: Tensor, pre: Tensor, rows: Tensor, cols: Tensor, exact: bool) -> Code:
        """Differentiable ReLU activations of the selected entries."""
        values = pre[rows, cols] if exact else exact_pre(xc, self.W_enc, self.b_enc, rows, cols)
        return Code(rows, cols, gather_pre(xc, self.W_enc, self.b_enc, rows, cols, values).relu(), pre.shape[0])

    def reconstruction_loss(self, code: Code, y: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(loss term, mse, full reconstruction): the squared error of the full reconstruction
        is the loss here; Matryoshka sums nested prefixes' errors instead."""
        y_hat = code.decode(self.W_dec) + self.b_dec
        mse = mse_of(y_hat, y, weight)
        return mse, mse, y_hat

    def after_selection(self, code: Code) -> None:
        """Hook for families that track statistics of the kept entries (BatchTopK's threshold)."""

    def _loss(self, x: Tensor, y: Tensor, sparsity_scale: float, weight: Tensor | None = None) -> LossOutput:
        n = x.shape[0]
        xc = self.encoder_input(x)
        bf16 = self.uses_bf16(x.device)
        pre = dense_pre(xc, self.W_enc, self.b_enc, bf16)
        rows, cols = self.select(pre)
        code = self.code(xc, pre, rows, cols, exact=not bf16)
        self.after_selection(code)
        loss, mse, y_hat = self.reconstruction_loss(code, y, weight)
        with torch.no_grad():
            active = code.acts > 0
            token_l0 = torch.zeros(n, device=x.device).index_add_(0, code.rows, active.float())
            fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device)
            fired[code.cols[active]] = True
            if self.training:
                self.tokens_since_fired.add_(n).masked_fill_(fired, 0)
        aux = self.aux_loss(xc, pre, (y - y_hat).detach(), bf16, weight)
        return loss_output(loss + aux, mse, y, token_l0, fired, torch.zeros((), device=x.device))

    def aux_loss(self, xc: Tensor, pre: Tensor, error: Tensor, bf16: bool, weight: Tensor | None) -> Tensor:
        """AuxK: the dead latents' top aux_k pre-activations per token reconstruct the error of
        the main reconstruction (detached), through the decoder without b_dec."""
        zero = torch.zeros((), device=xc.device)
        if self.aux_coefficient == 0 or not self.training:
            return zero
        dead = self.dead_latents()
        if dead.numel() == 0:
            return zero
        n, k_aux = pre.shape[0], min(self.aux_k, dead.numel())
        with torch.no_grad():
            pick = pre[:, dead].topk(k_aux, dim=1, sorted=False).indices
            cols = dead[pick].flatten()
            rows = torch.arange(n, device=pre.device).repeat_interleave(k_aux)
        aux_code = self.code(xc, pre, rows, cols, exact=not bf16)
        aux = mse_of(aux_code.decode(self.W_dec), error, weight)
        return self.aux_coefficient * aux
