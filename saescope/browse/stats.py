"""Feature statistics of every latent of every SAE of a run, in one streaming pass over the store.

The held-out split (the store's last shards, as in `saescope evaluate`) is read in order, site by
site: each chunk of a site's rows is read once and encoded by every SAE of that site, and only the
non-zero latent activations are kept (rows x L0 numbers, not rows x width). Everything the
dashboards show then comes from that sparse matrix with vectorised numpy:

- firing frequency, mean and maximum activation, a histogram of the non-zero activations;
- the top-k activating tokens and samples from activation-quantile bins (by rank among the
  latent's non-zero activations), each with a window of neighbouring tokens of the same document
  and the latent's activation on every token of the window (a lookup in the same sparse matrix:
  rows of one document are consecutive in the store, so no token is encoded twice);
- per-topic firing rates (documents of the embedded corpus carry a topic).

Weight-only statistics (logit lens, decoder-cosine neighbours) are not computed here: `ondemand`
computes them per latent when a page needs them, so the browser is ready after this one pass. Each
SAE's results are committed with a signature of its inputs, so a second run skips unchanged SAEs.
The Neuronpedia export takes its top activations and histograms from here too (`held_out`,
`encode_site`, `activation_stats`): one implementation, the same examples.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from saescope.activations.documents import check_store_text, load_documents
from saescope.activations.store import ActivationStore, run_store
from saescope.browse.db import Examples, connect, db_path, pack_examples
from saescope.browse.suite import SuiteSAE, list_saes
from saescope.errors import SaescopeError
from saescope.release.formats import load

SEARCH_EXAMPLES = 5  # top examples whose text is indexed for search
SNIPPET_LEFT, SNIPPET_RIGHT = 6, 2


@dataclass
class StatsOptions:
    top_k: int = 16  # top activating examples per latent
    bins: int = 4  # activation-quantile bins
    per_bin: int = 3  # examples per bin
    left: int = 10  # window tokens before the activating token
    right: int = 3  # window tokens after it
    hist_bins: int = 24
    max_rows: int = 65536  # held-out rows used (the first ones of the split)
    eval_shards: int = 1  # last shards of the store held out, as in `saescope evaluate`
    batch_rows: int = 4096


@dataclass
class HeldOut:
    """The held-out rows of the store: where they are and what token/document each one is."""

    chunks: list[tuple[int, int, int]]  # (shard, lo, hi) in row order
    token: np.ndarray  # int64 [n]
    doc: np.ndarray  # int64 [n]
    position: np.ndarray  # int64 [n]

    @property
    def rows(self) -> int:
        return len(self.token)


def held_out(store: ActivationStore, opts: StatsOptions) -> HeldOut:
    n = store.n_shards
    held = min(opts.eval_shards, n - 1)
    if held < 1:
        raise SaescopeError(f"store {store.path} has {n} shard(s), too few for a held-out split: harvest more tokens")
    chunks, tokens, left = [], [], opts.max_rows
    for shard in range(n - held, n):
        rows = min(store.shard_rows(shard), left)
        for lo in range(0, rows, opts.batch_rows):
            chunks.append((shard, lo, min(lo + opts.batch_rows, rows)))
        tokens.append(np.asarray(store.tokens.read(shard, verify=True)[:rows]).astype(np.int64))
        left -= rows
        if left <= 0:
            break
    t = np.concatenate(tokens)
    return HeldOut(chunks, t[:, 0], t[:, 1], t[:, 2])


def signature(sae: SuiteSAE, opts: StatsOptions, rows: int) -> str:
    """Everything an SAE's stored statistics depend on (its stored logit lens too)."""
    return json.dumps({"weights": sae.weights_signature(), "rows": rows, "options": asdict(opts)}, sort_keys=True)


