"""Train many SAEs from one read of the store, as Gemma Scope did.

Every SAE of a job (site x width x sparsity coefficient) sees each shuffled batch once: the batch
is read and converted once, then each SAE takes its site's rows. One Adam holds every SAE's
parameters (Adam is per-parameter, so this equals one optimiser per SAE, with one Python loop
instead of hundreds).

Checkpoints hold weights, optimiser state, step and normalising constants; the loader can jump to
any batch number without reading earlier ones, so a resumed run ends bit-identical to an
uninterrupted one with the same seed.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore, write_json_atomic
from saescope.config import option, save_config
from saescope.errors import SaescopeError
from saescope.models.loading import resolve_device
from saescope.models.sites import Site
from saescope.saes.base import SAE
from saescope.saes.registry import make_sae, sae_from_state


@dataclass
class TrainConfig:
    store: str = option("runs/default/activations", "activation store to train on")
    out: str = option("runs/default", "run folder: checkpoints go to OUT/train, trained SAEs to OUT/saes")
    train_sites: str = option("all", "sites of the store to train on: all, or names like res.3,mlp.3")
    arch: str = option("jumprelu", "SAE family")
    widths: list = option([4096], "dictionary sizes, comma-separated")
    l0_coefficients: list = option([1e-3], "sparsity coefficients (lambda), comma-separated; one SAE per value")
    knobs: str = option("", "family options as key=value,key=value (e.g. target_l0=40,l0_penalty=quadratic)")
    train_tokens: int = option(4_000_000_000, "training tokens per SAE (the loader repeats epochs if the store is smaller)")
    batch_size: int = option(4096, "tokens per step")
    lr: float = option(7e-5, "Adam learning rate")
    lr_warmup_steps: int = option(1000, "cosine warm-up from 0.1*lr to lr over these steps")
    l0_warmup_steps: int = option(10000, "linear warm-up of the sparsity coefficient from 0")
    adam_beta1: float = option(0.0, "Adam beta1")
    adam_beta2: float = option(0.999, "Adam beta2")
    norm_rows: int = option(65536, "rows used to estimate each site's normalising constant")
    buffer_rows: int = option(65536, "shuffle buffer rows (memory: rows x total site width x dtype size)")
    eval_shards: int = option(1, "last shards of the store held out for evaluation")
    checkpoint_every: int = option(500, "steps between checkpoints")
    log_every: int = option(50, "steps between log lines in OUT/train/log.jsonl")
    seed: int = option(0, "seed for initialisation and shuffling")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


def parse_knobs(text: str) -> dict:
    knobs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise SaescopeError(f"bad --knobs entry '{part}': use key=value,key=value")
        try:
            knobs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            knobs[key.strip()] = value.strip()
    return knobs


def sae_key(site: str, width: int, coefficient: float) -> str:
    return f"{site}__w{width}__c{coefficient:g}"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Cosine warm-up from 0.1*lr to lr; constant afterwards (the recipe states no decay)."""
    if step >= cfg.lr_warmup_steps:
        return cfg.lr
    progress = step / cfg.lr_warmup_steps
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 - math.cos(math.pi * progress)))


def sparsity_scale_at(step: int, cfg: TrainConfig) -> float:
    return 1.0 if step >= cfg.l0_warmup_steps else step / cfg.l0_warmup_steps


def select_sites(store: ActivationStore, sites: str) -> list[str]:
    if sites == "all":
        return store.sites
    names = [s.strip() for s in sites.split(",") if s.strip()]
    for name in names:
        Site.parse(name)
        store.column(name)
    return names


