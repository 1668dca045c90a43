"""The standard SAE metrics, with the recipe's definitions.

From the held-out shards of the store (`saescope/evaluate/rows.py`): L0, FVU, firing frequencies,
dead and dense latents, and the reconstruction's shape (norms, cosine, bias) SAEBench reports.

From held-out text run through the model (`saescope/evaluate/heldout.py`): next-token cross-entropy
clean, with the SAE's reconstruction spliced in at its site, and with the site zero-ablated; delta LM
loss, KL divergence to the clean model, and CE loss recovered; the same broken down by token position
and by document topic (`saescope/evaluate/position.py`). BOS, EOS and padding positions are never
counted and keep their original activation (no SAE is trained on them).

Transcoders (config `transcoder: true`) read `mlp_in.L` and predict `mlp.L`: FVU is against the
`mlp.L` rows, and delta LM loss replaces the whole MLP branch by the transcoder, i.e. the `mlp.L`
activation by transcoder(the `mlp_in.L` activation of the same forward pass).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from saescope.activations.documents import check_store_text
from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore, run_store
from saescope.config import RUN_FOLDER, device_option, held_out_option, option
from saescope.errors import SaescopeError
from saescope.evaluate import cache
from saescope.evaluate.heldout import HeldOutText
from saescope.evaluate.position import BREAKDOWNS, Tally, breakdowns, sequence_losses
from saescope.evaluate.rows import store_metrics
from saescope.io import write_json_atomic
from saescope.models.loading import DTYPES, load_model
from saescope.models.sites import Site, capture
from saescope.saes.base import SAE


@dataclass
class EvalConfig:
    out: str = option(RUN_FOLDER, "run folder whose SAEs (OUT/saes) are evaluated")
    store: str = option("", "activation store for the held-out split (default: the one the SAEs were trained on)")
    eval_shards: int = held_out_option()
    eval_sequences: int = option(8, "held-out sequences for the model-based metrics (Gemma Scope: 2048)")
    eval_context_len: int = option(256, "tokens per held-out sequence (Gemma Scope: 1024)")
    eval_offset: int = option(
        0,
        "held-out sequences passed over before the evaluated ones: after an evaluation of N sequences, "
        "--eval-offset N measures on the next N, which that evaluation never saw (to confirm a result "
        "on text it was not found on)",
    )
    eval_batch_size: int = option(4, "sequences per forward pass")
    eval_dtype: Literal[tuple(DTYPES)] = option(
        "bfloat16", "model dtype for the model-based metrics (bfloat16 runs float32 on CPUs without it: compute_dtype)"
    )
    text: str = option(
        "",
        "evaluate delta LM loss, KL, CE recovered and their breakdowns by token position and topic on this "
        "text (a .txt/.jsonl/.parquet file or dataset, e.g. one unlike the training corpus) instead of the "
        "held-out corpus text; results go to each SAE's metrics.<name>.json beside metrics.json",
    )
    device: str = device_option()


@dataclass
class Reference:
    """What every splice at one site is measured against: the clean pass and the site's zero
    ablation, as means and as tallies for the breakdowns."""

    ce_clean: float
    ce_zero: float
    kl_zero: float
    clean: Tally
    zero: Tally

    @classmethod
    def measure(cls, text: HeldOutText, clean: tuple[float, Tally], site: Site) -> Reference:
        zero = Tally(text.groups)
        ce_zero, kl_zero = text.loss_with(site, torch.zeros_like, zero)
        return cls(clean[0], ce_zero, kl_zero, clean[1], zero)


def model_metrics(
    text: HeldOutText, sae: SAE, site: Site, ref: Reference, source: Site | None = None, wanted=BREAKDOWNS
) -> dict:
    """Delta LM loss, KL and CE recovered with the SAE spliced in at `site`, its L0 and FVU on those
    same tokens (a JumpReLU SAE's L0 depends on the text: on text unlike the training corpus it
    moves), the breakdowns by position and topic named in `wanted`, and delta loss and KL per held-out
    sequence (always: `compare` pairs SAEs by them). A transcoder reads `source`
    (mlp_in.L) of the same forward and replaces `site` (mlp.L), i.e. the whole MLP branch."""
    tally = Tally(text.groups)
    seen: dict[str, torch.Tensor] = {}

    def grab(_site: Site, x: torch.Tensor) -> None:
        seen["x"] = x

    def splice(y: torch.Tensor) -> torch.Tensor:
        target = y.float()
        x = seen["x"].float() if source else target
        f = sae.encode(x)
        out = sae.reconstruct(x, f)
        tally.add_rows(text.batch, target, out, (f > 0).sum(-1), ~text.batches[text.batch][2])
        return out

    with capture(text.model, [source], grab, stop_after=False) if source else contextlib.nullcontext():
        ce, kl = text.loss_with(site, splice, tally)
    rows = tally.get("all", "rows")[0].item()
    return {
        "eval_text_tokens": text.tokens,
        "text_l0": tally.get("all", "l0")[0].item() / max(rows, 1),
        "ce_clean": ref.ce_clean,
        "ce_spliced": ce,
        "ce_zero_ablation": ref.ce_zero,
        "delta_loss": ce - ref.ce_clean,
        "kl_div": kl,
        "kl_div_zero_ablation": ref.kl_zero,
        "ce_loss_recovered": (ref.ce_zero - ce) / (ref.ce_zero - ref.ce_clean) if ref.ce_zero != ref.ce_clean else None,
        **breakdowns(tally, ref.clean, ref.zero, list(wanted)),
        "by_sequence": sequence_losses(tally, ref.clean),
    }


def sae_config(folder: Path, *keys: str) -> dict:
    """A trained SAE's config.json; damaged, or lacking what every job reads or `keys`, is one line."""
    from saescope.release.files import read_json_with
    from saescope.release.formats import SAE_CONFIG_KEYS

    return read_json_with(folder / "config.json", *SAE_CONFIG_KEYS, *keys)


