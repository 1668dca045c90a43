"""Read and write SAEs in the formats other tools use: Gemma Scope 1 and 2, SAELens, sparsify.

Every reader returns a `LoadedSAE`: the saescope module (a family from the registry, the TopK
inference class, or a `SkipTranscoder` around one), the format it came in, and its metadata in
saescope's `config.json` vocabulary (site, layer, model, model_name, dataset, context_len, ...).
Every writer takes the module and that metadata. Arrays are copied, never recomputed, whenever
the target format can say what the source said:

- the pre-encoder bias (`x - b_dec` before encoding) is saescope's `pre_encoder_bias`, SAELens'
  `apply_b_dec_to_input` and sparsify's `not transcode`, so those round trips are bit-exact;
- Gemma Scope formats have no pre-encoder bias; an SAE that has one is folded on export
  (`b_enc - b_dec @ W_enc`), which is exact in function and rounds b_enc at float32;
- sparsify always subtracts b_dec from an autoencoder's input, so an SAE without a pre-encoder
  bias gets `b_enc + b_dec @ W_enc` (computed in float64) as its encoder bias on export.
- sparsify only has TopK; exporting a JumpReLU SAE there fails with that reason.

Nothing is unpickled: `.npz` files are read with `allow_pickle=False`, the rest is safetensors.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import save_file

from saescope.errors import SaescopeError
from saescope.outputs import strict_json
from saescope.release.hooks import (GEMMA_SCOPE_2_FOLDERS, hf_hook, model_type_of, site_of_hf_hook, site_of_tl_hook,
                                    tl_hook)
from saescope.saes.skip_transcoder import SkipTranscoder
from saescope.saes.base import SAE

FORMATS = ("saescope", "gemma-scope", "gemma-scope-2", "saelens", "sparsify")
PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")
# The SAELens cfg.json schema we write and read: the v6 layout with a nested `metadata` block.
SAELENS_SCHEMA_VERSION = "6.0.0"
# Files that mark a folder as holding one SAE, by format.
MARKERS = {"params.npz": "gemma-scope", "params.safetensors": "gemma-scope-2",
           "sae_weights.safetensors": "saelens", "sae.safetensors": "sparsify-or-saescope"}


@dataclass
class LoadedSAE:
    """A loaded SAE with where it came from and what it was trained on."""

    sae: SAE | SkipTranscoder
    format: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per fact, for `saescope load`."""
        m = self.meta
        site = f"{m['site']}.{m['layer']}" if m.get("site") is not None and m.get("layer") is not None else "unknown"
        rows = [("source", self.source), ("format", self.format), ("architecture", self.sae.arch),
                ("d_in", self.sae.d_in), ("d_sae", self.sae.d_sae), ("site", site),
                ("pre-encoder bias", self.sae.pre_encoder_bias),
                ("skip connection", isinstance(self.sae, SkipTranscoder)),
                ("model", m.get("model_name") or m.get("model") or "unknown")]
        rows += [(k, v) for k, v in self.sae.knobs().items() if k == "k"]
        rows += [(k, self.metrics[k]) for k in ("l0", "fvu", "delta_loss") if self.metrics.get(k) is not None]
        return "\n".join(f"{k:18s}{v}" for k, v in rows)


# ---- families -------------------------------------------------------------------------------
def family_class(arch: str) -> type[SAE]:
    """The registry's SAE class for an architecture name."""
    from saescope.saes.registry import ARCHITECTURES

    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    raise SaescopeError(f"unknown SAE architecture {arch!r}; saescope loads {sorted(ARCHITECTURES)}")


