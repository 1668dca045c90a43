"""Harvest: one forward pass per batch feeds every requested site of every requested layer.

The forward stops after the last layer needed, so the LM head (for Gemma 3 270M, a 262k-token
vocabulary that costs more than all 18 blocks) never runs. BOS, EOS and padding positions are
dropped before anything is stored. Each site's rows go to writer threads the moment its hook
fires, so the disk works while the rest of the forward runs.

Under torchrun the ranks split the corpus by packed batch: batch k is run by rank k % world.
Every rank packs the whole stream (tokenising is cheap next to a forward) so that all agree on
where the token budget ends; the union of their rows is exactly a one-process harvest's rows.
Each rank writes its own shards and manifest, resumes from its own last complete shard, and
rank 0 merges the manifests once all ranks are done.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from saescope import distributed
from saescope.activations.documents import dataset_fingerprint, iter_documents
from saescope.activations.packing import pack_documents
from saescope.activations.remote import file_url_path, is_url
from saescope.activations.sensitivity import SENSITIVITY_FILE, SENSITIVITY_TOKENS, write_sensitivity
from saescope.activations.store import STORE_DTYPES, TOKEN_FIELDS, ShardColumn, ShardFile, disk_errors, new_staging
from saescope.config import STORE_FOLDER, device_option, option, validate
from saescope.errors import SaescopeError
from saescope.io import read_json, write_json_atomic
from saescope.models.loading import load_model
from saescope.models.sites import Site, parse_sites, run_to_sites, site_width


@dataclass
class HarvestConfig:
    model: str = option("embedded", "model: 'embedded' (Gemma 3 270M), a local folder or a Hugging Face name")
    dataset: str = option(
        "wiki", "text: 'wiki' (embedded Wikipedia), a .txt/.jsonl/.parquet file or folder, or a HF dataset name"
    )
    text_field: str = option("text", "field holding the text in jsonl/parquet/HF datasets")
    sites: str = option("res,mlp,att", "comma-separated site kinds: res, mlp, att, mlp_in")
    layers: str = option("all", "layers: all, 5, 0,4,8 or 2-7")
    tokens: int = option(200_000, "training tokens to store (BOS/EOS/pad excluded)")
    context_len: int = option(1024, "tokens per sequence")
    forward_batch: int = option(8, "sequences per forward pass")
    dtype: Literal[tuple(STORE_DTYPES)] = option(
        "bfloat16", "store dtype, and the model's where the hardware multiplies it (else float32: compute_dtype)"
    )
    device: str = device_option()
    shard_rows: int = option(65536, "rows per shard file")
    store: str = option(STORE_FOLDER, "activation store folder", "--out")


KEYS_THAT_MUST_MATCH = ("model", "dataset", "text_field", "context_len", "forward_batch", "dtype", "shard_rows")


WRITE_THREADS = 2  # hashlib and os.write release the GIL, so two threads keep up with the forwards
BATCHES_IN_FLIGHT = 2  # batches handed to the writers and not yet on disk; bounds the memory they hold


def _to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    t = t.detach().to("cpu", STORE_DTYPES[dtype][0]).contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else t.numpy()


def estimate_bytes(widths: list[int], tokens: int, dtype: str) -> int:
    return tokens * (sum(widths) * np.dtype(STORE_DTYPES[dtype][1]).itemsize + TOKEN_FIELDS * 4)


Plan = list[tuple[int, int, int, bool]]  # (shard index, first row, end row, whether it completes the shard)


class _ShardWriter:
    """Streams rows into the open shard of every column while the model runs on.

    Nothing is gathered into shard-sized buffers: a site's rows are handed over the moment its hook
    fires and appended (hashed and written) to the column's `.tmp` shard file by a writer thread,
    so disk work overlaps the rest of the same forward, and when the last forward ends only its
    last layer's rows are left to write. Each writer thread owns a fixed set of columns, which
    keeps every column's appends in order without locks. Shards are cut at `shard_rows`, so the
    files are the same however the rows arrived."""

    def __init__(self, columns: dict[str, ShardColumn], shard_rows: int, start_shard: int):
        self.columns, self.shard_rows, self.shard, self.fill = columns, shard_rows, start_shard, 0
        names = list(columns)
        self.pool_of = {name: i % WRITE_THREADS for i, name in enumerate(names)}
        self.pools = [ThreadPoolExecutor(max_workers=1) for _ in range(WRITE_THREADS)]
        self.staging = [new_staging() for _ in range(WRITE_THREADS)]
        self.open: dict[str, ShardFile] = {}
        self.in_flight: list[list[Future]] = []

    def begin(self, n: int) -> Plan:
        """Start a batch of `n` rows: where they fall in the shards, for every column alike."""
        while len(self.in_flight) >= BATCHES_IN_FLIGHT:
            for future in self.in_flight.pop(0):
                future.result()  # re-raises a writer's SaescopeError (a full disk) in the harvest loop
        self.in_flight.append([])
        start, plan = 0, []
        while start < n:
            take = min(n - start, self.shard_rows - self.fill)
            self.fill += take
            plan.append((self.shard, start, start + take, self.fill == self.shard_rows))
            if self.fill == self.shard_rows:
                self.shard, self.fill = self.shard + 1, 0
            start += take
        return plan

    def put(self, name: str, rows: np.ndarray, plan: Plan) -> None:
        """Queue one column's rows of the current batch."""
        i = self.pool_of[name]
        self.in_flight[-1].append(self.pools[i].submit(self._write, name, self.staging[i], rows, plan))

    def close(self) -> None:
        """Commit the last, partial shard and wait until everything is on disk."""
        if self.fill:
            plan = [(self.shard, 0, 0, True)]
            self.in_flight.append(
                [self.pools[self.pool_of[name]].submit(self._write, name, None, None, plan) for name in self.columns]
            )
            self.shard, self.fill = self.shard + 1, 0
        for batch in self.in_flight:
            for future in batch:
                future.result()
        self.in_flight.clear()
        self.shutdown()

    def shutdown(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)
        for shard in self.open.values():  # an interrupted harvest leaves no half-written file open
            shard.abort()
        self.open.clear()

    def _write(self, name: str, staging: memoryview | None, rows: np.ndarray | None, plan: Plan) -> None:
        column = self.columns[name]
        for shard, lo, hi, completes in plan:
            if name not in self.open:
                self.open[name] = column.open_shard(shard, staging)
            if hi > lo:
                with disk_errors(self.open[name].path, shard, self.open[name]):
                    self.open[name].append(rows[lo:hi])
            if completes:
                column.commit_shard(shard, self.open.pop(name))