def load_trained(folder: Path, device: torch.device) -> tuple[SAE, dict]:
    from saescope.release.formats import load

    return load(folder).to(device), sae_config(folder)


def trained_scale(meta: dict, d_in: int, folder: Path) -> torch.Tensor | None:
    """The per-dimension scale a trained SAE's rows were divided by (config `normalization_scale`, a
    list with a per-dimension --normalize); None for one number, which no FVU can tell from 1. A list
    that cannot be that scale is a one-line error, not a weighted FVU that silently is not one."""
    scale = meta.get("normalization_scale")
    if not isinstance(scale, list):
        return None
    tensor = torch.tensor(scale, dtype=torch.float64) if all(isinstance(v, int | float) for v in scale) else None
    if tensor is None or len(scale) != d_in or not bool(torch.isfinite(tensor).all() and (tensor > 0).all()):
        raise SaescopeError(
            f"normalization_scale in {folder / 'config.json'} is not {d_in} positive numbers (the SAE's d_in): "
            f"the config does not belong to this SAE; restore it from the run that trained it"
        )
    return tensor


def trained_folders(out: str | Path) -> list[Path]:
    """The SAE folders of a run, in name order; none is a one-line error."""
    folders = sorted(p for p in Path(out, "saes").glob("*") if (p / "config.json").exists())
    if not folders:
        raise SaescopeError(f"no trained SAEs in {Path(out) / 'saes'}: run `saescope train --out {out}` first")
    return folders


def finished_store(cfg: EvalConfig) -> ActivationStore:
    """The store the held-out rows come from, refused unless its harvest finished."""
    store = run_store(cfg.out, cfg.store)
    if not store.info.get("complete") or not isinstance(store.info.get("rows"), int):
        raise SaescopeError(
            f"store {store.path} is not a finished harvest: run the same `saescope harvest` again "
            f"to finish it, then evaluate"
        )
    check_store_text(store.info, store.path)
    return store


