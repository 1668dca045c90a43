"""Shards streamed to disk batch by batch: the same bytes and hash however they arrive."""

from __future__ import annotations

import errno
import hashlib

import numpy as np
import pytest

from saescope.activations import store
from saescope.activations.store import ALIGN, ShardFile, new_staging
from saescope.errors import SaescopeError


def chunks(rows: np.ndarray, seed: int) -> list[np.ndarray]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, len(rows)), 6, replace=False))
    return np.split(rows, cuts)


@pytest.mark.parametrize("staging_pages", [1, 3, 1024])
def test_streamed_shard_has_the_bytes_and_hash_of_one_write(tmp_path, staging_pages):
    rows = np.random.default_rng(0).integers(0, 2**16, (1001, 37), dtype=np.uint16)  # 74,074 bytes: not block-aligned
    shard = ShardFile(tmp_path / "direct.bin", new_staging(staging_pages * ALIGN))
    assert shard.direct, "this filesystem takes O_DIRECT; the test is about that path"
    for part in chunks(rows, staging_pages):
        shard.append(part)
    sha = shard.finish()
    assert (tmp_path / "direct.bin").read_bytes() == rows.tobytes()
    assert sha == hashlib.sha256(rows.tobytes()).hexdigest() and shard.rows == 1001
    assert not list(tmp_path.glob("*.tmp"))


def test_filesystem_refusing_direct_io_gets_buffered_writes(tmp_path, monkeypatch):
    real_open = store.os.open

    def no_direct(path, flags, *args):
        if flags & store.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(store.os, "open", no_direct)
    rows = np.arange(5000, dtype=np.float32).reshape(1000, 5)
    shard = ShardFile(tmp_path / "s.bin", new_staging())
    for part in chunks(rows, 1):
        shard.append(part)
    assert not shard.direct
    assert shard.finish() == hashlib.sha256(rows.tobytes()).hexdigest()
    assert (tmp_path / "s.bin").read_bytes() == rows.tobytes()


def test_direct_io_refused_at_the_first_write_switches_to_buffered(tmp_path, monkeypatch):
    real_write, refused = store.os.write, []

    def picky(fd, data):
        if not refused:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(store.os, "write", picky)
    rows = np.random.default_rng(2).integers(0, 2**16, (3000, 11), dtype=np.uint16)
    shard = ShardFile(tmp_path / "s.bin", new_staging(2 * ALIGN))
    for part in chunks(rows, 2):
        shard.append(part)
    assert refused and not shard.direct
    assert shard.finish() == hashlib.sha256(rows.tobytes()).hexdigest()
    assert (tmp_path / "s.bin").read_bytes() == rows.tobytes()


def test_a_shard_that_cannot_be_created_is_a_one_line_error(tmp_path, monkeypatch):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "open", full)
    column = store.ShardColumn(tmp_path, 4, "float32")
    with pytest.raises(
        SaescopeError, match=r"could not write .*shard_00003\.bin \(No space left on device\): free disk"
    ):
        column.open_shard(3, new_staging())


def test_a_runs_store_is_the_one_its_config_records(tmp_path):
    """`run --store`, `compare` and `train` keep the store elsewhere and record it in their config;
    every job that reads a run's rows after it (evaluate, browse, export) must find that store."""
    run = tmp_path / "run"
    run.mkdir()
    assert store.run_store_path(run) == str(run / "activations")
    assert store.run_store_path(run, "elsewhere") == "elsewhere"
    (run / "train").mkdir()
    (run / "train" / "config.json").write_text('{"store": "trained-on"}')
    assert store.run_store_path(run) == "trained-on"
    (run / "config.json").write_text('{"store": "compared-on"}')
    assert store.run_store_path(run) == "compared-on"
    (run / "activations").mkdir()
    assert store.run_store_path(run) == str(run / "activations")
    assert store.run_store_path(run, "elsewhere") == "elsewhere"
