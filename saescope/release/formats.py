"""Write a suite in Gemma Scope's layout and load any saved SAE back.

Release layout (one tree per site kind, as Gemma Scope shipped one repository per kind):

    <release>/suite.json
    <release>/<res|mlp|att|transcoders>/layer_<L>/width_<16k|65k|...>/average_l0_<N>/
        params.npz    W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold; float32
        config.json   model, site, layer, d_in, width, architecture, sparsity coefficient, tokens, scale
        metrics.json

Folder names, collisions included, follow `release/suite.py`, the rule `saescope export --format
gemma-scope` uses too: transcoders (`mlp_in.L` -> `mlp.L`) go under `transcoders/`, and a skip
transcoder's folder ends in `_affine` (its params.npz adds `affine_skip_connection [d_in, d_out]`).

The arrays are folded, so the reference forward `pre = x @ W_enc + b_enc; acts = (pre > threshold)
* relu(pre); recon = acts @ W_dec + b_dec` works on raw activations. Nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path

from saescope.errors import SaescopeError
from saescope.io import write_json_atomic
from saescope.outputs import replacing
from saescope.release import hub, interop
from saescope.release.files import read_json_with
from saescope.release.loaded import LoadedSAE
from saescope.release.suite import KIND_FOLDERS, write_suite
from saescope.saes.base import SAE
from saescope.saes.skip_transcoder import SkipTranscoder

SAE_CONFIG_KEYS = ("site", "layer", "d_sae")  # what every job reads from a trained SAE's config.json


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
    for folder in trained:  # a damaged folder stops the release with one line, before anything is written
        read_json_with(folder / "config.json", *SAE_CONFIG_KEYS, "sparsity_coefficient", "architecture")
        read_json_with(folder / "metrics.json", "l0", "fvu")
    with replacing(dest, "--dest", "suite.json", KIND_FOLDERS.values()) as tmp:
        written = write_suite(trained, "gemma-scope", tmp)
        write_json_atomic(tmp / "suite.json", _suite_index(written, trained))
    return dest


def _suite_index(written: list[tuple[Path, LoadedSAE]], trained: list[Path]) -> dict:
    """suite.json: one entry per released folder with the numbers a model card shows."""
    entries = []
    for (rel, loaded), folder in zip(written, trained):
        meta, metrics = loaded.meta, loaded.metrics
        entries.append(
            {
                "path": str(rel),
                "site": meta["site"],
                "layer": meta["layer"],
                "width": meta["d_sae"],
                "architecture": meta["architecture"],
                "average_l0": metrics["l0"],
                "fvu": metrics["fvu"],
                "delta_loss": metrics.get("delta_loss"),
                "ce_loss_recovered": metrics.get("ce_loss_recovered"),
                "trained": folder.name,
            }
        )
    first = written[0][1].meta
    return {
        "format": "gemma-scope-1",
        "model": first.get("model"),
        "model_name": first.get("model_name"),
        "saes": entries,
    }