def _rank_names(rank: int, world: int) -> tuple[str, str]:
    """A harvest rank's shard name prefix and manifest name; one process keeps the plain names."""
    if world == 1:
        return "", "manifest.json"
    return f"r{rank}of{world}_", f"manifest.r{rank}of{world}.json"


def _open_or_create(
    cfg: HarvestConfig, model_name: str, sites: list[Site], widths: dict[str, int]
) -> dict[str, ShardColumn]:
    root = Path(cfg.store)
    info_path = root / "store.json"
    rank, world = distributed.rank(), distributed.world_size()
    info = {
        "format": "saescope-store-1",
        **{k: getattr(cfg, k) for k in KEYS_THAT_MUST_MATCH},
        "model_name": model_name,
        "sites": [s.name for s in sites],
        "tokens": cfg.tokens,
        "complete": False,
        "ranks": world,
        "dataset_fingerprint": dataset_fingerprint(cfg.dataset),
    }
    if info_path.exists():  # every rank checks, so a refusal is the same error on all of them
        old = read_store_info(info_path)
        if old.get("dataset_fingerprint", info["dataset_fingerprint"]) != info["dataset_fingerprint"]:
            raise SaescopeError(
                f"--dataset {cfg.dataset} changed since store {root} was harvested from it (then "
                f"{old['dataset_fingerprint']}, now {info['dataset_fingerprint']}), so the token index would "
                f"point at other text: restore the dataset or harvest into another --out"
            )
        changed = [k for k in (*KEYS_THAT_MUST_MATCH, "sites") if old.get(k) != info[k]]
        if changed:
            raise SaescopeError(
                f"store {root} was harvested with other settings ({', '.join(changed)}): "
                f"choose another --out or delete the folder"
            )
        if old.get("ranks", 1) != world:
            raise SaescopeError(
                f"store {root} was harvested by {old.get('ranks', 1)} process(es), this run has {world}: "
                f"resume with --nproc {old.get('ranks', 1)} or choose another --out"
            )
        for name in ["tokens", *info["sites"]]:  # a damaged manifest stops the rerun before anything is written
            if (root / name / _rank_names(rank, world)[1]).exists():
                ShardColumn.open(root / name, *_rank_names(rank, world))
    distributed.barrier()  # nobody reads the old store.json after this
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(info_path, info)
    distributed.barrier()
    prefix, manifest_name = _rank_names(rank, world)
    columns: dict[str, ShardColumn] = {}
    for name, width, meta in [
        ("tokens", TOKEN_FIELDS, {"fields": ["token_id", "doc_id", "position"]}),
        *[
            (s.name, widths[s.name], {"model": model_name, "site": s.kind, "layer": s.layer, "d_in": widths[s.name]})
            for s in sites
        ],
    ]:
        folder = root / name
        folder.mkdir(exist_ok=True)
        dtype = "int32" if name == "tokens" else cfg.dtype
        columns[name] = (
            ShardColumn.open(folder, prefix, manifest_name)
            if (folder / manifest_name).exists()
            else ShardColumn(folder, width, dtype, meta, [], prefix, manifest_name)
        )
    return columns