class SparseActs:
    """Non-zero activations of one SAE over the held-out rows, appended chunk by chunk: (row, latent)
    pairs in ascending row-major order, which `activation_stats` relies on for its lookups."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, f: torch.Tensor, row0: int) -> None:
        r, c = (f > 0).nonzero(as_tuple=True)
        self.parts.append(((r + row0).numpy().astype(np.int64), c.numpy().astype(np.int64), f[r, c].numpy()))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return tuple(np.concatenate(p) for p in zip(*self.parts))  # type: ignore[return-value]


@dataclass
class ActivationStats:
    """Per-latent statistics from the sparse activations (arrays indexed by latent)."""

    count: np.ndarray
    max_act: np.ndarray
    mean_act: np.ndarray
    hist: np.ndarray  # [d_sae, hist_bins]
    topic_counts: np.ndarray  # [d_sae, n_topics]
    examples: list[Examples]


def activation_stats(
    acts: SparseActs, d_sae: int, data: HeldOut, topic_of_row: np.ndarray, n_topics: int, opts: StatsOptions
) -> ActivationStats:
    rows0, lats0, vals0 = acts.arrays()
    order = _by_latent_then_activation(lats0, vals0)
    rows, lats, vals = rows0[order], lats0[order], vals0[order]
    count = np.bincount(lats, minlength=d_sae)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    max_act = np.where(count > 0, vals[np.minimum(start, max(len(vals) - 1, 0))] if len(vals) else 0.0, 0.0)
    mean_act = np.bincount(lats, weights=vals, minlength=d_sae) / np.maximum(count, 1)

    H = opts.hist_bins
    safe_max = np.where(max_act > 0, max_act, 1.0)
    b = np.minimum((vals / safe_max[lats] * H).astype(np.int64), H - 1)
    hist = np.bincount(lats * H + b, minlength=d_sae * H).reshape(d_sae, H)
    t = topic_of_row[rows]
    ok = t >= 0
    topic_counts = np.bincount(lats[ok] * n_topics + t[ok], minlength=d_sae * n_topics).reshape(d_sae, n_topics)

    # Example picks as ranks within each latent's sorted activations: [d_sae, slots] with a mask.
    k = opts.top_k
    top_rank = np.broadcast_to(np.arange(k), (d_sae, k))
    top_ok = top_rank < count[:, None]
    frac = (np.arange(opts.bins)[:, None] + (np.arange(opts.per_bin)[None, :] + 0.5) / opts.per_bin) / opts.bins
    q_rank = np.floor(count[:, None] * frac.reshape(1, -1)).astype(np.int64)
    q_ok = np.broadcast_to((count > k)[:, None], q_rank.shape)  # bins only add news past the top-k
    rank = np.concatenate([top_rank, q_rank], 1)
    group = np.broadcast_to(
        np.concatenate([np.zeros(k, np.int64), 1 + np.repeat(np.arange(opts.bins), opts.per_bin)]), rank.shape
    )
    ok_all = np.concatenate([top_ok, q_ok], 1)
    lat_e = np.broadcast_to(np.arange(d_sae)[:, None], rank.shape)[ok_all]
    idx = (start[:, None] + rank)[ok_all]
    group_e = group[ok_all]
    center, act = rows[idx], vals[idx]

    # Windows: neighbouring rows of the same document, and the latent's activation on each of them.
    offsets = np.arange(-opts.left, opts.right + 1)
    rr = center[:, None] + offsets[None, :]
    inside = (rr >= 0) & (rr < data.rows)
    rrc = np.clip(rr, 0, data.rows - 1)
    same_doc = inside & (data.doc[rrc] == data.doc[center][:, None])
    ids = np.where(same_doc, data.token[rrc], -1)
    keys, key_vals = rows0 * d_sae + lats0, vals0  # ascending already: SparseActs keeps row-major order
    query = rrc * d_sae + lat_e[:, None]
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    hit = same_doc & (keys[pos] == query) if len(keys) else np.zeros_like(same_doc)
    window_acts = np.where(hit, key_vals[pos] if len(keys) else 0.0, 0.0)

    bounds = np.searchsorted(lat_e, np.arange(d_sae + 1))
    examples = []
    for i in range(d_sae):
        s = slice(bounds[i], bounds[i + 1])
        examples.append(
            Examples(
                group_e[s].astype(np.int32),
                data.doc[center[s]].astype(np.int32),
                data.position[center[s]].astype(np.int32),
                act[s].astype(np.float32),
                ids[s].astype(np.int32),
                window_acts[s].astype(np.float16),
                opts.left,
            )
        )
    return ActivationStats(count, max_act, mean_act, hist, topic_counts, examples)


def _by_latent_then_activation(lats: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """The order of `np.lexsort((-vals, lats))` (ties kept in row order) at half its cost: one stable
    sort of an int64 key, latent in the high bits, then the float32 bits of the (positive)
    activation, which order as integers do, inverted for descending."""
    descending = np.int64(0x7FFFFFFF) - vals.astype(np.float32).view(np.int32)
    return np.argsort((lats.astype(np.int64) << 31) | descending, kind="stable")


class TokenText:
    """Display text of token ids, decoded once each and remembered for the tokens table."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.known: dict[int, str] = {}
        self.unsaved: list[tuple[int, str]] = []

    def need(self, ids: np.ndarray | list[int]) -> None:
        """Decode the ids not seen yet. Each id is looked up in `known` on its own: a set difference
        with `known.keys()` walks every known token (200k+ late in a suite) on each call."""
        ids = np.unique(np.asarray(ids, dtype=np.int64)).tolist()
        new = [i for i in ids if i >= 0 and i not in self.known]
        if new:
            decoded = list(zip(new, self.tokenizer.batch_decode([[i] for i in new])))
            self.known.update(decoded)
            self.unsaved += decoded

    def take_unsaved(self) -> list[tuple[int, str]]:
        out, self.unsaved = self.unsaved, []
        return out

    def text(self, ids: np.ndarray | list[int]) -> str:
        return "".join(self.known.get(i, "") for i in np.asarray(ids).tolist() if i >= 0)


