"""Does weighting each dimension by how much the LM loss depends on it buy delta LM loss at equal L0?

Per-dimension standardisation gives every dimension of a site the same weight in the MSE. The
model does not read them equally: the next RMSNorm's gain, the unembedding (after the last layer)
and the layers in between make an error in some dimensions cost far more loss than in others. To
second order, the expected loss change from an error e at a site is 1/2 e^T F e with F the Fisher
of the loss in that site's activations; its diagonal, F_d = E[(dL/dx_d)^2], is one backward pass
over a few thousand tokens. Training on z_d * sqrt(w_d) (z the standardised site, w_d = F_d
sigma_d^2 the loss sensitivity in standardised units) makes the MSE the diagonal second-order
estimate of the loss change; alpha in w_d^alpha interpolates between standardisation (0) and that (1).

Each variant trains one JumpReLU SAE with the default run's schedule, on the default run's store,
and all are evaluated together on the same held-out rows and text:

    python experiments/sensitivity.py --store runs/default/activations --out runs/exp_sens --sites res.6,res.17

Prints a markdown table (also OUT/table.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from saescope.activations.documents import iter_documents
from saescope.activations.packing import pack_documents
from saescope.activations.store import ActivationStore
from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.models.loading import load_model
from saescope.models.sites import Site, replace
from saescope.train.normalize import estimate_standardization
from saescope.train.trainer import TrainConfig, Trainer


def loss_sensitivity(model, tokenizer, sites: list[str], tokens: int) -> dict[str, torch.Tensor]:
    """E[(dL/dx_d)^2] per dimension of each site, over `tokens` training-mask tokens of the corpus
    (the harvest's first text; the LM loss at the true next token, summed over positions)."""
    for p in model.parameters():
        p.requires_grad_(False)
    sums = {s: 0.0 for s in sites}
    count = 0
    for batch in pack_documents(iter_documents("wiki", "text"), tokenizer, 1024, 1, max_tokens=tokens):
        probes: dict[str, torch.Tensor] = {}  # a zero added at each site: its gradient is the site's

        def grab(name: str, probes: dict = probes):
            def fn(x: torch.Tensor) -> torch.Tensor:
                probes[name] = torch.zeros_like(x, requires_grad=True)
                return x + probes[name]

            return fn

        with ExitStack() as hooks:
            for s in sites:
                hooks.enter_context(replace(model, Site.parse(s), grab(s)))
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
            target = batch.input_ids[:, 1:]
            scored = batch.train_mask[:, :-1] & batch.attention_mask[:, 1:].bool()
            loss = torch.nn.functional.cross_entropy(logits[scored], target[scored], reduction="sum")
            loss.backward()
        mask = batch.train_mask
        for s in sites:
            sums[s] = sums[s] + probes[s].grad[mask].double().pow(2).sum(0)
        count += int(mask.sum())
    return {s: (sums[s] / count).float() for s in sites}


class WeightedTrainer(Trainer):
    """The default trainer with each standardised dimension scaled by sqrt(w_d^alpha), renormalised
    to E||x||^2 = 1 (a per-dimension scale, so the release folds it like standardisation)."""

    def __init__(self, cfg: TrainConfig, weights: dict[str, torch.Tensor], alpha: float):
        super().__init__(cfg)
        self.weights, self.alpha = weights, alpha

    def estimate_normalization(self) -> None:
        super().estimate_normalization()
        for site in self.sites:
            w = self.weights[site].to(self.device).double().pow(self.alpha)
            w = w / w.mean()
            self.scales[site] = (self.scales[site].double() / w.sqrt()).float()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default="runs/default/activations")
    p.add_argument("--config", default="runs/default/train/config.json")
    p.add_argument("--out", default="runs/exp_sens")
    p.add_argument("--sites", default="res.6,res.17")
    p.add_argument("--alphas", default="0,0.5,1")
    p.add_argument("--targets", default="64")
    p.add_argument("--grad-tokens", type=int, default=8192)
    p.add_argument("--eval-sequences", type=int, default=8)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sites = args.sites.split(",")
    cache = out / "sensitivity.pt"
    if cache.exists():
        fisher = torch.load(cache)
    else:
        model, tokenizer = load_model("embedded")
        start = time.perf_counter()
        fisher = loss_sensitivity(model, tokenizer, sites, args.grad_tokens)
        print(f"sensitivity of {len(sites)} sites over {args.grad_tokens} tokens: {time.perf_counter() - start:.0f} s")
        torch.save(fisher, cache)
        del model
    store = ActivationStore(args.store)
    base = {k: v for k, v in json.loads(Path(args.config).read_text()).items() if k != "job"}
    log = {}
    for site in sites:
        scale, _mean = estimate_standardization(store, site, base["norm_rows"])
        sigma2 = (scale / scale.shape[0] ** 0.5).double().pow(2)
        weights = fisher[site].double() * sigma2  # loss sensitivity in standardised units
        top = (weights / weights.sum()).sort(descending=True).values
        print(
            f"{site}: share of the loss sensitivity in the top 1/10/100 dimensions "
            f"{top[0]:.3f}/{top[:10].sum():.3f}/{top[:100].sum():.3f}"
        )
        for target in [float(t) for t in args.targets.split(",")]:
            for alpha in [float(a) for a in args.alphas.split(",")]:
                name = f"{site} L0 {target:g} alpha {alpha:g}"
                folder = out / "variants" / name.replace(" ", "_")
                cfg = TrainConfig(
                    **(
                        base
                        | dict(
                            store=args.store,
                            out=str(folder),
                            train_sites=site,
                            l0_coefficients=[target],
                            log_every=1,
                            checkpoint_every=10_000,
                        )
                    )
                )
                start = time.perf_counter()
                if not (folder / "saes").exists():
                    WeightedTrainer(cfg, {site: weights.float()}, alpha).train()
                (trained,) = (folder / "saes").iterdir()
                dest = out / "saes" / name.replace(" ", "_")
                if not dest.exists():
                    shutil.copytree(trained, dest)
                log[name] = {"folder": dest.name, "train_s": round(time.perf_counter() - start, 1)}
    evaluate(EvalConfig(out=str(out), store=args.store, eval_sequences=args.eval_sequences))
    lines = ["| variant | L0 | delta LM loss | KL | FVU | dead | dense |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in log.items():
        m = json.loads((out / "saes" / row["folder"] / "metrics.json").read_text())
        lines.append(
            f"| {name} | {m['l0']:.1f} | {m['delta_loss']:.3f} | {m['kl_div']:.3f} | {m['fvu']:.3f} | "
            f"{m['dead_latents']} | {m['dense_latents']} |"
        )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
