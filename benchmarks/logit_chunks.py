"""CE and KL to the clean model from a spliced pass's final hidden states: the head's product a block of
the vocabulary at a time, reduced while in cache (`head_ce_kl`), against one product over the whole
vocabulary followed by the plain reference `_token_ce_kl` (what evaluation did before), in one run.

    python benchmarks/logit_chunks.py [--vocab 262144] [--d-model 640] [--positions 1020] [--repeats 3]

Every spliced and zero-ablation forward of an evaluation ends here (`saescope/evaluate/heldout.py`),
once per held-out batch; the defaults are Gemma 3 270M's head and one batch of 4 sequences of 256. Both
ways compute the same numbers (checked below); the ratio is what counts.
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import cpu  # benchmarks/machine.py, beside this script

from saescope.evaluate.heldout import CleanOutputs, _token_ce_kl, clean_distribution, head_ce_kl, vocab_blocks
from saescope.models.head import LMHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=262_144, help="vocabulary size (Gemma 3's by default)")
    parser.add_argument("--d-model", type=int, default=640, help="hidden size (Gemma 3 270M's by default)")
    parser.add_argument("--positions", type=int, default=1020, help="positions per batch (4 sequences of 255)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, v = args.positions, args.vocab
    head = LMHead(torch.randn(v, args.d_model) * 0.05, None, None)
    hidden, targets = torch.randn(1, n, args.d_model), torch.randint(0, v, (1, n))
    clean = CleanOutputs(*clean_distribution(head.logits(torch.randn(1, n, args.d_model)), targets), [])
    ways = {
        "one product, then _token_ce_kl": lambda: _token_ce_kl(head.logits(hidden), clean, targets),
        "head_ce_kl, by vocabulary blocks": lambda: head_ce_kl(hidden, head, clean, targets),
    }
    best = {name: float("inf") for name in ways}
    results = {}
    for _ in range(args.repeats):  # interleaved, so the machine's drift falls on both
        for name, way in ways.items():
            start = time.perf_counter()
            results[name] = way()
            best[name] = min(best[name], time.perf_counter() - start)
    (ce_a, kl_a), (ce_b, kl_b) = results.values()
    assert torch.allclose(ce_a, ce_b, atol=1e-4) and torch.allclose(kl_a, kl_b, atol=1e-4), "the two ways disagree"
    block = vocab_blocks(v, n, torch.device("cpu")).step
    print(f"CPU: {cpu()}; {n} positions x {v:,} vocabulary x {args.d_model}, blocks of {block}, best of {args.repeats}")
    base = best["one product, then _token_ce_kl"]
    for name, seconds in best.items():
        print(f"  {name:40s} {seconds:7.3f} s  {base / seconds:5.2f}x")


if __name__ == "__main__":
    main()
