"""Neuronpedia export: per-latent feature records written as the JSON batches Neuronpedia imports.

The exporter (`write_neuronpedia`) only takes `LatentRecord`s, so any source of per-latent
statistics can feed it: today the builders below (firing frequency from the evaluation's
`metrics.json`, top activations from one pass over the activation store's held-out split,
logit-lens tokens from the decoder and the model's unembedding); later a feature-statistics
database can produce the same records.

Output: `DEST/batch-<n>.json`, each `{"model_id", "layer", "sae_set", "features": [...]}` where a
feature carries SAEDashboard's Neuronpedia field names: feature_index, frac_nonzero, maxActApprox,
pos_str/pos_values and neg_str/neg_values (logit lens), freq_hist_data_bar_values/heights (the
histogram of non-zero activations; values are bin centres, parallel to heights),
logits_hist_data_bar_values/heights, topkCosSimIndices/Values (decoder cosine neighbours) and
activations (top examples: tokens, values, max value and the index of the top token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.outputs import strict_json

N_BINS = 20


@dataclass
class LatentRecord:
    """What a dashboard shows about one latent; every field may be empty if its source is absent."""

    index: int
    firing_frequency: float | None = None
    top_examples: list[dict[str, Any]] = field(default_factory=list)  # {"tokens", "values", "top_token"}
    activation_histogram: tuple[list[float], list[int]] = ((), ())  # (bin centres, counts) of non-zero acts
    top_logits: list[tuple[str, float]] = field(default_factory=list)
    bottom_logits: list[tuple[str, float]] = field(default_factory=list)
    logit_histogram: tuple[list[float], list[int]] = ((), ())
    similar: list[tuple[int, float]] = field(default_factory=list)  # (latent, decoder cosine)


def neuronpedia_feature(record: LatentRecord) -> dict[str, Any]:
    """One feature in Neuronpedia's (SAEDashboard's) field names."""
    max_act = max((max(e["values"]) for e in record.top_examples if e["values"]), default=0.0)
    return {
        "feature_index": record.index,
        "frac_nonzero": record.firing_frequency,
        "maxActApprox": float(max_act),
        "pos_str": [t for t, _ in record.top_logits], "pos_values": [float(v) for _, v in record.top_logits],
        "neg_str": [t for t, _ in record.bottom_logits], "neg_values": [float(v) for _, v in record.bottom_logits],
        "freq_hist_data_bar_values": [float(v) for v in record.activation_histogram[0]],
        "freq_hist_data_bar_heights": [int(h) for h in record.activation_histogram[1]],
        "logits_hist_data_bar_values": [float(v) for v in record.logit_histogram[0]],
        "logits_hist_data_bar_heights": [int(h) for h in record.logit_histogram[1]],
        "topkCosSimIndices": [int(i) for i, _ in record.similar],
        "topkCosSimValues": [float(c) for _, c in record.similar],
        "activations": [{"tokens": e["tokens"], "values": [float(v) for v in e["values"]],
                         "maxValue": float(max(e["values"], default=0.0)),
                         "qualifying_token_index": int(e["top_token"])} for e in record.top_examples],
    }


def write_neuronpedia(records: list[LatentRecord], dest: str | Path, *, model_id: str, layer: int | str,
                      sae_set: str, batch_size: int = 128) -> list[Path]:
    """Write the records as Neuronpedia batch files; returns their paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: r.index)
    paths = []
    for n, start in enumerate(range(0, len(records), batch_size)):
        batch = {"model_id": model_id, "layer": f"{layer}-{sae_set}", "sae_set": sae_set,
                 "features": [neuronpedia_feature(r) for r in records[start:start + batch_size]]}
        paths.append(dest / f"batch-{n}.json")
        paths[-1].write_text(strict_json(batch))
    return paths


# ---- record builders -------------------------------------------------------------------------------
def records_from_metrics(d_sae: int, metrics: dict) -> list[LatentRecord]:
    """One record per latent with the evaluation's firing frequency (if it measured one)."""
    freq = metrics.get("firing_frequency")
    if freq is not None and len(freq) != d_sae:
        raise SaescopeError(f"metrics.json has {len(freq)} firing frequencies for {d_sae} latents; evaluate again")
    return [LatentRecord(i, None if freq is None else float(freq[i])) for i in range(d_sae)]


