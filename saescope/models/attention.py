"""Causal and sliding-window attention that skips the key blocks no query can see, for CPUs.

With a mask (every sliding-window layer of Gemma 2/3 past its window, and any padded batch)
PyTorch's CPU flash kernel computes the whole T x T score matrix, and transformers also copies
the key and value heads once per query group. Cutting the queries into blocks of `BLOCK` and
giving each block only the keys its causal window can reach does the same arithmetic on a band:
`python benchmarks/attention.py` (8 x 1024 tokens, Gemma 3 270M's heads) measured a sliding layer
at 0.236 s with the full mask and 0.144 s banded, a global layer at 0.167 s (`is_causal`) and
0.152 s banded.

Each block's mask is a slice of the very mask transformers built, so every (query, key) pair
either keeps its mask entry or lies outside the causal window, where the mask is False anyway;
the results equal the stock kernel's up to the order of float additions. Installed only on
CPU: GPU flash kernels already skip masked blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NAME = "saescope_banded_sdpa"
BLOCK = 256  # queries per block; 128 and 512 were slower at context 1024


def banded_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: q [B, H, T, D], k/v [B, Hkv, S, D] -> [B, T, H, D]."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    t, s = query.shape[2], key.shape[2]
    plain = (
        t <= BLOCK
        or s != t
        or dropout
        or kwargs.get("softcap") is not None
        or kwargs.get("position_bias") is not None
        or not getattr(module, "is_causal", True)
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    )
    if plain:  # decoding with a cache, short inputs, soft-capping, float masks: the stock path
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            sliding_window=sliding_window,
            **kwargs,
        )
    gqa = query.shape[1] != key.shape[1]
    positions = torch.arange(t, device=query.device)
    out = []
    for start in range(0, t, BLOCK):
        stop = min(start + BLOCK, t)
        # One key further back than the window needs: whatever the family's off-by-one, the mask decides.
        lo = max(0, start - sliding_window) if sliding_window else 0
        if attention_mask is None:  # transformers left the mask out because plain causal is exact
            mask = None if (start, lo) == (0, 0) else positions[lo:stop] <= positions[start:stop, None]
        else:
            mask = attention_mask[..., start:stop, lo:stop]
        out.append(
            F.scaled_dot_product_attention(
                query[:, :, start:stop],
                key[:, :, lo:stop],
                value[:, :, lo:stop],
                attn_mask=mask,
                scale=scaling,
                is_causal=mask is None,
                enable_gqa=gqa,
            )
        )
    return torch.cat(out, 2).transpose(1, 2).contiguous(), None


def use_banded_attention(model: nn.Module) -> bool:
    """Switch a CPU model that uses sdpa to the banded kernel; returns whether it did."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if next(model.parameters()).device.type != "cpu":
        return False
    AttentionInterface.register(NAME, banded_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same boolean masks the stock path gets
    model.set_attn_implementation(NAME)
    return True