def build_sae(arch: str, params: dict[str, np.ndarray], *, pre_encoder_bias: bool = False,
              knobs: dict[str, Any] | None = None, where: str = "SAE") -> SAE | SkipTranscoder:
    """An SAE from Gemma-Scope-named float arrays, validating names, dtypes and shapes first.

    `affine_skip_connection`, if present, wraps the SAE in a SkipTranscoder."""
    cls = family_class(arch)
    expected = (*PARAM_NAMES, *cls.extra_params)
    if not any(k in params for k in expected):
        raise SaescopeError(f"{where} is not an SAE: it holds arrays {sorted(params)[:8]}, expected {list(expected)}")
    missing = [k for k in expected if k not in params]
    if missing:
        raise SaescopeError(f"{where} is missing arrays {missing} of a {arch} SAE; is it another architecture?")
    for k, v in params.items():
        if not np.issubdtype(np.asarray(v).dtype, np.floating):
            raise SaescopeError(f"{where}: array {k} has dtype {np.asarray(v).dtype}, expected floating point")
    knobs = dict(knobs or {})
    knobs.pop("pre_encoder_bias", None)
    arrays = {k: np.asarray(params[k]) for k in expected}
    checked = cls.from_params(arrays, **knobs)  # raises one-line errors on inconsistent shapes
    if pre_encoder_bias:
        sae = cls(checked.d_in, checked.d_sae, **(knobs | {"pre_encoder_bias": True}))
        sae.load_state_dict(checked.state_dict())
    else:
        sae = checked
    sae = sae.eval()
    if "affine_skip_connection" in params:
        return SkipTranscoder(sae, params["affine_skip_connection"]).eval()
    return sae


def _arrays(sae: SAE | SkipTranscoder) -> dict[str, np.ndarray]:
    """Gemma-Scope-named float32 arrays of any SAE, whether or not it has a pre-encoder bias."""
    inner = sae.sae if isinstance(sae, SkipTranscoder) else sae
    tensors = {k: getattr(inner, k) for k in PARAM_NAMES} | inner.extra_arrays()
    out = {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in tensors.items()}
    if isinstance(sae, SkipTranscoder):
        out["affine_skip_connection"] = sae.affine_skip_connection.detach().cpu().numpy().copy()
    return out


def without_pre_encoder_bias(sae: SAE | SkipTranscoder) -> SAE | SkipTranscoder:
    """The same function with b_dec folded out of the encoder input (for Gemma Scope formats)."""
    if not sae.pre_encoder_bias:
        return sae
    if isinstance(sae, SkipTranscoder):
        return SkipTranscoder(sae.sae.folded(1.0), sae.affine_skip_connection.detach())
    return sae.folded(1.0)