def _histogram(values: Tensor, owners: Tensor, top: Tensor, n_latents: int, lo: Tensor | None = None,
               n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Per-owner histograms of `values` in n_bins equal bins from lo (default 0) to top[owner]:
    returns (centres [n_latents, n_bins], counts [n_latents, n_bins]) with one bincount."""
    lo = torch.zeros_like(top) if lo is None else lo
    span = (top - lo).clamp(min=1e-12)
    bins = ((values - lo[owners]) / span[owners] * n_bins).long().clamp(0, n_bins - 1)
    counts = torch.bincount(owners * n_bins + bins, minlength=n_latents * n_bins).view(n_latents, n_bins)
    centres = lo[:, None] + span[:, None] * (torch.arange(n_bins) + 0.5)[None] / n_bins
    return centres.numpy(), counts.numpy()


@torch.no_grad()
def add_decoder_neighbours(records: list[LatentRecord], sae, k: int = 10, chunk: int = 1024) -> None:
    """Most similar latents by decoder cosine (the dashboard's "similar features")."""
    W = sae.W_dec.detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp(min=1e-12)
    k = min(k, W.shape[0] - 1)
    for start in range(0, W.shape[0], chunk):
        cos = W[start:start + chunk] @ W.T
        cos[torch.arange(cos.shape[0]), torch.arange(start, start + cos.shape[0])] = -2.0  # not itself
        values, indices = cos.topk(k, dim=1)
        for row in range(cos.shape[0]):
            records[start + row].similar = list(zip(indices[row].tolist(), values[row].tolist()))


@torch.no_grad()
def add_logit_lens(records: list[LatentRecord], sae, model, tokenizer, kind: str, layer: int, n: int = 10,
                   chunk: int = 256) -> None:
    """Top and bottom tokens of each decoder row read through the final norm's gain and the
    unembedding (Gemma's norm multiplies by 1 + weight), plus a histogram of those logits.
    `att` rows are first mapped to the residual stream by the layer's attention output
    projection; `mlp_in` rows are in the normalised residual, read as they are."""
    from saescope.models.sites import blocks, family_of

    family = family_of(model)
    W = sae.W_dec.detach().float()
    if kind == "att":
        proj = blocks(model)[layer].get_submodule(getattr(family, "att")[0])
        weight = proj.weight.float()
        W = W @ (weight if proj.__class__.__name__ == "Conv1D" else weight.T)
    norm = model.get_submodule(family.final_norm)
    gain = norm.weight.detach().float() if getattr(norm, "weight", None) is not None else torch.ones(W.shape[1])
    if type(norm).__name__.startswith("Gemma"):
        gain = 1.0 + gain
    W_U = model.get_submodule(family.unembed).weight.detach().float()
    names = _token_strings(tokenizer, W_U.shape[0])
    for start in range(0, W.shape[0], chunk):
        logits = (W[start:start + chunk] * gain) @ W_U.T
        top_v, top_i = logits.topk(n, dim=1)
        bot_v, bot_i = logits.topk(n, dim=1, largest=False)
        rows = torch.arange(logits.shape[0]).repeat_interleave(logits.shape[1])
        lo, hi = logits.min(dim=1).values, logits.max(dim=1).values
        centres, counts = _histogram(logits.flatten(), rows, hi, logits.shape[0], lo=lo)
        for r in range(logits.shape[0]):
            rec = records[start + r]
            rec.top_logits = [(names[i], v) for i, v in zip(top_i[r].tolist(), top_v[r].tolist())]
            rec.bottom_logits = [(names[i], v) for i, v in zip(bot_i[r].tolist(), bot_v[r].tolist())]
            rec.logit_histogram = (centres[r].tolist(), counts[r].tolist())


def _token_strings(tokenizer, vocab: int) -> list[str]:
    """How each token id reads in text; ids past the tokenizer's vocabulary (padding rows) get <id>."""
    size = len(tokenizer)
    return [tokenizer.decode([i]) if i < size else f"<{i}>" for i in range(vocab)]


@torch.no_grad()
def add_top_activations(records: list[LatentRecord], sae, store, site: str, tokenizer, *, n_examples: int = 10,
                        window: int = 8, max_rows: int = 32768, chunk: int = 1024) -> int:
    """Top activating tokens of each latent on the store's held-out split, each shown with up to
    `window` tokens of the same document on either side, plus the histogram of its non-zero
    activations. Returns the number of rows read.

    The held-out shards are read in stored order (not shuffled) because a row's neighbours in the
    store are its neighbours in the document: that is how the windows are cut without re-tokenising.
    """
    from saescope.activations.loader import ShuffledLoader

    shards = ShuffledLoader(store, sites=[site], split="eval", drop_last=False, verify=False).shards
    xs, toks = [], []
    for s in shards:
        xs.append(store.read(site, s, verify=True).float())
        toks.append(torch.from_numpy(np.asarray(store.read_tokens(s)).astype(np.int64)))
    x, tokens = torch.cat(xs)[:max_rows], torch.cat(toks)[:max_rows]
    d_sae, n_rows = sae.d_sae, x.shape[0]
    best_v = torch.zeros(n_examples, d_sae)
    best_r = torch.full((n_examples, d_sae), -1, dtype=torch.long)
    nz_vals, nz_owner = [], []
    for start in range(0, n_rows, chunk):
        acts = sae.encode(x[start:start + chunk])
        rows, latents = acts.nonzero(as_tuple=True)
        nz_vals.append(acts[rows, latents])
        nz_owner.append(latents)
        merged_v = torch.cat([best_v, acts])
        merged_r = torch.cat([best_r, torch.arange(start, start + acts.shape[0])[:, None].expand_as(acts)])
        best_v, pos = merged_v.topk(n_examples, dim=0)
        best_r = merged_r.gather(0, pos)
    values, owners = torch.cat(nz_vals), torch.cat(nz_owner)
    top = best_v[0].clamp(min=1e-12)
    centres, counts = _histogram(values, owners, top, d_sae)
    fired = torch.bincount(owners, minlength=d_sae)
    names: dict[int, str] = {}
    for j, rec in enumerate(records):
        rec.activation_histogram = (centres[j].tolist(), counts[j].tolist()) if fired[j] else ([], [])
        if rec.firing_frequency is None:
            rec.firing_frequency = float(fired[j]) / n_rows
    # Cut every window, then encode each distinct row they need once.
    wanted: dict[int, list[tuple[int, int]]] = {}  # row -> [(latent, example slot)]
    windows: dict[tuple[int, int], list[int]] = {}
    for j in range(d_sae):
        for e in range(n_examples):
            r = int(best_r[e, j])
            if r < 0 or best_v[e, j] <= 0:
                continue
            doc, pos = int(tokens[r, 1]), int(tokens[r, 2])
            rows = [q for q in range(max(0, r - window), min(n_rows, r + window + 1))
                    if int(tokens[q, 1]) == doc and abs(int(tokens[q, 2]) - pos) <= window]
            windows[(j, e)] = rows
            for q in rows:
                wanted.setdefault(q, []).append((j, e))
    needed = sorted(wanted)
    window_values: dict[tuple[int, int, int], float] = {}
    for start in range(0, len(needed), chunk):
        block = needed[start:start + chunk]
        acts = sae.encode(x[block])
        for i, q in enumerate(block):
            for j, e in wanted[q]:
                window_values[(j, e, q)] = float(acts[i, j])
    for (j, e), rows in windows.items():
        toks_j = [names.setdefault(int(tokens[q, 0]), tokenizer.decode([int(tokens[q, 0])])) for q in rows]
        records[j].top_examples.append({"tokens": toks_j, "values": [window_values[(j, e, q)] for q in rows],
                                        "top_token": rows.index(int(best_r[e, j]))})
    return n_rows


def export_neuronpedia(sae_folder: str | Path, dest: str | Path, *, store: str | Path | None = None,
                       model_dir: str | None = None, model_id: str | None = None, n_examples: int = 10,
                       max_rows: int = 32768) -> list[Path]:
    """Neuronpedia batches for one saescope SAE folder: firing frequencies from metrics.json,
    decoder neighbours always, top activations if an activation store is given (or recorded in
    the run), logit lens if the model can be loaded."""
    from saescope.activations.store import ActivationStore
    from saescope.release.interop import read

    loaded = read(sae_folder)
    sae, meta = loaded.sae, loaded.meta
    sae = sae.sae if hasattr(sae, "affine_skip_connection") else sae
    records = records_from_metrics(sae.d_sae, loaded.metrics)
    add_decoder_neighbours(records, sae)
    kind, layer = meta.get("site"), meta.get("layer")
    model_name = model_dir or meta.get("model")
    if model_name and kind is not None:
        from saescope.models.loading import load_model

        model, tokenizer = load_model(model_name, "float32", "cpu")
        add_logit_lens(records, sae, model, tokenizer, kind, layer)
        if store is not None:
            add_top_activations(records, sae, ActivationStore(store), f"{kind}.{layer}", tokenizer,
                                n_examples=n_examples, max_rows=max_rows)
    sae_set = f"{kind or 'sae'}-saescope-{sae.d_sae}"
    return write_neuronpedia(records, dest, model_id=model_id or str(meta.get("model_name") or model_name or "model"),
                             layer=layer if layer is not None else 0, sae_set=sae_set)
