"""Shuffled, aligned, resumable batches from a store."""

from __future__ import annotations

import pytest
import torch
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer) -> ActivationStore:
    cfg = HarvestConfig(
        sites="res,att",
        layers="0,2",
        tokens=5000,
        context_len=64,
        forward_batch=4,
        dtype="bfloat16",
        shard_rows=1000,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return ActivationStore(harvest(cfg, tiny_model("gemma3_text"), tiny_tokenizer))


def all_rows(store: ActivationStore, site: str) -> torch.Tensor:
    return torch.cat([store.read(site, i).float() for i in range(store.n_shards)])


def test_rows_are_aligned_across_sites_and_cover_the_split_once(store):
    loader = ShuffledLoader(
        store, ["res.0", "att.2"], batch_size=100, buffer_rows=700, chunk_rows=64, with_tokens=True, split="all"
    )
    res, att = all_rows(store, "res.0"), all_rows(store, "att.2")
    tokens = torch.cat([torch.from_numpy(store.read_tokens(i).copy()) for i in range(store.n_shards)])
    row_of = {(int(d), int(p)): i for i, (_, d, p) in enumerate(tokens)}  # (document, position) is unique
    seen = []
    for batch in loader:
        assert batch.acts["res.0"].dtype == torch.float32 and batch.acts["att.2"].shape == (100, 96)
        idx = torch.tensor([row_of[(int(d), int(p))] for _, d, p in batch.tokens])
        assert torch.equal(batch.acts["res.0"], res[idx]) and torch.equal(batch.acts["att.2"], att[idx])
        seen += idx.tolist()
    assert len(seen) == len(set(seen)) and len(seen) >= 5000 - 8 * 100  # each buffer drops < one batch


def test_shuffle_is_seeded_and_mixes_shards(store):
    first = [
        b.tokens for b in ShuffledLoader(store, ["res.0"], batch_size=256, seed=1, with_tokens=True, buffer_rows=2000)
    ]
    again = [
        b.tokens for b in ShuffledLoader(store, ["res.0"], batch_size=256, seed=1, with_tokens=True, buffer_rows=2000)
    ]
    other = [
        b.tokens for b in ShuffledLoader(store, ["res.0"], batch_size=256, seed=2, with_tokens=True, buffer_rows=2000)
    ]
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.equal(first[0], other[0])
    docs = first[0][:, 1]
    assert docs.unique().numel() >= 10  # one batch draws from nearly all 12 documents of the store


def test_resume_from_step_gives_the_same_batches(store):
    loader = ShuffledLoader(store, ["res.0", "res.2"], batch_size=300, buffer_rows=900, seed=3)
    full = list(loader.iterate(epochs=3))
    tail = list(loader.iterate(start_step=7, epochs=3))
    assert [b.step for b in tail] == [b.step for b in full[7:]]
    for a, b in zip(full[7:], tail):
        assert all(torch.equal(a.acts[k], b.acts[k]) for k in a.acts)
    assert len(list(loader.iterate(max_steps=5, epochs=None))) == 5


def test_heldout_split_is_disjoint_by_shard(store):
    train = ShuffledLoader(store, ["res.0"], batch_size=100, split="train", with_tokens=True, eval_shards=1)
    held = ShuffledLoader(
        store, ["res.0"], batch_size=100, split="eval", with_tokens=True, eval_shards=1, drop_last=False
    )
    assert list(held.shards) == [store.n_shards - 1] and store.n_shards - 1 not in train.shards
    assert sum(len(b.tokens) for b in held) == store.shard_rows(store.n_shards - 1)


def test_loader_errors(store):
    with pytest.raises(SaescopeError, match="site 'mlp.0' is not in store"):
        ShuffledLoader(store, ["mlp.0"])
    with pytest.raises(SaescopeError, match="batch size 999999 exceeds"):
        ShuffledLoader(store, ["res.0"], batch_size=999999)
