"""A tiny run folder for the suite's tests (`make_run`, behind each module's fixture): a finished store of
res.1 and SAE folders as `saescope train` writes them; and small evaluation settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.evaluate.suite import SuiteConfig
from saescope.saes.registry import make_sae

D = 64  # the tiny models' hidden size


def write_sae(folder: Path, width: int, coefficient: float, seed: int) -> None:
    """A random JumpReLU SAE folder as `saescope train` writes one (weights and config.json)."""
    torch.manual_seed(seed)
    sae = make_sae("jumprelu", D, width).folded(1.0)
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.3)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.from_numpy(v) for k, v in sae.params_npz().items()}, folder / "sae.safetensors")
    config = {"architecture": "jumprelu", "family": "jumprelu", "d_in": D, "d_sae": width, "site": "res"}
    config |= {"layer": 1, "hook": "res.1", "knobs": sae.knobs(), "sparsity_coefficient": coefficient}
    (folder / "config.json").write_text(json.dumps(config))


def config(out: Path, **kw) -> SuiteConfig:
    small = dict(eval_sequences=4, eval_context_len=32, eval_batch_size=2, eval_dtype="float32", device="cpu")
    return SuiteConfig(out=str(out), **(small | kw))


def make_run(root: Path, model_dir: Path) -> Path:
    """A run folder: a finished store of res.1 on the wiki corpus and three SAEs of res.1, two of
    which differ only by width (a splitting pair)."""
    out = root / "run"
    harvest(
        HarvestConfig(
            model=str(model_dir),
            sites="res",
            layers="1",
            tokens=3072,
            context_len=64,
            forward_batch=4,
            dtype="float32",
            shard_rows=1024,
            store=str(out / "activations"),
            device="cpu",
        )
    )
    write_sae(out / "saes" / "res.1__w128__c8", 128, 8.0, 0)
    write_sae(out / "saes" / "res.1__w256__c8", 256, 8.0, 1)
    write_sae(out / "saes" / "res.1__w128__c16", 128, 16.0, 2)
    return out