def harvest(cfg: HarvestConfig, model=None, tokenizer=None) -> Path:
    """Fill (or resume) the store at `cfg.store`; returns its path. Under torchrun, every rank
    calls this and harvests its share of the batches into the same store."""
    if is_url(cfg.store):
        if file_url_path(cfg.store) is None:
            raise SaescopeError(
                f"harvest writes to a filesystem path, not {cfg.store}: harvest to local or shared "
                f"storage (NFS, Lustre), then copy the folder to object storage"
            )
        cfg = replace(cfg, store=str(file_url_path(cfg.store)))
    validate(cfg)
    rank, world = distributed.rank(), distributed.world_size()
    docs = iter_documents(cfg.dataset, cfg.text_field)  # a bad dataset fails before the model loads
    if model is None:
        model, tokenizer = load_model(cfg.model, cfg.dtype, distributed.device_for(cfg.device))
    sites = parse_sites(model, cfg.sites, cfg.layers)
    widths = {s.name: site_width(model, s.kind) for s in sites}
    was_complete = _was_complete(cfg)
    columns = _open_or_create(cfg, getattr(model, "name_or_path", cfg.model), sites, widths)

    intact = _intact_shards(columns)  # each rank checks its own shards
    if (
        world == 1
        and intact is None
        and len({len(c.shards) for c in columns.values()}) == 1
        and columns["tokens"].rows >= cfg.tokens
    ):
        return _finish(cfg, columns, model, tokenizer, sites)
    if world > 1 and was_complete and intact is None:  # a rank cannot tell alone that its share is complete
        return _finish(cfg, columns, model, tokenizer, sites)
    # Resume from the last shard complete in every column; only full shards count, so a finished
    # short tail is rewritten if more tokens are asked for now. Shards from a damaged one on are
    # harvested again.
    n_full = min(sum(1 for s in c.shards if s["rows"] == cfg.shard_rows) for c in columns.values())
    n_full = n_full if intact is None else min(n_full, intact)
    for c in columns.values():
        c.truncate(n_full)
    done = n_full * cfg.shard_rows  # this rank's rows already stored
    if done >= cfg.tokens:
        return _finish(cfg, columns, model, tokenizer, sites)
    remaining = max(cfg.tokens - done * world, 0)
    need = estimate_bytes(list(widths.values()), remaining, cfg.dtype)
    free = shutil.disk_usage(cfg.store).free
    if rank == 0:
        print(
            f"saescope: harvesting {len(sites)} sites x {remaining:,} tokens "
            f"-> {need / 2**30:.2f} GiB in {cfg.store} ({free / 2**30:.1f} GiB free)"
            + (f" with {world} processes" if world > 1 else "")
        )
    if need > free:
        raise SaescopeError(
            f"not enough disk for the harvest ({need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free "
            f"in {cfg.store}): lower --tokens, use --dtype bfloat16, or choose another --out"
        )

    writer = _ShardWriter(columns, cfg.shard_rows, n_full)
    device = next(model.parameters()).device
    seen = 0  # train tokens of the whole stream so far, all ranks' batches included
    mine = 0  # train tokens of this rank's batches so far, including the ones skipped on resume
    bar = tqdm(
        total=cfg.tokens // world,
        initial=done,
        unit="tok",
        unit_scale=True,
        desc="harvest",
        dynamic_ncols=True,
        disable=rank != 0,
    )
    try:
        batches = pack_documents(docs, tokenizer, cfg.context_len, cfg.forward_batch, max_tokens=cfg.tokens)
        for k, batch in enumerate(batches):
            n = int(batch.train_mask.sum())
            take = min(n, cfg.tokens - seen)  # the budget cuts the stream's last batch
            seen += n
            if k % world == rank:
                if mine + take > done:  # else wholly harvested before the interruption: no forward needed
                    lo = max(done - mine, 0)
                    plan = writer.begin(take - lo)
                    _forward_into(
                        model,
                        batch,
                        sites,
                        device,
                        cfg.dtype,
                        lambda name, rows, lo=lo, take=take, plan=plan: writer.put(name, rows[lo:take], plan),
                    )
                    bar.update(take - lo)
                mine += take
            if seen >= cfg.tokens:
                break
        writer.close()
    finally:
        bar.close()
        writer.shutdown()
    if seen < cfg.tokens and rank == 0:
        print(f"saescope: the dataset ran out after {seen:,} tokens (asked for {cfg.tokens:,})")
    return _finish(cfg, columns, model, tokenizer, sites)


