"""Read and write SAEs in the formats other tools use: find which format a folder holds, and
dispatch to that format's reader or writer.

One module per format family (`gemma_scope.py` for Gemma Scope 1 and 2 and saescope's own
folders, `saelens.py`, `sparsify.py`); each reader returns a `LoadedSAE` (`loaded.py`) and each
writer takes its module and metadata. Arrays are copied, never recomputed, whenever the target
format can say what the source said; where it cannot (a pre-encoder bias in a format without
one), the format's module says how the SAE is folded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from saescope.errors import SaescopeError
from saescope.release.gemma_scope import (
    read_gemma_scope,
    read_gemma_scope_2,
    read_saescope,
    write_gemma_scope,
    write_gemma_scope_2,
)
from saescope.release.loaded import LoadedSAE
from saescope.release.saelens import read_saelens, write_saelens
from saescope.release.sparsify import read_sparsify, write_sparsify
from saescope.saes.base import SAE
from saescope.saes.skip_transcoder import SkipTranscoder

FORMATS = ("saescope", "gemma-scope", "gemma-scope-2", "saelens", "sparsify")
# Files that mark a folder as holding one SAE, by format.
MARKERS = {
    "params.npz": "gemma-scope",
    "params.safetensors": "gemma-scope-2",
    "sae_weights.safetensors": "saelens",
    "sae.safetensors": "sparsify-or-saescope",
}
READERS: dict[str, Callable[[Path], LoadedSAE]] = {
    "saescope": read_saescope,
    "gemma-scope": read_gemma_scope,
    "gemma-scope-2": read_gemma_scope_2,
    "saelens": read_saelens,
    "sparsify": read_sparsify,
}
WRITERS: dict[str, Callable[[SAE | SkipTranscoder, dict, dict, Path], Path]] = {
    "gemma-scope": write_gemma_scope,
    "gemma-scope-2": write_gemma_scope_2,
    "saelens": write_saelens,
    "sparsify": write_sparsify,
}


def detect_format(path: Path) -> str:
    """The format of one SAE folder (or file), from the files it holds."""
    if path.is_file():
        if path.suffix == ".npz":
            return "gemma-scope"
        if path.name in MARKERS or path.name in ("cfg.json", "config.json"):
            return detect_format(path.parent)
        raise SaescopeError(
            f"{path} is not an SAE file (expected params.npz, params.safetensors, "
            f"sae_weights.safetensors or sae.safetensors); pass its folder or --format"
        )
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    for marker, fmt in MARKERS.items():
        if marker not in names:
            continue
        if fmt != "sparsify-or-saescope":
            return fmt
        if "cfg.json" in names:
            return "sparsify"
        if "config.json" in names:
            return "saescope"
        raise SaescopeError(f"{path} has sae.safetensors but neither cfg.json (sparsify) nor config.json (saescope)")
    found = find_saes(path)
    if found:
        listing = ", ".join(str(p.relative_to(path)) for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise SaescopeError(f"{path} holds {len(found)} SAEs, not one: pass one of its folders ({listing})")
    raise SaescopeError(
        f"{path} holds no SAE: no params.npz, params.safetensors, sae_weights.safetensors "
        f"or sae.safetensors in it or below it"
    )


def find_saes(root: Path) -> list[Path]:
    """Every SAE folder under `root`: a run's `saes/*`, or any folder holding an SAE file."""
    if (root / "saes").is_dir():
        return sorted(p for p in (root / "saes").iterdir() if (p / "sae.safetensors").exists())
    found = {p.parent for marker in MARKERS for p in root.rglob(marker)} if root.is_dir() else set()
    return sorted(found)


def read(path: Path | str, format: str | None = None) -> LoadedSAE:
    """One SAE from a local path in any supported format (detected unless named)."""
    path = Path(path)
    if not path.exists():
        raise SaescopeError(f"{path} does not exist: pass an SAE folder or file, or a Hugging Face id")
    fmt = format or detect_format(path)
    if fmt not in READERS:
        raise SaescopeError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    loaded = READERS[fmt](path)
    _refuse_nonfinite(loaded.sae, path)
    return loaded


def _refuse_nonfinite(sae: torch.nn.Module, path: Path) -> None:
    """Weights holding NaN or inf would make every metric and browser page NaN without a word."""
    for name, tensor in sae.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SaescopeError(f"SAE {path} has NaN or inf in {name}: retrain it (or restore the file) before loading")
