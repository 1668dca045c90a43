"""Harvest on 2 CPU processes: the same rows as one process, one merged store, per-rank resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dist_helpers import cli

from saescope.activations.store import ActivationStore


def harvest_args(model_dir, out) -> list[str]:
    return [
        "harvest",
        "--model",
        str(model_dir),
        "--sites",
        "res,att",
        "--layers",
        "0,2",
        "--tokens",
        "5000",
        "--context-len",
        "64",
        "--forward-batch",
        "2",
        "--shard-rows",
        "512",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]


def rows_by_token(store: ActivationStore) -> dict[str, dict[tuple[int, int], bytes]]:
    """Every site's rows keyed by (document, position), which is unique within a harvest."""
    tokens = np.concatenate([store.read_tokens(i) for i in range(store.n_shards)])
    keys = [(int(d), int(p)) for _, d, p in tokens]
    assert len(set(keys)) == len(keys)
    out = {"tokens": dict(zip(keys, (row.tobytes() for row in tokens)))}
    for site in store.sites:
        acts = np.concatenate([store.column(site).read(i) for i in range(store.n_shards)])
        out[site] = dict(zip(keys, (row.tobytes() for row in acts)))
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("harvests")
    one = cli(*harvest_args(tiny_model_dir, root / "one"), env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli(*harvest_args(tiny_model_dir, root / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    return root / "one", root / "two"


def test_two_processes_store_the_same_rows_as_one(stores):
    one, two = ActivationStore(stores[0]), ActivationStore(stores[1])
    assert two.info["complete"] and two.info["ranks"] == 2 and two.info["rows"] == 5000 == one.info["rows"]
    assert two.sites == one.sites
    two.verify()  # every merged manifest entry names a rank's shard with its sha256
    a, b = rows_by_token(one), rows_by_token(two)
    for column in a:
        assert a[column] == b[column], column  # same (document, position) -> identical bytes
    files = {p.name for p in (stores[1] / "res.0").iterdir()}
    assert {"manifest.json", "manifest.r0of2.json", "manifest.r1of2.json"} <= files
    assert {n.split("_")[1] for n in files if n.endswith(".bin")} == {"r0of2", "r1of2"}


def test_a_rank_resumes_from_its_own_last_shard(stores, tiny_model_dir, tmp_path):
    """Rank 1 killed mid-harvest (between two sites' shards): the rerun redoes only its tail."""
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(stores[1], cut)
    info = json.loads((cut / "store.json").read_text())
    (cut / "store.json").write_text(json.dumps({**info, "complete": False}))
    for name, keep in [("tokens", 2), ("res.0", 2), ("att.0", 1), ("res.2", 3), ("att.2", 2)]:
        path = cut / name / "manifest.r1of2.json"
        manifest = json.loads(path.read_text())
        for shard in manifest["shards"][keep:]:
            (cut / name / shard["file"]).unlink()
        manifest["shards"] = manifest["shards"][:keep]
        path.write_text(json.dumps(manifest))
    # Rank 0's full shards stay as they are; like a one-process resume, a short tail is rewritten.
    full = {
        s["file"]
        for name in ["tokens", "res.0", "att.0", "res.2", "att.2"]
        for s in json.loads((cut / name / "manifest.r0of2.json").read_text())["shards"]
        if s["rows"] == 512
    }
    rank0_files = {p: p.stat().st_mtime_ns for p in cut.rglob("shard_r0of2_*.bin") if p.name in full}
    result = cli(*harvest_args(tiny_model_dir, cut), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert rank0_files and all(p.stat().st_mtime_ns == t for p, t in rank0_files.items())
    for name in ["tokens", "res.0", "att.0", "res.2", "att.2"]:
        for f in ["manifest.json", "manifest.r1of2.json"]:
            assert json.loads((cut / name / f).read_text()) == json.loads((stores[1] / name / f).read_text())
        for shard in json.loads((cut / name / "manifest.json").read_text())["shards"]:
            assert (cut / name / shard["file"]).read_bytes() == (stores[1] / name / shard["file"]).read_bytes()
    refused = cli(*harvest_args(tiny_model_dir, cut))  # one process cannot continue a 2-process store
    assert refused.returncode == 2 and "resume with --nproc 2" in refused.stderr


def test_a_complete_store_repairs_each_ranks_damaged_shards(stores, tiny_model_dir, tmp_path):
    """A shard of rank 1 deleted and one of rank 0 flipped: the rerun rewrites both, byte-identical."""
    import shutil

    fixed = shutil.copytree(stores[1], tmp_path / "fixed")
    (fixed / "res.0" / "shard_r1of2_00001.bin").unlink()
    flipped = fixed / "att.2" / "shard_r0of2_00000.bin"
    flipped.write_bytes(bytes([flipped.read_bytes()[0] ^ 0xFF]) + flipped.read_bytes()[1:])
    result = cli(*harvest_args(tiny_model_dir, fixed), "--nproc", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "harvesting again from shard 1" in result.stdout and "harvesting again from shard 0" in result.stdout
    original = {p.relative_to(stores[1]): p.read_bytes() for p in stores[1].rglob("*") if p.suffix in (".bin", ".json")}
    repaired = {p.relative_to(fixed): p.read_bytes() for p in fixed.rglob("*") if p.suffix in (".bin", ".json")}
    assert repaired.keys() == original.keys()
    assert [k for k in original if k.name != "store.json" and repaired[k] != original[k]] == []