class Evaluation:
    """What every SAE of a run is measured against, built once: the store's held-out rows, the
    model, the held-out text (or `--text` file) with its clean pass, and each site's zero ablation
    (measured when the first SAE of that site needs it)."""

    def __init__(self, cfg: EvalConfig, loaded: tuple | None = None):
        """`loaded`: the (model, tokenizer) of the store's model in cfg.eval_dtype, if already loaded."""
        from saescope.models.loading import resolve_device

        self.cfg, self.store, self.device = cfg, finished_store(cfg), resolve_device(cfg.device)
        info = self.store.info
        model, tokenizer = loaded or load_model(info["model"], cfg.eval_dtype, cfg.device)
        if cfg.text:  # the whole given text; otherwise what follows the harvested tokens
            self.text = HeldOutText(model, tokenizer, cfg.text, "text", 0, cfg)
        else:
            self.text = HeldOutText(
                model, tokenizer, info["dataset"], info.get("text_field", "text"), info["rows"], cfg
            )
        clean = Tally(self.text.groups)
        self.clean = (self.text.loss_with(None, None, clean)[0], clean)
        self.refs: dict[str, Reference] = {}

    def measure(self, folder: Path, wanted=BREAKDOWNS) -> dict:
        """The metrics of one SAE folder (metrics.json's content but its key)."""
        sae, meta = load_trained(folder, self.device)
        site = Site(meta["layer"], meta["site"])
        out_site = Site.parse(meta["target_site"]) if meta.get("transcoder") else site
        read = [site.name] + ([out_site.name] if out_site != site else [])
        loader = ShuffledLoader(
            self.store,
            read,
            batch_size=4096,
            split="eval",
            eval_shards=self.cfg.eval_shards,
            drop_last=False,
            device=self.device,
        )
        target = out_site.name if out_site != site else None
        metrics = store_metrics(sae, loader, site.name, target, trained_scale(meta, sae.d_in, folder))
        if out_site.name not in self.refs:
            self.refs[out_site.name] = Reference.measure(self.text, self.clean, out_site)
        source = site if out_site != site else None
        return metrics | model_metrics(self.text, sae, out_site, self.refs[out_site.name], source, wanted)


def evaluate(cfg: EvalConfig, loaded: tuple | None = None) -> dict[str, dict]:
    """Write OUT/saes/<sae>/metrics.json for every trained SAE, each with the key it was measured
    under; return them by SAE name. A result whose key still holds is kept, so a run interrupted
    after this stage (or one with a single retrained SAE) measures only what changed. `loaded`: as
    for `Evaluation`."""
    folders = trained_folders(cfg.out)
    settings = cache.settings(cfg, finished_store(cfg).info, text=True)
    results, todo = {}, []
    for folder in folders:
        key = cache.key([folder], "core", settings)
        results[folder.name] = cache.cached(folder / metrics_file(cfg.text), key)
        if results[folder.name] is None:
            todo.append((folder, key))
    ev = Evaluation(cfg, loaded) if todo else None
    for folder, key in tqdm(todo, desc="evaluate", unit="sae", dynamic_ncols=True):
        metrics = ev.measure(folder) | {"key": key}
        write_json_atomic(folder / metrics_file(cfg.text), metrics)
        results[folder.name] = metrics
    return results


def metrics_file(text: str = "") -> str:
    """metrics.json for the held-out corpus text, metrics.<name>.json for `evaluate --text FILE`."""
    return f"metrics.{Path(text).stem}.json" if text else "metrics.json"


def summary_rows(out: str | Path, text: str = "") -> list[dict]:
    """One row per evaluated SAE, sorted by site kind and layer, for tables (`text`: the metrics of
    `evaluate --text` on that text)."""
    from saescope.release.files import read_json_with
    from saescope.release.formats import SAE_CONFIG_KEYS

    rows = []
    for folder in sorted(Path(out, "saes").glob("*")):
        if (folder / metrics_file(text)).exists():
            meta = read_json_with(folder / "config.json", *SAE_CONFIG_KEYS, "sparsity_coefficient")
            m = read_json_with(folder / metrics_file(text))
            rows.append(
                {
                    "name": folder.name,
                    "site": meta["site"],
                    "layer": meta["layer"],
                    "width": meta["d_sae"],
                    "coefficient": meta["sparsity_coefficient"],
                    **{k: v for k, v in m.items() if not isinstance(v, (list, dict))},
                }
            )
    return sorted(rows, key=lambda r: (r["site"], r["layer"], r["width"], r["coefficient"]))
