"""How ranks are arranged and how batches and SAEs are split, without starting processes."""

from __future__ import annotations

import pytest
import torch
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.loader import ShuffledLoader
from saescope.cli import _without_nproc
from saescope.distributed import Layout, partition
from saescope.errors import SaescopeError


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer):
    cfg = HarvestConfig(
        sites="res",
        layers="0,1",
        tokens=3000,
        context_len=64,
        forward_batch=4,
        dtype="bfloat16",
        shard_rows=700,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return harvest(cfg, tiny_model("llama"), tiny_tokenizer)


def test_partition_is_contiguous_balanced_and_leaves_no_group_empty():
    assert partition([1.0] * 8, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert partition([4.0, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]
    assert partition([1.0, 1, 1, 100], 4) == [[0], [1], [2], [3]]
    assert partition([1.0, 1, 1, 1, 1, 1, 100], 3) == [[0, 1, 2, 3, 4], [5], [6]]
    runs = partition([float(w) for w in [4, 16, 4, 16, 4, 16, 4, 16]], 3)
    assert sum(runs, []) == list(range(8)) and all(runs)
    assert max(sum([4, 16, 4, 16, 4, 16, 4, 16][i] for i in r) for r in runs) == 36  # the best contiguous cut


def test_one_process_layout_and_bad_options():
    layout = Layout.create("auto", 0, n_saes=5)
    assert (layout.world, layout.sae_groups, layout.data_ways, layout.group_leader) == (1, 1, 1, True)
    assert Layout.create("both", 0, 1).sae_groups == 1
    with pytest.raises(SaescopeError, match="unknown --parallel 'model'"):
        Layout.create("model", 0, 5)


@pytest.mark.parametrize("parts", [2, 3])
def test_parts_of_a_batch_are_the_global_batch_split(store, parts):
    whole = ShuffledLoader(store, batch_size=100, buffer_rows=1000, chunk_rows=64, with_tokens=True)
    split = [
        ShuffledLoader(store, batch_size=100, buffer_rows=1000, chunk_rows=64, with_tokens=True, part=(i, parts))
        for i in range(parts)
    ]
    for start in (0, 7):  # from the beginning, and resuming in the middle of a buffer
        full = list(whole.iterate(start, 25, epochs=None))
        pieces = [list(loader.iterate(start, 25, epochs=None)) for loader in split]
        assert len(full) == 25 - start and all(len(p) == len(full) for p in pieces)
        for b, batch in enumerate(full):
            for site, acts in batch.acts.items():
                assert torch.equal(torch.cat([p[b].acts[site] for p in pieces]), acts)
            assert torch.equal(torch.cat([p[b].tokens for p in pieces]), batch.tokens)
            assert [len(p[b].tokens) for p in pieces] == [
                100 * (i + 1) // parts - 100 * i // parts for i in range(parts)
            ]
    with pytest.raises(SaescopeError, match="cannot split batches of 100 rows into part 2 of 2"):
        ShuffledLoader(store, batch_size=100, part=(2, 2))


def test_nproc_is_removed_from_the_workers_command_line():
    assert _without_nproc(["train", "--nproc", "4", "--out", "x"]) == ["train", "--out", "x"]
    assert _without_nproc(["harvest", "--nproc=2", "--tokens", "5"]) == ["harvest", "--tokens", "5"]
