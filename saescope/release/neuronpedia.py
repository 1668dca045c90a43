"""Neuronpedia export: per-latent feature records written as the JSON batches Neuronpedia imports.

The exporter (`write_neuronpedia`) only takes `LatentRecord`s, so any source of per-latent
statistics can feed it. The builders below compute nothing of their own: firing frequency comes
from the evaluation's `metrics.json`, and the logit lens, decoder-cosine neighbours, top
activations and histograms from the feature browser's code (`browse/lens.py`, `browse/stats.py`),
so a latent shows the same tokens, neighbours and examples on Neuronpedia as on its browser page
(and no logit lens where the browser says it does not apply, e.g. `mlp_in`).

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
from torch import nn

from saescope.activations.store import ActivationStore
from saescope.browse import lens
from saescope.browse.db import Examples
from saescope.browse.stats import StatsOptions, TokenText, activation_stats, encode_site, held_out
from saescope.errors import SaescopeError
from saescope.models.sites import Site
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
        "pos_str": [t for t, _ in record.top_logits],
        "pos_values": [float(v) for _, v in record.top_logits],
        "neg_str": [t for t, _ in record.bottom_logits],
        "neg_values": [float(v) for _, v in record.bottom_logits],
        "freq_hist_data_bar_values": [float(v) for v in record.activation_histogram[0]],
        "freq_hist_data_bar_heights": [int(h) for h in record.activation_histogram[1]],
        "logits_hist_data_bar_values": [float(v) for v in record.logit_histogram[0]],
        "logits_hist_data_bar_heights": [int(h) for h in record.logit_histogram[1]],
        "topkCosSimIndices": [int(i) for i, _ in record.similar],
        "topkCosSimValues": [float(c) for _, c in record.similar],
        "activations": [
            {
                "tokens": e["tokens"],
                "values": [float(v) for v in e["values"]],
                "maxValue": float(max(e["values"], default=0.0)),
                "qualifying_token_index": int(e["top_token"]),
            }
            for e in record.top_examples
        ],
    }


def write_neuronpedia(
    records: list[LatentRecord],
    dest: str | Path,
    *,
    model_id: str,
    layer: int | str,
    sae_set: str,
    batch_size: int = 128,
) -> list[Path]:
    """Write the records as Neuronpedia batch files; returns their paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: r.index)
    paths = []
    for n, start in enumerate(range(0, len(records), batch_size)):
        batch = {
            "model_id": model_id,
            "layer": f"{layer}-{sae_set}",
            "sae_set": sae_set,
            "features": [neuronpedia_feature(r) for r in records[start : start + batch_size]],
        }
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


def _centres(lo: float, hi: float, n_bins: int) -> list[float]:
    """Bin centres of n_bins equal bins from lo to hi (Neuronpedia wants centres, the browser edges)."""
    return [lo + (hi - lo) * (b + 0.5) / n_bins for b in range(n_bins)]


@torch.no_grad()
def add_decoder_neighbours(records: list[LatentRecord], sae: nn.Module, chunk: int = 1024) -> None:
    """Most similar latents by decoder cosine: the browser's list for the same SAE."""
    W = sae.W_dec.detach().float()
    for start in range(0, W.shape[0], chunk):
        latents = torch.arange(start, min(start + chunk, W.shape[0]))
        for j, near in zip(latents.tolist(), lens.neighbours(W, latents)):
            records[j].similar = [(i, c) for i, c in near]


@torch.no_grad()
def add_logit_lens(
    records: list[LatentRecord], sae: nn.Module, model: nn.Module, tokenizer, site: Site, chunk: int = 1024
) -> bool:
    """Top and bottom tokens of each latent and the histogram of its logits, as its browser page
    shows them. Returns False, leaving the records without a lens, where the browser says the lens
    does not apply (decoder rows that are not residual-stream directions)."""
    directions = lens.residual_directions(model, site, sae.W_dec)
    if directions is None:
        return False
    W_U, text = lens.unembedding(model), TokenText(tokenizer)
    for start in range(0, len(directions), chunk):
        found = lens.logit_lens(directions[start : start + chunk], W_U)
        text.need([t for lg in found for t, _ in lg["top"] + lg["bottom"]])
        for rec, lg in zip(records[start:], found):
            rec.top_logits = [(text.known[t], v) for t, v in lg["top"]]
            rec.bottom_logits = [(text.known[t], v) for t, v in lg["bottom"]]
            hist = lg["hist"]
            rec.logit_histogram = (_centres(hist["lo"], hist["hi"], len(hist["counts"])), hist["counts"])
    return True