# ---- file reading ---------------------------------------------------------------------------
def _exists(path: Path) -> None:
    if not path.is_file():
        raise SaescopeError(f"{path.parent} has no {path.name}: is it an SAE folder of that format? (try without --format)")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    _exists(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise SaescopeError(f"{path} is not an SAE: not a readable .npz of arrays ({type(e).__name__})") from e


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Arrays of a safetensors file as numpy; bfloat16 (which numpy lacks) is widened to float32."""
    _exists(path)
    try:
        from safetensors import safe_open

        out = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                out[k] = (t.to(torch.float32) if t.dtype == torch.bfloat16 else t).numpy()
        return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SaescopeError(f"{path} is not an SAE: not a readable safetensors file ({e})") from e


def read_json(path: Path) -> dict[str, Any]:
    _exists(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaescopeError(f"{path} is not a readable JSON config ({type(e).__name__}); is the folder an SAE?") from e
    if not isinstance(data, dict):
        raise SaescopeError(f"{path} holds JSON {type(data).__name__}, not an SAE config object")
    return data


def read_json_with(path: Path, *keys: str) -> dict[str, Any]:
    """A JSON object that must hold `keys` (a trained SAE's config.json or metrics.json): a damaged
    or foreign one is a one-line error instead of a KeyError deep inside a job."""
    data = read_json(path)
    missing = [k for k in keys if k not in data]
    if missing:
        raise SaescopeError(f"{path} lacks {', '.join(missing)}: it was not written by saescope train/evaluate "
                            f"or is damaged; train or evaluate that SAE again, or move its folder out")
    return data


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.exists() else {}


def _site_from(meta: dict, *names: str | None) -> dict:
    """Fill `site`/`layer` from whichever hook or folder name identifies them."""
    if meta.get("site") is not None and meta.get("layer") is not None:
        return meta
    for name in names:
        if not name:
            continue
        found = site_of_tl_hook(name) or site_of_hf_hook(name)
        if found is None:
            match = re.search(r"(resid_post|mlp_out|attn_out|transcoder)\w*?/layer_(\d+)", name)
            kinds = {v: k for k, v in GEMMA_SCOPE_2_FOLDERS.items()}
            found = (kinds[match.group(1)], int(match.group(2))) if match else None
        if found is None:
            match = re.search(r"[/_-](res|mlp|att|transcoders)\b.*?/layer_(\d+)", "/" + name)
            found = ({"transcoders": "mlp_in"}.get(match.group(1), match.group(1)), int(match.group(2))) if match else None
        if found:
            return meta | {"site": found[0], "layer": found[1]}
    return meta


# ---- Gemma Scope 1 and saescope's own folders ---------------------------------------------------
def read_gemma_scope(path: Path) -> LoadedSAE:
    """`params.npz` (Gemma Scope 1 and saescope releases); a config.json beside it, if saescope's,
    names the architecture and knobs."""
    file = path if path.is_file() else path / "params.npz"
    meta = _optional_json(file.parent / "config.json")
    meta = meta if "architecture" in meta and "d_sae" in meta else {}
    params = read_npz(file)
    sae = build_sae(meta.get("architecture", "jumprelu"), params, knobs=meta.get("knobs"), where=str(file))
    meta = _site_from(meta, str(file.resolve()))
    return LoadedSAE(sae, "gemma-scope", str(path), meta, _optional_json(file.parent / "metrics.json"))


def read_saescope(path: Path) -> LoadedSAE:
    """A trained folder: `sae.safetensors` (Gemma Scope names, folded) + `config.json`."""
    folder = path if path.is_dir() else path.parent
    meta = read_json(folder / "config.json")
    params = read_safetensors(folder / "sae.safetensors")
    sae = build_sae(meta.get("architecture", "jumprelu"), params, knobs=meta.get("knobs"),
                    where=str(folder / "sae.safetensors"))
    return LoadedSAE(sae, "saescope", str(path), meta, _optional_json(folder / "metrics.json"))


def write_gemma_scope(sae: SAE | SkipTranscoder, meta: dict, metrics: dict, folder: Path) -> Path:
    """`params.npz` + saescope's config.json and metrics.json (the layout `release` writes)."""
    sae = without_pre_encoder_bias(sae)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **_arrays(sae))
    (folder / "config.json").write_text(strict_json(_native_meta(sae, meta), indent=2))
    if metrics:
        (folder / "metrics.json").write_text(strict_json(metrics))
    return folder


def _native_meta(sae: SAE | SkipTranscoder, meta: dict) -> dict:
    return meta | {"architecture": sae.arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "knobs": sae.knobs()}


# ---- Gemma Scope 2 --------------------------------------------------------------------------------
def read_gemma_scope_2(path: Path) -> LoadedSAE:
    """`params.safetensors` with lower-case keys; its config.json (Gemma Scope 2's own fields:
    architecture "jump_relu", model_name, hf_hook_point_in/out, affine_connection) if present."""
    file = path if path.is_file() else path / "params.safetensors"
    raw = read_safetensors(file)
    upper = {"w_enc": "W_enc", "w_dec": "W_dec"}
    params = {upper.get(k, k): v for k, v in raw.items()}
    config = _optional_json(file.parent / "config.json")
    meta = dict(config.get("saescope", {}))
    arch = meta.get("architecture") or {"jump_relu": "jumprelu"}.get(config.get("architecture", "jump_relu"),
                                                                       config.get("architecture"))
    sae = build_sae(arch, params, knobs=meta.get("knobs"), where=str(file))
    if config.get("model_name") and not meta.get("model_name"):
        meta["model_name"] = config["model_name"]
    if "transcoder" in str(file.resolve()) or config.get("hf_hook_point_out") or "affine_skip_connection" in raw:
        meta.setdefault("transcoder", True)
    meta = _site_from(meta, config.get("hf_hook_point_in"), str(file.resolve()))
    return LoadedSAE(sae, "gemma-scope-2", str(path), meta, _optional_json(file.parent / "metrics.json"))


def write_gemma_scope_2(sae: SAE | SkipTranscoder, meta: dict, metrics: dict, folder: Path) -> Path:
    """`params.safetensors` (w_enc, w_dec, b_enc, b_dec, threshold, affine_skip_connection) and a
    config.json with Gemma Scope 2's fields plus saescope's metadata under "saescope"."""
    sae = without_pre_encoder_bias(sae)
    folder.mkdir(parents=True, exist_ok=True)
    lower = {"W_enc": "w_enc", "W_dec": "w_dec"}
    save_file({lower.get(k, k): v for k, v in _arrays(sae).items()}, str(folder / "params.safetensors"))
    config: dict[str, Any] = {"architecture": "jump_relu" if sae.arch == "jumprelu" else sae.arch,
                              "model_name": meta.get("model_name") or meta.get("model")}
    model_type = model_type_of(meta)
    if meta.get("site") is not None and model_type:
        config["hf_hook_point_in"] = hf_hook(meta["site"], meta["layer"], model_type)
        if meta.get("transcoder"):
            config["hf_hook_point_out"] = hf_hook("mlp", meta["layer"], model_type)
    if meta.get("transcoder") or isinstance(sae, SkipTranscoder):
        config["affine_connection"] = isinstance(sae, SkipTranscoder)
    config["saescope"] = _native_meta(sae, meta)
    (folder / "config.json").write_text(strict_json(config, indent=2))
    if metrics:
        (folder / "metrics.json").write_text(strict_json(metrics))
    return folder


# ---- SAELens -------------------------------------------------------------------------------------
_SAELENS_IN = {"jumprelu": "jumprelu", "standard": "jumprelu", "topk": "topk", "jumprelu_transcoder": "jumprelu",
               "jumprelu_skip_transcoder": "jumprelu", "batchtopk": "jumprelu"}


def read_saelens(path: Path) -> LoadedSAE:
    """`cfg.json` + `sae_weights.safetensors` as SAELens saves them (v6 schema, or the flat pre-6
    one). A "standard" ReLU SAE is loaded as JumpReLU with threshold 0, the same function."""
    folder = path if path.is_dir() else path.parent
    cfg = read_json(folder / "cfg.json")
    flat = {("hook_name" if k == "hook_point" else k): v for k, v in cfg.items() if k != "metadata"}
    info = flat | dict(cfg.get("metadata") or {})
    arch = cfg.get("architecture", "standard")
    if arch == "standard" and info.get("activation_fn") == "topk":  # the pre-6 way of saying TopK
        arch, cfg = "topk", cfg | {"k": (info.get("activation_fn_kwargs") or {}).get("k")}
    if arch not in _SAELENS_IN:
        raise SaescopeError(f"{folder}: SAELens architecture {arch!r} has no saescope equivalent; "
                            f"saescope loads {sorted(_SAELENS_IN)}")
    if info.get("normalize_activations", "none") not in ("none", False, None):
        raise SaescopeError(f"{folder}: SAELens normalize_activations={info['normalize_activations']!r} is applied at "
                            f"run time; fold it first (SAELens fold_activation_norm_scaling_factor) and save again")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise SaescopeError(f"{folder}: TopK with rescale_acts_by_decoder_norm=true is not supported; save it from "
                            f"SAELens after fold_W_dec_norm() with rescale_acts_by_decoder_norm=false")
    state = read_safetensors(folder / "sae_weights.safetensors")
    params = dict(state)
    if arch == "standard" and "W_enc" in params and "threshold" not in params:
        params["threshold"] = np.zeros(np.asarray(params["W_enc"]).shape[1], dtype=np.float32)
    if "W_skip" in params:  # SAELens stores [d_out, d_in], Gemma Scope 2 [d_in, d_out]
        params["affine_skip_connection"] = np.ascontiguousarray(params.pop("W_skip").T)
    knobs = {"k": int(cfg["k"])} if _SAELENS_IN[arch] == "topk" else {}
    sae = build_sae(_SAELENS_IN[arch], params, pre_encoder_bias=bool(info.get("apply_b_dec_to_input", True)),
                    knobs=knobs, where=str(folder / "sae_weights.safetensors"))
    meta = dict(info.get("saescope") or {})
    for ours, theirs in (("model_name", "model_name"), ("dataset", "dataset_path"), ("context_len", "context_size"),
                         ("hook_name", "hook_name"), ("hook_name_out", "hook_name_out")):
        if info.get(theirs) is not None:
            meta.setdefault(ours, info[theirs])
    if "transcoder" in arch:
        meta["transcoder"] = True
    meta["saelens_architecture"] = arch
    meta = _site_from(meta, info.get("hook_name"), info.get("hf_hook_name"))
    return LoadedSAE(sae, "saelens", str(path), meta, _optional_json(folder / "metrics.json"))


def saelens_cfg(sae: SAE | SkipTranscoder, meta: dict) -> dict[str, Any]:
    """SAELens' v6 cfg.json for this SAE, with saescope's metadata carried under metadata.saescope."""
    transcoder = bool(meta.get("transcoder")) or isinstance(sae, SkipTranscoder)
    if sae.arch == "topk":
        if transcoder:
            raise SaescopeError("SAELens has no TopK transcoder to load this into; export it as sparsify instead")
        arch = "topk"
    elif sae.arch == "jumprelu":
        arch = ("jumprelu_skip_transcoder" if isinstance(sae, SkipTranscoder) else "jumprelu_transcoder") \
            if transcoder else "jumprelu"
    else:
        raise SaescopeError(f"SAELens export knows jumprelu and topk SAEs, not {sae.arch!r}")
    if meta.get("saelens_architecture") == "standard" and arch == "jumprelu" \
            and not bool(_arrays(sae)["threshold"].any()):
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
        "saescope": _native_meta(sae, meta),
    }
    cfg: dict[str, Any] = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": bool(sae.pre_encoder_bias), "normalize_activations": "none",
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
    arrays = _arrays(sae)
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


