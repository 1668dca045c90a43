"""Harvest into a store, resume after a kill, and the errors a user can run into."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tinymodels import tiny_model

from saescope.activations import store as store_module
from saescope.activations.documents import load_documents
from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError
from saescope.models.sites import Site, run_to_sites


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saescope", *args], capture_output=True, text=True, timeout=300, **kw)


def small_cfg(store: Path, **kw) -> HarvestConfig:
    base = dict(
        sites="res,mlp,att,mlp_in",
        layers="all",
        tokens=3000,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=512,
        store=str(store),
        device="cpu",
    )
    return HarvestConfig(**{**base, **kw})


def test_store_layout_bytes_and_token_trace(tmp_path, tiny_tokenizer):
    model = tiny_model("gemma3_text")
    path = harvest(small_cfg(tmp_path / "s", dtype="bfloat16"), model, tiny_tokenizer)
    store = ActivationStore(path)
    assert store.sites == [
        s.name for s in sorted(Site(layer, k) for layer in range(3) for k in ("res", "mlp", "att", "mlp_in"))
    ]
    assert store.tokens.rows == 3000 and all(c.rows == 3000 for c in store.columns.values())
    for name, col in store.columns.items():
        manifest = json.loads((path / name / "manifest.json").read_text())
        assert {"model", "site", "layer", "dtype", "d_in", "rows", "shards"} <= manifest.keys()
        size = sum((path / name / s["file"]).stat().st_size for s in manifest["shards"])
        assert size == 3000 * col.width * 2  # bf16: two bytes per activation, nothing else
        assert {p.name for p in (path / name).iterdir()} == {"manifest.json", *[s["file"] for s in manifest["shards"]]}
    # Every stored row traces back to its document, and its activation is what a forward gives there.
    docs = load_documents("wiki", limit=200)
    tokens = store.read_tokens(0)
    token_id, doc_id, pos = (int(v) for v in tokens[37])
    ids = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(docs[doc_id].text, add_special_tokens=False).input_ids
    assert ids[pos] == token_id
    acts = {}
    ctx = torch.tensor([ids[: pos + 1]])
    with torch.inference_mode():
        model.to(torch.bfloat16)
        run_to_sites(model, ctx, torch.ones_like(ctx), [Site(1, "res")], lambda s, x: acts.__setitem__(s, x))
    # Row 37 is in the first packed row, which starts with document 0, so its context is exactly ids[:pos+1].
    assert doc_id == 0 and torch.allclose(
        store.read("res.1", 0)[37].float(), acts[Site(1, "res")][0, -1].float(), atol=0.05, rtol=0.02
    )


def test_no_bos_eos_or_padding_rows(tmp_path, tiny_tokenizer):
    path = harvest(small_cfg(tmp_path / "s", sites="res", layers="0", tokens=1000), tiny_model("llama"), tiny_tokenizer)
    tokens = np.concatenate([ActivationStore(path).read_tokens(i) for i in range(2)])
    special = {tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id, tiny_tokenizer.pad_token_id}
    assert not set(tokens[:, 0].tolist()) & special and tokens[:, 2].min() >= 1


def test_rerun_is_a_noop_and_other_settings_are_refused(tmp_path, tiny_tokenizer):
    model = tiny_model("gpt2")
    path = harvest(small_cfg(tmp_path / "s", tokens=1024), model, tiny_tokenizer)
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*.bin")}
    harvest(small_cfg(tmp_path / "s", tokens=1024), model, tiny_tokenizer)
    assert before == {p: p.stat().st_mtime_ns for p in path.rglob("*.bin")}
    with pytest.raises(SaescopeError, match="other settings.*context_len"):
        harvest(small_cfg(tmp_path / "s", tokens=1024, context_len=32), model, tiny_tokenizer)


def test_killed_harvest_resumes_to_byte_identical_store(tmp_path, tiny_model_dir):
    args = [
        "harvest",
        "--model",
        str(tiny_model_dir),
        "--sites",
        "res,att",
        "--tokens",
        "30000",
        "--context-len",
        "128",
        "--forward-batch",
        "2",
        "--shard-rows",
        "1024",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    assert cli(*args, "--out", str(tmp_path / "whole"), env=env).returncode == 0
    victim = subprocess.Popen(
        [sys.executable, "-m", "saescope", *args, "--out", str(tmp_path / "cut")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "res.2" / "shard_00003.bin").exists() and time.time() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = len(list((tmp_path / "cut" / "res.2").glob("shard_*.bin")))
    assert 0 < done < 29, "the kill should land mid-way"
    result = cli(*args, "--out", str(tmp_path / "cut"), env=env)
    assert result.returncode == 0, result.stderr
    whole, cut = ActivationStore(tmp_path / "whole"), ActivationStore(tmp_path / "cut")
    for name in ["tokens", *whole.sites]:
        files = sorted(p.name for p in (tmp_path / "whole" / name).glob("*.bin"))
        assert files == sorted(p.name for p in (tmp_path / "cut" / name).glob("*.bin"))
        for f in files:
            assert (tmp_path / "whole" / name / f).read_bytes() == (tmp_path / "cut" / name / f).read_bytes()
    assert [c.shards for c in whole.columns.values()] == [c.shards for c in cut.columns.values()]
    assert not list((tmp_path / "cut").rglob("*.tmp"))


def test_corrupt_and_missing_shards_are_clear_errors(tmp_path, tiny_tokenizer):
    path = harvest(small_cfg(tmp_path / "s", sites="res", layers="0", tokens=1024), tiny_model("qwen2"), tiny_tokenizer)
    shard = path / "res.0" / "shard_00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = ActivationStore(path)
    store.read("res.0", 1)  # a size check alone cannot see a flipped byte ...
    with pytest.raises(SaescopeError, match="shard_00001.bin is corrupt \\(sha256 mismatch\\)"):
        store.verify()  # ... the sha256 can
    shard.write_bytes(bytes(data[:-4]))
    with pytest.raises(SaescopeError, match="corrupt .*expected"):
        store.read("res.0", 1)
    shard.unlink()
    with pytest.raises(SaescopeError, match="missing"):
        store.read("res.0", 1)
    with pytest.raises(SaescopeError, match="does not exist"):
        ActivationStore(tmp_path / "nowhere")


def test_shards_this_process_wrote_or_verified_are_not_hashed_again_until_they_change(
    tmp_path, tiny_tokenizer, monkeypatch
):
    path = harvest(small_cfg(tmp_path / "s", sites="res", layers="0", tokens=1024), tiny_model("qwen2"), tiny_tokenizer)
    hashed = []
    real = store_module.hashlib.sha256
    monkeypatch.setattr(store_module.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    store = ActivationStore(path)
    store.verify()  # the harvest hashed every shard as it wrote it
    assert hashed == []
    shard = path / "res.0" / "shard_00001.bin"
    shard.write_bytes(shard.read_bytes())  # the same bytes, written again: a new ctime
    store.verify()
    assert len(hashed) == 1
    store.verify()  # verified once, trusted while unchanged
    assert len(hashed) == 1
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(SaescopeError, match="shard_00001.bin is corrupt \\(sha256 mismatch\\)"):
        store.verify()


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = [
        (["harvest", "--dataset", str(tmp_path / "missing.txt")], "does not exist"),
        (["harvest", "--dataset", str(empty)], "empty"),
        (["harvest", "--model", str(tmp_path / "no-model")], "could not load model"),
        (["harvest", "--model", str(tiny_model_dir), "--sites", "resid"], "unknown site 'resid'"),
        (["harvest", "--model", str(tiny_model_dir), "--layers", "9"], "unknown layer 9"),
    ]
    for args, words in cases:
        r = cli(*args, "--out", str(tmp_path / "out"), "--tokens", "100", env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 2, r.stderr
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("saescope: error:") and words in err[0], r.stderr


def test_full_disk_is_a_clear_error_and_the_harvest_resumes(tmp_path, tiny_tokenizer, monkeypatch):
    """The disk fills up mid-harvest (os.write fails with ENOSPC, as the kernel does): one-line error,
    complete shards kept, no temp files, and the same command finishes the store once there is room."""
    from saescope.activations import store as store_module

    model = tiny_model("llama")
    harvest(small_cfg(tmp_path / "whole", sites="res,att", layers="0,1"), model, tiny_tokenizer)
    shard_bytes = sum(f.stat().st_size for f in (tmp_path / "whole").rglob("shard_00000.bin"))
    real_write, budget = store_module.os.write, [3 * shard_bytes]  # room for about three shards

    def filling_write(fd, data):
        budget[0] -= len(data)
        if budget[0] < 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(store_module.os, "write", filling_write)
    with pytest.raises(
        SaescopeError, match=r"could not write .*shard_\d+\.bin \(No space left on device\): free disk space"
    ):
        harvest(small_cfg(tmp_path / "cut", sites="res,att", layers="0,1"), model, tiny_tokenizer)
    monkeypatch.setattr(store_module.os, "write", real_write)
    assert not list((tmp_path / "cut").rglob("*.tmp"))
    kept = ActivationStore(tmp_path / "cut").n_shards
    assert 0 < kept < ActivationStore(tmp_path / "whole").n_shards
    harvest(small_cfg(tmp_path / "cut", sites="res,att", layers="0,1"), model, tiny_tokenizer)
    for name in ["tokens", "res.0", "res.1", "att.0", "att.1"]:
        for f in sorted((tmp_path / "whole" / name).glob("*.bin")):
            assert f.read_bytes() == (tmp_path / "cut" / name / f.name).read_bytes()
