"""SAELens: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`), the v6 cfg schema
with a nested `metadata` block; the flat pre-6 schema is read too.

The pre-encoder bias is SAELens' `apply_b_dec_to_input`, so round trips are bit-exact. SAELens
transcoders never subtract b_dec from the input, so a transcoder that does is folded on export.
saescope's metadata travels under `metadata.saescope`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from saescope.errors import SaescopeError
from saescope.outputs import strict_json
from saescope.release.files import folder_json, optional_json, read_safetensors
from saescope.release.hooks import hf_hook, model_type_of, site_from_names, tl_hook
from saescope.release.loaded import LoadedSAE, build_sae, gemma_scope_arrays, native_meta, without_pre_encoder_bias
from saescope.saes.base import SAE
from saescope.saes.skip_transcoder import SkipTranscoder

# The SAELens cfg.json schema we write and read: the v6 layout with a nested `metadata` block.
SAELENS_SCHEMA_VERSION = "6.0.0"
_SAELENS_IN = {
    "jumprelu": "jumprelu",
    "standard": "jumprelu",
    "topk": "topk",
    "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
    "batchtopk": "jumprelu",
}


def read_saelens(path: Path) -> LoadedSAE:
    """`cfg.json` + `sae_weights.safetensors` as SAELens saves them (v6 schema, or the flat pre-6
    one). A "standard" ReLU SAE is loaded as JumpReLU with threshold 0, the same function."""
    folder = path if path.is_dir() else path.parent
    cfg = folder_json(folder / "cfg.json")
    flat = {("hook_name" if k == "hook_point" else k): v for k, v in cfg.items() if k != "metadata"}
    info = flat | dict(cfg.get("metadata") or {})
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and info.get("activation_fn") == "topk":  # the pre-6 way of saying TopK
        arch, cfg = "topk", cfg | {"k": (info.get("activation_fn_kwargs") or {}).get("k")}
    if arch not in _SAELENS_IN:
        raise SaescopeError(
            f"{folder}: SAELens architecture {arch!r} has no saescope equivalent; saescope loads {sorted(_SAELENS_IN)}"
        )
    norm = info.get("normalize_activations", "none")
    if norm not in ("none", False, None, "constant_norm_rescale"):
        raise SaescopeError(
            f"{folder}: SAELens normalize_activations={norm!r} is applied at "
            f"run time; fold it first (SAELens fold_activation_norm_scaling_factor) and save again"
        )
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise SaescopeError(
            f"{folder}: TopK with rescale_acts_by_decoder_norm=true is not supported; save it from "
            f"SAELens after fold_W_dec_norm() with rescale_acts_by_decoder_norm=false"
        )
    state = read_safetensors(folder / "sae_weights.safetensors")
    params = dict(state)
    if arch == "standard" and "W_enc" in params and "threshold" not in params:
        params["threshold"] = np.zeros(np.asarray(params["W_enc"]).shape[1], dtype=np.float32)
    if "W_skip" in params:  # SAELens stores [d_out, d_in], Gemma Scope 2 [d_in, d_out]
        params["affine_skip_connection"] = np.ascontiguousarray(params.pop("W_skip").T)
    knobs = {"k": int(cfg["k"])} if _SAELENS_IN[arch] == "topk" else {}
    knobs |= {"token_norm": True} if norm == "constant_norm_rescale" else {}  # the same function (base.token_scale)
    sae = build_sae(
        _SAELENS_IN[arch],
        params,
        pre_encoder_bias=bool(info.get("apply_b_dec_to_input", True)),
        knobs=knobs,
        where=str(folder / "sae_weights.safetensors"),
    )
    meta = dict(info.get("saescope") or {})
    for ours, theirs in (
        ("model_name", "model_name"),
        ("dataset", "dataset_path"),
        ("context_len", "context_size"),
        ("hook_name", "hook_name"),
        ("hook_name_out", "hook_name_out"),
    ):
        if info.get(theirs) is not None:
            meta.setdefault(ours, info[theirs])
    if "transcoder" in arch:
        meta["transcoder"] = True
    meta["saelens_architecture"] = arch
    meta = site_from_names(meta, info.get("hook_name"), info.get("hf_hook_name"))
    return LoadedSAE(sae, "saelens", str(path), meta, optional_json(folder / "metrics.json"))


def saelens_cfg(sae: SAE | SkipTranscoder, meta: dict) -> dict[str, Any]:
    """SAELens' v6 cfg.json for this SAE, with saescope's metadata carried under metadata.saescope."""
    transcoder = bool(meta.get("transcoder")) or isinstance(sae, SkipTranscoder)
    if sae.arch == "topk":
        if transcoder:
            raise SaescopeError("SAELens has no TopK transcoder to load this into; export it as sparsify instead")
        arch = "topk"
    elif sae.arch == "jumprelu":
        arch = (
            ("jumprelu_skip_transcoder" if isinstance(sae, SkipTranscoder) else "jumprelu_transcoder")
            if transcoder
            else "jumprelu"
        )
    else:
        raise SaescopeError(f"SAELens export knows jumprelu and topk SAEs, not {sae.arch!r}")
    if (
        meta.get("saelens_architecture") == "standard"
        and arch == "jumprelu"
        and not bool(gemma_scope_arrays(sae)["threshold"].any())
    ):
        arch = "standard"
    kind, layer = meta.get("site"), meta.get("layer")
    hook_name = meta.get("hook_name") or (tl_hook(kind, layer) if kind is not None and layer is not None else None)
    model_type = model_type_of(meta)
    metadata: dict[str, Any] = {
        "sae_lens_version": SAELENS_SCHEMA_VERSION,
        "sae_lens_training_version": SAELENS_SCHEMA_VERSION,
        "model_name": meta.get("model_name") or meta.get("model"),
        "hook_name": hook_name,
        "hook_head_index": None,
        "context_size": meta.get("context_len"),
        "prepend_bos": True,
        "dataset_path": meta.get("dataset"),
        "model_class_name": "HookedTransformer",
        "hf_hook_name": hf_hook(kind, layer, model_type) if kind is not None and model_type else None,
        "saescope": native_meta(sae, meta),
    }
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": bool(sae.pre_encoder_bias),
        "normalize_activations": "constant_norm_rescale" if sae.knobs().get("token_norm") else "none",
        "reshape_activations": "hook_z" if hook_name and hook_name.endswith("hook_z") else "none",
    }
    if arch == "topk":
        cfg |= {"k": sae.knobs()["k"], "rescale_acts_by_decoder_norm": False}
    if transcoder:
        cfg["d_out"] = sae.d_in
        if layer is not None:
            metadata["hook_name_out"] = meta.get("hook_name_out") or tl_hook("mlp", layer)
    return cfg | {"metadata": metadata}


def write_saelens(sae: SAE | SkipTranscoder, meta: dict, metrics: dict, folder: Path) -> Path:
    """`cfg.json` + `sae_weights.safetensors`, plus `sparsity.safetensors` (log10 firing
    frequency, SAELens' convention) when the evaluation measured frequencies."""
    if sae.pre_encoder_bias and (meta.get("transcoder") or isinstance(sae, SkipTranscoder)):
        sae = without_pre_encoder_bias(sae)  # SAELens transcoders never subtract b_dec from the input
    cfg = saelens_cfg(sae, meta)
    arrays = gemma_scope_arrays(sae)
    if cfg["architecture"] in ("topk", "standard"):
        arrays.pop("threshold", None)
    if "affine_skip_connection" in arrays:
        arrays["W_skip"] = np.ascontiguousarray(arrays.pop("affine_skip_connection").T)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(strict_json(cfg, indent=2))
    freq = metrics.get("firing_frequency") if metrics else None
    if freq is not None and len(freq) == sae.d_sae:
        log_freq = np.log10(np.maximum(np.asarray(freq, dtype=np.float64), 1e-10)).astype(np.float32)
        save_file({"sparsity": log_freq}, str(folder / "sparsity.safetensors"))
    if metrics:
        (folder / "metrics.json").write_text(strict_json(metrics))
    return folder
