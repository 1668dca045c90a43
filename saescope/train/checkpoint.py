"""Training checkpoints on disk: where each SAE group's file lies, written atomically, read back
with a one-line error when it cannot be.

What a checkpoint holds (weights, optimiser state, step, normalising constants) is the trainer's
business; this module only knows files. Under torchrun with several SAE groups each group writes
its own `checkpoint.g<i>of<n>.pt`, so a resume must use the same grouping.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from saescope.distributed import Layout
from saescope.errors import SaescopeError


def group_file(out: Path, layout: Layout, stem: str, suffix: str) -> Path:
    """OUT/train/STEM.SUFFIX, or STEM.g<i>of<n>.SUFFIX for one of several SAE groups."""
    g, n = layout.group_index, layout.sae_groups
    return out / "train" / (f"{stem}.{suffix}" if n == 1 else f"{stem}.g{g}of{n}.{suffix}")


def refuse_other_layouts(out: Path, layout: Layout) -> None:
    """Checkpoints of another SAE grouping hold other SAEs per file: resuming would silently
    start some SAEs over, so say so instead."""
    n = layout.sae_groups
    ours = {"checkpoint.pt"} if n == 1 else {f"checkpoint.g{g}of{n}.pt" for g in range(n)}
    others = sorted(p.name for p in (out / "train").glob("checkpoint*.pt") if p.name not in ours)
    if others:
        raise SaescopeError(
            f"{out / 'train'} holds checkpoints of a run split into other SAE groups "
            f"({others[0]}): restart with the same --nproc/--parallel/--sae-groups, "
            f"or delete them to start over"
        )


def save(path: Path, state: dict) -> None:
    """Written aside and renamed, so a run killed while saving still has its previous checkpoint.
    A write that fails (torch.save reports a full disk as a RuntimeError, not an OSError) is one
    line; the half-written file goes and the previous checkpoint stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise SaescopeError(
            f"could not write checkpoint {path} ({free / 2**20:.0f} MiB free on its disk; {str(e).splitlines()[0]}): "
            "free disk space or choose another --out, then run the same command again: it resumes from "
            + ("the previous checkpoint" if path.exists() else "the start")
        ) from e


def load(path: Path, device: torch.device, keys: set[str]) -> dict | None:
    """The checkpoint at `path` (None if there is none), refused unless it holds exactly the SAEs `keys`."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise SaescopeError(f"checkpoint {path} is unreadable ({type(e).__name__}): delete it to start over") from e
    if set(state["saes"]) != keys:
        raise SaescopeError(
            f"checkpoint {path} holds other SAEs than this config asks for: use another --out or delete {path.parent}"
        )
    return state
