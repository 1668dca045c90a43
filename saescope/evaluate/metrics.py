"""The standard SAE metrics, with the recipe's definitions.

From the held-out shards of the store: L0, FVU (squared error over squared deviation from the
dataset mean, both summed over all held-out tokens), firing frequencies, dead latents (never fired),
dense latents (firing on more than 10% of tokens) and a firing-frequency histogram.

From held-out text run through the model: next-token cross-entropy clean, with the SAE's
reconstruction spliced in at its site, and with the site zero-ablated; delta LM loss, KL divergence
to the clean model, and CE loss recovered. BOS, EOS and padding positions are never counted and
keep their original activation (no SAE is trained on them).

Transcoders (config `transcoder: true`) read `mlp_in.L` and predict `mlp.L`: FVU is against the
`mlp.L` rows, and delta LM loss replaces the whole MLP branch by the transcoder, i.e. the `mlp.L`
activation by transcoder(the `mlp_in.L` activation of the same forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from saescope.activations.documents import iter_documents
from saescope.activations.loader import ShuffledLoader
from saescope.activations.packing import pack_documents
from saescope.activations.store import ActivationStore
from saescope.config import RUN_FOLDER, device_option, held_out_option, option
from saescope.errors import SaescopeError
from saescope.io import write_json_atomic
from saescope.models.loading import DTYPES, load_model
from saescope.models.sites import Site, blocks, capture, replace
from saescope.saes.base import SAE

DENSE_FREQUENCY = 0.1
CLEAN_CACHE_BYTES = 8 << 30  # 8k positions of a 262k vocabulary; beyond, clean forwards are redone per SAE
HISTOGRAM_EDGES = np.arange(-7.0, 0.5, 0.5)  # log10 firing frequency bins


@dataclass
class EvalConfig:
    out: str = option(RUN_FOLDER, "run folder whose SAEs (OUT/saes) are evaluated")
    store: str = option("", "activation store for the held-out split (default: the one the SAEs were trained on)")
    eval_shards: int = held_out_option()
    eval_sequences: int = option(8, "held-out sequences for the model-based metrics (Gemma Scope: 2048)")
    eval_context_len: int = option(256, "tokens per held-out sequence (Gemma Scope: 1024)")
    eval_batch_size: int = option(4, "sequences per forward pass")
    eval_dtype: Literal[tuple(DTYPES)] = option("bfloat16", "model dtype for the model-based metrics")
    text: str = option(
        "",
        "evaluate delta LM loss, KL and CE recovered on this text (a .txt/.jsonl/.parquet file or "
        "dataset, e.g. one unlike the training corpus) instead of the held-out corpus text; "
        "results go to each SAE's metrics.<name>.json beside metrics.json",
    )
    device: str = device_option()


def _reconstruct(sae: SAE, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """decode(f), plus the skip path of a skip transcoder (whose decode leaves it out)."""
    out = sae.decode(f)
    skip = getattr(sae, "affine_skip_connection", None)
    return out if skip is None else out + x @ skip


def _refuse_nonfinite(x: torch.Tensor, site: str, loader: ShuffledLoader) -> None:
    """One NaN in the held-out rows would turn FVU into NaN; stop and say where it is (batches mix
    shards, so the held-out shards are searched for it, which only a failing evaluation pays for)."""
    if torch.isfinite(x).all():
        return
    s, where = Site.parse(site), f"shard(s) {', '.join(str(i) for i in loader.shards)}"
    for shard in loader.shards:
        rows = ~torch.isfinite(loader.store.read(site, shard).float()).all(1)
        if rows.any():
            where = f"shard {shard}, row {int(rows.nonzero()[0])}"
            break
    raise SaescopeError(
        f"NaN or inf in the held-out activations of site {s.kind}, layer {s.layer} (store "
        f"{loader.store.path}, {where}): harvest that store again"
    )


@torch.no_grad()
def store_metrics(sae: SAE, loader: ShuffledLoader, site: str, target: str | None = None) -> dict:
    """L0, FVU and firing statistics of one SAE on the held-out rows of its site; a transcoder is
    scored against its `target` site's rows."""
    n, sq_err, l0_sum = 0, 0.0, 0.0
    sums = torch.zeros(sae.d_in, dtype=torch.float64)
    sq_sums = torch.zeros(sae.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    for batch in loader:
        x = batch.acts[site]
        _refuse_nonfinite(x, site, loader)
        f = sae.encode(x)
        x_hat = _reconstruct(sae, x, f)
        x = batch.acts[target] if target else x
        if target:
            _refuse_nonfinite(x, target, loader)
        active = f > 0
        n += len(x)
        sq_err += (x_hat - x).double().pow(2).sum().item()
        l0_sum += active.sum().item()
        fired += active.sum(0).double().cpu()
        sums += x.double().sum(0).cpu()
        sq_sums += x.double().pow(2).sum(0).cpu()
    variance = (sq_sums - sums.pow(2) / n).sum().item()
    freq = (fired / n).numpy()
    with np.errstate(divide="ignore"):
        hist, _ = np.histogram(np.log10(freq[freq > 0]), HISTOGRAM_EDGES)
    return {
        "tokens": n,
        "l0": l0_sum / n,
        "fvu": sq_err / variance,
        "mse": sq_err / n,
        "dead_latents": int((fired == 0).sum()),
        "dead_fraction": float((fired == 0).double().mean()),
        "dense_latents": int((freq > DENSE_FREQUENCY).sum()),
        "frequency_histogram": {"log10_edges": HISTOGRAM_EDGES.tolist(), "counts": hist.tolist()},
        "firing_frequency": freq.tolist(),
    }


def _masked_ce_kl(
    logits: torch.Tensor, clean: CleanOutputs, targets: torch.Tensor, count: torch.Tensor, chunk: int = 128
) -> tuple[float, float]:
    """Summed CE and KL(clean || this) over counted positions, a few rows of the vocabulary-wide
    logits at a time: KL = sum p_c log p_c - p_c . logits + logsumexp(logits), so per forward only
    one float pass over the logits is needed, never a full log-softmax tensor."""
    logits = logits.flatten(0, 1)
    targets, count = targets.flatten(), count.flatten()
    ce_sum = kl_sum = 0.0
    for i in range(0, len(logits), chunk):
        z = logits[i : i + chunk].float()
        lse = torch.logsumexp(z, -1)
        ce = lse - z.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
        kl = clean.neg_entropy[i : i + chunk] - torch.linalg.vecdot(clean.probs[i : i + chunk], z) + lse
        c = count[i : i + chunk]
        ce_sum += (ce * c).sum().item()
        kl_sum += (kl * c).sum().item()
    return ce_sum, kl_sum


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
        docs = iter_documents(dataset, text_field)
        batches = list(
            pack_documents(
                docs,
                tokenizer,
                cfg.eval_context_len,
                cfg.eval_batch_size,
                max_tokens=cfg.eval_sequences * cfg.eval_context_len,
                skip_tokens=skip_tokens,
            )
        )
        if not batches:
            raise SaescopeError(
                "no held-out text is left after the harvested tokens: harvest fewer tokens or use a larger dataset"
            )
        self.model, self.device = model, next(model.parameters()).device
        self.where = [(b.doc_ids, b.positions) for b in batches]  # traces every evaluated token to its text
        self.batches = []
        for b in batches:
            # predict token t+1 at position t; count t only if t is a real token and t+1 exists
            count = (b.train_mask[:, :-1] & b.attention_mask[:, 1:].bool()).to(self.device).float()
            self.batches.append(
                (b.input_ids.to(self.device), b.attention_mask.to(self.device), ~b.train_mask.to(self.device), count)
            )
        self.tokens = int(sum(c.sum().item() for *_, c in self.batches))
        # the clean distributions take 4 bytes x vocabulary per position: kept while they fit in
        # CLEAN_CACHE_BYTES (CPU-sized evaluations), recomputed per batch beyond (Gemma Scope scale)
        vocab = model.get_output_embeddings().weight.shape[0]
        keep = sum(ids.numel() for ids, *_ in self.batches) * vocab * 4 <= CLEAN_CACHE_BYTES
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
    def loss_with(self, site: Site | None, fn) -> tuple[float, float]:
        """Mean CE and KL-to-clean with the site's activation replaced by fn(x) (None = clean).

        Blocks before the site's layer return their clean outputs without running: their input
        does not depend on the replacement, so the result is the same as a full forward."""
        ce_sum = kl_sum = 0.0
        skip = blocks(self.model)[: site.layer] if site is not None else []
        for i, (ids, am, keep, count) in enumerate(self.batches):
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
            ce, kl = _masked_ce_kl(logits[:, :-1], clean, ids[:, 1:], count)
            ce_sum, kl_sum = ce_sum + ce, kl_sum + kl
        return ce_sum / self.tokens, kl_sum / self.tokens


def model_metrics(text: HeldOutText, sae: SAE, site: Site, clean_ce: float, zero_ce: float) -> dict:
    """Delta LM loss, KL and CE recovered with the SAE spliced in, and its L0 on those same tokens
    (a JumpReLU SAE's L0 depends on the text: on text unlike the training corpus it moves)."""
    l0: list[torch.Tensor] = []

    def splice(x: torch.Tensor) -> torch.Tensor:
        f = sae.encode(x.float())
        l0.append((f > 0).sum(-1))
        return _reconstruct(sae, x.float(), f)

    ce, kl = text.loss_with(site, splice)
    counted = [~keep for _ids, _am, keep, _count in text.batches]
    text_l0 = sum(n[m].sum().item() for n, m in zip(l0, counted)) / max(1, sum(m.sum().item() for m in counted))
    return _spliced_metrics(text, ce, kl, clean_ce, zero_ce, text_l0=text_l0)


def _spliced_metrics(text: HeldOutText, ce: float, kl: float, clean_ce: float, zero_ce: float, **extra: float) -> dict:
    """The language-model numbers of one splice (an SAE's or a transcoder's) on the held-out text."""
    return {
        "eval_text_tokens": text.tokens,
        **extra,
        "ce_clean": clean_ce,
        "ce_spliced": ce,
        "ce_zero_ablation": zero_ce,
        "delta_loss": ce - clean_ce,
        "kl_div": kl,
        "ce_loss_recovered": (zero_ce - ce) / (zero_ce - clean_ce) if zero_ce != clean_ce else float("nan"),
    }


def transcoder_metrics(
    text: HeldOutText, tc: SAE, in_site: Site, out_site: Site, clean_ce: float, zero_ce: float
) -> dict:
    """model_metrics for a transcoder: the out site replaced by tc(the in site of the same forward)."""
    seen: dict[str, torch.Tensor] = {}

    def grab(_site: Site, x: torch.Tensor) -> None:
        seen["x"] = x

    def splice(_y: torch.Tensor) -> torch.Tensor:
        return tc(seen["x"].float())

    with capture(text.model, [in_site], grab, stop_after=False):
        ce, kl = text.loss_with(out_site, splice)
    return _spliced_metrics(text, ce, kl, clean_ce, zero_ce)


def load_trained(folder: Path, device: torch.device) -> tuple[SAE, dict]:
    from saescope.release.files import read_json_with
    from saescope.release.formats import SAE_CONFIG_KEYS, load

    return load(folder).to(device), read_json_with(folder / "config.json", *SAE_CONFIG_KEYS)


def evaluate(cfg: EvalConfig) -> dict[str, dict]:
    """Write OUT/saes/<sae>/metrics.json for every trained SAE; return them by SAE name."""
    from saescope.models.loading import resolve_device

    out = Path(cfg.out)
    folders = sorted(p for p in (out / "saes").glob("*") if (p / "config.json").exists())
    if not folders:
        raise SaescopeError(f"no trained SAEs in {out / 'saes'}: run `saescope train --out {out}` first")
    device = resolve_device(cfg.device)
    store = ActivationStore(cfg.store or (out / "activations"))
    info = store.info
    if not info.get("complete") or not isinstance(info.get("rows"), int):
        raise SaescopeError(
            f"store {store.path} is not a finished harvest: run the same `saescope harvest` again "
            f"to finish it, then evaluate"
        )
    model, tokenizer = load_model(info["model"], cfg.eval_dtype, cfg.device)
    if cfg.text:  # the whole given text; otherwise what follows the harvested tokens
        text = HeldOutText(model, tokenizer, cfg.text, "text", 0, cfg)
    else:
        text = HeldOutText(model, tokenizer, info["dataset"], info.get("text_field", "text"), info["rows"], cfg)
    clean_ce, _ = text.loss_with(None, None)
    zero_ce: dict[str, float] = {}
    results = {}
    for folder in tqdm(folders, desc="evaluate", unit="sae", dynamic_ncols=True):
        sae, meta = load_trained(folder, device)
        site = Site(meta["layer"], meta["site"])
        out_site = Site.parse(meta["target_site"]) if meta.get("transcoder") else site
        read = [site.name] + ([out_site.name] if out_site != site else [])
        loader = ShuffledLoader(
            store, read, batch_size=4096, split="eval", eval_shards=cfg.eval_shards, drop_last=False, device=device
        )
        metrics = store_metrics(sae, loader, site.name, out_site.name if out_site != site else None)
        if out_site.name not in zero_ce:
            zero_ce[out_site.name] = text.loss_with(out_site, torch.zeros_like)[0]
        if out_site != site:
            metrics |= transcoder_metrics(text, sae, site, out_site, clean_ce, zero_ce[out_site.name])
        else:
            metrics |= model_metrics(text, sae, site, clean_ce, zero_ce[site.name])
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