def _intact_shards(columns: dict[str, ShardColumn]) -> int | None:
    """None when every listed shard file exists with its manifest's sha256; else the number of
    shards before the first damaged one in any column (those are kept, the rest rewritten)."""
    damaged = {name: c.first_damaged() for name, c in columns.items()}
    damaged = {name: d for name, d in damaged.items() if d is not None}
    if not damaged:
        return None
    name, (index, what) = min(damaged.items(), key=lambda kv: kv[1][0])
    print(f"saescope: shard {index} of {name} is {what}: harvesting again from shard {index}")
    return index


def read_store_info(path: Path) -> dict:
    """An existing store.json, which must be a JSON object to be resumed."""
    info = read_json(path)
    if not isinstance(info, dict):
        raise SaescopeError(f"{path} is damaged (not a JSON object): choose another --out or delete the folder")
    return info


def _was_complete(cfg: HarvestConfig) -> bool:
    """Whether a finished harvest of at least this many tokens is already in the store."""
    path = Path(cfg.store) / "store.json"
    if not path.exists():
        return False
    old = read_store_info(path)
    return bool(old.get("complete")) and old.get("tokens", 0) >= cfg.tokens


def _forward_into(model, batch, sites: list[Site], device, dtype: str, put: Callable[[str, np.ndarray], None]) -> None:
    """Run one batch; every site's kept rows go to `put` as soon as its hook fires."""
    mask = batch.train_mask.to(device)
    run_to_sites(
        model,
        batch.input_ids.to(device),
        batch.attention_mask.to(device),
        sites,
        lambda site, x: put(site.name, _to_numpy(x[mask], dtype)),
    )
    m = batch.train_mask
    put("tokens", torch.stack([batch.input_ids[m], batch.doc_ids[m], batch.positions[m]], 1).to(torch.int32).numpy())


def _finish(cfg: HarvestConfig, columns: dict[str, ShardColumn], model, tokenizer, sites: list[Site]) -> Path:
    world = distributed.world_size()
    if world > 1:
        distributed.barrier()  # every rank's shards and manifest are final
        if distributed.rank() == 0:
            columns = {name: _merge_ranks(col, world) for name, col in columns.items()}
    if distributed.rank() == 0:
        if not (Path(cfg.store) / SENSITIVITY_FILE).exists():
            print(f"saescope: measuring each site's loss sensitivity on {SENSITIVITY_TOKENS:,} tokens")
            write_sensitivity(Path(cfg.store), model, tokenizer, sites, cfg.dataset, cfg.text_field, cfg.context_len)
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
