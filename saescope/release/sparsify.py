"""EleutherAI sparsify: `cfg.json` + `sae.safetensors`; TopK only, so exporting any other family
there fails with that reason.

sparsify always subtracts b_dec from an autoencoder's input (`not transcode` is saescope's
pre-encoder bias, and round trips are bit-exact); an SAE without a pre-encoder bias gets
`b_enc + b_dec @ W_enc` (computed in float64) as its encoder bias on export. saescope's metadata
travels under the `saescope` key of cfg.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from saescope.errors import SaescopeError
from saescope.outputs import strict_json
from saescope.release.files import folder_json, optional_json, read_safetensors
from saescope.release.hooks import site_from_names
from saescope.release.loaded import LoadedSAE, build_sae, gemma_scope_arrays, native_meta
from saescope.saes.base import SAE
from saescope.saes.skip_transcoder import SkipTranscoder


def read_sparsify(path: Path) -> LoadedSAE:
    """EleutherAI sparsify: `cfg.json` (d_in, k, num_latents or expansion_factor, activation,
    transcode, skip_connection) + `sae.safetensors` (encoder.weight [d_sae, d_in], encoder.bias,
    W_dec [d_sae, d_in], b_dec, W_skip [d_out, d_in])."""
    folder = path if path.is_dir() else path.parent
    cfg = folder_json(folder / "cfg.json")
    if "d_in" not in cfg or "k" not in cfg:
        raise SaescopeError(f"{folder / 'cfg.json'} is not a sparsify config (no d_in and k); pass --format")
    if cfg.get("activation", "topk") != "topk":
        raise SaescopeError(
            f"{folder}: sparsify activation {cfg['activation']!r} is not supported; saescope loads topk"
        )
    state = read_safetensors(folder / "sae.safetensors")
    if "encoder.weight" not in state:
        raise SaescopeError(
            f"{folder / 'sae.safetensors'} is not a sparsify SAE: it holds {sorted(state)[:8]}, "
            f"expected encoder.weight, encoder.bias, W_dec, b_dec"
        )
    params = {
        "W_enc": np.ascontiguousarray(state["encoder.weight"].T),
        "b_enc": state.get("encoder.bias"),
        "W_dec": state.get("W_dec"),
        "b_dec": state.get("b_dec"),
    }
    params = {k: v for k, v in params.items() if v is not None}
    if state.get("W_skip") is not None:
        params["affine_skip_connection"] = np.ascontiguousarray(state["W_skip"].T)
    d_sae = cfg.get("num_latents") or cfg["d_in"] * cfg.get("expansion_factor", 32)
    if "W_enc" in params and params["W_enc"].shape[1] != d_sae:
        raise SaescopeError(f"{folder}: encoder has {params['W_enc'].shape[1]} latents but cfg.json implies {d_sae}")
    sae = build_sae(
        "topk",
        params,
        pre_encoder_bias=not cfg.get("transcode", False),
        knobs={"k": int(cfg["k"])},
        where=str(folder / "sae.safetensors"),
    )
    meta = dict(cfg.get("saescope") or {})
    if cfg.get("transcode"):
        meta["transcoder"] = True
    meta = site_from_names(meta, folder.name)
    return LoadedSAE(sae, "sparsify", str(path), meta, optional_json(folder / "metrics.json"))


def write_sparsify(sae: SAE | SkipTranscoder, meta: dict, metrics: dict, folder: Path) -> Path:
    """sparsify's layout; TopK only. See the module docstring for how b_dec is handled."""
    if sae.arch != "topk":
        raise SaescopeError(
            f"sparsify only loads TopK SAEs and this one is {sae.arch}; "
            f"export it as gemma-scope, gemma-scope-2 or saelens instead"
        )
    if sae.knobs().get("token_norm"):
        raise SaescopeError(
            "sparsify cannot rescale each token before its SAE and this one does (token_norm); "
            "export it as saelens (constant_norm_rescale) instead"
        )
    arrays = gemma_scope_arrays(sae)
    transcoder = bool(meta.get("transcoder"))
    b_enc = arrays["b_enc"]
    if not transcoder and not sae.pre_encoder_bias:
        b_enc = b_enc.astype(np.float64) + arrays["b_dec"].astype(np.float64) @ arrays["W_enc"].astype(np.float64)
        b_enc = b_enc.astype(np.float32)
    if transcoder and sae.pre_encoder_bias:
        raise SaescopeError(
            "a transcoder with a pre-encoder bias has no sparsify form; fold it first (sae.folded(1.0))"
        )
    state = {
        "encoder.weight": np.ascontiguousarray(arrays["W_enc"].T),
        "encoder.bias": b_enc,
        "W_dec": arrays["W_dec"],
        "b_dec": arrays["b_dec"],
    }
    if "affine_skip_connection" in arrays:
        state["W_skip"] = np.ascontiguousarray(arrays["affine_skip_connection"].T)
    cfg = {
        "activation": "topk",
        "expansion_factor": max(1, sae.d_sae // sae.d_in),
        "normalize_decoder": True,
        "num_latents": sae.d_sae,
        "k": sae.knobs()["k"],
        "multi_topk": False,
        "skip_connection": "W_skip" in state,
        "transcode": transcoder,
        "d_in": sae.d_in,
        "saescope": native_meta(sae, meta),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(strict_json(cfg, indent=2))
    if metrics:
        (folder / "metrics.json").write_text(strict_json(metrics))
    return folder
