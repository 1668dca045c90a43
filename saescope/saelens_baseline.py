"""`saescope compare --baseline saelens`: SAELens' JumpReLU and TopK, trained by SAELens' own code
on exactly the rows saescope's SAEs saw, then written as saescope SAE folders.

Why: saescope's families are our implementations of the papers; a frontier drawn only from them
cannot show whether an implementation detail (an estimator, an init, a loss term) costs fidelity.
SAELens is the reference implementation most SAEs in the wild come from, so its SAEs trained on the
same data are the baseline the table needs.

What SAELens runs: its training SAE classes (`JumpReLUTrainingSAE`, `TopKTrainingSAE`, their
`training_forward_pass`: MSE + L0 loss, MSE + AuxK loss), driven by its `MultiSAETrainer`, which
keeps one `SAETrainer` (Adam, LR scheduler, coefficient warm-up, dead-latent tracking, gradient
clipping) per SAE and feeds all of them each batch of a data provider. We only provide that
iterator of batches.

What is shared with saescope's SAEs of the same compare run (the `Trainer` that trained them): the
batches (the Trainer's own ShuffledLoader from step 0: same seed, batch size, buffer, eval_shards,
hence the same rows in the same order), the normalisation (the Trainer's estimated scale and, with
a per-dimension `--normalize`, mean: rows are (x - mean) / scale before SAELens sees them, and SAELens'
own `normalize_activations` stays "none"), the number of steps and tokens, the width, the learning
rate, the LR warm-up steps (SAELens `lr_warm_up_steps`), the LR decay (the Trainer's linear fall to
0 over the last `lr_decay` share of the run is SAELens' `lr_decay_steps` with its constant
scheduler, step for step), the sparsity warm-up (JumpReLU `l0_warm_up_steps`, linear from 0 as in
saescope), the device, and seeding (SAE i of the baseline is initialised after
`torch.manual_seed(seed * 100_003 + i)`, as the Trainer seeds its SAE i).

SAELens defaults that are kept, where saescope differs: Adam betas (0.9, 0.999) (compare uses
beta1 0.5, and 0 for JumpReLU thresholds) with torch's eps 1e-8; gradient-norm clipping at 1.0;
linear LR warm-up from lr/steps (saescope: cosine from 0.1 lr), constant after it; float32, no autocast; decoder rows
initialised at norm 0.1 with the encoder their transpose, biases zero; b_dec subtracted from the
input (`apply_b_dec_to_input`); no unit-norm decoder constraint; `dead_feature_window` 1000 steps.
JumpReLU: `jumprelu_init_threshold` 0.01, `jumprelu_bandwidth` 0.05, the "step" L0 loss
(Gemma Scope's l0_coefficient * mean L0), straight-through gradient to the threshold only, no
pre-activation loss. TopK: `rescale_acts_by_decoder_norm` True, AuxK with k_aux = d_in / 2 and
`aux_loss_coefficient` 1.0, dense activations.

Sweep values: TopK sweeps k. JumpReLU sweeps SAELens' `l0_coefficient` as SAELens applies it,
to the rows we feed: MSE (summed over dimensions, E||x||^2 = 1 after our normalisation) +
l0_coefficient * L0, the same scale as saescope's jumprelu lambda. SAELens' own default 1.0
assumes its `expected_average_only_in` normalisation (E||x|| = sqrt(d_in)), where the MSE is about
d_in times larger, so it corresponds to about 1/d_in here (1.6e-3 at Gemma 3 270M's d_in 640).
DEFAULT_SWEEPS brackets that by ~3x steps. How far L0 comes down in a short run depends on the
learning rate (the threshold, init 0.01, moves about lr per Adam step): on Gemma 3 270M res.6
(standardised, width 2048, 120 steps of 1024 tokens, lr 1e-3, no LR decay) 0.003 / 0.01 / 0.03 gave
held-out L0 94 / 53 / 45, while at compare's default lr 3e-3 over 240 steps of width 4096, 0.01 /
0.03 / 0.1 / 0.3 gave L0 5.3 / 2.8 / 1.6 / 1.0, hence 0.0003 ... 0.01 by default. saescope's
jumprelu minimises the same MSE + lambda * L0 with `--family-knobs jumprelu.l0_penalty=l0` (the
Gemma Scope objective; the README's res.6 reproduction swept these lambdas), so at equal values the
two implementations optimise one objective.

Conversion: the arrays SAELens itself saves for inference (`process_state_dict_for_saving_inference`
folds TopK's decoder norms into the encoder, which keeps its choice of latents and its output),
read as saescope's JumpReLU or TopK (k) with `pre_encoder_bias` = `apply_b_dec_to_input`, then
`SAE.folded` with the Trainer's scale and mean, exactly as the Trainer writes its own SAEs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.io import read_json, write_json_atomic
from saescope.release.loaded import build_sae
from saescope.saes.base import SAE
from saescope.train.job import sae_key
from saescope.train.trainer import Trainer

# SAELens architecture -> the family name the baseline's SAEs carry in config.json and the tables.
FAMILIES = {"jumprelu": "saelens-jumprelu", "topk": "saelens-topk"}
DEFAULT_SWEEPS = "jumprelu=0.0003/0.001/0.003/0.01,topk=16/32/64"
INSTALL = "pip install sae-lens (or pip install -e '.[bench]')"
# What SAELens' trainer was told, recorded in each folder's config.json under "saelens".
TRAINER_FIELDS = (
    "total_training_samples",
    "train_batch_size_samples",
    "lr",
    "lr_scheduler_name",
    "lr_warm_up_steps",
    "lr_decay_steps",
    "adam_beta1",
    "adam_beta2",
    "dead_feature_window",
    "autocast",
)


def require_saelens() -> str:
    """SAELens' version; a one-line error if it is missing or too old to have MultiSAETrainer."""
    try:
        import sae_lens
    except ImportError:
        raise SaescopeError(f"--baseline saelens needs SAELens, which is not installed: {INSTALL}") from None
    try:
        import sae_lens.training.multi_sae_trainer  # noqa: F401
    except ImportError:
        raise SaescopeError(
            f"--baseline saelens needs SAELens' MultiSAETrainer, which sae-lens "
            f"{sae_lens.__version__} lacks: pip install -U sae-lens"
        ) from None
    return sae_lens.__version__


