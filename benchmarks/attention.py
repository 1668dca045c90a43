"""Banded attention against the kernels it replaces, for one layer of Gemma 3 270M's shape, in one run.

    python benchmarks/attention.py [--batch 8] [--context-len 1024] [--window 512]

q [B, 4, T, 256] with one shared key/value head, bfloat16. Rows: a sliding-window layer with the
full boolean mask (what transformers' sdpa path runs), the same layer banded; a global layer with
`is_causal` and banded. Ratios are what count; the max difference shows the results agree.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from saescope.models.attention import banded_sdpa


class _Layer:
    is_causal = True


def best_of(fn, n: int = 3) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--context-len", type=int, default=1024)
    p.add_argument("--window", type=int, default=512)
    args = p.parse_args()
    b, t, w = args.batch, args.context_len, args.window
    torch.manual_seed(0)
    q = torch.randn(b, 4, t, 256, dtype=torch.bfloat16)
    k, v = torch.randn(b, 1, t, 256, dtype=torch.bfloat16), torch.randn(b, 1, t, 256, dtype=torch.bfloat16)
    i = torch.arange(t)
    band = ((i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < w)).expand(b, 1, t, t)
    layer = _Layer()
    rows = {
        "sliding, full mask": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=band, enable_gqa=True),
        "sliding, banded": lambda: banded_sdpa(layer, q, k, v, band, sliding_window=w),
        "global, is_causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "global, banded": lambda: banded_sdpa(layer, q, k, v, None),
    }
    times = {name: best_of(fn) for name, fn in rows.items()}
    diff = (rows["sliding, banded"]()[0].transpose(1, 2) - rows["sliding, full mask"]()).abs().max().item()
    print(f"{b} x {t} tokens, window {w}, bfloat16; best of 3")
    for name, s in times.items():
        print(f"{name:20s}{s:8.3f} s")
    print(
        f"sliding: banded {times['sliding, full mask'] / times['sliding, banded']:.2f}x faster than the full mask "
        f"(max |difference| {diff:.4f}, bf16 rounding)"
    )
    print(f"global:  banded {times['global, is_causal'] / times['global, banded']:.2f}x faster than is_causal")


if __name__ == "__main__":
    main()
