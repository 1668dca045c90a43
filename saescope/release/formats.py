"""Write a suite in Gemma Scope's layout and load any saved SAE back.

Release layout (one tree per site kind, as Gemma Scope shipped one repository per kind):

    <release>/suite.json
    <release>/<res|mlp|att|transcoders>/layer_<L>/width_<16k|65k|...>/average_l0_<N>/
        params.npz    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold; float32
        config.json   model, site, layer, d_in, width, architecture, sparsity coefficient, tokens, scale
        metrics.json

The arrays are folded, so the reference forward `pre = x @ W_enc + b_enc; acts = (pre > threshold)
* relu(pre); recon = acts @ W_dec + b_dec` works on raw activations. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from saescope.activations.store import write_json_atomic
from saescope.errors import SaescopeError
from saescope.saes.base import SAE
from saescope.saes.registry import sae_from_params

KIND_FOLDERS = {"res": "res", "mlp": "mlp", "att": "att", "mlp_in": "transcoders"}


def width_name(width: int) -> str:
    """Gemma Scope's names: 16384 -> 16k, 65536 -> 65k, 1048576 -> 1m."""
    if width >= 1 << 20:
        return f"{width // (1 << 20)}m"
    return f"{width // 1000}k" if width >= 1000 else str(width)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise SaescopeError(f"{path} is not a readable .npz of SAE arrays ({type(e).__name__}): "
                            f"is it an SAE file?") from e


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SaescopeError(f"{path} is not a readable safetensors file ({e}): is it an SAE file?") from e


def load(path: str | Path) -> SAE:
    """Load an SAE saved by saescope: a released `params.npz` folder or file, or a trained folder."""
    path = Path(path)
    if not path.exists():
        raise SaescopeError(f"{path} does not exist: pass a folder holding params.npz or sae.safetensors")
    folder = path if path.is_dir() else path.parent
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").exists() else {}
    arch = config.get("architecture", "jumprelu")
    knobs = config.get("knobs", {})
    if path.suffix == ".npz" or (path.is_dir() and (path / "params.npz").exists()):
        params = _read_npz(path if path.suffix == ".npz" else path / "params.npz")
    elif path.suffix == ".safetensors" or (path.is_dir() and (path / "sae.safetensors").exists()):
        params = _read_safetensors(path if path.suffix == ".safetensors" else path / "sae.safetensors")
    else:
        raise SaescopeError(f"{path} holds no SAE (no params.npz or sae.safetensors): "
                            f"pass a released or trained SAE folder")
    for k, v in params.items():
        if v.dtype.kind != "f":
            raise SaescopeError(f"{path}: array {k} has dtype {v.dtype}, expected floating point")
    return sae_from_params(arch, params, **knobs).eval()


def release(out: str | Path, dest: str | Path | None = None) -> Path:
    """Copy every evaluated SAE of a run into the Gemma Scope layout; write suite.json."""
    out = Path(out)
    dest = Path(dest) if dest else out / "release"
    trained = sorted(p for p in (out / "saes").glob("*") if (p / "metrics.json").exists())
    if not trained:
        raise SaescopeError(f"no evaluated SAEs in {out / 'saes'}: run `saescope evaluate --out {out}` first")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    entries = []
    for folder in trained:
        config = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        sae = load(folder)
        rel = Path(KIND_FOLDERS[config["site"]], f"layer_{config['layer']}", f"width_{width_name(config['d_sae'])}",
                   f"average_l0_{round(metrics['l0'])}")
        if any(e["path"] == str(rel) for e in entries):  # two coefficients landed on the same rounded L0
            rel = rel.with_name(f"{rel.name}_c{config['sparsity_coefficient']:g}")
        target = tmp / rel
        target.mkdir(parents=True)
        np.savez(target / "params.npz", **sae.params_npz())
        (target / "config.json").write_text(json.dumps(config, indent=2))
        (target / "metrics.json").write_text(json.dumps(metrics))
        entries.append({"path": str(rel), "site": config["site"], "layer": config["layer"], "width": config["d_sae"],
                        "architecture": config["architecture"], "average_l0": metrics["l0"], "fvu": metrics["fvu"],
                        "delta_loss": metrics.get("delta_loss"), "ce_loss_recovered": metrics.get("ce_loss_recovered"),
                        "trained": folder.name})
    first = json.loads((trained[0] / "config.json").read_text())
    write_json_atomic(tmp / "suite.json", {"format": "gemma-scope-1", "model": first.get("model"),
                                           "model_name": first.get("model_name"), "saes": entries})
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
