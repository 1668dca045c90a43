"""The JumpReLU SAE of Gemma Scope, with a training step that is sparse after one dense matmul.

Why the step is written by hand: a dense JumpReLU step spends most of its time in elementwise
passes over the [tokens, d_sae] pre-activations (masks, the estimator's window test, casts) and
in two backward matmuls against a matrix that is ~98% zeros. Here the encoder matmul is the
only dense [n, d_sae] computation; one comparison per element picks the entries that are
active or inside the estimator's window, and every other product runs on those entries alone
(gather-sum and gather-dot kernels that torch ships for embedding bags). The gradients are the
recipe's straight-through estimators, equal to a dense autograd implementation up to float
rounding (tests/saes/test_jumprelu.py holds that reference).

With the recipe's init (theta = 0.001 on unit-scale inputs) about half of all latents fire, and
then index lists of that size cost far more than dense products: a probe of the batch's first rows
sends such steps to `_DenseJumpReLU` (the same estimators on dense tensors, float32 pre-activations),
so those steps cost what a plain dense loop costs and the sparse kernels take over once few
entries are active or in the window.

Optionally the encoder matmul runs in bfloat16. Its rounding (~1e-3 on unit-scale inputs) is
larger than half the estimator's bandwidth, so every entry within 8 standard deviations of
that rounding noise from the threshold or the window's edges is recomputed in float32: which
latents are active and which fall in the window is decided as in float32. Only the values of
clearly active latents keep the bfloat16 product's rounding.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError
from saescope.saes.base import SAE, LossOutput, loss_output
from saescope.saes.sparse import gather_dot, gather_sum, group_starts, sort_order

# Dense pre-activations are produced a block of rows at a time so memory stays bounded at
# Gemma Scope widths (2^20 latents x 4096 tokens would be 16 GiB in one piece).
_BLOCK_ELEMENTS = 1 << 24

_BF16_UNIT_ROUNDOFF = 2.0**-8
_FP32_UNIT_ROUNDOFF = 2.0**-24

# Sparsity penalties and their default lambda. Gemma Scope's released sweeps were named by lambda
# (folders such as sparsity_coefficient_0p0005 and 0p001 in google/gemma-scope-2b-pt-res); on
# inputs scaled to E||x||^2 = 1 those gave average L0 of tens to low hundreds, so 1e-3 is the
# recipe's middle. The two penalties toward a target L0 have the linear one's slope at L0 = 1.25 T
# times lambda / (lambda of these defaults): measured by experiments/jumprelu.py (README).
L0_PENALTIES = ("l0", "quadratic", "mean-quadratic")
DEFAULT_L0_COEFFICIENTS = {"l0": 1e-3, "quadratic": 3e-3, "mean-quadratic": 0.03}
# saescope's defaults, each measured against the recipe's in experiments/jumprelu.py (README,
# "JumpReLU defaults"); `--preset gemma-scope` restores the recipe (l0, bandwidth and threshold
# 0.001, no data init, no frequency penalty).
DEFAULT_L0_PENALTY = "mean-quadratic"
DEFAULT_TARGET_L0 = 64.0
DEFAULT_BANDWIDTH = 0.03
DEFAULT_FREQ_COEFFICIENT = 0.3
# Gemma Scope reports latents firing on more than 10% of tokens as "high frequency"; the penalty
# charges from half that share, so that latents stay clear of it on text they were not trained on
# (attention sites kept 50-170 such latents on held-out text with 0.1).
DEFAULT_FREQ_TARGET = 0.05

# The frequency penalty never charges below this multiple of the target's mean firing share
# T / d_sae: a target of 100 of 1024 latents has a mean share of ~10%, and a fixed 5% line then
# fought the L0 target (a real-model test ended at L0 45 for a target of 100).
FREQ_ABOVE_MEAN = 1.5

# A latent that has not fired for this many tokens counts as dead, and the revival term pulls its
# threshold down and its pre-activations up until it fires again (TopK's AuxK plays that role there).
DEFAULT_DEAD_TOKENS = 50_000
DEFAULT_REVIVE_COEFFICIENT = 0.0

# Free decoder rows (unit_decoder=false) start at this norm, encoder their transpose: they
# reconstruct better for their L0 than unit rows or free rows from norm 1 (experiments/jumprelu.py
# rounds 7 and 9), but hold a target L0 only with faster thresholds (threshold_lr, round 11), and
# those left attention SAEs at low targets with half their latents dead (README), so the defaults
# keep unit rows.
FREE_INIT_NORM = 0.1

MATMUL_DTYPES = ("auto", "float32", "bfloat16")


# ---- sparse kernels (shared with the TopK families) ------------------------------------------
_group_starts, _gather_sum, _gather_dot = group_starts, gather_sum, gather_dot

# Above this share of [tokens, d_sae] entries active or inside the window, the sparse step costs
# more than the dense one (index lists of that size and scattered reads lose to three matmuls;
# the forced-path rows of benchmarks/train_step.py measure both). With the recipe's init (theta =
# 0.001 on unit-scale inputs) about half of all latents fire at first; with saescope's data init
# and 0.03 bandwidth, 5-7% of entries are active or in the window at L0 64 of 2048.
DENSE_ABOVE = 0.05
_PROBE_ROWS = 128


def _bf16_below(v: Tensor) -> Tensor:
    """A bfloat16 value <= v (round-to-nearest moves by at most 2^-8 relative)."""
    return (v - v.abs() * 2.0**-7).to(torch.bfloat16)


def _bf16_above(v: Tensor) -> Tensor:
    """A bfloat16 value >= v."""
    return (v + v.abs() * 2.0**-7).to(torch.bfloat16)


@functools.cache
def _native_bf16_matmul(device_type: str) -> bool:
    """bfloat16 only pays where the hardware multiplies it natively (CUDA with bf16, x86 with
    AVX512-BF16 or AMX); emulated it is no faster than float32 and the recompute is extra."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text().split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def _bf16_margin(x_l2: Tensor, x_inf: Tensor, w_l2: Tensor, w_inf: Tensor, d_in: int) -> Tensor:
    """Per latent, how far a bfloat16 product x @ W_c can plausibly sit from the float32 one,
    for rows whose largest 2-norm is x_l2 and largest entry x_inf.

    Rounding both inputs to bfloat16 perturbs each term x_i W_i by a relative error up to 2u,
    u = 2^-8. The worst case (all errors aligned, 2u * sum |x_i W_i|) is ~sqrt(d_in) times the
    real error and would send ~1.7M entries of a 4096 x 16384 step to the float32 recompute,
    costing more than bfloat16 saves. The errors are rounding noise with standard deviation
    u * sqrt(2/3) * sqrt(sum x_i^2 W_i^2) <= u * sqrt(2/3) * min(||x||_2 max|W|, max|x| ||W||_2).
    We allow 8 of those (measured errors stay below 4) plus the float32 accumulation bound."""
    u = _BF16_UNIT_ROUNDOFF
    spread = torch.minimum(x_l2 * w_inf, x_inf * w_l2)
    return 8 * u * (2 / 3) ** 0.5 * spread + d_in * _FP32_UNIT_ROUNDOFF * x_l2 * w_l2


