"""The standard SAE metrics, with the recipe's definitions.

From the held-out shards of the store (`saescope/evaluate/rows.py`): L0, FVU, firing frequencies,
dead and dense latents, and the reconstruction's shape (norms, cosine, bias) SAEBench reports.

From held-out text run through the model: next-token cross-entropy clean, with the SAE's
reconstruction spliced in at its site, and with the site zero-ablated; delta LM loss, KL divergence
to the clean model, and CE loss recovered; the same broken down by token position and by document
topic (`saescope/evaluate/position.py`). BOS, EOS and padding positions are never counted and
keep their original activation (no SAE is trained on them).

Transcoders (config `transcoder: true`) read `mlp_in.L` and predict `mlp.L`: FVU is against the
`mlp.L` rows, and delta LM loss replaces the whole MLP branch by the transcoder, i.e. the `mlp.L`
activation by transcoder(the `mlp_in.L` activation of the same forward pass).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from saescope.activations.documents import Document, check_store_text, iter_documents
from saescope.activations.loader import ShuffledLoader
from saescope.activations.packing import pack_documents
from saescope.activations.store import ActivationStore, run_store
from saescope.config import RUN_FOLDER, device_option, held_out_option, option
from saescope.errors import SaescopeError
from saescope.evaluate import cache
from saescope.evaluate.position import BREAKDOWNS, Groupings, Tally, breakdowns, sequence_losses
from saescope.evaluate.rows import store_metrics
from saescope.io import write_json_atomic
from saescope.models.loading import DTYPES, load_model
from saescope.models.sites import Site, blocks, capture, replace
from saescope.saes.base import SAE

# The clean distributions are kept while they take at most this share of the device's memory (CPU: RAM;
# 9.6 GiB of a 24 GiB machine, enough for 32 sequences of 256 of a 262k vocabulary, 8.9 GB), else 8 GiB
# where it is unknown; beyond, the clean model runs again per SAE, 2.0x the time per SAE
# (benchmarks/clean_cache.py); with 32 sequences on Gemma 3 270M the whole process peaked at 21.5 GB of
# RAM: the forward's logits and their log-softmax come on top, ~1 GB each per batch of 4 sequences.
CLEAN_CACHE_SHARE = 0.4


def clean_cache_bytes(device: torch.device) -> int:
    """How many bytes of clean distributions an evaluation on `device` keeps in memory."""
    if device.type == "cuda":
        return int(CLEAN_CACHE_SHARE * torch.cuda.get_device_properties(device).total_memory)
    try:
        if device.type == "cpu":
            return int(CLEAN_CACHE_SHARE * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
        pass
    return 8 << 30


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


def _token_ce_kl(logits: torch.Tensor, clean: CleanOutputs, targets: torch.Tensor, chunk: int = 128):
    """Per-position CE and KL(clean || this) [rows, T-1], a few rows of the vocabulary-wide logits
    at a time: KL = sum p_c log p_c - p_c . logits + logsumexp(logits), so per forward only one
    float pass over the logits is needed, never a full log-softmax tensor."""
    flat, targets = logits.flatten(0, 1), targets.flatten()
    ce, kl = torch.empty(len(flat), device=flat.device), torch.empty(len(flat), device=flat.device)
    for i in range(0, len(flat), chunk):
        z = flat[i : i + chunk].float()
        lse = torch.logsumexp(z, -1)
        ce[i : i + chunk] = lse - z.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
        kl[i : i + chunk] = clean.neg_entropy[i : i + chunk] - torch.linalg.vecdot(clean.probs[i : i + chunk], z) + lse
    return ce.view(logits.shape[:2]), kl.view(logits.shape[:2])


@dataclass
class CleanOutputs:
    """The clean model's next-token distribution on one batch (flattened positions) and the
    outputs of every block, so a spliced forward can start at the spliced layer."""

    probs: torch.Tensor
    neg_entropy: torch.Tensor
    block_outputs: list


class HeldOutText:
    """Held-out sequences (after the text the harvest used) and the clean model's outputs on them."""

    def __init__(self, model, tokenizer, dataset: str, text_field: str, skip_tokens: int, cfg: EvalConfig):
        topic_of: dict[int, str] = {}

        def noting_topics(docs: Iterator[Document]) -> Iterator[Document]:
            for doc in docs:
                if doc.topic:
                    topic_of[doc.doc_id] = doc.topic
                yield doc

        batches = list(
            pack_documents(
                noting_topics(iter_documents(dataset, text_field)),
                tokenizer,
                cfg.eval_context_len,
                cfg.eval_batch_size,
                max_tokens=cfg.eval_sequences * cfg.eval_context_len,
                skip_tokens=skip_tokens,
                then_skip_tokens=cfg.eval_offset * cfg.eval_context_len,
            )
        )
        if not batches and cfg.eval_offset:
            raise SaescopeError(
                f"no text is left after --eval-offset {cfg.eval_offset} sequences: lower it or use a larger dataset"
            )
        if not batches and skip_tokens:
            raise SaescopeError(
                "no held-out text is left after the harvested tokens: harvest fewer tokens or use a larger dataset"
            )
        if not batches:
            raise SaescopeError(f"{dataset} holds no text to evaluate on (no document has a token after BOS)")
        self.model, self.device = model, next(model.parameters()).device
        self.where = [(b.doc_ids, b.positions) for b in batches]  # traces every evaluated token to its text
        self.groups = Groupings.of(self.where, topic_of)  # position buckets and topics (evaluate/position.py)
        self.batch = 0  # the batch loss_with is running, for splices that tally per token
        self.batches = []
        for b in batches:
            # predict token t+1 at position t; count t only if t is a real token and t+1 exists
            count = (b.train_mask[:, :-1] & b.attention_mask[:, 1:].bool()).to(self.device).float()
            self.batches.append(
                (b.input_ids.to(self.device), b.attention_mask.to(self.device), ~b.train_mask.to(self.device), count)
            )
        self.tokens = int(sum(c.sum().item() for *_, c in self.batches))
        # the clean distributions take 4 bytes x vocabulary per position: kept while they fit
        # (CPU-sized evaluations), recomputed per batch beyond (Gemma Scope scale)
        vocab = model.get_output_embeddings().weight.shape[0]
        keep = sum(ids.numel() for ids, *_ in self.batches) * vocab * 4 <= clean_cache_bytes(self.device)
        self._clean = [self._clean_outputs(i) for i in range(len(self.batches))] if keep else None

    @torch.inference_mode()
    def _clean_outputs(self, i: int) -> CleanOutputs:
        ids, am, _keep, _count = self.batches[i]
        outputs: list = []
        hooks = [block.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for block in blocks(self.model)]
        try:
            logits = self.model(input_ids=ids, attention_mask=am).logits[:, :-1].flatten(0, 1)
        finally:
            for h in hooks:
                h.remove()
        logp = F.log_softmax(logits.float(), -1)
        probs = logp.exp()
        return CleanOutputs(probs, (probs * logp).sum(-1), outputs)

    def clean(self, i: int) -> CleanOutputs:
        return self._clean[i] if self._clean is not None else self._clean_outputs(i)

    @torch.inference_mode()
    def loss_with(self, site: Site | None, fn, tally: Tally | None = None) -> tuple[float, float]:
        """Mean CE and KL-to-clean with the site's activation replaced by fn(x) (None = clean); the
        per-token losses also go to `tally`, for the breakdowns by position and topic.

        Blocks before the site's layer return their clean outputs without running: their input
        does not depend on the replacement, so the result is the same as a full forward."""
        ce_sum = kl_sum = 0.0
        skip = blocks(self.model)[: site.layer] if site is not None else []
        for i, (ids, am, keep, count) in enumerate(self.batches):
            self.batch = i
            clean = self.clean(i)
            for block, out in zip(skip, clean.block_outputs):
                block.forward = lambda *_a, _out=out, **_k: _out
            try:
                if site is None:
                    logits = self.model(input_ids=ids, attention_mask=am).logits
                else:
                    with replace(self.model, site, fn, keep=keep):
                        logits = self.model(input_ids=ids, attention_mask=am).logits
            finally:
                for block in skip:
                    del block.forward
            ce, kl = _token_ce_kl(logits[:, :-1], clean, ids[:, 1:])
            ce_sum += (ce.double() * count).sum().item()
            kl_sum += (kl.double() * count).sum().item()
            if tally is not None:
                tally.add_losses(i, ce, kl, count)
        return ce_sum / self.tokens, kl_sum / self.tokens


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


def evaluate(cfg: EvalConfig) -> dict[str, dict]:
    """Write OUT/saes/<sae>/metrics.json for every trained SAE, each with the key it was measured
    under; return them by SAE name. A result whose key still holds is kept, so a run interrupted
    after this stage (or one with a single retrained SAE) measures only what changed."""
    folders = trained_folders(cfg.out)
    settings = cache.settings(cfg, finished_store(cfg).info, text=True)
    results, todo = {}, []
    for folder in folders:
        key = cache.key([folder], "core", settings)
        results[folder.name] = cache.cached(folder / metrics_file(cfg.text), key)
        if results[folder.name] is None:
            todo.append((folder, key))
    ev = Evaluation(cfg) if todo else None
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
