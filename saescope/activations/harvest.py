"""Harvest: one forward pass per batch feeds every requested site of every requested layer.

The forward stops after the last layer needed, so the LM head (for Gemma 3 270M, a 262k-token
vocabulary that costs more than all 18 blocks) never runs. BOS, EOS and padding positions are
dropped before anything is stored. Writing a shard happens on a background thread so the next
forward overlaps with the disk.

Under torchrun the ranks split the corpus by packed batch: batch k is run by rank k % world.
Every rank packs the whole stream (tokenising is cheap next to a forward) so that all agree on
where the token budget ends; the union of their rows is exactly a one-process harvest's rows.
Each rank writes its own shards and manifest, resumes from its own last complete shard, and
rank 0 merges the manifests once all ranks are done.
"""

from __future__ import annotations

import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from saescope import distributed
from saescope.activations.corpus import iter_documents, pack_documents
from saescope.activations.remote import file_url_path, is_url
from saescope.activations.store import (STORE_DTYPES, TOKEN_FIELDS, ShardColumn, read_json,
                                        write_json_atomic)
from saescope.config import option
from saescope.errors import SaescopeError
from saescope.models.loading import load_model
from saescope.models.sites import Site, parse_sites, run_to_sites, site_width


@dataclass
class HarvestConfig:
    model: str = option("embedded", "model: 'embedded' (Gemma 3 270M), a local folder or a Hugging Face name")
    dataset: str = option("wiki", "text: 'wiki' (embedded Wikipedia), a .txt/.jsonl/.parquet file or folder, or a HF dataset name")
    text_field: str = option("text", "field holding the text in jsonl/parquet/HF datasets")
    sites: str = option("res,mlp,att", "comma-separated site kinds: res, mlp, att, mlp_in")
    layers: str = option("all", "layers: all, 5, 0,4,8 or 2-7")
    tokens: int = option(200_000, "training tokens to store (BOS/EOS/pad excluded)")
    context_len: int = option(1024, "tokens per sequence")
    forward_batch: int = option(8, "sequences per forward pass")
    dtype: str = option("bfloat16", "model and store dtype: bfloat16 or float32")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    shard_rows: int = option(65536, "rows per shard file")
    store: str = option("runs/default/activations", "activation store folder", "--out")


KEYS_THAT_MUST_MATCH = ("model", "dataset", "text_field", "context_len", "forward_batch", "dtype", "shard_rows")


WRITE_THREADS = 2


def _to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    t = t.detach().to("cpu", STORE_DTYPES[dtype][0]).contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()


def estimate_bytes(widths: list[int], tokens: int, dtype: str) -> int:
    return tokens * (sum(widths) * np.dtype(STORE_DTYPES[dtype][1]).itemsize + TOKEN_FIELDS * 4)


class _ShardWriter:
    """Accumulates aligned rows for all columns and writes full shards together.

    Columns are written (hashed, written, fsynced) by WRITE_THREADS threads while the model runs
    the next batches; hashlib and file writes release the GIL, so the last shard of a harvest,
    which nothing overlaps, costs 1/WRITE_THREADS of its serial time."""

    def __init__(self, columns: dict[str, ShardColumn], shard_rows: int, start_shard: int):
        self.columns, self.shard_rows, self.shard = columns, shard_rows, start_shard
        self.buffers = {k: np.empty((shard_rows, c.width), c.numpy_dtype) for k, c in columns.items()}
        self.fill = 0
        self.pool = ThreadPoolExecutor(max_workers=WRITE_THREADS)
        self.pending: list[Future] = []

    def add(self, rows: dict[str, np.ndarray]) -> None:
        n = len(next(iter(rows.values())))
        start = 0
        while start < n:
            take = min(n - start, self.shard_rows - self.fill)
            for k, buf in self.buffers.items():
                buf[self.fill:self.fill + take] = rows[k][start:start + take]
            self.fill += take
            start += take
            if self.fill == self.shard_rows:
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        self.wait()
        full = {k: b[:self.fill] for k, b in self.buffers.items()}
        # The writer threads own the filled buffers now; fresh ones take the next rows.
        self.buffers = {k: np.empty_like(b) for k, b in self.buffers.items()}
        self.pending = [self.pool.submit(col.write_shard, self.shard, full[k]) for k, col in self.columns.items()]
        self.shard += 1
        self.fill = 0

    def wait(self) -> None:
        pending, self.pending = self.pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.flush()
        self.wait()
        self.pool.shutdown()


