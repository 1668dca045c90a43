"""Per site kind (res, mlp, att) of one or more runs: mean and max delta LM loss, mean KL, FVU and L0,
and the range of dead and dense latents per SAE, from each SAE's metrics.json (the README's default-run
comparisons: frequency penalty on and off on one store).

    python experiments/run_kinds.py runs/default runs/default_f0
"""

from __future__ import annotations

import sys
from collections import defaultdict

from saescope.evaluate.metrics import summary_rows


def kind_row(run: str, kind: str, rows: list[dict]) -> str:
    """One table row: means over the kind's SAEs, the largest delta loss, the range of dead and dense."""

    def mean(k: str) -> float:
        return sum(r[k] for r in rows) / len(rows)

    def span(k: str) -> str:
        return f"{min(r[k] for r in rows)}-{max(r[k] for r in rows)}"

    return (
        f"| {run} | {kind} | {len(rows)} | {mean('l0'):.1f} | {mean('delta_loss'):.3f} | "
        f"{max(r['delta_loss'] for r in rows):.3f} | {mean('kl_div'):.3f} | {mean('fvu'):.3f} | "
        f"{span('dead_latents')} ({sum(r['dead_latents'] for r in rows)}) | {span('dense_latents')} |"
    )


def kinds(run: str) -> list[str]:
    by_kind = defaultdict(list)
    for row in summary_rows(run):
        by_kind[row["site"]].append(row)
    return [kind_row(run, kind, rows) for kind, rows in sorted(by_kind.items())]


if __name__ == "__main__":
    print("| run | site | SAEs | L0 | delta loss mean | delta loss max | KL mean | FVU mean | dead (sum) | dense |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in sys.argv[1:]:
        print("\n".join(kinds(run)))
