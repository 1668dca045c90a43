"""Write a suite in Gemma Scope's layout and load any saved SAE back.

Release layout (one tree per site kind, as Gemma Scope shipped one repository per kind):

    <release>/suite.json
    <release>/<res|mlp|att|transcoders>/layer_<L>/width_<16k|65k|...>/average_l0_<N>/
        params.npz    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold; float32
        config.json   model, site, layer, d_in, width, architecture, sparsity coefficient, tokens, scale
        metrics.json

Transcoders (`mlp_in.L` -> `mlp.L`) go under `transcoders/`; a skip transcoder's folder ends in
`_affine` (Gemma Scope 2's name for the affine skip connection) and its params.npz adds
`affine_skip_connection [d_in, d_out]`.

The arrays are folded, so the reference forward `pre = x @ W_enc + b_enc; acts = (pre > threshold)
* relu(pre); recon = acts @ W_dec + b_dec` works on raw activations. Nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saescope.errors import SaescopeError
from saescope.io import write_json_atomic
from saescope.outputs import replacing, strict_json
from saescope.release import hub, interop
from saescope.release.files import read_json, read_json_with
from saescope.release.loaded import LoadedSAE
from saescope.saes.skip_transcoder import SkipTranscoder
from saescope.saes.base import SAE

SAE_CONFIG_KEYS = ("site", "layer", "d_sae")  # what every job reads from a trained SAE's config.json
KIND_FOLDERS = {"res": "res", "mlp": "mlp", "att": "att", "mlp_in": "transcoders"}


def width_name(width: int) -> str:
    """Gemma Scope's names: 16384 -> 16k, 65536 -> 65k, 1048576 -> 1m."""
    if width >= 1 << 20:
        return f"{width // (1 << 20)}m"
    return f"{width // 1000}k" if width >= 1000 else str(width)


def read(path_or_hub_id: str | Path, format: str | None = None) -> LoadedSAE:
    """One SAE with its format, source and metadata, from a local path or a Hugging Face hub id
    (`owner/repo/folder`), in any format `saescope.release.interop` reads."""
    return interop.read(hub.resolve(path_or_hub_id), format)


def load(path: str | Path, format: str | None = None) -> SAE | SkipTranscoder:
    """Load an SAE: saescope's trained or released folders, Gemma Scope 1 (`params.npz`), Gemma
    Scope 2 (`params.safetensors`), SAELens or sparsify folders, locally or by hub id. The format
    is detected from the files unless named (one of `interop.FORMATS`)."""
    return read(path, format).sae


def release(out: str | Path, dest: str | Path | None = None) -> Path:
    """Copy every evaluated SAE of a run into the Gemma Scope layout; write suite.json."""
    out = Path(out)
    dest = Path(dest) if dest else out / "release"
    trained = sorted(p for p in (out / "saes").glob("*") if (p / "metrics.json").exists())
    if not trained:
        raise SaescopeError(f"no evaluated SAEs in {out / 'saes'}: run `saescope evaluate --out {out}` first")
    with replacing(dest, "--dest", "suite.json", KIND_FOLDERS.values()) as tmp:
        _write_release(trained, tmp)
    return dest


def _write_release(trained: list[Path], tmp: Path) -> None:
    """Every SAE folder of `trained` in the layout, and suite.json, written into `tmp`."""
    entries = []
    for folder in trained:
        config = read_json_with(folder / "config.json", *SAE_CONFIG_KEYS, "sparsity_coefficient", "architecture")
        metrics = read_json_with(folder / "metrics.json", "l0", "fvu")
        sae = load(folder)
        params = sae.params_npz()
        affine = "_affine" if "affine_skip_connection" in params else ""
        kind = "transcoders" if config.get("transcoder") else KIND_FOLDERS[config["site"]]
        rel = Path(kind, f"layer_{config['layer']}", f"width_{width_name(config['d_sae'])}",
                   f"average_l0_{round(metrics['l0'])}{affine}")
        if any(e["path"] == str(rel) for e in entries):  # two coefficients landed on the same rounded L0
            rel = rel.with_name(f"{rel.name}_c{config['sparsity_coefficient']:g}")
        target = tmp / rel
        target.mkdir(parents=True)
        np.savez(target / "params.npz", **params)
        (target / "config.json").write_text(strict_json(config, indent=2))
        (target / "metrics.json").write_text(strict_json(metrics))
        entries.append({"path": str(rel), "site": config["site"], "layer": config["layer"], "width": config["d_sae"],
                        "architecture": config["architecture"], "average_l0": metrics["l0"], "fvu": metrics["fvu"],
                        "delta_loss": metrics.get("delta_loss"), "ce_loss_recovered": metrics.get("ce_loss_recovered"),
                        "trained": folder.name})
    first = read_json(trained[0] / "config.json")
    write_json_atomic(tmp / "suite.json", {"format": "gemma-scope-1", "model": first.get("model"),
                                           "model_name": first.get("model_name"), "saes": entries})