def _rank_names(rank: int, world: int) -> tuple[str, str]:
    """A harvest rank's shard name prefix and manifest name; one process keeps the plain names."""
    if world == 1:
        return "", "manifest.json"
    return f"r{rank}of{world}_", f"manifest.r{rank}of{world}.json"


def _open_or_create(cfg: HarvestConfig, model_name: str, sites: list[Site], widths: dict[str, int]) -> dict[str, ShardColumn]:
    root = Path(cfg.store)
    info_path = root / "store.json"
    rank, world = distributed.rank(), distributed.world_size()
    info = {"format": "saescope-store-1", **{k: getattr(cfg, k) for k in KEYS_THAT_MUST_MATCH},
            "model_name": model_name, "sites": [s.name for s in sites], "tokens": cfg.tokens, "complete": False,
            "ranks": world}
    if info_path.exists():  # every rank checks, so a refusal is the same error on all of them
        old = read_json(info_path)
        changed = [k for k in (*KEYS_THAT_MUST_MATCH, "sites") if old.get(k) != info[k]]
        if changed:
            raise SaescopeError(f"store {root} was harvested with other settings ({', '.join(changed)}): "
                                f"choose another --out or delete the folder")
        if old.get("ranks", 1) != world:
            raise SaescopeError(f"store {root} was harvested by {old.get('ranks', 1)} process(es), this run has {world}: "
                                f"resume with --nproc {old.get('ranks', 1)} or choose another --out")
    distributed.barrier()  # nobody reads the old store.json after this
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(info_path, info)
    distributed.barrier()
    prefix, manifest_name = _rank_names(rank, world)
    columns: dict[str, ShardColumn] = {}
    for name, width, meta in [("tokens", TOKEN_FIELDS, {"fields": ["token_id", "doc_id", "position"]}),
                              *[(s.name, widths[s.name], {"model": model_name, "site": s.kind, "layer": s.layer,
                                                          "d_in": widths[s.name]}) for s in sites]]:
        folder = root / name
        folder.mkdir(exist_ok=True)
        dtype = "int32" if name == "tokens" else cfg.dtype
        columns[name] = (ShardColumn.open(folder, prefix, manifest_name) if (folder / manifest_name).exists()
                         else ShardColumn(folder, width, dtype, meta, [], prefix, manifest_name))
    return columns


