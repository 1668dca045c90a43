"""The store's loss-sensitivity pass (activations/sensitivity.py): the gradient of the summed CE with
respect to the logits formed a few positions at a time (`cross_entropy_gradient`, what the harvest
runs) against autograd through F.cross_entropy on float32 logits (`reference_cross_entropy_gradient`).

Each timing runs in its own fresh process, as a harvest meets the pass: memory a process has not
touched before costs microseconds a page on these machines (saescope/memory.py), and the reference
holds ~6 float32 copies of every logit (262k vocabulary: ~7 GB per 1,024 tokens). The two run in
alternating processes, `--repeats` pairs; the first pass of each process and a second on reused
memory are both shown. Ratios are what count.

    python benchmarks/sensitivity.py --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from machine import cpu  # benchmarks/ is on sys.path when a script in it runs

from saescope.activations.sensitivity import SENSITIVITY_TOKENS

CHILD = """
import sys, time
from saescope.activations import sensitivity as S
from saescope.activations.documents import iter_documents
from saescope.activations.packing import pack_documents
from saescope.models.loading import load_model
from saescope.models.sites import parse_sites

model, tok = load_model("embedded", "bfloat16", "cpu")
sites = parse_sites(model, "res,mlp,att", "all")
if sys.argv[1] == "reference":
    S.cross_entropy_gradient = S.reference_cross_entropy_gradient
for _ in range(2):
    batches = pack_documents(iter_documents("wiki"), tok, int(sys.argv[2]), 1, max_tokens=int(sys.argv[3]))
    start = time.perf_counter()
    S.measure_sensitivity(model, batches, sites)
    print(time.perf_counter() - start)
"""


def child(variant: str, context_len: int, tokens: int) -> tuple[float, float]:
    """(first pass, second pass) seconds of one fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(context_len), str(tokens)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=2, help="pairs of processes, the two variants alternating")
    p.add_argument("--context-len", type=int, default=1024, help="the harvest's context length (the default run's)")
    p.add_argument("--tokens", type=int, default=SENSITIVITY_TOKENS, help="tokens per pass (a harvest's)")
    args = p.parse_args()
    print(f"{cpu()}; sensitivity pass of Gemma 3 270M over res, mlp and att at every layer, {args.tokens:,} tokens")
    times: dict[str, list[tuple[float, float]]] = {"chunked": [], "reference": []}
    for _ in range(args.repeats):
        for variant in times:
            times[variant].append(child(variant, args.context_len, args.tokens))
    print(f"{'':26s}{'first pass s':>14s}{'second pass s':>15s}")
    for variant, runs in times.items():
        first, second = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"{variant:26s}{first:14.1f}{second:15.1f}   runs: " + ", ".join(f"({a:.1f}, {b:.1f})" for a, b in runs))
    pairs = zip(times["reference"], times["chunked"])
    print(
        f"reference / chunked, first pass (a harvest's): {statistics.median(r[0] / c[0] for r, c in pairs):.2f}x, "
        "median of the pairs"
    )


if __name__ == "__main__":
    main()