# ---- sparsify ----------------------------------------------------------------------------------
def read_sparsify(path: Path) -> LoadedSAE:
    """EleutherAI sparsify: `cfg.json` (d_in, k, num_latents or expansion_factor, activation,
    transcode, skip_connection) + `sae.safetensors` (encoder.weight [d_sae, d_in], encoder.bias,
    W_dec [d_sae, d_in], b_dec, W_skip [d_out, d_in])."""
    folder = path if path.is_dir() else path.parent
    cfg = read_json(folder / "cfg.json")
    if "d_in" not in cfg or "k" not in cfg:
        raise SaescopeError(f"{folder / 'cfg.json'} is not a sparsify config (no d_in and k); pass --format")
    if cfg.get("activation", "topk") != "topk":
        raise SaescopeError(f"{folder}: sparsify activation {cfg['activation']!r} is not supported; saescope loads topk")
    state = read_safetensors(folder / "sae.safetensors")
    if "encoder.weight" not in state:
        raise SaescopeError(f"{folder / 'sae.safetensors'} is not a sparsify SAE: it holds {sorted(state)[:8]}, "
                            f"expected encoder.weight, encoder.bias, W_dec, b_dec")
    params = {"W_enc": np.ascontiguousarray(state["encoder.weight"].T), "b_enc": state.get("encoder.bias"),
              "W_dec": state.get("W_dec"), "b_dec": state.get("b_dec")}
    params = {k: v for k, v in params.items() if v is not None}
    if state.get("W_skip") is not None:
        params["affine_skip_connection"] = np.ascontiguousarray(state["W_skip"].T)
    d_sae = cfg.get("num_latents") or cfg["d_in"] * cfg.get("expansion_factor", 32)
    if "W_enc" in params and params["W_enc"].shape[1] != d_sae:
        raise SaescopeError(f"{folder}: encoder has {params['W_enc'].shape[1]} latents but cfg.json implies {d_sae}")
    sae = build_sae("topk", params, pre_encoder_bias=not cfg.get("transcode", False), knobs={"k": int(cfg["k"])},
                    where=str(folder / "sae.safetensors"))
    meta = dict(cfg.get("saescope") or {})
    if cfg.get("transcode"):
        meta["transcoder"] = True
    meta = _site_from(meta, folder.name)
    return LoadedSAE(sae, "sparsify", str(path), meta, _optional_json(folder / "metrics.json"))


