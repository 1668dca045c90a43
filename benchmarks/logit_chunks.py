"""CE and KL to the clean model over a vocabulary-wide batch of logits, a few positions per pass
(`chunk_rows`: 4 MiB of float32 on a CPU) against 128 positions per pass, in one run.

    python benchmarks/logit_chunks.py [--vocab 262144] [--positions 1020] [--repeats 3]

Every spliced forward of an evaluation ends here (`saescope/evaluate/heldout.py`), once per held-out
batch. Both ways compute the same numbers (checked below); the ratio is what counts: passes that stay
in the CPU's cache against passes that stream the logits from memory six times.
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import cpu  # benchmarks/machine.py, beside this script

from saescope.evaluate.heldout import CleanOutputs, _token_ce_kl, chunk_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=262_144, help="vocabulary size (Gemma 3's by default)")
    parser.add_argument("--positions", type=int, default=1020, help="positions per batch (4 sequences of 255)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    n, v = args.positions, args.vocab
    logits = (torch.randn(1, n, v) * 3).bfloat16()
    logp = torch.log_softmax(torch.randn(n, v) * 3, -1)
    clean = CleanOutputs(logp.exp(), (logp.exp() * logp).sum(-1), torch.zeros(1, n), [])
    del logp
    targets = torch.randint(0, v, (1, n))
    small = chunk_rows(v, torch.device("cpu"))
    ways = {f"{small} positions per pass (chunk_rows)": small, "128 positions per pass": 128}
    best = {name: float("inf") for name in ways}
    results = {}
    for _ in range(args.repeats):  # interleaved, so the machine's drift falls on both
        for name, chunk in ways.items():
            start = time.perf_counter()
            results[name] = _token_ce_kl(logits, clean, targets, chunk)
            best[name] = min(best[name], time.perf_counter() - start)
    (ce_a, kl_a), (ce_b, kl_b) = results.values()
    assert torch.allclose(ce_a, ce_b, atol=1e-4) and torch.allclose(kl_a, kl_b, atol=1e-4), "the two ways disagree"
    print(f"CPU: {cpu()}; {n} positions x {v:,} vocabulary, best of {args.repeats}")
    base = best["128 positions per pass"]
    for name, seconds in best.items():
        print(f"  {name:40s} {seconds:7.3f} s  {base / seconds:5.2f}x")


if __name__ == "__main__":
    main()
