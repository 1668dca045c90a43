"""Stores behind fsspec URLs: `memory://` through the local read cache, `file://` in place."""

from __future__ import annotations

import json

import fsspec
import pytest
import torch
from dist_helpers import train_cfg
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError
from saescope.train.trainer import Trainer


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer):
    cfg = HarvestConfig(
        sites="res,mlp",
        layers="0,1",
        tokens=6144,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=1024,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return harvest(cfg, tiny_model("gemma3_text"), tiny_tokenizer)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{k}.{n}": v for k, sae in trainer.saes.items() for n, v in sae.state_dict().items()}


def test_memory_and_file_urls_train_like_a_plain_path(store, tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCOPE_STORE_CACHE", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    fs.put(str(store), "/saescope-test/acts", recursive=True)
    try:
        plain = Trainer(train_cfg(store, tmp_path / "plain", train_tokens=256 * 6))
        plain.train()
        for url in ["memory://saescope-test/acts", f"file://{store}"]:
            remote = Trainer(train_cfg(url, tmp_path / url.split(":")[0], train_tokens=256 * 6))
            remote.train()
            assert weights(remote).keys() == weights(plain).keys()
            for name, value in weights(plain).items():
                assert torch.equal(weights(remote)[name], value), (url, name)
        cached = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("*.bin"))
        # the 4 sites' 5 training shards; the token index and the held-out shard were never read
        assert cached == sorted(
            f"{h}/{site}/shard_{i:05d}.bin"
            for h in {c.split("/")[0] for c in cached}
            for site in ["mlp.0", "mlp.1", "res.0", "res.1"]
            for i in range(5)
        )
        # A shard re-harvested under the same URL (new sha256) is fetched again, not served stale.
        manifest = json.loads(fs.cat_file("/saescope-test/acts/res.0/manifest.json"))
        shard = manifest["shards"][0]
        data = bytearray(fs.cat_file(f"/saescope-test/acts/res.0/{shard['file']}"))
        data[:4] = b"\0\0\0\0"
        fs.pipe_file(f"/saescope-test/acts/res.0/{shard['file']}", bytes(data))
        shard["sha256"] = "0" * 64
        fs.pipe_file("/saescope-test/acts/res.0/manifest.json", json.dumps(manifest).encode())
        fresh = ActivationStore("memory://saescope-test/acts")
        assert fresh.column("res.0").read(0).tobytes()[:4] == b"\0\0\0\0"
        with pytest.raises(SaescopeError, match="does not exist"):
            ActivationStore("memory://saescope-test/nothing-here")
        with pytest.raises(SaescopeError, match="harvest writes to a filesystem path"):
            harvest(HarvestConfig(store="memory://saescope-test/new", tokens=10))
    finally:
        fs.rm("/saescope-test", recursive=True)
