"""Sparse kernels shared by the families whose codes have few non-zeros per token, and JumpReLU's step.

A code is a list of entries (row = token, col = latent, value). Encoding still needs one dense matmul to find the
entries (TopK, BatchTopK and JumpReLU all look at every pre-activation), but everything after it touches only the
entries: gathering their pre-activations, decoding, and every backward product. The dense alternatives run three
more [tokens, d_sae] matmuls and several elementwise passes over a matrix that is >98% zeros, which is what makes a
plain loop slow (benchmarks/train_step.py).

The products are torch's embedding-bag kernels (fused on CPU and CUDA): `gather_sum` is a sparse-dense product that
reads only the rows it needs, `gather_dot` a sampled dense-dense product (one dot product per entry).

JumpReLU's hand-written step (`JumpReLUStep`) picks, with one comparison per element of the encoder matmul, the
entries that are active or inside the estimator's window; the threshold's gradient reads them all, every other
product only the active ones. Its gradients are the recipe's straight-through estimators, equal to the plain
autograd reference in saescope/saes/jumprelu.py up to float rounding. Right after the recipe's init about half of
all latents fire and index lists that long lose to dense products, so such steps run dense, the same estimators on
[tokens, d_sae] tensors (saescope/saes/jumprelu_paths.py).

Optionally the encoder matmul runs in bfloat16. On the sparse path, every entry within 8 standard deviations of that
rounding noise from the threshold or the window's edges is recomputed in float32: which latents are active and which
fall in the window is decided as in float32. Only the values of clearly active latents keep the bfloat16 product's
rounding. The dense path cannot afford that recompute (the entries near an edge are several percent of all), so it
rounds the encoder product only where the window is wide (`BF16_PRE_MIN_BANDWIDTH`) and keeps float32
pre-activations under the recipe's narrow one.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# Dense pre-activations are produced a block of rows at a time so memory stays bounded at
# Gemma Scope widths (2^20 latents x 4096 tokens would be 16 GiB in one piece).
BLOCK_ELEMENTS = 1 << 24

_BF16_UNIT_ROUNDOFF = 2.0**-8
_FP32_UNIT_ROUNDOFF = 2.0**-24

# From this bandwidth up, the dense path's encoder product runs in bfloat16 too. On a default run's 54
# trained SAEs (bandwidth 0.05) that product is off by a standard deviation of 0.00011-0.00016 (at most
# 0.0046), so 0.33-0.56% of the active entries and 0.36-0.75% of those in the window land on the other
# side of an edge, all within 0.0006 of it; L0 moves by at most 0.07, and the 54-SAE step runs 1.13x faster
# (experiments/bf16_encoder.py; README, "SAE families"). The recipe's 0.001 is a window of ~8 such
# standard deviations, which rounding would scramble: narrower windows keep float32 pre-activations.
BF16_PRE_MIN_BANDWIDTH = 0.01


def group_starts(sorted_ids: Tensor, n_groups: int) -> Tensor:
    """Offsets of each group in entries sorted by group id (the embedding-bag `offsets`)."""
    counts = torch.bincount(sorted_ids, minlength=n_groups)
    return torch.cumsum(counts, 0) - counts


def gather_sum(index: Tensor, src: Tensor, starts: Tensor, weights: Tensor) -> Tensor:
    """out[g] = sum over entries k of group g of weights[k] * src[index[k]]."""
    return F.embedding_bag(index, src, starts, mode="sum", per_sample_weights=weights)


def gather_dot(a: Tensor, a_index: Tensor, b: Tensor, b_index: Tensor, a_starts: Tensor) -> Tensor:
    """out[k] = a[a_index[k]] . b[b_index[k]], entries grouped (sorted) by a_index.

    This is exactly embedding_bag's gradient with respect to per_sample_weights, a fused kernel;
    the public sampled_addmm was 2-4x slower on CPU. Grouping by the row of `a` keeps that row in
    cache while the rows of `b` stream past."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(a, b, b_index, a_starts, a_index, 0)


