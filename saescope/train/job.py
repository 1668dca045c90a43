"""What a training job is: its config (the same object is `saescope train`'s command line and
OUT/train/config.json), the names its SAEs are written under, and the sites it reads."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from saescope import distributed
from saescope.activations.store import ActivationStore
from saescope.config import PRESETS, RUN_FOLDER, STORE_FOLDER, device_option, held_out_option, option
from saescope.errors import SaescopeError
from saescope.models.sites import Site
from saescope.saes.registry import ARCHITECTURES
from saescope.train.schedule import Schedule

# The choices of the options that name one of a fixed set (argparse lists and checks them).
Arch = Literal[tuple(ARCHITECTURES)]
Parallel = Literal[distributed.PARALLEL_MODES]
Preset = Literal[("", *PRESETS)]


@dataclass
class TrainConfig(Schedule):
    store: str = option(STORE_FOLDER, "activation store to train on")
    out: str = option(RUN_FOLDER, "run folder: checkpoints go to OUT/train, trained SAEs to OUT/saes")
    train_sites: str = option("all", "sites of the store to train on: all, or names like res.3,mlp.3")
    arch: Arch = option("jumprelu", "SAE family")
    widths: list = option([4096], "dictionary sizes, comma-separated")
    l0_coefficients: list = option(
        [64.0],
        "the family's sparsity knob, comma-separated, one SAE per value: the target "
        "L0 (jumprelu; lambda with --knobs l0_penalty=l0), L1 coefficient (relu, gated, "
        "atm) or k (topk, batchtopk, matryoshka)",
        "--sweep",
    )
    transcoder: Literal["", "plain", "skip"] = option(
        "",
        "train transcoders: plain, or skip (with an affine skip "
        "connection); --train-sites then names mlp_in.L sites, each "
        "predicting mlp.L",
    )
    knobs: str = option("", "family options as key=value,key=value (e.g. target_l0=40,l0_penalty=quadratic)")
    norm_rows: int = option(65536, "rows used to estimate each site's normalising constant")
    buffer_rows: int = option(65536, "shuffle buffer rows (memory: rows x total site width x dtype size)")
    eval_shards: int = held_out_option()
    checkpoint_every: int = option(500, "steps between checkpoints")
    log_every: int = option(50, "steps between log lines in OUT/train/log.jsonl")
    device: str = device_option()
    parallel: Parallel = option(
        "auto",
        "with several processes: data (split every batch), sae (split the SAEs), "
        "both, or auto (sae when there are at least as many SAEs as processes, "
        "else data)",
    )
    sae_groups: int = option(0, "with --parallel both: SAE groups, each splitting its batches (0 = one per machine)")
    preset: Preset = option(
        "",
        "gemma-scope: the recipe's exact optimisation settings (lr 7e-5, batch 4096, 1k/10k "
        "warm-ups, no decay, scalar normalisation, JumpReLU with lambda*L0, bandwidth and "
        "threshold 0.001); flags given beside it still win",
    )


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


def sae_key(site: str, width: int, coefficient: float, arch: str | None = None) -> str:
    """`res.6__w4096__c0.001`; with several families in one run the family leads: `topk__res.6__w4096__c32`.
    The coefficient is rounded to six digits here: its exact value is in the SAE's config.json."""
    return f"{arch + '__' if arch else ''}{site}__w{width}__c{coefficient:g}"


def refuse_shared_names(keys: list[str]) -> None:
    """Two SAEs whose sweep values differ only after six digits would write one folder."""
    shared = sorted(k for k, n in Counter(keys).items() if n > 1)
    if shared:
        raise SaescopeError(
            f"two SAEs of this job would share the folder {shared[0]}: pass sparsity values that "
            f"differ within six significant digits, each once"
        )


def transcoder_target(site: str) -> str:
    """The output site a transcoder reading `site` predicts: mlp.L for mlp_in.L."""
    s = Site.parse(site)
    if s.kind != "mlp_in":
        raise SaescopeError(f"transcoders read mlp_in sites, not {site}: pass --train-sites mlp_in.{s.layer}")
    return Site(s.layer, "mlp").name


def select_sites(store: ActivationStore, sites: str) -> list[str]:
    if sites == "all":
        return store.sites
    names = [s.strip() for s in sites.split(",") if s.strip()]
    for name in names:
        Site.parse(name)
        store.column(name)
    return names
