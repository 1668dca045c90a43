"""Does weighting each dimension by how much the LM loss depends on it buy delta LM loss at equal L0?

`--normalize sensitivity` trains on standardised dimensions scaled by sqrt(w_d^p), w_d = F_d sigma_d^2
the loss sensitivity of dimension d in standardised units (F the diagonal Fisher of the loss at the
site, measured by the harvest: saescope/activations/sensitivity.py). p = 0 is `--normalize
standardize`; p = 1 makes the MSE the diagonal second-order estimate of the loss change. Each
variant trains one JumpReLU SAE per site with the default run's schedule on the default run's
store, and all are evaluated together on the same held-out rows and text:

    saescope run --out runs/default        # or any store; a store without sensitivities gets them
    python experiments/sensitivity.py --store runs/default/activations --out runs/exp_sens \
        --sites res.2,res.6,res.12,res.15,res.17,mlp.6,mlp.12,att.6,att.12 --powers 0,0.25,0.5,1

Prints a markdown table (also OUT/table.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.sensitivity import SENSITIVITY_FILE
from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.train import normalize
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default="runs/default/activations")
    p.add_argument("--config", default="runs/default/train/config.json", help="the schedule to train with")
    p.add_argument("--out", default="runs/exp_sens")
    p.add_argument("--sites", default="res.6,res.17")
    p.add_argument("--powers", default="0,0.5", help="comma-separated; 0 is --normalize standardize")
    p.add_argument("--targets", default="64")
    p.add_argument("--eval-sequences", type=int, default=8)
    args = p.parse_args(argv)
    out, store = Path(args.out), Path(args.store)
    if not (store / SENSITIVITY_FILE).exists():  # harvest run again on a finished store only adds them
        info = json.loads((store / "store.json").read_text())["harvest_config"]
        harvest(HarvestConfig(**(info | {"store": str(store)})))
    base = {k: v for k, v in json.loads(Path(args.config).read_text()).items() if k != "job"}
    names = []
    for site in args.sites.split(","):
        for target in [float(t) for t in args.targets.split(",")]:
            for power in [float(a) for a in args.powers.split(",")]:
                name = f"{site} L0 {target:g} power {power:g}"
                folder = out / "variants" / name.replace(" ", "_")
                normalize.SENSITIVITY_POWER = power
                values = dict(store=str(store), out=str(folder), train_sites=site, l0_coefficients=[target])
                values["normalize"] = "sensitivity" if power else "standardize"
                if not (folder / "saes").exists():
                    Trainer(TrainConfig(**(base | values | dict(log_every=1, checkpoint_every=10_000)))).train()
                (trained,) = (folder / "saes").iterdir()
                dest = out / "saes" / name.replace(" ", "_")
                if not dest.exists():
                    shutil.copytree(trained, dest)
                names.append(name)
    evaluate(EvalConfig(out=str(out), store=str(store), eval_sequences=args.eval_sequences))
    lines = ["| variant | L0 | delta LM loss | KL | FVU | dead | dense |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        lines.append(f"| {name} | {metric_cells(out / 'saes' / name.replace(' ', '_'))} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def metric_cells(folder: Path) -> str:
    """L0 | delta LM loss | KL | FVU | dead | dense of an evaluated SAE folder, as table cells."""
    m = json.loads((folder / "metrics.json").read_text())
    cells = f"{m['l0']:.1f} | {m['delta_loss']:.3f} | {m['kl_div']:.3f} | {m['fvu']:.3f}"
    return f"{cells} | {m['dead_latents']} | {m['dense_latents']}"


if __name__ == "__main__":
    main()