def training_sae(arch: str, value: float, d_in: int, d_sae: int, l0_warmup_steps: int, device: str) -> Any:
    """A fresh SAELens training SAE of `arch` with its sweep value (l0_coefficient or k), SAELens'
    defaults for everything else."""
    from sae_lens.registry import get_sae_training_class

    cls, cfg_cls = get_sae_training_class(arch)
    sparsity = (
        {"k": int(value)} if arch == "topk" else {"l0_coefficient": float(value), "l0_warm_up_steps": l0_warmup_steps}
    )
    return cls(cfg_cls(d_in=d_in, d_sae=d_sae, device=device, **sparsity))


def normalized_batches(trainer: Trainer) -> Iterator[dict[str, Tensor]]:
    """The Trainer's training batches from step 0, each site as (x - mean) / scale with the
    Trainer's own estimates (what its SAEs were trained on)."""
    for batch in trainer.loader.iterate(0, trainer.total_steps, epochs=None):
        yield {
            site: ((x - trainer.shifts[site]) if site in trainer.shifts else x) / trainer.scales[site]
            for site, x in batch.acts.items()
        }


def trainer_config(trainer: Trainer) -> Any:
    """SAELens' SAETrainerConfig with the Trainer's steps, batch size, lr, LR warm-up and decay
    steps (`lr_decay_steps` as `lr_at` counts them); lr_end is what SAELens' runner config defaults
    it to (lr / 10; the constant scheduler ignores it)."""
    from sae_lens.config import SAETrainerConfig

    cfg = trainer.cfg
    return SAETrainerConfig(
        total_training_samples=trainer.total_steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_warm_up_steps=cfg.lr_warmup_steps,
        lr_decay_steps=round(cfg.lr_decay * trainer.total_steps),
        device=str(trainer.device),
    )


@torch.no_grad()
def to_saescope(sae: Any) -> SAE:
    """A trained SAELens SAE as the saescope SAE computing the same function on the same
    (normalised) inputs, with b_dec subtracted before encoding when SAELens does.

    JumpReLU: SAELens computes relu(h) * (h > threshold), saescope h * (h > threshold); they agree
    for threshold >= 0, and a threshold the last Adam step left below 0 acts as 0 in SAELens, so it
    is clamped there (SAELens clamps it the same way before every training step)."""
    state = {k: v.detach().clone() for k, v in sae.state_dict().items()}
    sae.process_state_dict_for_saving_inference(state)
    arch = sae.cfg.architecture()
    if arch not in FAMILIES:
        raise SaescopeError(
            f"SAELens architecture {arch!r} has no converter here; the baseline trains {sorted(FAMILIES)}"
        )
    params = {k: v.to("cpu", torch.float32).numpy() for k, v in state.items()}
    if arch == "jumprelu":
        params["threshold"] = np.maximum(params["threshold"], 0)
    return build_sae(
        arch,
        params,
        pre_encoder_bias=bool(sae.cfg.apply_b_dec_to_input),
        knobs={"k": int(sae.cfg.k)} if arch == "topk" else {},
        where=f"SAELens {arch} SAE",
    )


