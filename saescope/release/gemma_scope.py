"""Gemma Scope 1 (`params.npz`, saescope's release layout), Gemma Scope 2 (`params.safetensors`)
and saescope's trained folders (`sae.safetensors` + `config.json`).

Gemma Scope formats have no pre-encoder bias; an SAE that has one is folded on export
(`b_enc - b_dec @ W_enc`), which is exact in function and rounds b_enc at float32. saescope's
metadata travels in `config.json` (Gemma Scope 1) or under its `saescope` key (Gemma Scope 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from saescope.outputs import strict_json
from saescope.release.files import folder_json, optional_json, read_npz, read_safetensors
from saescope.release.hooks import hf_hook, model_type_of, site_from_names
from saescope.release.loaded import LoadedSAE, build_sae, gemma_scope_arrays, native_meta, without_pre_encoder_bias
from saescope.saes.base import SAE
from saescope.saes.skip_transcoder import SkipTranscoder

_LOWER = {"W_enc": "w_enc", "W_dec": "w_dec"}  # Gemma Scope 2's key names


def read_gemma_scope(path: Path) -> LoadedSAE:
    """`params.npz` (Gemma Scope 1 and saescope releases); a config.json beside it, if saescope's,
    names the architecture and knobs."""
    file = path if path.is_file() else path / "params.npz"
    meta = optional_json(file.parent / "config.json")
    meta = meta if "architecture" in meta and "d_sae" in meta else {}
    params = read_npz(file)
    sae = build_sae(meta.get("architecture", "jumprelu"), params, knobs=meta.get("knobs"), where=str(file))
    meta = site_from_names(meta, str(file.resolve()))
    return LoadedSAE(sae, "gemma-scope", str(path), meta, optional_json(file.parent / "metrics.json"))


def read_saescope(path: Path) -> LoadedSAE:
    """A trained folder: `sae.safetensors` (Gemma Scope names, folded) + `config.json`."""
    folder = path if path.is_dir() else path.parent
    meta = folder_json(folder / "config.json")
    params = read_safetensors(folder / "sae.safetensors")
    sae = build_sae(
        meta.get("architecture", "jumprelu"), params, knobs=meta.get("knobs"), where=str(folder / "sae.safetensors")
    )
    return LoadedSAE(sae, "saescope", str(path), meta, optional_json(folder / "metrics.json"))


def write_gemma_scope(sae: SAE | SkipTranscoder, meta: dict, metrics: dict, folder: Path) -> Path:
    """`params.npz` + saescope's config.json and metrics.json (the layout `release` writes)."""
    sae = without_pre_encoder_bias(sae)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **gemma_scope_arrays(sae))
    (folder / "config.json").write_text(strict_json(native_meta(sae, meta), indent=2))
    if metrics:
        (folder / "metrics.json").write_text(strict_json(metrics))
    return folder


def read_gemma_scope_2(path: Path) -> LoadedSAE:
    """`params.safetensors` with lower-case keys; its config.json (Gemma Scope 2's own fields:
    architecture "jump_relu", model_name, hf_hook_point_in/out, affine_connection) if present."""
    file = path if path.is_file() else path / "params.safetensors"
    raw = read_safetensors(file)
    upper = {v: k for k, v in _LOWER.items()}
    params = {upper.get(k, k): v for k, v in raw.items()}
    config = optional_json(file.parent / "config.json")
    meta = dict(config.get("saescope", {}))
    arch = meta.get("architecture") or {"jump_relu": "jumprelu"}.get(
        config.get("architecture", "jump_relu"), config.get("architecture")
    )
    sae = build_sae(arch, params, knobs=meta.get("knobs"), where=str(file))
    if config.get("model_name") and not meta.get("model_name"):
        meta["model_name"] = config["model_name"]
    if "transcoder" in str(file.resolve()) or config.get("hf_hook_point_out") or "affine_skip_connection" in raw:
        meta.setdefault("transcoder", True)
    meta = site_from_names(meta, config.get("hf_hook_point_in"), str(file.resolve()))
    return LoadedSAE(sae, "gemma-scope-2", str(path), meta, optional_json(file.parent / "metrics.json"))


def write_gemma_scope_2(sae: SAE | SkipTranscoder, meta: dict, metrics: dict, folder: Path) -> Path:
    """`params.safetensors` (w_enc, w_dec, b_enc, b_dec, threshold, affine_skip_connection) and a
    config.json with Gemma Scope 2's fields plus saescope's metadata under "saescope"."""
    sae = without_pre_encoder_bias(sae)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({_LOWER.get(k, k): v for k, v in gemma_scope_arrays(sae).items()}, str(folder / "params.safetensors"))
    config: dict[str, Any] = {
        "architecture": "jump_relu" if sae.arch == "jumprelu" else sae.arch,
        "model_name": meta.get("model_name") or meta.get("model"),
    }
    model_type = model_type_of(meta)
    if meta.get("site") is not None and model_type:
        config["hf_hook_point_in"] = hf_hook(meta["site"], meta["layer"], model_type)
        if meta.get("transcoder"):
            config["hf_hook_point_out"] = hf_hook("mlp", meta["layer"], model_type)
    if meta.get("transcoder") or isinstance(sae, SkipTranscoder):
        config["affine_connection"] = isinstance(sae, SkipTranscoder)
    config["saescope"] = native_meta(sae, meta)
    (folder / "config.json").write_text(strict_json(config, indent=2))
    if metrics:
        (folder / "metrics.json").write_text(strict_json(metrics))
    return folder
