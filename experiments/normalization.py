"""The recipe's scalar normalisation against per-dimension standardisation, on the default run's
sizes, for a few `res` sites of the embedded Gemma 3 270M (the README's table comes from here).

    python experiments/normalization.py [--out runs/normalization] [--layers 2,6,12]

It harvests `res` at those layers (the default run's 114,688 tokens), trains the default run's
JumpReLU SAE per site twice on the same batches, once per `--normalize`, evaluates both, and
shows where the loss comes from: the scalar SAE spliced into only the largest dimension of the
first site, then into every other dimension.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.store import ActivationStore
from saescope.evaluate.heldout import HeldOutText
from saescope.evaluate.metrics import EvalConfig, evaluate, load_trained
from saescope.models.loading import load_model
from saescope.models.sites import Site
from saescope.run import RunConfig
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer


def train_and_evaluate(base: RunConfig, store: Path, out: Path, normalize: str, sites: str) -> dict:
    cfg = dataclasses.replace(base, out=str(out), store=str(store), normalize=normalize, train_sites=sites)
    Trainer(cfg.part(TrainConfig)).train()
    return evaluate(cfg.part(EvalConfig))


@torch.no_grad()
def splice_by_dimension(store: ActivationStore, folder: Path, site: Site, eval_cfg: EvalConfig) -> None:
    x = store.read(site.name, 0).float()
    std, mean = x.std(0), x.mean(0)
    order = std.argsort(descending=True)
    print(
        f"\n{site.name}: largest standard deviations {[round(v, 1) for v in std[order[:3]].tolist()]} "
        f"(dims {order[:3].tolist()}, means {[round(v, 1) for v in mean[order[:3]].tolist()]}); "
        f"median {std.median().item():.2f}"
    )
    model, tok = load_model(store.info["model"], eval_cfg.eval_dtype, eval_cfg.device)
    text = HeldOutText(
        model, tok, store.info["dataset"], store.info.get("text_field", "text"), store.info["rows"], eval_cfg
    )
    sae, _ = load_trained(folder, next(model.parameters()).device)
    clean, _ = text.loss_with(None, None)
    largest = torch.zeros(x.shape[1], dtype=torch.bool)
    largest[order[0]] = True
    for what, keep in (("only the largest dimension", ~largest), ("every other dimension", largest)):
        ce, _ = text.loss_with(site, lambda a, keep=keep: torch.where(keep.to(a.device), a.float(), sae(a.float())))
        print(f"scalar SAE spliced into {what}: delta loss {ce - clean:.3f} nats")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/normalization")
    p.add_argument("--layers", default="2,6,12")
    args = p.parse_args()
    out = Path(args.out)
    base = RunConfig(out=str(out), sites="res", layers=args.layers)
    store = out / "activations"
    harvest(dataclasses.replace(base, store=str(store)).part(HarvestConfig))
    sites = ",".join(f"res.{layer}" for layer in args.layers.split(","))
    results = {n: train_and_evaluate(base, store, out / n, n, sites) for n in ("scalar", "standardize")}
    print("\n| site | normalize | L0 | FVU | delta loss | CE recovered | dead |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in sorted(results["scalar"], key=lambda k: int(k.split("__")[0].split(".")[1])):
        for n, r in results.items():
            m = r[name]
            print(
                f"| {name.split('__')[0]} | {n} | {m['l0']:.1f} | {m['fvu']:.3f} | {m['delta_loss']:.3f} | "
                f"{m['ce_loss_recovered']:.3f} | {m['dead_latents']} |"
            )
    first = sorted(results["scalar"], key=lambda k: int(k.split("__")[0].split(".")[1]))[0]
    splice_by_dimension(
        ActivationStore(store),
        out / "scalar" / "saes" / first,
        Site.parse(first.split("__")[0]),
        dataclasses.replace(base).part(EvalConfig),
    )


if __name__ == "__main__":
    main()
