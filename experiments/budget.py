"""What more compute buys the default run's SAEs: twice the tokens, half the batch (twice the steps
on the same tokens), twice the width, each against the default schedule, one JumpReLU SAE per
site and variant on a default run's store, all evaluated together on its held-out shard and text.

    saescope run --out runs/default
    python experiments/budget.py --store runs/default/activations --out runs/exp_budget \
        --sites res.6,res.12,res.17,mlp.6,att.6

Prints a markdown table (also OUT/table.md) with each variant's training seconds beside its
metrics (the SAEs train one after another on a quiet machine, so the seconds compare).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from sensitivity import metric_cells  # experiments/sensitivity.py, beside this script

from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.run import RunConfig
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer

# The default run's schedule as this table was measured: before it took Adam beta1 0.5 and batches
# of 512 (round 14 of experiments/jumprelu.py), so that a re-run reproduces the README's rows.
BASE = dataclasses.asdict(RunConfig().part(TrainConfig)) | {"adam_beta1": 0.0, "batch_size": 1024}
VARIANTS = {
    "default (204,800 tokens, batch 1024, width 2048)": {},
    "2x tokens": {"train_tokens": 2 * BASE["train_tokens"]},
    "batch 512 (2x steps)": {"batch_size": BASE["batch_size"] // 2},
    "width 4096": {"widths": [2 * w for w in BASE["widths"]]},
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default="runs/default/activations")
    p.add_argument("--out", default="runs/exp_budget")
    p.add_argument("--sites", default="res.6,res.12,res.17,mlp.6,att.6")
    p.add_argument("--eval-sequences", type=int, default=8)
    args = p.parse_args(argv)
    out, seconds, rows = Path(args.out), {}, []
    for site in args.sites.split(","):
        for number, (variant, changes) in enumerate(VARIANTS.items()):
            name = f"{site}__v{number}"
            folder = out / "variants" / name
            cfg = TrainConfig(**(BASE | changes | dict(store=args.store, out=str(folder), train_sites=site)))
            if not (folder / "saes").exists():
                start = time.perf_counter()
                Trainer(cfg).train()
                (folder / "seconds").write_text(f"{time.perf_counter() - start:.1f}")
            seconds[name] = float((folder / "seconds").read_text())
            (trained,) = (folder / "saes").iterdir()
            if not (out / "saes" / name).exists():
                shutil.copytree(trained, out / "saes" / name)
            rows.append((site, variant, name))
    evaluate(EvalConfig(out=str(out), store=args.store, eval_sequences=args.eval_sequences))
    lines = [
        "| site | variant | train s | L0 | delta LM loss | KL | FVU | dead | dense |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for site, variant, name in rows:
        lines.append(f"| {site} | {variant} | {seconds[name]:.0f} | {metric_cells(out / 'saes' / name)} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
