"""Does weighting the MSE with the whole Fisher of the loss, not only its diagonal, buy delta LM loss?

`--normalize sensitivity` weights each standardised dimension by its diagonal Fisher entry (to the
power 0.5). The loss change from an error e at a site is 1/2 e^T F e with F the full Fisher, and
after the last layer (RMSNorm, then the unembedding) F is far from diagonal. This trains one JumpReLU
SAE per site and variant with the default run's schedule on the default run's store: the default
(diagonal) against the full matrix, C = S F S in standardised units (S the per-dimension scale),
trained on x_s C^(p/2) (symmetric power, eigenvalues floored like the diagonal's), then folded back
into a raw-activation SAE of the usual form; all evaluated together on the same held-out rows and text:

    python experiments/fisher.py --store runs/default/activations --config runs/default/train/config.json \
        --out runs/exp_fisher --sites res.17,res.12,res.6 --powers 0.5

Prints a markdown table (also OUT/table.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from sensitivity import metric_cells  # experiments/sensitivity.py, beside this script

from saescope.activations.documents import iter_documents
from saescope.activations.packing import pack_documents
from saescope.activations.sensitivity import SENSITIVITY_TOKENS, loss_sensitivity
from saescope.activations.store import ActivationStore
from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.models.loading import load_model
from saescope.models.sites import Site
from saescope.train.job import TrainConfig
from saescope.train.normalize import SENSITIVITY_FLOOR, estimate_standardization, first_rows
from saescope.train.trainer import INIT_ROWS, Trainer


def full_fisher(store: ActivationStore, sites: list[str]) -> dict[str, torch.Tensor]:
    """E[g g^T] of the LM loss gradient g at each site, on the store's first SENSITIVITY_TOKENS
    training tokens (the tokens the diagonal is measured on)."""
    info = store.info
    model, tokenizer = load_model(info["model"], info["dtype"], "cpu")
    docs = iter_documents(info["dataset"], info.get("text_field", "text"))
    batches = pack_documents(docs, tokenizer, info["context_len"], 1, max_tokens=SENSITIVITY_TOKENS)
    return loss_sensitivity(model, batches, [Site.parse(name) for name in sites], full=True)


def standardised(fisher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """C = S F S: the Fisher in the units of the standardised rows x_s = (x - mean) / scale."""
    s = scale.double()
    return s[:, None] * fisher.double() * s[None, :]


def transform(fisher: torch.Tensor, scale: torch.Tensor, rows: torch.Tensor, power: float) -> torch.Tensor:
    """B = C^(power/2), eigenvalues floored at SENSITIVITY_FLOOR of their mean, scaled so that
    E||x_s B||^2 = 1 on `rows` (standardised)."""
    values, vectors = torch.linalg.eigh(standardised(fisher, scale))
    values = values.clamp(min=SENSITIVITY_FLOOR * float(values.mean()))
    b = vectors @ torch.diag(values ** (power / 2)) @ vectors.T
    return (b / (rows.double() @ b).pow(2).sum(1).mean().sqrt()).float()


def structure(fisher: torch.Tensor, scale: torch.Tensor) -> str:
    """How far C is from diagonal: the share of its squared Frobenius norm off the diagonal, and the
    share of its trace in its top 10 eigenvalues against that in its top 10 diagonal entries."""
    c = standardised(fisher, scale)
    values = torch.linalg.eigvalsh(c).flip(0)
    diag = torch.diag(c).sort(descending=True).values
    off = 1 - float(diag.pow(2).sum() / c.pow(2).sum())
    top_eig, top_diag = float(values[:10].sum() / values.sum()), float(diag[:10].sum() / diag.sum())
    return (
        f"off-diagonal {off:.0%} of ||C||^2; top 10 eigenvalues {top_eig:.0%} of the trace, "
        f"top 10 dimensions {top_diag:.0%}"
    )


class FisherTrainer(Trainer):
    """Trains on x_s B (x_s standardised, B per site) with identity normalisation inside the trainer."""

    def __init__(self, cfg: TrainConfig, maps: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        super().__init__(cfg)
        self.maps = maps  # site -> (scale, mean, B)

    def to_space(self, site: str, x: torch.Tensor) -> torch.Tensor:
        scale, mean, b = self.maps[site]
        return ((x.float() - mean) / scale) @ b

    def estimate_normalization(self) -> None:
        for site in self.sites:
            self.scales[site] = 1.0

    @torch.no_grad()
    def init_from_data(self) -> None:
        for key, sae in self.saes.items():
            site = self.site_of[key]
            sae.init_from_data(self.to_space(site, first_rows(self.store, site, INIT_ROWS)))

    def train_step(self, acts: dict[str, torch.Tensor]) -> dict:
        return super().train_step({site: self.to_space(site, x) for site, x in acts.items()})

    def write_trained(self) -> None:
        """Fold B into each SAE (standardised space), then write it with the standardisation folded."""
        with torch.no_grad():
            for key, sae in self.saes.items():
                site = self.site_of[key]
                scale, mean, b = self.maps[site]
                b_inv = torch.linalg.inv(b.double()).float()
                sae.W_enc.copy_(b @ sae.W_enc)
                sae.W_dec.copy_(sae.W_dec @ b_inv)
                sae.b_dec.copy_(sae.b_dec @ b_inv)
                self.scales[site], self.shifts[site] = scale, mean
        super().write_trained()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default="runs/default/activations")
    p.add_argument("--config", default="runs/default/train/config.json", help="the schedule to train with")
    p.add_argument("--out", default="runs/exp_fisher")
    p.add_argument("--sites", default="res.17")
    p.add_argument("--powers", default="0.5", help="comma-separated powers of the full matrix")
    p.add_argument("--eval-sequences", type=int, default=8)
    args = p.parse_args(argv)
    out, store = Path(args.out), ActivationStore(args.store)
    sites = args.sites.split(",")
    base = {k: v for k, v in json.loads(Path(args.config).read_text()).items() if k != "job"}
    fisher_file = out / "fisher.safetensors"
    if not fisher_file.exists():
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in full_fisher(store, sites).items()}, str(fisher_file))
    fishers = load_file(str(fisher_file))
    names = []
    for site in sites:
        scale, mean = estimate_standardization(store, site, base["norm_rows"])
        rows = (first_rows(store, site, INIT_ROWS).float() - mean) / scale
        print(f"{site}: {structure(fishers[site], scale)}")
        for power in [None] + [float(a) for a in args.powers.split(",")]:
            name = f"{site} diagonal 0.5 (default)" if power is None else f"{site} full {power:g}"
            folder = out / "variants" / name.replace(" ", "_").replace("(", "").replace(")", "")
            values = dict(
                store=str(store.path), out=str(folder), train_sites=site, log_every=1, checkpoint_every=10_000
            )
            if not (folder / "saes").exists():
                if power is None:
                    Trainer(TrainConfig(**(base | values | dict(normalize="sensitivity")))).train()
                else:
                    b = transform(fishers[site], scale, rows, power)
                    cfg = TrainConfig(**(base | values | dict(normalize="scalar")))
                    FisherTrainer(cfg, {site: (scale, mean, b)}).train()
            (trained,) = (folder / "saes").iterdir()
            dest = out / "saes" / folder.name
            if not dest.exists():
                shutil.copytree(trained, dest)
            names.append((name, dest))
    evaluate(EvalConfig(out=str(out), store=str(store.path), eval_sequences=args.eval_sequences))
    lines = ["| variant | L0 | delta LM loss | KL | FVU | dead | dense |", "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {metric_cells(dest)} |" for name, dest in names]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
