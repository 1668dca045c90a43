"""Shuffled, aligned batches from an activation store, without loading the store into RAM.

Shards are cut into chunks of `chunk_rows` consecutive rows. Each epoch visits the chunks in a
seeded random order; `buffer_rows` worth of chunks are read (memory-mapped) into a buffer, whose
rows are shuffled again and cut into batches. Every site is read at the same row indices, so one
batch holds the same tokens for all sites: that is what lets one read feed many SAEs.

The order depends only on (seed, epoch), so batch number k can be reached again without reading
the batches before it: training resumes on exactly the batches it would have seen.

Data-parallel training gives each rank a `part=(i, n)`: the loader then computes the same global
order as everyone else but yields only rows [B*i//n, B*(i+1)//n) of each global batch, and reads
from the shards only the rows that its slices of the buffer's batches need.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from saescope.activations.store import ActivationStore, as_torch
from saescope.errors import SaescopeError


@dataclass
class Batch:
    step: int
    acts: dict[str, torch.Tensor]  # site name -> [batch, d_in]
    tokens: torch.Tensor | None = None  # [batch, 3] int32: token_id, doc_id, position


class ShuffledLoader:
    def __init__(
        self,
        store: ActivationStore | str,
        sites: list[str] | None = None,
        batch_size: int = 4096,
        buffer_rows: int = 65536,
        chunk_rows: int = 1024,
        seed: int = 0,
        split: str = "train",
        eval_shards: int = 1,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        with_tokens: bool = False,
        verify: bool = True,
        drop_last: bool = True,
        part: tuple[int, int] = (0, 1),
    ):
        self.store = store if isinstance(store, ActivationStore) else ActivationStore(store)
        self.sites = sites or self.store.sites
        for s in self.sites:
            self.store.column(s)
        n = self.store.n_shards
        if n == 0:
            raise SaescopeError(f"store {self.store.path} has no complete shard yet: finish the harvest first")
        if split not in ("train", "eval", "all"):
            raise SaescopeError(f"unknown split '{split}': use train, eval or all")
        held = min(eval_shards, n - 1) if split != "all" else 0
        self.shards = {"train": range(0, n - held), "eval": range(n - held, n), "all": range(n)}[split]
        if len(self.shards) == 0:
            raise SaescopeError(
                f"store {self.store.path} has {n} shard(s), too few for a held-out split: "
                f"harvest more tokens or lower --shard-rows"
            )
        self.chunks = [
            (s, lo, min(lo + chunk_rows, self.store.shard_rows(s)))
            for s in self.shards
            for lo in range(0, self.store.shard_rows(s), chunk_rows)
        ]
        self.rows = sum(hi - lo for _, lo, hi in self.chunks)
        if not drop_last:  # evaluation: every row once, so a small split just means one short batch
            batch_size = min(batch_size, self.rows)
        if batch_size > self.rows:
            raise SaescopeError(
                f"batch size {batch_size} exceeds the {self.rows} rows of the {split} split: "
                f"lower --batch-size or harvest more tokens"
            )
        self.batch_size, self.seed, self.dtype, self.device = batch_size, seed, dtype, torch.device(device)
        self.buffer_rows = max(buffer_rows, batch_size)
        self.with_tokens, self.verify, self.drop_last = with_tokens, verify, drop_last
        if not (part[1] >= 1 and 0 <= part[0] < part[1]) or part[1] > batch_size:
            raise SaescopeError(
                f"cannot split batches of {batch_size} rows into part {part[0]} of {part[1]}: "
                f"use fewer processes or a larger --batch-size"
            )
        self.part = part

    def _groups(self, epoch: int) -> list[list[tuple[int, int, int]]]:
        """The epoch's chunks in random order, grouped into buffers of about `buffer_rows` rows."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.chunks))
        groups, current, size = [], [], 0
        for i in order:
            current.append(self.chunks[i])
            size += self.chunks[i][2] - self.chunks[i][1]
            if size >= self.buffer_rows:
                groups.append(current)
                current, size = [], 0
        if current:
            groups.append(current)
        return groups

    def batches_per_epoch(self) -> int:
        sizes = [sum(hi - lo for _, lo, hi in g) for g in self._groups(0)]
        return sum(r // self.batch_size if self.drop_last else -(-r // self.batch_size) for r in sizes)

    def _read(self, name: str, chunks: list[tuple[int, int, int]], rows: np.ndarray | None = None) -> torch.Tensor:
        """The buffer's rows of one column: all of them, or only the sorted buffer row numbers `rows`."""
        parts, start = [], 0
        for shard, lo, hi in chunks:
            if rows is None:
                pick = slice(lo, hi)
            else:  # rows of this chunk, as offsets into its shard; a memmap reads only those
                inside = rows[(rows >= start) & (rows < start + hi - lo)]
                pick = inside - start + lo
            start += hi - lo
            if name == "tokens":
                parts.append(torch.from_numpy(np.asarray(self.store.read_tokens(shard)[pick])))
                continue
            column = self.store.column(name).read(shard, verify=self.verify)  # hashed once per process
            parts.append(as_torch(np.asarray(column[pick]), self.store.dtype))
        return torch.cat(parts)

    def _share(self) -> slice:
        """This part's contiguous slice of every global batch."""
        i, n = self.part
        return slice(self.batch_size * i // n, self.batch_size * (i + 1) // n)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate()

    def iterate(self, start_step: int = 0, max_steps: int | None = None, epochs: int | None = 1) -> Iterator[Batch]:
        """Batches numbered from 0 over as many epochs as asked (None = forever), from `start_step` on."""
        step, epoch = 0, 0
        while epochs is None or epoch < epochs:
            for group in self._groups(epoch):
                rows = sum(hi - lo for _, lo, hi in group)
                n_batches = rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
                if step + n_batches <= start_step:  # resuming: skip without reading
                    step += n_batches
                    continue
                perm = torch.from_numpy(np.random.default_rng([self.seed, epoch, step]).permutation(rows))
                needed, where = None, None
                if self.part[1] > 1:  # read only the rows of this part's slices of the batches to come
                    first = max(0, start_step - step)
                    last = n_batches if max_steps is None else min(n_batches, max_steps - step)
                    share = self._share()
                    needed = (
                        torch.cat(
                            [perm[b * self.batch_size : (b + 1) * self.batch_size][share] for b in range(first, last)]
                        )
                        .sort()
                        .values
                    )
                    where = torch.empty(rows, dtype=torch.long)
                    where[needed] = torch.arange(len(needed))
                    needed = needed.numpy()
                buffers = {name: self._read(name, group, needed) for name in self.sites}
                tokens = self._read("tokens", group, needed) if self.with_tokens else None
                for b in range(n_batches):
                    if step >= start_step:
                        idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
                        if where is not None:
                            idx = where[idx[share]]
                        acts = {
                            name: buf[idx].to(self.device, self.dtype, non_blocking=True)
                            for name, buf in buffers.items()
                        }
                        yield Batch(step, acts, tokens[idx] if tokens is not None else None)
                    step += 1
                    if max_steps is not None and step >= max_steps:
                        return
            epoch += 1