@torch.no_grad()
def estimate_scale(store: ActivationStore, site: str, rows: int) -> float:
    """C with E[||x/C||^2] = 1, from the first `rows` training rows (the recipe's normalisation)."""
    total, count = 0.0, 0
    for shard in range(store.n_shards):
        x = store.read(site, shard)[: rows - count].float()
        total += x.pow(2).sum().item()
        count += len(x)
        if count >= rows:
            break
    if not math.isfinite(total) or total <= 0:
        raise SaescopeError(f"site {site}: activations are all zero or not finite; harvest again")
    return math.sqrt(total / count)


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.store = ActivationStore(cfg.store)
        self.sites = select_sites(self.store, cfg.train_sites)
        self.loader = ShuffledLoader(self.store, self.sites, cfg.batch_size, cfg.buffer_rows, seed=cfg.seed,
                                     split="train", eval_shards=cfg.eval_shards, device=self.device)
        self.total_steps = max(1, cfg.train_tokens // cfg.batch_size)
        self.knobs = parse_knobs(cfg.knobs)
        self.saes: dict[str, SAE] = {}
        self.site_of: dict[str, str] = {}
        for i, (site, width, coef) in enumerate((s, w, c) for s in self.sites for w in cfg.widths
                                                for c in cfg.l0_coefficients):
            torch.manual_seed(cfg.seed * 100_003 + i)
            coef_knob = {"l0_coefficient": coef} if cfg.arch == "jumprelu" else {"sparsity_coefficient": coef}
            key = sae_key(site, int(width), coef)
            self.saes[key] = make_sae(cfg.arch, self.store.d_in(site), int(width), **coef_knob, **self.knobs).to(self.device)
            self.site_of[key] = site
        params = [p for sae in self.saes.values() for p in sae.parameters()]
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=(float(cfg.adam_beta1), float(cfg.adam_beta2)), eps=1e-8)
        self.step = 0
        self.scales: dict[str, float] = {}

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "train" / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"step": self.step, "scales": self.scales, "optimizer": self.opt.state_dict(),
                    "saes": {k: s.state_dict() for k, s in self.saes.items()}, "config": asdict(self.cfg)}, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        try:
            ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=True)
        except Exception as e:
            raise SaescopeError(f"checkpoint {self.checkpoint_path} is unreadable ({type(e).__name__}): "
                                f"delete it to start over") from e
        if set(ckpt["saes"]) != set(self.saes):
            raise SaescopeError(f"checkpoint {self.checkpoint_path} holds other SAEs than this config asks for: "
                                f"use another --out or delete {self.checkpoint_path.parent}")
        for key, sae in self.saes.items():
            self.saes[key] = sae_from_state(self.cfg.arch, sae.d_in, sae.d_sae, sae.knobs(), ckpt["saes"][key]).to(self.device)
        params = [p for sae in self.saes.values() for p in sae.parameters()]
        self.opt = torch.optim.Adam(params, lr=self.cfg.lr, betas=(float(self.cfg.adam_beta1), float(self.cfg.adam_beta2)), eps=1e-8)
        self.opt.load_state_dict(ckpt["optimizer"])
        self.step, self.scales = ckpt["step"], ckpt["scales"]
        return True

    def train(self) -> dict[str, SAE]:
        save_config(self.cfg, self.out / "train" / "config.json")
        resumed = self.load_checkpoint()
        if not self.scales:
            self.scales = {s: estimate_scale(self.store, s, self.cfg.norm_rows) for s in self.sites}
        if resumed:
            print(f"saescope: resuming {len(self.saes)} SAEs at step {self.step}/{self.total_steps}")
        log = open(self.out / "train" / "log.jsonl", "a")
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc=f"train {len(self.saes)} SAEs",
                   dynamic_ncols=True)
        started, start_step = time.perf_counter(), self.step
        try:
            for batch in self.loader.iterate(self.step, self.total_steps, epochs=None):
                stats = self.train_step(batch.acts)
                self.step += 1
                bar.update(1)
                rate = (self.step - start_step) * self.cfg.batch_size / (time.perf_counter() - started)
                bar.set_postfix(tok_s=f"{rate:,.0f}", L0=f"{stats['l0']:.1f}", FVU=f"{stats['fvu']:.3f}")
                if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                    log.write(json.dumps({"step": self.step, **stats["per_sae"]}) + "\n")
                    log.flush()
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            log.close()
        self.write_trained()
        return self.saes

    def train_step(self, acts: dict[str, torch.Tensor]) -> dict:
        cfg = self.cfg
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, cfg)
        scale = sparsity_scale_at(self.step, cfg)
        per_sae, l0s, fvus = {}, [], []
        normalised: dict[str, torch.Tensor] = {}
        for key, sae in self.saes.items():
            site = self.site_of[key]
            if site not in normalised:
                x = acts[site] / self.scales[site]
                if not torch.isfinite(x).all():
                    raise self.nan_error(site, "the activation batch")
                normalised[site] = x
            out = sae.loss(normalised[site], scale)
            if not torch.isfinite(out.loss):
                raise self.nan_error(site, f"the loss of SAE {key}")
            out.loss.backward()
            sae.remove_parallel_decoder_grad()
            per_sae[key] = {"l0": round(out.l0.item(), 3), "fvu": round(out.fvu.item(), 5), "mse": round(out.mse.item(), 5)}
            l0s.append(per_sae[key]["l0"])
            fvus.append(per_sae[key]["fvu"])
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        for sae in self.saes.values():
            sae.normalize_decoder()
        return {"l0": sum(l0s) / len(l0s), "fvu": sum(fvus) / len(fvus), "per_sae": per_sae}

    def nan_error(self, site: str, what: str) -> SaescopeError:
        s = Site.parse(site)
        kept = f"the last checkpoint ({self.checkpoint_path}) is kept" if self.checkpoint_path.exists() else \
            "no checkpoint had been written yet"
        return SaescopeError(f"NaN or inf in {what} at site {s.kind}, layer {s.layer}, step {self.step}: "
                             f"{kept}; check the store (saescope harvest again) or lower --lr")

    def write_trained(self) -> None:
        """Each trained SAE folded into raw-activation space, with the facts needed to release it."""
        for key, sae in self.saes.items():
            site = Site.parse(self.site_of[key])
            folded = sae.folded(self.scales[self.site_of[key]]).cpu()
            folder = self.out / "saes" / key
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: torch.from_numpy(v) for k, v in folded.params_npz().items()}, folder / "sae.safetensors")
            write_json_atomic(folder / "config.json", {
                "architecture": self.cfg.arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "site": site.kind,
                "layer": site.layer, "hook": site.name, "knobs": folded.knobs(),
                "sparsity_coefficient": self._coef(key), "normalization_scale": self.scales[self.site_of[key]],
                "tokens_trained": self.step * self.cfg.batch_size, "steps": self.step,
                "model": self.store.info.get("model"), "model_name": self.store.info.get("model_name"),
                "dataset": self.store.info.get("dataset"), "context_len": self.store.info.get("context_len"),
                "store_dtype": self.store.dtype, "seed": self.cfg.seed,
            })

    def _coef(self, key: str) -> float:
        return float(key.rsplit("__c", 1)[1])


def train(cfg: TrainConfig) -> dict[str, SAE]:
    return Trainer(cfg).train()
