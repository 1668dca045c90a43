"""`saescope export`: one SAE or a whole suite (a run folder, a release, any folder of SAEs, or a
hub id) written in another tool's format.

Folder names in a suite export follow each tool's conventions, so the result can be uploaded as
is: Gemma Scope 1 `<kind>/layer_L/width_W/average_l0_N`, Gemma Scope 2
`<resid_post|mlp_out|attn_out|transcoder>/layer_L_width_W_l0_N`, SAELens
`<TransformerLens hook>/width_W_l0_N`, sparsify `<module path>_width_W_l0_N` and Neuronpedia
`<kind>-<layer>/width_W_l0_N/batch-*.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from saescope.errors import SaescopeError
from saescope.outputs import replacing, strict_json
from saescope.release import hub, interop
from saescope.release.formats import KIND_FOLDERS, width_name
from saescope.release.hooks import GEMMA_SCOPE_2_FOLDERS, hf_hook, model_type_of, tl_hook
from saescope.release.loaded import LoadedSAE

EXPORT_FORMATS = ("gemma-scope", "gemma-scope-2", "saelens", "sparsify", "neuronpedia")


def target_folder(fmt: str, loaded: LoadedSAE, fallback: str) -> Path:
    """Where one SAE of a suite goes inside the export, by the target tool's conventions."""
    meta, sae = loaded.meta, loaded.sae
    kind, layer = meta.get("site"), meta.get("layer")
    if kind is None or layer is None:
        return Path(fallback)
    l0 = loaded.metrics.get("l0")
    l0_name = str(round(l0)) if l0 is not None else "unknown"
    width = width_name(sae.d_sae)
    if fmt == "gemma-scope":
        return Path(KIND_FOLDERS[kind], f"layer_{layer}", f"width_{width}", f"average_l0_{l0_name}")
    if fmt == "gemma-scope-2":
        return Path(GEMMA_SCOPE_2_FOLDERS[kind], f"layer_{layer}_width_{width}_l0_{l0_name}")
    if fmt == "saelens":
        return Path(meta.get("hook_name") or tl_hook(kind, layer), f"width_{width}_l0_{l0_name}")
    if fmt == "sparsify":
        model_type = model_type_of(meta)
        hook = hf_hook(kind, layer, model_type).rsplit(".", 1)[0] if model_type else f"{kind}.{layer}"
        return Path(f"{hook}_width_{width}_l0_{l0_name}")
    return Path(f"{kind}-{layer}", f"width_{width}_l0_{l0_name}")


def export(src: str | Path, dest: str | Path, fmt: str, *, source_format: str | None = None,
           store: str | Path | None = None, model: str | None = None) -> list[Path]:
    """Write every SAE found at `src` into `dest` in format `fmt`; returns the folders written.

    A single SAE is written into `dest` itself; a suite gets one subfolder per SAE. For
    Neuronpedia, `store` (default: the run's `activations/` when `src` is a run folder) adds top
    activations and `model` (default: the model recorded with the SAE) adds logit-lens tokens."""
    if fmt not in EXPORT_FORMATS:
        raise SaescopeError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    src_path, dest = hub.resolve(src), Path(dest)
    try:
        interop.detect_format(src_path) if source_format is None else None
        folders, single = [src_path], True
    except SaescopeError:
        folders, single = interop.find_saes(src_path), False
        if not folders:
            raise
    if store is None and (src_path / "activations" / "store.json").exists():
        store = src_path / "activations"
    written: list[Path] = []
    with replacing(dest, "DEST", "export.json", _export_names(dest)) as tmp:
        used: set[Path] = set()
        for folder in folders:
            loaded = interop.read(folder, source_format)
            rel = Path() if single else target_folder(fmt, loaded, folder.name)
            while rel in used and not single:  # two SAEs with the same site, width and rounded L0
                rel = rel.with_name(rel.name + "_b")
            used.add(rel)
            if fmt == "neuronpedia":
                from saescope.release.neuronpedia import export_neuronpedia

                export_neuronpedia(folder, tmp / rel, store=store, model_dir=model)
            else:
                interop.WRITERS[fmt](loaded.sae, loaded.meta, loaded.metrics, tmp / rel)
            written.append(dest / rel)
        (tmp / "export.json").write_text(strict_json({"format": fmt, "source": str(src),
                                                      "saes": [str(p.relative_to(dest)) for p in written]}, indent=2))
    return written


def _export_names(dest: Path) -> set[str]:
    """What a previous export in `dest` holds at its top: its index and the folders or files of the
    SAEs it lists (anything else there is the user's and stops the export)."""
    try:
        listed = json.loads((dest / "export.json").read_text())["saes"]
        return {Path(p).parts[0] if Path(p).parts else "" for p in listed} | (
            {p.name for p in dest.iterdir() if p.is_file()} if "." in listed else set())
    except (OSError, ValueError, KeyError, TypeError):
        return set()
