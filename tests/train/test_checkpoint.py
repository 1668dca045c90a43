"""Checkpoint files (saescope/train/checkpoint.py): a write that fails on a full disk."""

from __future__ import annotations

import pytest
import torch

from saescope.errors import SaescopeError
from saescope.train import checkpoint


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """torch.save's zip writer reports a full disk as a RuntimeError after writing part of the
    file: the error is one line naming the file and the fix, the half-written file goes, and the
    previous checkpoint still loads."""
    path = tmp_path / "train" / "checkpoint.pt"
    checkpoint.save(path, {"saes": {"a": {}}, "step": 4})
    real_save = torch.save

    def full_disk(state, f):
        real_save(state, f)  # part of the bytes reach the disk before the writer fails
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 335875712 vs 335875604")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(SaescopeError, match=r"could not write checkpoint .*checkpoint\.pt \(\d+ MiB free") as e:
        checkpoint.save(path, {"saes": {"a": {}}, "step": 8})
    assert "\n" not in str(e.value) and str(e.value).endswith("it resumes from the previous checkpoint")
    assert not path.with_name("checkpoint.pt.tmp").exists()
    assert checkpoint.load(path, torch.device("cpu"), {"a"})["step"] == 4

    with pytest.raises(SaescopeError, match=r"resumes from the start$"):
        checkpoint.save(tmp_path / "other" / "checkpoint.pt", {"saes": {}, "step": 1})