def harvest(cfg: HarvestConfig, model=None, tokenizer=None) -> Path:
    """Fill (or resume) the store at `cfg.store`; returns its path. Under torchrun, every rank
    calls this and harvests its share of the batches into the same store."""
    if is_url(cfg.store):
        if file_url_path(cfg.store) is None:
            raise SaescopeError(f"harvest writes to a filesystem path, not {cfg.store}: harvest to local or shared "
                                f"storage (NFS, Lustre), then copy the folder to object storage")
        cfg = replace(cfg, store=str(file_url_path(cfg.store)))
    rank, world = distributed.rank(), distributed.world_size()
    docs = iter_documents(cfg.dataset, cfg.text_field)  # a bad dataset fails before the model loads
    if model is None:
        model, tokenizer = load_model(cfg.model, cfg.dtype, distributed.device_for(cfg.device))
    sites = parse_sites(model, cfg.sites, cfg.layers)
    widths = {s.name: site_width(model, s.kind) for s in sites}
    was_complete = _was_complete(cfg)
    columns = _open_or_create(cfg, getattr(model, "name_or_path", cfg.model), sites, widths)

    if world == 1 and len({len(c.shards) for c in columns.values()}) == 1 and columns["tokens"].rows >= cfg.tokens:
        return _finish(cfg, columns)
    if world > 1 and was_complete:  # a rank cannot tell alone that its share is complete
        return _finish(cfg, columns)
    # Resume from the last shard complete in every column; only full shards count, so a finished
    # short tail is rewritten if more tokens are asked for now.
    n_full = min(sum(1 for s in c.shards if s["rows"] == cfg.shard_rows) for c in columns.values())
    for c in columns.values():
        c.truncate(n_full)
    done = n_full * cfg.shard_rows  # this rank's rows already stored
    if done >= cfg.tokens:
        return _finish(cfg, columns)
    remaining = max(cfg.tokens - done * world, 0)
    need = estimate_bytes(list(widths.values()), remaining, cfg.dtype)
    free = shutil.disk_usage(cfg.store).free
    if rank == 0:
        print(f"saescope: harvesting {len(sites)} sites x {remaining:,} tokens "
              f"-> {need / 2**30:.2f} GiB in {cfg.store} ({free / 2**30:.1f} GiB free)"
              + (f" with {world} processes" if world > 1 else ""))
    if need > free:
        raise SaescopeError(f"not enough disk for the harvest ({need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free "
                            f"in {cfg.store}): lower --tokens, use --dtype bfloat16, or choose another --out")

    writer = _ShardWriter(columns, cfg.shard_rows, n_full)
    device = next(model.parameters()).device
    seen = 0  # train tokens of the whole stream so far, all ranks' batches included
    mine = 0  # train tokens of this rank's batches so far, including the ones skipped on resume
    bar = tqdm(total=cfg.tokens // world, initial=done, unit="tok", unit_scale=True, desc="harvest",
               dynamic_ncols=True, disable=rank != 0)
    try:
        batches = pack_documents(docs, tokenizer, cfg.context_len, cfg.forward_batch, max_tokens=cfg.tokens)
        for k, batch in enumerate(batches):
            n = int(batch.train_mask.sum())
            take = min(n, cfg.tokens - seen)  # the budget cuts the stream's last batch
            seen += n
            if k % world == rank:
                if mine + take > done:  # else wholly harvested before the interruption: no forward needed
                    rows = _forward_rows(model, batch, sites, device, cfg.dtype)
                    lo = max(done - mine, 0)
                    writer.add({key: v[lo:take] for key, v in rows.items()})
                    bar.update(take - lo)
                mine += take
            if seen >= cfg.tokens:
                break
        writer.close()
    finally:
        bar.close()
        writer.pool.shutdown(wait=True)
    if seen < cfg.tokens and rank == 0:
        print(f"saescope: the dataset ran out after {seen:,} tokens (asked for {cfg.tokens:,})")
    return _finish(cfg, columns)


def _was_complete(cfg: HarvestConfig) -> bool:
    """Whether a finished harvest of at least this many tokens is already in the store."""
    path = Path(cfg.store) / "store.json"
    if not path.exists():
        return False
    old = read_json(path)
    return bool(old.get("complete")) and old.get("tokens", 0) >= cfg.tokens


def _forward_rows(model, batch, sites: list[Site], device, dtype: str) -> dict[str, np.ndarray]:
    mask = batch.train_mask.to(device)
    out: dict[str, np.ndarray] = {}

    def keep(site: Site, x: torch.Tensor) -> None:
        out[site.name] = _to_numpy(x[mask], dtype)

    run_to_sites(model, batch.input_ids.to(device), batch.attention_mask.to(device), sites, keep)
    m = batch.train_mask
    out["tokens"] = torch.stack([batch.input_ids[m], batch.doc_ids[m], batch.positions[m]], 1).to(torch.int32).numpy()
    return out


def _finish(cfg: HarvestConfig, columns: dict[str, ShardColumn]) -> Path:
    world = distributed.world_size()
    if world > 1:
        distributed.barrier()  # every rank's shards and manifest are final
        if distributed.rank() == 0:
            columns = {name: _merge_ranks(col, world) for name, col in columns.items()}
    if distributed.rank() == 0:
        info_path = Path(cfg.store) / "store.json"
        info = read_json(info_path)
        info.update(complete=True, rows=columns["tokens"].rows, harvest_config=asdict(cfg))
        write_json_atomic(info_path, info)
    distributed.barrier()  # nobody returns before the merged store is readable
    return Path(cfg.store)


def _merge_ranks(column: ShardColumn, world: int) -> ShardColumn:
    """One `manifest.json` listing every rank's shards, interleaved: shard 0 of ranks 0..W-1,
    then shard 1 of each, ... so the held-out last shards come from the end of the stream."""
    parts = [ShardColumn.open(column.folder, *_rank_names(r, world)).shards for r in range(world)]
    shards = [part[i] for i in range(max(map(len, parts))) for part in parts if i < len(part)]
    merged = ShardColumn(column.folder, column.width, column.dtype, column.meta, shards)
    merged.save_manifest()
    return merged