@torch.no_grad()
def _bias_grads(g: Tensor, colsum: Tensor, W_enc: Tensor, need_b_enc: bool, need_b_dec: bool,
                pre_encoder_bias: bool) -> tuple[Tensor | None, Tensor | None]:
    """Both backward paths: b_enc gets the summed pre-activation gradient; b_dec the output
    gradient, minus what flows back through the encoder when it is also subtracted before encoding."""
    grad_b_enc = colsum if need_b_enc else None
    grad_b_dec = None
    if need_b_dec:
        grad_b_dec = g.sum(0)
        if pre_encoder_bias:
            grad_b_dec = grad_b_dec - W_enc @ colsum
    return grad_b_enc, grad_b_dec


def _select_entries(
    xc: Tensor, W_enc: Tensor, b_enc: Tensor, theta: Tensor, eps: float, bf16: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The (token, latent) entries that are active or inside the estimator's window
    |pre - theta| < eps/2, in token-major order, with their float32 pre-activations.

    pre = xc @ W_enc + b_enc > theta - eps/2 is tested as xc @ W_enc >= lo with b_enc folded
    into the per-latent bound, so the dense block sees one matmul and one comparison.
    """
    n, d_in = xc.shape
    d_sae = W_enc.shape[1]
    lo = theta - b_enc - eps / 2
    if bf16:
        # Bounds are taken per block of rows; blocks are small so that one long row does not
        # widen the bound for the whole batch.
        x_l2, x_inf = xc.norm(dim=1), xc.abs().amax(dim=1)
        w_l2, w_inf = W_enc.norm(dim=0), W_enc.abs().amax(dim=0)
        a, w = xc.to(torch.bfloat16), W_enc.to(torch.bfloat16)
        block = max(1, min(256, _BLOCK_ELEMENTS // d_sae))
    else:
        # Only float32 rounding of the folded bias separates the two tests.
        lo_b = lo - 1e-6 * (theta.abs() + b_enc.abs() + eps)
        a, w = xc, W_enc
        block = max(1, _BLOCK_ELEMENTS // d_sae)
    rows, cols, vals, settled = [], [], [], []
    for start in range(0, n, block):
        if bf16:
            rows_ = slice(start, start + block)
            err = _bf16_margin(x_l2[rows_].max(), x_inf[rows_].max(), w_l2, w_inf, d_in)
            # Rounding the product to bfloat16 is monotone, so bounds rounded outward stay safe.
            lo_b, hi_b = _bf16_below(lo - err), _bf16_above(lo + eps + err)
        out = a[start : start + block] @ w
        r, c = (out >= lo_b).nonzero(as_tuple=True)
        v = out[r, c]
        if bf16:
            settled.append(v > hi_b[c])  # certainly above theta + eps/2: active, not in window
        rows.append(r + start)
        cols.append(c)
        vals.append(v)
    rows, cols = torch.cat(rows), torch.cat(cols)
    pre = torch.cat(vals).to(torch.float32) + b_enc[cols]
    if bf16:
        settled = torch.cat(settled)
        unsure = (~settled).nonzero().squeeze(1)
        if unsure.numel():
            unsure = unsure[sort_order(cols[unsure])]
            r, c = rows[unsure], cols[unsure]
            exact = _gather_dot(W_enc.t().contiguous(), c, xc, r, _group_starts(c, d_sae))
            pre[unsure] = exact + b_enc[c]
    t = theta[cols]
    active = pre > t
    window = (pre - t).abs() < eps / 2
    if bf16:
        active |= settled
        window &= ~settled
    keep = (active | window).nonzero().squeeze(1)
    return rows[keep], cols[keep], pre[keep], active[keep], window[keep]


class _SparseJumpReLU(torch.autograd.Function):
    """x_hat = JumpReLU(pre) @ W_dec + b_dec, plus per-token and per-latent counts of active
    latents (the differentiable L0), with the recipe's straight-through gradients:

      d x_hat-path / d pre   = H(pre - theta)                        (through JumpReLU)
      d JumpReLU / d theta   = -(theta / eps) K((pre - theta) / eps)  times the upstream grad
      d H(pre - theta)/d theta = -(1 / eps) K((pre - theta) / eps)     (the L0 counts; none to pre)
    with K(u) = 1[|u| < 1/2].
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                theta: Tensor, eps: float, pre_encoder_bias: bool, bf16: bool) -> tuple[Tensor, Tensor, Tensor]:
        n, d_sae = x.shape[0], W_enc.shape[1]
        xc = x - b_dec if pre_encoder_bias else x
        rows, cols, pre, active, window = _select_entries(xc, W_enc, b_enc, theta, eps, bf16)
        f = pre * active
        x_hat = _gather_sum(cols, W_dec, _group_starts(rows, n), f) + b_dec
        fired = active.to(x.dtype)
        token_l0 = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, rows, fired)
        latent_counts = torch.zeros(d_sae, dtype=x.dtype, device=x.device).index_add_(0, cols, fired)
        ctx.save_for_backward(xc, W_enc, W_dec, theta, rows, cols, f, active, window)
        ctx.eps, ctx.pre_encoder_bias = eps, pre_encoder_bias
        return x_hat, token_l0, latent_counts

    @staticmethod
    def backward(ctx: Any, grad_x_hat: Tensor, grad_token_l0: Tensor, grad_latent_counts: Tensor):
        xc, W_enc, W_dec, theta, rows, cols, f, active, window = ctx.saved_tensors
        eps = ctx.eps
        n, d_sae = xc.shape[0], W_enc.shape[1]
        need_x, need_W_enc, need_b_enc, need_W_dec, need_b_dec, need_theta = ctx.needs_input_grad[:6]
        g = grad_x_hat.contiguous()

        # Latent-major order: the products below then reuse one decoder/encoder row per group
        # and stream the small [n, d_in] matrices, which stay in cache.
        order = sort_order(cols)
        rows_t, cols_t = rows[order], cols[order]
        starts_t = _group_starts(cols_t, d_sae)
        grad_f = _gather_dot(W_dec, cols_t, g, rows_t, starts_t)  # d loss / d f at kept entries
        grad_pre = grad_f * active[order]

        grad_x = grad_W_enc = grad_b_enc = grad_W_dec = grad_b_dec = grad_theta = None
        if need_theta:
            win = window[order]
            wc, wr = cols_t[win], rows_t[win]
            jump = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, wc, grad_f[win])
            step = torch.zeros_like(jump).index_add_(0, wc, grad_token_l0[wr])
            step += torch.bincount(wc, minlength=d_sae).to(g.dtype) * grad_latent_counts
            grad_theta = -(theta / eps) * jump - step / eps
        if need_W_dec:
            grad_W_dec = _gather_sum(rows_t, g, starts_t, f[order])
        if need_W_enc:
            grad_W_enc = _gather_sum(rows_t, xc, starts_t, grad_pre).t().contiguous()
        colsum = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols_t, grad_pre)
        grad_b_enc, grad_b_dec = _bias_grads(g, colsum, W_enc, need_b_enc, need_b_dec, ctx.pre_encoder_bias)
        if need_x:
            grad_pre_rows = torch.empty_like(grad_pre)
            grad_pre_rows[order] = grad_pre
            grad_x = _gather_sum(cols, W_enc.t().contiguous(), _group_starts(rows, n), grad_pre_rows)
        return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, grad_theta, None, None, None