def _top_examples(ex: Examples, text: TokenText) -> list[dict[str, Any]]:
    """The browser's top-activation windows of one latent in the record's form. The centre keeps
    its exact activation; the rest of a window is float16, as the browser's database holds it."""
    out = []
    for e in np.flatnonzero(ex.group == 0):
        keep = np.flatnonzero(ex.ids[e] >= 0)
        centre = int(np.searchsorted(keep, ex.left))
        values = ex.acts[e, keep].astype(np.float32).tolist()
        values[centre] = float(ex.act[e])
        out.append({"tokens": [text.known[int(t)] for t in ex.ids[e, keep]], "values": values, "top_token": centre})
    return out


@torch.no_grad()
def add_top_activations(
    records: list[LatentRecord],
    sae: nn.Module,
    store: ActivationStore,
    site: str,
    tokenizer,
    *,
    n_examples: int = 10,
    window: int = 8,
    max_rows: int = 32768,
) -> int:
    """Top activating tokens of each latent on the store's held-out split, each shown with up to
    `window` tokens of the same document on either side, plus the histogram of its non-zero
    activations; firing frequency too where metrics.json had none. Returns the number of rows read.
    The browser's statistics pass does the work, so the examples are the ones its pages show."""
    opts = StatsOptions(top_k=n_examples, left=window, right=window, hist_bins=N_BINS, max_rows=max_rows)
    data = held_out(store, opts)
    no_topics = np.full(data.rows, -1, dtype=np.int64)  # Neuronpedia has no field for them
    st = activation_stats(encode_site(store, site, [sae], data)[0], sae.d_sae, data, no_topics, 0, opts)
    text = TokenText(tokenizer)
    text.need(np.concatenate([ex.ids.ravel() for ex in st.examples]) if st.examples else [])
    for j, rec in enumerate(records):
        if st.count[j]:
            rec.activation_histogram = (_centres(0.0, float(st.max_act[j]), N_BINS), st.hist[j].tolist())
        if rec.firing_frequency is None:
            rec.firing_frequency = int(st.count[j]) / data.rows
        rec.top_examples = _top_examples(st.examples[j], text)
    return data.rows


def export_neuronpedia(
    sae_folder: str | Path,
    dest: str | Path,
    *,
    store: str | Path | None = None,
    model_dir: str | None = None,
    model_id: str | None = None,
    n_examples: int = 10,
    max_rows: int = 32768,
) -> list[Path]:
    """Neuronpedia batches for one saescope SAE folder: firing frequencies from metrics.json,
    decoder neighbours always, top activations if an activation store is given (or recorded in
    the run), logit lens if the model can be loaded and the browser would show one."""
    from saescope.release.interop import read

    loaded = read(sae_folder)
    sae, meta = loaded.sae, loaded.meta
    sae = sae.sae if hasattr(sae, "affine_skip_connection") else sae
    records = records_from_metrics(sae.d_sae, loaded.metrics)
    add_decoder_neighbours(records, sae)
    kind, layer = meta.get("site"), meta.get("layer")
    model_name = model_dir or meta.get("model")
    if model_name and kind is not None and layer is not None:
        from saescope.models.loading import load_model

        model, tokenizer = load_model(model_name, "float32", "cpu")
        if not add_logit_lens(records, sae, model, tokenizer, Site(int(layer), kind)):
            print(
                f"saescope: no logit lens for {kind}.{layer} (as in the browser: its decoder rows are not "
                "residual-stream directions); pos_str and neg_str are left empty"
            )
        if store is not None:
            add_top_activations(
                records,
                sae,
                ActivationStore(store),
                f"{kind}.{layer}",
                tokenizer,
                n_examples=n_examples,
                max_rows=max_rows,
            )
    sae_set = f"{kind or 'sae'}-saescope-{sae.d_sae}"
    return write_neuronpedia(
        records,
        dest,
        model_id=model_id or str(meta.get("model_name") or model_name or "model"),
        layer=layer if layer is not None else 0,
        sae_set=sae_set,
    )