def suite(
    trainer: Trainer, families: list[tuple[str, list[float], dict]]
) -> tuple[dict[str, Any], dict[str, str], dict[str, float]]:
    """(key -> fresh SAELens training SAE, key -> site, key -> sweep value) for every site, width and
    sweep value, keyed like the Trainer's SAEs with the baseline family leading."""
    saes, sites, values = {}, {}, {}
    sae_sites = [s for s in trainer.sites if s not in trainer.targets.values()]
    combos = [
        (a, v, s, int(w)) for a, values, _ in families for s in sae_sites for w in trainer.cfg.widths for v in values
    ]
    for i, (arch, value, site, width) in enumerate(combos):
        torch.manual_seed(trainer.cfg.seed * 100_003 + i)
        key = sae_key(site, width, value, FAMILIES[arch])
        saes[key] = training_sae(
            arch, value, trainer.store.d_in(site), width, trainer.cfg.l0_warmup_steps, str(trainer.device)
        )
        sites[key], values[key] = site, float(value)
    return saes, sites, values


def write(
    trainer: Trainer,
    saes: dict[str, Any],
    sites: dict[str, str],
    values: dict[str, float],
    trainer_cfg: Any,
    version: str,
) -> list[Path]:
    """Each trained SAELens SAE converted and written by the Trainer's own `write_trained` (folded
    with its scale and mean, the same config.json keys), plus what SAELens was told under "saelens"."""
    writer = copy.copy(trainer)  # the same store, config, normalisation and step count; only the SAEs differ
    writer.saes = {key: to_saescope(sae) for key, sae in saes.items()}
    writer.site_of, writer.coef_of = sites, values
    writer.arch_of = {key: FAMILIES[sae.cfg.architecture()] for key, sae in saes.items()}
    writer.write_trained()
    folders = []
    for key, sae in saes.items():
        folder = trainer.out / "saes" / key
        meta = read_json(folder / "config.json")
        meta["saelens"] = told(sae, trainer_cfg, version)
        write_json_atomic(folder / "config.json", meta)
        folders.append(folder)
    return folders


def train_saelens(trainer: Trainer, families: list[tuple[str, list[float], dict]]) -> list[Path]:
    """Train SAELens' SAEs for `families` (("jumprelu" | "topk", sweep values, {})) on the batches
    `trainer` trained on, after it has trained; write them to OUT/saes and return the folders."""
    version = require_saelens()
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    if trainer.step != trainer.total_steps or not trainer.scales:
        raise SaescopeError("the SAELens baseline runs after saescope's SAEs have trained: call Trainer.train() first")
    saes, sites, values = suite(trainer, families)
    cfg = trainer_config(trainer)
    folders = [trainer.out / "saes" / key for key in saes]
    if all(
        trained_as(folder, told(sae, cfg, version), trainer.cfg.seed) for folder, sae in zip(folders, saes.values())
    ):
        print(f"saescope: SAELens' {len(folders)} SAEs are already trained with these settings; kept")
        return folders  # a compare resumed after the baseline trained (11 minutes of a site here) skips it
    MultiSAETrainer(cfg, saes, sites, normalized_batches(trainer)).fit()
    return write(trainer, saes, sites, values, cfg, version)


def told(sae: Any, trainer_cfg: Any, version: str) -> dict:
    """What SAELens was told for one SAE, as its folder's config.json records it under "saelens"."""
    return json.loads(
        json.dumps(
            {
                "version": version,
                "sae_config": {k: v for k, v in sae.cfg.to_dict().items() if k != "metadata"},
                "trainer_config": {k: getattr(trainer_cfg, k) for k in TRAINER_FIELDS},
            }
        )
    )


def trained_as(folder: Path, settings: dict, seed: int) -> bool:
    """Whether `folder` holds a baseline SAE trained under `settings` and `seed` (the "saelens" record
    is written last, so a folder that has it is complete)."""
    if not (folder / "sae.safetensors").exists() or not (folder / "config.json").exists():
        return False
    meta = read_json(folder / "config.json")
    return meta.get("saelens") == settings and meta.get("seed") == seed