def _mm(a: Tensor, b: Tensor, bf16: bool) -> Tensor:
    """a @ b, in bfloat16 (result float32) where the hardware multiplies it natively."""
    return (a.to(torch.bfloat16) @ b.to(torch.bfloat16)).to(torch.float32) if bf16 else a @ b


class _DenseJumpReLU(torch.autograd.Function):
    """The same function and gradients as `_SparseJumpReLU`, with dense [n, d_sae] tensors: the
    cheaper way while a large share of entries is active or in the window (the recipe's init, or a
    wide bandwidth). The pre-activations are float32, so which entries are active or in the window
    is decided exactly as the sparse path decides; with `bf16` the four products that only carry
    values (decoding and the backward products) run in bfloat16, ~4x faster on AMX, with the
    rounding of a bfloat16 matmul (~0.4%) in those values and gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor,
                theta: Tensor, eps: float, pre_encoder_bias: bool, bf16: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        xc = x - b_dec if pre_encoder_bias else x
        pre = torch.addmm(b_enc, xc, W_enc)  # float32 always: it decides who is active / in the window
        active = pre > theta
        f = pre * active
        x_hat = _mm(f, W_dec, bf16) + b_dec
        fired = active.to(x.dtype)
        ctx.save_for_backward(xc, W_enc, W_dec, theta, pre, f)
        ctx.eps, ctx.pre_encoder_bias, ctx.bf16 = eps, pre_encoder_bias, bf16
        return x_hat, fired.sum(1), fired.sum(0)

    @staticmethod
    def backward(ctx: Any, grad_x_hat: Tensor, grad_token_l0: Tensor, grad_latent_counts: Tensor):
        xc, W_enc, W_dec, theta, pre, f = ctx.saved_tensors
        eps = ctx.eps
        need_x, need_W_enc, need_b_enc, need_W_dec, need_b_dec, need_theta = ctx.needs_input_grad[:6]
        g = grad_x_hat.contiguous()
        bf16 = ctx.bf16
        grad_f = _mm(g, W_dec.t(), bf16)
        grad_x = grad_W_enc = grad_b_enc = grad_W_dec = grad_b_dec = grad_theta = None
        if need_theta:
            window = ((pre - theta).abs() < eps / 2).to(g.dtype)
            jump = (window * grad_f).sum(0)
            step = grad_token_l0 @ window + window.sum(0) * grad_latent_counts
            grad_theta = -(theta / eps) * jump - step / eps
        grad_pre = grad_f.mul_(pre > theta)
        if need_W_dec:
            grad_W_dec = _mm(f.t(), g, bf16)
        if need_W_enc:
            grad_W_enc = _mm(xc.t(), grad_pre, bf16)
        colsum = grad_pre.sum(0)
        grad_b_enc, grad_b_dec = _bias_grads(g, colsum, W_enc, need_b_enc, need_b_dec, ctx.pre_encoder_bias)
        if need_x:
            grad_x = _mm(grad_pre, W_enc.t(), bf16)
        return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, grad_theta, None, None, None


@torch.no_grad()
def dense_share(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, theta: Tensor, eps: float,
                pre_encoder_bias: bool) -> float:
    """Share of entries active or in the window, estimated on the batch's first rows (a 3%
    matmul for a 4096-token batch); deterministic in the weights and batch, so a resumed run
    takes the same path as an uninterrupted one."""
    rows = x[:_PROBE_ROWS]
    xc = rows - b_dec if pre_encoder_bias else rows
    return (torch.addmm(b_enc, xc, W_enc) > theta - eps / 2).float().mean().item()


class JumpReLUSAE(SAE):
    """f = pre * H(pre - theta) with a learned threshold theta per latent (Gemma Scope).

    The threshold is a parameter in its own units, not exp(log_threshold): Adam moves a
    parameter by about lr per step, so at the recipe's lr a log-parameterised threshold
    starting at 0.001 can only double in 10k steps, which is the "L0 will not come down"
    complaint peers' users file. It is projected back to >= 0 before each training forward.
    """

    arch: ClassVar[str] = "jumprelu"
    extra_params: ClassVar[tuple[str, ...]] = ("threshold",)
    sweep_knob: ClassVar[str] = "target_l0"

    @classmethod
    def sweep_knob_for(cls, knobs: dict[str, Any]) -> str:
        """A sweep sets the target L0 of the penalties that have one, and lambda for the recipe's."""
        return "l0_coefficient" if knobs.get("l0_penalty", DEFAULT_L0_PENALTY) == "l0" else "target_l0"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l0_coefficient: float | None = None,
        bandwidth: float = DEFAULT_BANDWIDTH,
        threshold_init: float = 1e-3,
        l0_penalty: str = DEFAULT_L0_PENALTY,
        target_l0: float | None = DEFAULT_TARGET_L0,
        freq_coefficient: float = DEFAULT_FREQ_COEFFICIENT,
        freq_target: float = DEFAULT_FREQ_TARGET,
        init_l0: float | None = None,
        matmul_dtype: str = "auto",
        unit_decoder: bool = True,
        init_norm: float | None = None,
        threshold_lr: float = 1.0,
        revive_coefficient: float = DEFAULT_REVIVE_COEFFICIENT,
        dead_tokens: int = DEFAULT_DEAD_TOKENS,
        relative_threshold: bool = False,
        pre_encoder_bias: bool | None = None,
        transcoder: str = "none",
    ) -> None:
        super().__init__(d_in, d_sae, pre_encoder_bias=pre_encoder_bias, transcoder=transcoder)
        if l0_penalty not in L0_PENALTIES:
            raise SaescopeError(f"unknown l0_penalty {l0_penalty!r}; use one of {list(L0_PENALTIES)}")
        if l0_penalty != "l0" and not (target_l0 is not None and target_l0 > 0):
            raise SaescopeError(f"l0_penalty={l0_penalty!r} needs target_l0 > 0, e.g. target_l0=64")
        if matmul_dtype not in MATMUL_DTYPES:
            raise SaescopeError(f"unknown matmul_dtype {matmul_dtype!r}; use one of {list(MATMUL_DTYPES)}")
        for name, value in (("bandwidth", bandwidth), ("threshold_init", threshold_init)):
            if not value > 0:
                raise SaescopeError(f"{name} must be > 0, got {value!r}")
        if not 0 < freq_target <= 1:
            raise SaescopeError(f"freq_target is a share of tokens in (0, 1], got {freq_target!r}")
        if init_l0 is None:  # start at the target, if the penalty has one
            init_l0 = 0.0 if l0_penalty == "l0" else min(float(target_l0), d_sae / 2)
        if not init_l0 >= 0 or init_l0 >= d_sae:
            raise SaescopeError(f"init_l0 is a starting L0 in [0, d_sae={d_sae}), got {init_l0!r}; 0 keeps threshold_init")
        if (l0_coefficient is not None and l0_coefficient < 0) or freq_coefficient < 0:
            raise SaescopeError("l0_coefficient and freq_coefficient must be >= 0")
        self.l0_coefficient = DEFAULT_L0_COEFFICIENTS[l0_penalty] if l0_coefficient is None else float(l0_coefficient)
        self.bandwidth = float(bandwidth)
        self.threshold_init = float(threshold_init)
        self.l0_penalty = l0_penalty
        self.target_l0 = None if target_l0 is None else float(target_l0)
        self.freq_coefficient = float(freq_coefficient)
        self.freq_target = float(freq_target)
        self.init_l0 = float(init_l0)
        self.matmul_dtype = matmul_dtype
        self.unit_decoder = bool(unit_decoder)
        if init_norm is None:
            init_norm = 1.0 if unit_decoder else FREE_INIT_NORM
        if not init_norm > 0 or (unit_decoder and init_norm != 1):
            raise SaescopeError(f"init_norm (starting decoder row norm, encoder its transpose) must be > 0 and "
                                f"needs unit_decoder=false to last, got {init_norm!r}")
        self.init_norm = float(init_norm)
        with torch.no_grad():  # SAELens starts its rows at 0.1: pre-activations 10x smaller at first
            self.W_dec.mul_(self.init_norm)
            self.W_enc.mul_(self.init_norm)
        if not revive_coefficient >= 0 or not dead_tokens > 0:
            raise SaescopeError("revive_coefficient must be >= 0 and dead_tokens > 0, "
                                f"got {revive_coefficient!r} and {dead_tokens!r}")
        if not threshold_lr > 0:
            raise SaescopeError(f"threshold_lr is a factor on the learning rate, > 0; got {threshold_lr!r}")
        self.threshold_lr = float(threshold_lr)
        self.relative_threshold = bool(relative_threshold)
        self.revive_coefficient = float(revive_coefficient)
        self.dead_tokens = int(dead_tokens)
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.int64))
        self.threshold = nn.Parameter(torch.full((d_sae,), self.threshold_init))

    def knobs(self) -> dict[str, Any]:
        return super().knobs() | {
            "l0_coefficient": self.l0_coefficient,
            "bandwidth": self.bandwidth,
            "threshold_init": self.threshold_init,
            "l0_penalty": self.l0_penalty,
            "target_l0": self.target_l0,
            "freq_coefficient": self.freq_coefficient,
            "freq_target": self.freq_target,
            "init_l0": self.init_l0,
            "matmul_dtype": self.matmul_dtype,
            "unit_decoder": self.unit_decoder,
            "init_norm": self.init_norm,
            "threshold_lr": self.threshold_lr,
            "relative_threshold": self.relative_threshold,
            "revive_coefficient": self.revive_coefficient,
            "dead_tokens": self.dead_tokens,
        }

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """With init_l0 > 0, set each latent's threshold to the (1 - init_l0/d_sae) quantile of
        its pre-activations on `x` (training rows, normalised): every latent then fires on about
        init_l0/d_sae of the tokens, the first step is already at L0 ~ init_l0, and none is dead.

        Why: the recipe's constant threshold (0.001 on unit-scale inputs) lets about half of
        all latents fire at first; a short run then spends its budget (and dense steps) bringing
        L0 down from ~1000 instead of learning features, which is what TopK never has to do."""
        if self.init_l0 <= 0:
            return
        xc = self.encoder_input(x.to(self.W_enc))
        n = len(xc)
        firing = min(n - 1, max(1, round(n * self.init_l0 / self.d_sae)))  # tokens above the threshold
        step = max(1, _BLOCK_ELEMENTS // max(1, n))
        for start in range(0, self.d_sae, step):
            cols = slice(start, start + step)
            pre = torch.addmm(self.b_enc[cols], xc, self.W_enc[:, cols])
            self.threshold[cols] = pre.kthvalue(n - firing, dim=0).values
        if self.relative_threshold:
            self.threshold.div_(self.W_enc.norm(dim=0))
        # A latent whose quantile is below zero fires on more than half the tokens; the JumpReLU
        # threshold is >= 0, so it starts at a small positive value instead.
        self.threshold.clamp_(min=1e-6)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        return pre * (pre > self.effective_threshold())

    def effective_threshold(self) -> Tensor:
        """The threshold pre-activations are compared with. With relative_threshold the learned
        parameter is in units of the latent's encoder column norm, so a threshold follows an encoder
        that grows from a small start (free rows) without a faster learning rate."""
        if not self.relative_threshold:
            return self.threshold
        # The norm is a scale, not a path for the L0 penalty to reshape the encoder by.
        return self.threshold * self.W_enc.norm(dim=0).detach()

    def lr_scales(self) -> dict[str, float]:
        """threshold_lr: Adam moves a threshold by about lr per step, too slowly to follow
        pre-activations that grow (free decoder rows from a small init)."""
        return {} if self.threshold_lr == 1 else {"threshold": self.threshold_lr}

    def freq_line(self) -> float:
        """The firing share above which the frequency penalty charges: freq_target, raised to
        FREQ_ABOVE_MEAN times the mean share a target L0 asks for, so that it never fights the target."""
        if self.target_l0 is None or self.l0_penalty == "l0":
            return self.freq_target
        return max(self.freq_target, FREQ_ABOVE_MEAN * self.target_l0 / self.d_sae)

    def uses_bf16(self, device: torch.device) -> bool:
        if self.matmul_dtype == "auto":
            return _native_bf16_matmul(device.type)
        return self.matmul_dtype == "bfloat16"

    def _loss(self, x: Tensor, y: Tensor, sparsity_scale: float) -> LossOutput:
        """Squared error (sum over d_in, mean over tokens) + sparsity_scale * penalty, where the
        penalty is lambda * L0 ("l0", Gemma Scope), lambda * mean over tokens of
        (2 / T) * (L0_token - T)^2 ("quadratic", the Gemma Scope 2 form as SAELens implements it),
        or lambda * (2 / T) * (mean L0 - T)^2 ("mean-quadratic", saescope's default: the batch's
        mean L0 is held near T while each token keeps as many latents as it needs; the
        per-token form pushes tokens that need few latents to fire more, and short runs then
        grew ~100 latents firing on > 10% of tokens), plus freq_coefficient * sum over latents
        of max(0, p - freq_line()) on each latent's batch firing share p (our choice for Gemma
        Scope 2's frequency penalty: an extra L0 coefficient on over-frequent latents only).

        The step is sparse (`_SparseJumpReLU`) unless a probe of the batch finds more than
        DENSE_ABOVE of the entries active or in the window; then it is dense (`_DenseJumpReLU`)."""
        with torch.no_grad():
            self.threshold.clamp_(min=0.0)
        theta = self.effective_threshold()
        args = (x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, theta, self.bandwidth, self.pre_encoder_bias)
        if dense_share(x, self.W_enc, self.b_enc, self.b_dec, theta.detach(), self.bandwidth,
                       self.pre_encoder_bias) > DENSE_ABOVE:
            x_hat, token_l0, latent_counts = _DenseJumpReLU.apply(*args, self.uses_bf16(x.device))
        else:
            x_hat, token_l0, latent_counts = _SparseJumpReLU.apply(*args, self.uses_bf16(x.device))
        n = x.shape[0]
        mse = (x_hat - y).pow(2).sum(dim=1).mean()
        T = self.target_l0
        if self.l0_penalty == "l0":
            penalty = self.l0_coefficient * token_l0.mean()
        elif self.l0_penalty == "quadratic":
            penalty = self.l0_coefficient * (2 / T * (token_l0 - T).pow(2)).mean()
        else:
            penalty = self.l0_coefficient * 2 / T * (token_l0.mean() - T).pow(2)
        if self.freq_coefficient > 0:
            penalty = penalty + self.freq_coefficient * (latent_counts / n - self.freq_line()).relu().sum()
        penalty = sparsity_scale * penalty
        if self.training:
            with torch.no_grad():
                self.tokens_since_fired.add_(n).masked_fill_(latent_counts > 0, 0)
        loss = mse + penalty + self.revival(x)
        return loss_output(loss, mse, y, token_l0, latent_counts > 0, penalty)

    def revival(self, x: Tensor) -> Tensor:
        """revive_coefficient * mean over tokens of sum over dead latents of relu(theta - pre):
        a latent silent for dead_tokens tokens gets its threshold lowered and its pre-activations
        raised until it fires (Anthropic's pre-activation loss, on dead latents only). Without it a
        latent whose pre-activations all fall below its threshold minus half the window gets no
        gradient at all, and at low targets 10-20% of latents ended dead.

        Only the threshold and b_enc get this gradient, not W_enc: Adam moves every entry of a
        parameter by about lr whatever the size of its gradient, so a dead latent's encoder column,
        pulled toward the data by this term alone, can grow by about lr * sqrt(d_in) in norm per
        step, and once it fires again its activations wreck the reconstruction: on mlp.6 at target
        14 (free rows) training FVU reached 3.0 at step 150 and 72% of latents ended dead, against
        FVU 0.28 and 28% dead without the term."""
        dead = (self.tokens_since_fired > self.dead_tokens).nonzero().squeeze(1)
        if self.revive_coefficient == 0 or not self.training or dead.numel() == 0:
            return torch.zeros((), device=x.device)
        with torch.no_grad():
            proj = self.encoder_input(x) @ self.W_enc[:, dead]
        pre = proj + self.b_enc[dead]
        theta = self.threshold[dead]
        if self.relative_threshold:  # in the encoder's units, without a gradient to W_enc
            theta = theta * self.W_enc[:, dead].norm(dim=0).detach()
        return self.revive_coefficient * (theta - pre).relu().sum(1).mean()

    def extra_arrays(self) -> dict[str, Tensor]:
        return {"threshold": self.effective_threshold().detach().clamp(min=0.0)}

    def release_form(self) -> tuple[type[SAE], dict[str, Tensor], dict[str, Any]]:
        """Released arrays hold the absolute threshold, so the released SAE compares with it as is."""
        cls, arrays, knobs = super().release_form()
        return cls, arrays, knobs | {"relative_threshold": False}

    def load_extra_arrays(self, arrays: dict[str, Tensor]) -> None:
        if (arrays["threshold"] < 0).any():
            raise SaescopeError("threshold has negative entries; a JumpReLU threshold must be >= 0")
        self.threshold.copy_(arrays["threshold"])