def write_sparsify(sae: SAE | SkipTranscoder, meta: dict, metrics: dict, folder: Path) -> Path:
    """sparsify's layout; TopK only. See the module docstring for how b_dec is handled."""
    if sae.arch != "topk":
        raise SaescopeError(f"sparsify only loads TopK SAEs and this one is {sae.arch}; "
                            f"export it as gemma-scope, gemma-scope-2 or saelens instead")
    arrays = _arrays(sae)
    transcoder = bool(meta.get("transcoder"))
    b_enc = arrays["b_enc"]
    if not transcoder and not sae.pre_encoder_bias:
        b_enc = (b_enc.astype(np.float64) + arrays["b_dec"].astype(np.float64) @ arrays["W_enc"].astype(np.float64))
        b_enc = b_enc.astype(np.float32)
    if transcoder and sae.pre_encoder_bias:
        raise SaescopeError("a transcoder with a pre-encoder bias has no sparsify form; fold it first (sae.folded(1.0))")
    state = {"encoder.weight": np.ascontiguousarray(arrays["W_enc"].T), "encoder.bias": b_enc,
             "W_dec": arrays["W_dec"], "b_dec": arrays["b_dec"]}
    if "affine_skip_connection" in arrays:
        state["W_skip"] = np.ascontiguousarray(arrays["affine_skip_connection"].T)
    cfg = {"activation": "topk", "expansion_factor": max(1, sae.d_sae // sae.d_in), "normalize_decoder": True,
           "num_latents": sae.d_sae, "k": sae.knobs()["k"], "multi_topk": False,
           "skip_connection": "W_skip" in state, "transcode": transcoder, "d_in": sae.d_in,
           "saescope": _native_meta(sae, meta)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(strict_json(cfg, indent=2))
    if metrics:
        (folder / "metrics.json").write_text(strict_json(metrics))
    return folder


# ---- detection and dispatch -----------------------------------------------------------------------
READERS: dict[str, Callable[[Path], LoadedSAE]] = {
    "saescope": read_saescope, "gemma-scope": read_gemma_scope, "gemma-scope-2": read_gemma_scope_2,
    "saelens": read_saelens, "sparsify": read_sparsify,
}
WRITERS: dict[str, Callable[[SAE | SkipTranscoder, dict, dict, Path], Path]] = {
    "gemma-scope": write_gemma_scope, "gemma-scope-2": write_gemma_scope_2, "saelens": write_saelens,
    "sparsify": write_sparsify,
}


def detect_format(path: Path) -> str:
    """The format of one SAE folder (or file), from the files it holds."""
    if path.is_file():
        if path.suffix == ".npz":
            return "gemma-scope"
        if path.name in MARKERS or path.name in ("cfg.json", "config.json"):
            return detect_format(path.parent)
        raise SaescopeError(f"{path} is not an SAE file (expected params.npz, params.safetensors, "
                            f"sae_weights.safetensors or sae.safetensors); pass its folder or --format")
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
    raise SaescopeError(f"{path} holds no SAE: no params.npz, params.safetensors, sae_weights.safetensors "
                        f"or sae.safetensors in it or below it")


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
