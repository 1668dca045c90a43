"""Harvest throughput against the two baselines a user would compare with, in one run.

    python benchmarks/harvest.py [--batches 2] [--batch-size 8] [--context-len 1024] [--repeats 2]

(a) naive: `model(ids, output_hidden_states=True)` in float32 with transformers' own attention —
    what a user writes first; it yields only residual streams and runs the LM head.
(b) bare: a forward through the same blocks with no hooks and no LM head — the floor for the hooks
    and the store — in the dtype harvest runs bfloat16 in (float32 on a CPU without native bfloat16
    matmuls: `compute_dtype`; then an emulated-bfloat16 line shows what that choice saves). It runs
    the model as `load_model` sets it up (banded attention, allocator keeping freed pages), like
    ours; 'stock' is the same forward with transformers' own sdpa attention, to show what the set-up
    itself gains.
ours: saescope's harvest of res, mlp, att and mlp_in at every layer, written to a store. A harvest
    ends with the store's loss-sensitivity pass (a fixed 2,048 tokens forward and backward,
    whatever the harvest's size); it is timed on its own and taken out of ours for (a) and (b).
ours and bare run `--repeats` times in adjacent pairs; (b) is the median of the pairs' ratios,
which cancels the slow drifts of this noisy machine, and the table shows each one's fastest run.
The floor line times only the blocks' matrix multiplies (every linear layer on as many rows as
the batches have tokens), the part of a forward no harvest can avoid: it bounds (a).
All three see the same packed batches of the embedded Wikipedia corpus. Ratios are what count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from saescope.activations.documents import iter_documents
from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.packing import pack_documents
from saescope.activations.sensitivity import write_sensitivity
from saescope.models.loading import load_model
from saescope.models.sites import family_of, parse_sites


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--context-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    model, tok = load_model("embedded", "bfloat16", "cpu")
    runs_in = next(model.parameters()).dtype
    batches = list(pack_documents(iter_documents("wiki"), tok, args.context_len, args.batch_size))[: args.batches]
    n_tokens = sum(int(b.train_mask.sum()) for b in batches)
    positions = sum(b.input_ids.numel() for b in batches)
    inner = model.get_submodule(family_of(model).layers.rsplit(".", 1)[0])

    def bare() -> None:
        with torch.inference_mode():
            for b in batches:
                inner(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def ours() -> None:
        with tempfile.TemporaryDirectory() as d:
            cfg = HarvestConfig(
                sites="res,mlp,att,mlp_in",
                layers="all",
                tokens=n_tokens,
                store=d,
                context_len=args.context_len,
                forward_batch=args.batch_size,
                shard_rows=8192,
            )
            harvest(cfg, model, tok)

    def sensitivity() -> None:
        with tempfile.TemporaryDirectory() as d:
            sites = parse_sites(model, "res,mlp,att,mlp_in", "all")
            write_sensitivity(Path(d), model, tok, sites, "wiki", "text", args.context_len)

    model_fp32, _ = load_model("embedded", "float32", "cpu")
    model_fp32.set_attn_implementation("sdpa")  # as transformers loads it

    def naive() -> None:
        with torch.inference_mode():
            for b in batches:
                model_fp32(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)

    def stock() -> None:
        model.set_attn_implementation("sdpa")
        try:
            bare()
        finally:
            model.set_attn_implementation(attention)

    linears = [m for m in inner.modules() if isinstance(m, torch.nn.Linear)]

    def floor() -> None:
        rows = torch.randn(args.batch_size * args.context_len, max(m.in_features for m in linears), dtype=runs_in)
        for _ in batches:
            for m in linears:
                torch.nn.functional.linear(rows[:, : m.in_features], m.weight)

    attention = model.config._attn_implementation
    bare()  # warm-up: first calls pay for kernel selection and page faults
    t_sens = timed(sensitivity)
    runs = [(timed(bare), timed(ours) - t_sens) for _ in range(args.repeats)]
    t_bare, t_ours = min(r[0] for r in runs), min(r[1] for r in runs)
    t_stock, t_floor, t_naive = timed(stock), timed(floor), timed(naive)
    t_emulated = None
    if runs_in != torch.bfloat16:  # what running bfloat16 as asked would cost on this CPU
        inner.to(torch.bfloat16)
        t_emulated = timed(bare)
        inner.to(runs_in)
    kind = str(runs_in).removeprefix("torch.")
    print(
        f"\n{args.batches} batches x {args.batch_size} x {args.context_len} "
        f"({positions} positions, {n_tokens} stored tokens), 4 sites x all layers"
    )
    print(f"{'':14s}{'seconds':>10s}{'tokens/s':>12s}")
    for name, t in (
        ("ours", t_ours),
        (f"bare {kind}", t_bare),
        (f"stock {kind}", t_stock),
        ("naive", t_naive),
        ("floor", t_floor),
    ):
        print(f"{name:14s}{t:10.2f}{positions / t:12.0f}")
    print("runs (bare, ours): " + ", ".join(f"({b:.2f}, {o:.2f})" for b, o in runs))
    print(f"ours vs naive (a): {t_naive / t_ours:.2f}x faster (target >= 8x)")
    print(
        f"ours vs bare  (b): {statistics.median(o / b for b, o in runs):.2f}x the time, median of the pairs "
        f"(target <= 1.15x)"
    )
    if t_emulated is not None:
        print(f"bare bf16 (emulated, no native bf16 matmul here): {t_emulated / t_bare:.2f}x the time of {kind}")
    print(f"bare vs stock    : {t_stock / t_bare:.2f}x faster (banded attention, {attention})")
    print(f"sensitivity pass : {t_sens:.2f} s, {t_sens / t_ours:.2f}x the harvest of these tokens (once per store)")
    print(
        f"floor vs naive   : {t_naive / t_floor:.2f}x faster: the bound on (a) if attention, norms, "
        f"activations and the store cost nothing"
    )


if __name__ == "__main__":
    main()
