"""Per site kind (res, mlp, att) of one or more runs: mean and max delta LM loss, mean KL, FVU and L0,
and the range of dead and dense latents per SAE, from each SAE's metrics.json (the README's default-run
comparisons: frequency penalty on and off on one store); with --text FILE, the held-out corpus text
against that text (`saescope evaluate --text FILE`, as experiments/ood_text.sh runs it).

    python experiments/run_kinds.py runs/default runs/default_f0
    python experiments/run_kinds.py --text runs/devils_dictionary.txt runs/default
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


def text_row(kind: str, corpus: list[dict], text: list[dict]) -> str:
    """One row of the out-of-distribution table: delta loss mean (range) on each text, L0 and CE
    recovered on both."""

    def loss(rows: list[dict]) -> str:
        values = [r["delta_loss"] for r in rows]
        return f"{sum(values) / len(values):.3f} ({min(values):.3f} to {max(values):.3f})"

    def mean(rows: list[dict], k: str) -> float:
        return sum(r[k] for r in rows) / len(rows)

    l0 = [r["text_l0"] for r in text]
    return (
        f"| `{kind}` | {loss(corpus)} | {loss(text)} | {min(l0):.0f}-{max(l0):.0f} | "
        f"{mean(corpus, 'ce_loss_recovered'):.3f} -> {mean(text, 'ce_loss_recovered'):.3f} |"
    )


def text_table(run: str, text: str) -> str:
    by_kind: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for i, source in enumerate(("", text)):
        for row in summary_rows(run, source):
            by_kind[row["site"]][i].append(row)
    clean = {source: summary_rows(run, source)[0]["ce_clean"] for source in ("", text)}
    return "\n".join(
        [
            f"clean model loss: {clean[text]:.2f} nats per token on {text}, {clean['']:.2f} on held-out corpus text",
            "",
            "| site kind | delta loss, held-out corpus: mean (range) | delta loss, the text: mean (range) | "
            "L0 on the text | CE recovered (mean) |",
            "|---|---:|---:|---:|---:|",
        ]
        + [text_row(kind, *rows) for kind, rows in sorted(by_kind.items()) if rows[1]]
    )


def kinds(run: str) -> list[str]:
    by_kind = defaultdict(list)
    for row in summary_rows(run):
        by_kind[row["site"]].append(row)
    return [kind_row(run, kind, rows) for kind, rows in sorted(by_kind.items())]


if __name__ == "__main__":
    if sys.argv[1] == "--text":
        print(text_table(sys.argv[3], sys.argv[2]))
        sys.exit()
    print("| run | site | SAEs | L0 | delta loss mean | delta loss max | KL mean | FVU mean | dead (sum) | dense |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in sys.argv[1:]:
        print("\n".join(kinds(run)))