def compute_stats(
    run: str | Path, opts: StatsOptions | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Fill RUN/browse/features.sqlite for every SAE whose inputs changed; return timings in seconds.

    The progress bar counts SAEs: each one is a share of the store pass plus its statistics and
    writes, about the same for every SAE of a suite, so the bar's rate gives an honest ETA."""
    from saescope.models.loading import load_tokenizer

    opts = opts or StatsOptions()
    run = Path(run)
    suite = list_saes(run)
    store = run_store(run)
    data = held_out(store, opts)
    con = connect(db_path(run), write=True)
    done = dict(con.execute("SELECT name, signature FROM saes"))
    sigs = {s.name: signature(s, opts, data.rows) for s in suite}
    todo = [s for s in suite if force or done.get(s.name) != sigs[s.name]]
    stale = set(done) - {s.name for s in suite}
    for name in stale:  # SAEs deleted from the run since the last pass
        _delete(con, name)
    con.commit()
    timings = {"encode": 0.0, "stats_write": 0.0, "saes": len(todo), "rows": data.rows}
    if not todo:
        return timings
    missing = [s.site.name for s in todo if s.site.name not in store.sites]
    if missing:
        raise SaescopeError(f"site {missing[0]} is not in store {store.path}: harvest it before browsing its SAEs")

    info = store.info
    check_store_text(info, store.path)
    topic_of_row, topics, doc_rows = _topics(info, data)
    _write_meta(con, info, data, topics, topic_of_row)
    con.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?, ?)", doc_rows)

    by_site: dict[str, list[SuiteSAE]] = defaultdict(list)
    for s in todo:
        by_site[s.site.name].append(s)
    bar = tqdm(total=len(todo), desc="browse stats", unit="SAE", dynamic_ncols=True, disable=not progress)

    # A site's statistics and writes (numpy and Python on one core) run while the next site is encoded
    # (torch matmuls): one thread, so at most two sites' sparse activations are held at a time. Its
    # first job is the tokenizer (5 s for Gemma's), loaded while the first site is encoded.
    finisher = ThreadPoolExecutor(max_workers=1)
    texts = finisher.submit(lambda: TokenText(load_tokenizer(info["model"])))

    def finish(saes: list[SuiteSAE], sparse: list[SparseActs]) -> None:
        t0 = time.perf_counter()
        for s, acc in zip(saes, sparse):
            st = activation_stats(acc, s.d_sae, data, topic_of_row, len(topics), opts)
            _write_sae(con, s, sigs[s.name], data.rows, st, texts.result())
        timings["stats_write"] += time.perf_counter() - t0
        bar.update(len(saes))

    try:  # the bar ends its line before an error is printed
        pending = None
        for site, saes in by_site.items():
            t0 = time.perf_counter()
            sparse = encode_site(store, site, [load(s.folder) for s in saes], data)
            timings["encode"] += time.perf_counter() - t0
            if pending is not None:
                pending.result()
            pending = finisher.submit(finish, saes, sparse)
        if pending is not None:
            pending.result()
    finally:
        finisher.shutdown(cancel_futures=True)
        bar.close()
    con.close()
    return timings


