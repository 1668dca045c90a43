"""Harvest throughput against the two baselines a user would compare with, in one run.

    python benchmarks/harvest.py [--batches 2] [--batch-size 8] [--context-len 1024]

(a) naive: `model(ids, output_hidden_states=True)` in float32 — what a user writes first; it
    yields only residual streams and runs the LM head.
(b) bare: a bfloat16 forward through the same blocks with no hooks and no LM head — the floor
    for the hooks and the store. It runs the model as `load_model` sets it up (banded attention,
    allocator keeping freed pages), like ours; 'stock' is the same forward with transformers' own
    sdpa attention, to show what the set-up itself gains.
ours: saescope's harvest of res, mlp, att and mlp_in at every layer, written to a store.
All three see the same packed batches of the embedded Wikipedia corpus. Ratios are what count.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from saescope.activations.corpus import iter_documents, pack_documents
from saescope.activations.harvest import HarvestConfig, harvest
from saescope.models.loading import load_model
from saescope.models.sites import family_of


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context-len", type=int, default=1024)
    args = p.parse_args()

    model_bf16, tok = load_model("embedded", "bfloat16", "cpu")
    batches = list(pack_documents(iter_documents("wiki"), tok, args.context_len, args.batch_size))[: args.batches]
    n_tokens = sum(int(b.train_mask.sum()) for b in batches)
    positions = sum(b.input_ids.numel() for b in batches)
    inner = model_bf16.get_submodule(family_of(model_bf16).layers.rsplit(".", 1)[0])

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                inner(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def ours() -> None:
        with tempfile.TemporaryDirectory() as d:
            cfg = HarvestConfig(sites="res,mlp,att,mlp_in", layers="all", tokens=n_tokens, store=d,
                                context_len=args.context_len, forward_batch=args.batch_size, shard_rows=8192)
            harvest(cfg, model_bf16, tok)

    model_fp32, _ = load_model("embedded", "float32", "cpu")

    def naive() -> None:
        with torch.inference_mode():
            for b in batches:
                model_fp32(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)

    def stock() -> None:
        model_bf16.set_attn_implementation("sdpa")
        try:
            bare()
        finally:
            model_bf16.set_attn_implementation(attention)

    attention = model_bf16.config._attn_implementation
    bare()  # warm-up: first calls pay for kernel selection and page faults
    t_bare, t_ours, t_stock, t_naive = timed(bare), timed(ours), timed(stock), timed(naive)
    print(f"\n{args.batches} batches x {args.batch_size} x {args.context_len} "
          f"({positions} positions, {n_tokens} stored tokens), 4 sites x all layers")
    print(f"{'':10s}{'seconds':>10s}{'tokens/s':>12s}")
    for name, t in (("ours", t_ours), ("bare bf16", t_bare), ("stock bf16", t_stock), ("naive", t_naive)):
        print(f"{name:10s}{t:10.2f}{positions / t:12.0f}")
    print(f"ours vs naive (a): {t_naive / t_ours:.2f}x faster (target >= 8x)")
    print(f"ours vs bare  (b): {t_ours / t_bare:.2f}x the time (target <= 1.15x)")
    print(f"bare vs stock    : {t_stock / t_bare:.2f}x faster (banded attention, {attention})")


if __name__ == "__main__":
    main()