def transposed(m: Tensor) -> Tensor:
    """m.t().contiguous() through 16 x 16 tiles on a CPU while the matrix fits in cache (the sparse steps' encoder
    weight gradients come out as [d_sae, d_in]): 1.27-1.44x up to 8192 x 640 float32, 0.78-0.88x from 4096 x 2304
    (a 2-core AVX2 EPYC with 32 MB of L3; benchmarks/transpose.py)."""
    (a, b), t = m.shape, 16
    if a % t or b % t or m.device.type != "cpu" or not m.is_contiguous() or m.nbytes > 16 << 20:
        return m.t().contiguous()
    return m.view(a // t, t, b // t, t).permute(0, 2, 1, 3).contiguous().permute(1, 3, 0, 2).reshape(b, a)


def sort_order(keys: Tensor) -> Tensor:
    """Indices that stably sort integer keys (latent or token ids).

    On CPU the sort runs on one thread: torch's parallel sort of 32k int32 keys took 85-170 ms
    on two cores shared with other work (its parallel region waits for the busy core), the
    single-threaded one 0.2 ms, and 1M keys 45 ms (torch 2.13, measured here)."""
    keys = keys.to(torch.int32)
    if keys.device.type != "cpu":
        return torch.sort(keys, stable=True).indices
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.sort(keys, stable=True).indices
    finally:
        torch.set_num_threads(threads)


def latent_major(rows: Tensor, cols: Tensor, d_sae: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entries sorted by latent: (order, rows, cols, group starts) in that order."""
    order = sort_order(cols)
    rows_t, cols_t = rows[order], cols[order]
    return order, rows_t, cols_t, group_starts(cols_t, d_sae)


def token_major(rows: Tensor, cols: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Entries sorted by token: (order, rows, cols, group starts)."""
    order = sort_order(rows)
    rows_s, cols_s = rows[order], cols[order]
    return order, rows_s, cols_s, group_starts(rows_s, n)


class GatherPre(torch.autograd.Function):
    """values[k] = xc[rows[k]] . W_enc[:, cols[k]] + b_enc[cols[k]], the pre-activations of the
    selected entries, as a differentiable function of xc, W_enc and b_enc.

    `values` is passed in already computed (it came out of the dense selection matmul, possibly
    recomputed in float32), so the forward is free; the backward touches only the entries."""

    @staticmethod
    def forward(
        ctx: Any, xc: Tensor, W_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor, values: Tensor
    ) -> Tensor:
        ctx.save_for_backward(xc, W_enc, rows, cols)
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad_v: Tensor):
        xc, W_enc, rows, cols = ctx.saved_tensors
        n, d_sae = xc.shape[0], W_enc.shape[1]
        need_x, need_W, need_b = ctx.needs_input_grad[:3]
        grad_v = grad_v.contiguous()
        grad_x = grad_W = grad_b = None
        if need_W:
            order, rows_t, cols_t, starts_t = latent_major(rows, cols, d_sae)
            grad_W = transposed(gather_sum(rows_t, xc, starts_t, grad_v[order]))
        if need_b:
            grad_b = torch.zeros(d_sae, dtype=grad_v.dtype, device=grad_v.device).index_add_(0, cols, grad_v)
        if need_x:
            order, _, cols_s, starts_s = token_major(rows, cols, n)
            grad_x = gather_sum(cols_s, transposed(W_enc), starts_s, grad_v[order])
        return grad_x, grad_W, grad_b, None, None, None


class SparseDecode(torch.autograd.Function):
    """out[n] = sum over entries k with rows[k] = n of acts[k] * W_dec[cols[k]] (no bias).

    Entries must be in token-major order (rows non-decreasing)."""

    @staticmethod
    def forward(ctx: Any, acts: Tensor, W_dec: Tensor, rows: Tensor, cols: Tensor, n: int) -> Tensor:
        ctx.save_for_backward(acts, W_dec, rows, cols)
        return gather_sum(cols, W_dec, group_starts(rows, n), acts)

    @staticmethod
    def backward(ctx: Any, g: Tensor):
        acts, W_dec, rows, cols = ctx.saved_tensors
        d_sae = W_dec.shape[0]
        g = g.contiguous()
        order, rows_t, cols_t, starts_t = latent_major(rows, cols, d_sae)
        grad_acts = grad_W = None
        if ctx.needs_input_grad[0]:
            grad_acts = torch.empty_like(acts)
            grad_acts[order] = gather_dot(W_dec, cols_t, g, rows_t, starts_t)
        if ctx.needs_input_grad[1]:
            grad_W = gather_sum(rows_t, g, starts_t, acts[order])
        return grad_acts, grad_W, None, None, None


def sparse_decode(acts: Tensor, W_dec: Tensor, rows: Tensor, cols: Tensor, n: int) -> Tensor:
    """Differentiable decode of a sparse code given in token-major order, without b_dec."""
    return SparseDecode.apply(acts, W_dec, rows, cols, n)


def gather_pre(xc: Tensor, W_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> Tensor:
    """Differentiable pre-activations of the selected entries (see GatherPre)."""
    return GatherPre.apply(xc, W_enc, b_enc, rows, cols, values)


@torch.no_grad()
def exact_pre(xc: Tensor, W_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """float32 pre-activations of the selected entries, recomputed from xc and W_enc: the
    selection may have used a bfloat16 product, the values that train the SAE should not."""
    if rows.numel() == 0:
        return torch.zeros(0, dtype=xc.dtype, device=xc.device)
    order, rows_t, cols_t, starts_t = latent_major(rows, cols, W_enc.shape[1])
    out = torch.empty(rows.numel(), dtype=xc.dtype, device=xc.device)
    out[order] = gather_dot(transposed(W_enc), cols_t, xc, rows_t, starts_t)
    return out + b_enc[cols]


def dense_pre(xc: Tensor, W_enc: Tensor, b_enc: Tensor, bf16: bool) -> Tensor:
    """The one dense product: pre-activations of every latent (no grad), optionally with the
    matmul in bfloat16 (4-5x faster where the CPU has AMX); returned in float32."""
    with torch.no_grad():
        return bf16_mm(xc, W_enc) + b_enc if bf16 else torch.addmm(b_enc, xc, W_enc)


# ---- bfloat16 products and the bounds on their rounding -------------------------------------
def bf16_mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b with both operands rounded to bfloat16 (result float32)."""
    return (a.to(torch.bfloat16) @ b.to(torch.bfloat16)).to(torch.float32)


def _bf16_below(v: Tensor) -> Tensor:
    """A bfloat16 value <= v (round-to-nearest moves by at most 2^-8 relative)."""
    return (v - v.abs() * 2.0**-7).to(torch.bfloat16)


def _bf16_above(v: Tensor) -> Tensor:
    """A bfloat16 value >= v."""
    return (v + v.abs() * 2.0**-7).to(torch.bfloat16)


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


# ---- JumpReLU's training step ------------------------------------------------------------------
# Which of `JumpReLUStep`'s tensor inputs want a gradient (its ctx.needs_input_grad), each a bool.
Needs = namedtuple("Needs", "x W_enc b_enc W_dec b_dec theta")


@torch.no_grad()
def _bias_grads(
    g: Tensor, colsum: Tensor, W_enc: Tensor, needs: Needs, pre_encoder_bias: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Both backward paths: b_enc gets the summed pre-activation gradient; b_dec the output
    gradient, minus what flows back through the encoder when it is also subtracted before encoding."""
    grad_b_dec = (g.sum(0) - W_enc @ colsum if pre_encoder_bias else g.sum(0)) if needs.b_dec else None
    return colsum if needs.b_enc else None, grad_b_dec


def select_entries(
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
        block = max(1, min(256, BLOCK_ELEMENTS // d_sae))
    else:
        # Only float32 rounding of the folded bias separates the two tests.
        lo_b = lo - 1e-6 * (theta.abs() + b_enc.abs() + eps)
        a, w = xc, W_enc
        block = max(1, BLOCK_ELEMENTS // d_sae)
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
            pre[unsure] = exact_pre(xc, W_enc, b_enc, rows[unsure], cols[unsure])
    t = theta[cols]
    active = pre > t
    window = (pre - t).abs() < eps / 2
    if bf16:
        active |= settled
        window &= ~settled
    keep = (active | window).nonzero().squeeze(1)
    return rows[keep], cols[keep], pre[keep], active[keep], window[keep]


class JumpReLUStep(torch.autograd.Function):
    """x_hat = JumpReLU(pre) @ W_dec + b_dec, the per-token and per-latent counts of active latents
    (the differentiable L0) and `kept`, how many entries were active or in the window (the next step's
    path follows it): `reference_forward` of saescope/saes/jumprelu.py, whose arguments it takes, then
    `bf16` and `dense`, with its straight-through gradients written out by hand.

    Sparse (`dense` false): after the encoder matmul, only the entries active or in the window
    (`select_entries`) enter any product. Dense: [n, d_sae] tensors, the cheaper way while a large
    share of entries is active or in the window (the recipe's init, or a wide bandwidth); with `bf16`
    the four products that only carry values (decoding and the backward products) run in bfloat16,
    ~4x faster on AMX, with the rounding of a bfloat16 matmul (~0.4%) in those values and gradients.
    Its pre-activations are float32, from a float32 product under a narrow window, which then decides
    who is active or in the window exactly as the sparse path does, and from a bfloat16 product under
    a wide one (`BF16_PRE_MIN_BANDWIDTH`), which moves the few entries within its rounding of an edge."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, b_dec, theta, eps, pre_encoder_bias, bf16, dense):
        xc = x - b_dec if pre_encoder_bias else x
        ctx.eps, ctx.pre_encoder_bias, ctx.bf16, ctx.dense = eps, pre_encoder_bias, bf16, dense
        decoded, token_l0, latent_counts, kept = (_dense_forward if dense else _sparse_forward)(
            ctx, xc, W_enc, b_enc, W_dec, theta
        )
        ctx.mark_non_differentiable(kept)
        return decoded + b_dec, token_l0, latent_counts, kept

    @staticmethod
    def backward(ctx: Any, grad_x_hat: Tensor, grad_token_l0: Tensor, grad_latent_counts: Tensor, _grad_kept: Tensor):
        """Gradients to (x, W_enc, b_enc, W_dec, b_dec, theta); none to the four options."""
        needs = Needs(*ctx.needs_input_grad[:6])
        step = _dense_backward if ctx.dense else _sparse_backward
        return *step(ctx, needs, grad_x_hat.contiguous(), grad_token_l0, grad_latent_counts), None, None, None, None


Grads = tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None, Tensor | None]


def _sparse_forward(
    ctx: Any, xc: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, theta: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Decoded (without b_dec), the counts and `kept`, from the entries active or in the window. An entry
    in the window alone enters only the threshold's gradient (one dot product), so decoding skips it."""
    n, d_sae = xc.shape[0], W_enc.shape[1]
    rows, cols, pre, active, window = select_entries(xc, W_enc, b_enc, theta, ctx.eps, ctx.bf16)
    on = active.nonzero().squeeze(1)  # still token-major
    rows_a, cols_a, f_a = rows[on], cols[on], pre[on]
    token_l0 = torch.bincount(rows_a, minlength=n).to(xc.dtype)
    latent_counts = torch.bincount(cols_a, minlength=d_sae).to(xc.dtype)
    ctx.save_for_backward(xc, W_enc, W_dec, theta, rows, cols, pre * active, active, window, on)
    kept = torch.tensor(len(rows), device=xc.device)
    return gather_sum(cols_a, W_dec, group_starts(rows_a, n), f_a), token_l0, latent_counts, kept


def _sparse_backward(ctx: Any, needs: Needs, g: Tensor, grad_token_l0: Tensor, grad_latent_counts: Tensor) -> Grads:
    xc, W_enc, W_dec, theta, rows, cols, f, active, window, on = ctx.saved_tensors
    eps, n, d_sae = ctx.eps, xc.shape[0], W_enc.shape[1]
    # Latent-major order: each product reuses one decoder/encoder row per group and streams the small [n, d_in] ones.
    order, rows_t, cols_t, starts_t = latent_major(rows, cols, d_sae)
    grad_f = gather_dot(W_dec, cols_t, g, rows_t, starts_t)  # d loss / d f at kept entries
    grad_x = grad_W_enc = grad_W_dec = grad_theta = None
    if needs.theta:
        win = window[order]
        wc, wr = cols_t[win], rows_t[win]
        jump = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, wc, grad_f[win])
        step = torch.zeros_like(jump).index_add_(0, wc, grad_token_l0[wr])
        step += torch.bincount(wc, minlength=d_sae).to(g.dtype) * grad_latent_counts
        grad_theta = -(theta / eps) * jump - step / eps
    on_t = active[order].nonzero().squeeze(1)  # the other products sum over these (grad_pre, f: 0 elsewhere)
    rows_ta, cols_ta, grad_pre = rows_t[on_t], cols_t[on_t], grad_f[on_t]
    starts_ta = group_starts(cols_ta, d_sae)
    if needs.W_dec:
        grad_W_dec = gather_sum(rows_ta, g, starts_ta, f[order[on_t]])
    if needs.W_enc:
        grad_W_enc = transposed(gather_sum(rows_ta, xc, starts_ta, grad_pre))
    colsum = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, cols_ta, grad_pre)
    grad_b_enc, grad_b_dec = _bias_grads(g, colsum, W_enc, needs, ctx.pre_encoder_bias)
    if needs.x:  # the active entries back in token-major order (`on`, from the forward)
        grad_pre_rows = torch.zeros_like(f).index_put_((order[on_t],), grad_pre)[on]
        grad_x = gather_sum(cols[on], transposed(W_enc), group_starts(rows[on], n), grad_pre_rows)
    return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, grad_theta


def _dense_forward(
    ctx: Any, xc: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, theta: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Keeps for the backward the masks of active and in-window entries (not the pre-activations
    and codes) and each bfloat16 operand cast once: at a default run's scale the step is bound by
    passes over [tokens, d_sae] tensors, not by its products. The pre-activations are float32, from a
    bfloat16 product where the window is wide enough (`BF16_PRE_MIN_BANDWIDTH`)."""
    pre = dense_pre(xc, W_enc, b_enc, ctx.bf16 and ctx.eps >= BF16_PRE_MIN_BANDWIDTH)
    kept = (pre > theta - ctx.eps / 2).sum()
    # Float masks, cast once: multiplying or summing a bool tensor casts it again every time.
    active = (pre > theta).to(xc.dtype)
    window = ((pre - theta).abs_() < ctx.eps / 2).to(xc.dtype)
    f = pre.mul_(active)
    dtype = torch.bfloat16 if ctx.bf16 else xc.dtype
    xc_m, f_m, W_dec_m = xc.to(dtype), f.to(dtype), W_dec.to(dtype)
    ctx.save_for_backward(xc_m, W_enc, W_dec_m, theta, f_m, active, window)
    return (f_m @ W_dec_m).to(xc.dtype), active.sum(1), active.sum(0), kept


def _dense_backward(ctx: Any, needs: Needs, g: Tensor, grad_token_l0: Tensor, grad_latent_counts: Tensor) -> Grads:
    xc_m, W_enc, W_dec_m, theta, f_m, active, window = ctx.saved_tensors
    eps, dtype = ctx.eps, W_dec_m.dtype
    g_m = g.to(dtype)
    grad_f = (g_m @ W_dec_m.t()).to(g.dtype)
    grad_x = grad_W_enc = grad_W_dec = grad_theta = None
    if needs.theta:
        jump = (window * grad_f).sum(0)
        step = grad_token_l0 @ window + window.sum(0) * grad_latent_counts
        grad_theta = -(theta / eps) * jump - step / eps
    grad_pre = grad_f.mul_(active)
    grad_pre_m = grad_pre.to(dtype)
    if needs.W_dec:
        grad_W_dec = (f_m.t() @ g_m).to(g.dtype)
    if needs.W_enc:
        grad_W_enc = (xc_m.t() @ grad_pre_m).to(g.dtype)
    grad_b_enc, grad_b_dec = _bias_grads(g, grad_pre.sum(0), W_enc, needs, ctx.pre_encoder_bias)
    if needs.x:
        grad_x = (grad_pre_m @ W_enc.to(dtype).t()).to(g.dtype)
    return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, grad_b_dec, grad_theta