def encode_site(store: ActivationStore, site: str, models: list[torch.nn.Module], data: HeldOut) -> list[SparseActs]:
    """One read of a site's held-out rows, encoded by every SAE of that site (SAE modules, not
    folders: the Neuronpedia export passes an SAE it read in any format)."""
    sparse = [SparseActs() for _ in models]
    row0 = 0
    column = store.column(site)
    with torch.inference_mode():
        for shard, lo, hi in data.chunks:
            x = torch.from_numpy(np.asarray(column.read(shard, verify=lo == 0)[lo:hi]))  # sha256 once per shard
            x = (x.view(torch.bfloat16) if store.dtype == "bfloat16" else x).float()
            if not torch.isfinite(x).all():
                raise SaescopeError(
                    f"NaN or inf in the activations of site {site} (store {store.path}, shard "
                    f"{shard}, rows {lo}-{hi}): harvest that store again"
                )
            for sae, acc in zip(models, sparse):
                acc.add(sae.encode(x), row0)
            row0 += hi - lo
    return sparse


def _delete(con, name: str) -> None:
    for table, column in (("saes", "name"), ("latents", "sae"), ("lens", "sae"), ("search", "sae")):
        con.execute(f"DELETE FROM {table} WHERE {column} = ?", (name,))


def _topics(info: dict, data: HeldOut) -> tuple[np.ndarray, list[str], list[tuple[int, str, str]]]:
    """Topic index of every held-out row (-1 if none), topic names, and (doc, title, topic) rows."""
    max_doc = int(data.doc.max()) if data.rows else -1
    try:
        docs = load_documents(info["dataset"], info.get("text_field", "text"), limit=max_doc + 1)
    except SaescopeError:
        docs = []  # a corpus that is gone: the dashboards still work, just without titles and topics
    used = np.unique(data.doc)
    titles = [(int(d), docs[d].title, docs[d].topic) for d in used if 0 <= d < len(docs)]
    topics = sorted({t for _, _, t in titles if t})
    index = {t: i for i, t in enumerate(topics)}
    doc_topic = np.full(max_doc + 2, -1, dtype=np.int64)
    for d, _, t in titles:
        if t:
            doc_topic[d] = index[t]
    return doc_topic[data.doc], topics, titles


def _write_meta(con, info: dict, data: HeldOut, topics: list[str], topic_of_row: np.ndarray) -> None:
    topic_tokens = np.bincount(topic_of_row[topic_of_row >= 0], minlength=len(topics)).tolist()
    meta = {
        "model": info.get("model_name", info["model"]),
        "dataset": info["dataset"],
        "rows": data.rows,
        "topics": topics,
        "topic_tokens": topic_tokens,
    }
    con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])


def _write_sae(con, s: SuiteSAE, sig: str, rows: int, st: ActivationStats, text: TokenText) -> None:
    """Replace one SAE's rows in a single transaction, so an interrupted pass leaves no half SAE.

    Every token the rows mention is decoded up front in one call, not latent by latent."""
    text.need(np.concatenate([ex.ids.ravel() for ex in st.examples]) if st.examples else [])
    latent_rows, search_rows = [], []
    for i in range(s.d_sae):
        ex = st.examples[i]
        snippet = ""
        if len(ex):
            c = ex.left
            snippet = text.text(ex.ids[0, max(0, c - SNIPPET_LEFT) : c + SNIPPET_RIGHT + 1])
        windows = [ex.ids[j] for j in range(min(SEARCH_EXAMPLES, len(ex))) if ex.group[j] == 0]
        # both the decoded text (whole words) and the separate tokens (tokenizers without spaces)
        body = " ".join(
            [text.text(w) for w in windows] + [text.known.get(int(t), "") for w in windows for t in w if t >= 0]
        )
        latent_rows.append(
            (
                s.name,
                i,
                float(st.count[i]) / rows,
                float(st.max_act[i]),
                float(st.mean_act[i]),
                snippet,
                json.dumps({"max": float(st.max_act[i]), "counts": st.hist[i].tolist()}),
                json.dumps(st.topic_counts[i].tolist()),
                pack_examples(ex),
            )
        )
        search_rows.append((s.name, i, body))
    metrics = s.metrics() | {"browse_rows": rows, "browse_dead": int((st.count == 0).sum())}
    with con:
        _delete(con, s.name)
        con.execute(
            "INSERT INTO saes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (s.name, s.site.kind, s.site.layer, s.d_sae, s.d_in, rows, sig, json.dumps(metrics)),
        )
        con.executemany("INSERT INTO latents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", latent_rows)
        con.executemany("INSERT INTO search VALUES (?, ?, ?)", search_rows)
        con.executemany("INSERT OR REPLACE INTO tokens VALUES (?, ?)", text.take_unsaved())
