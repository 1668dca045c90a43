"""Sparse kernels shared by the families whose codes have few non-zeros per token.

A code is a list of entries (row = token, col = latent, value). Encoding still needs one dense
matmul to find the entries (TopK, BatchTopK and JumpReLU all look at every pre-activation), but
everything after it touches only the entries: gathering their pre-activations, decoding, and
every backward product. The dense alternatives run three more [tokens, d_sae] matmuls and
several elementwise passes over a matrix that is >98% zeros, which is what makes a plain loop
slow (benchmarks/train_step.py).

The products are torch's embedding-bag kernels (fused on CPU and CUDA): `gather_sum` is a
sparse-dense product that reads only the rows it needs, `gather_dot` a sampled dense-dense
product (one dot product per entry).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


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
    def forward(ctx: Any, xc: Tensor, W_enc: Tensor, b_enc: Tensor, rows: Tensor, cols: Tensor,
                values: Tensor) -> Tensor:
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
            grad_W = gather_sum(rows_t, xc, starts_t, grad_v[order]).t().contiguous()
        if need_b:
            grad_b = torch.zeros(d_sae, dtype=grad_v.dtype, device=grad_v.device).index_add_(0, cols, grad_v)
        if need_x:
            order, _, cols_s, starts_s = token_major(rows, cols, n)
            grad_x = gather_sum(cols_s, W_enc.t().contiguous(), starts_s, grad_v[order])
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
    out[order] = gather_dot(W_enc.t().contiguous(), cols_t, xc, rows_t, starts_t)
    return out + b_enc[cols]


def dense_pre(xc: Tensor, W_enc: Tensor, b_enc: Tensor, bf16: bool) -> Tensor:
    """The one dense product: pre-activations of every latent (no grad), optionally with the
    matmul in bfloat16 (4-5x faster where the CPU has AMX); returned in float32."""
    with torch.no_grad():
        if bf16:
            return (xc.to(torch.bfloat16) @ W_enc.to(torch.bfloat16)).to(torch.float32) + b_enc
        return torch.addmm(b_enc, xc, W_enc)
