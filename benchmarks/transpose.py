"""The sparse training steps' transposed copy (`transposed` in saescope/saes/sparse.py, through 16 x 16 tiles)
against the plain `m.t().contiguous()`, in one run.

    python benchmarks/transpose.py [--shapes 2048x640,2048x1024,16384x2304] [--repeats 50]

Each sparse step of a JumpReLU, TopK or BatchTopK SAE makes its encoder weight gradient as [d_sae, d_in] and
copies it transposed; the defaults are a default run's two site widths and a Gemma Scope 2B-sized SAE.
"""

from __future__ import annotations

import argparse
import time

import torch
from machine import cpu  # benchmarks/machine.py, beside this script

from saescope.saes.sparse import transposed


def best_seconds(fn, m: torch.Tensor, repeats: int) -> float:
    fn(m)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(m)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2048x640,2048x1024,16384x2304")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    print(f"CPU: {cpu()}; best of {args.repeats}")
    for shape in args.shapes.split(","):
        m = torch.randn(*map(int, shape.split("x")))
        assert torch.equal(transposed(m), m.t().contiguous()), "the tiled copy differs from the plain one"
        plain = best_seconds(lambda a: a.t().contiguous(), m, args.repeats)
        tiled = best_seconds(transposed, m, args.repeats)
        print(f"  {shape:12s} plain {plain * 1e3:8.3f} ms  tiled {tiled * 1e3:8.3f} ms  {plain / tiled:5.2f}x")


if __name__ == "__main__":
    main()
