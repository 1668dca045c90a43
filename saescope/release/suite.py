"""Writing many SAEs into one folder tree: the folder naming rule and the loop that `saescope
release` and `saescope export` both use, so the same SAE gets the same folder whichever wrote it.

Folder names follow each tool's conventions, so a suite can be uploaded as is: Gemma Scope 1
(`saescope release`'s layout) `<res|mlp|att|transcoders>/layer_L/width_W/average_l0_N`, with
`_affine` after a skip transcoder's name (Gemma Scope 2's word for the skip connection); Gemma
Scope 2 `<resid_post|mlp_out|attn_out|transcoder>/layer_L_width_W_l0_N`; SAELens
`<TransformerLens hook>/width_W_l0_N`; sparsify `<module path>_width_W_l0_N`; Neuronpedia
`<kind>-<layer>/width_W_l0_N`.

Two SAEs can share site, width and rounded L0 (two sparsity coefficients, or two families of one
run). The first in sorted order keeps the name; the next gets `_c<coefficient>`, and if that is
taken too or no coefficient is recorded, `_2`, `_3`, ...: names stay readable and never clash.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import chain, count
from pathlib import Path

from saescope.release import interop
from saescope.release.hooks import GEMMA_SCOPE_2_FOLDERS, hf_hook, model_type_of, tl_hook
from saescope.release.loaded import LoadedSAE
from saescope.saes.skip_transcoder import SkipTranscoder

KIND_FOLDERS = {"res": "res", "mlp": "mlp", "att": "att", "mlp_in": "transcoders"}
# Writes one SAE: (the SAE as read, the folder it was read from, the folder to write).
Writer = Callable[[LoadedSAE, Path, Path], object]


def width_name(width: int) -> str:
    """Gemma Scope's names: 16384 -> 16k, 65536 -> 65k, 1048576 -> 1m."""
    if width >= 1 << 20:
        return f"{width // (1 << 20)}m"
    return f"{width // 1000}k" if width >= 1000 else str(width)


def suite_folder(fmt: str, loaded: LoadedSAE, fallback: str) -> Path:
    """Where one SAE goes inside a suite in format `fmt`, before collisions; an SAE whose site is
    unknown keeps `fallback` (its source folder's name)."""
    meta = loaded.meta
    kind, layer = meta.get("site"), meta.get("layer")
    if kind is None or layer is None:
        return Path(fallback)
    l0 = loaded.metrics.get("l0")
    l0_name = str(round(l0)) if l0 is not None else "unknown"
    width = width_name(loaded.sae.d_sae)
    if fmt == "gemma-scope":
        affine = "_affine" if isinstance(loaded.sae, SkipTranscoder) else ""
        return Path(KIND_FOLDERS[kind], f"layer_{layer}", f"width_{width}", f"average_l0_{l0_name}{affine}")
    if fmt == "gemma-scope-2":
        return Path(GEMMA_SCOPE_2_FOLDERS[kind], f"layer_{layer}_width_{width}_l0_{l0_name}")
    if fmt == "saelens":
        return Path(meta.get("hook_name") or tl_hook(kind, layer), f"width_{width}_l0_{l0_name}")
    if fmt == "sparsify":
        model_type = model_type_of(meta)
        hook = hf_hook(kind, layer, model_type).rsplit(".", 1)[0] if model_type else f"{kind}.{layer}"
        return Path(f"{hook}_width_{width}_l0_{l0_name}")
    return Path(f"{kind}-{layer}", f"width_{width}_l0_{l0_name}")


def unique_folder(rel: Path, meta: dict, taken: set[Path]) -> Path:
    """`rel`, or the first free name of the collision rule in the module docstring."""
    if rel not in taken:
        return rel
    coefficient = meta.get("sparsity_coefficient")
    if isinstance(coefficient, (int, float)) and not isinstance(coefficient, bool):
        rel = rel.with_name(f"{rel.name}_c{coefficient:g}")
    candidates = chain([rel], (rel.with_name(f"{rel.name}_{n}") for n in count(2)))
    return next(r for r in candidates if r not in taken)


def format_writer(fmt: str) -> Writer:
    """The format's own writer (`interop.WRITERS`) in the suite's `Writer` shape."""
    writer = interop.WRITERS[fmt]
    return lambda loaded, source, target: writer(loaded.sae, loaded.meta, loaded.metrics, target)


def write_suite(
    folders: list[Path], fmt: str, tmp: Path, *, source_format: str | None = None, write: Writer | None = None
) -> list[tuple[Path, LoadedSAE]]:
    """Every SAE of `folders` read, named and written under `tmp` in format `fmt` (by `write`, or
    the format's writer); returns each folder name, relative to `tmp`, with its SAE."""
    write = write or format_writer(fmt)
    written: list[tuple[Path, LoadedSAE]] = []
    taken: set[Path] = set()
    for folder in folders:
        loaded = interop.read(folder, source_format)
        rel = unique_folder(suite_folder(fmt, loaded, folder.name), loaded.meta, taken)
        taken.add(rel)
        write(loaded, folder, tmp / rel)
        written.append((rel, loaded))
    return written
