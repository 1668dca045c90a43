"""`saescope export`: one SAE or a whole suite (a run folder, a release, any folder of SAEs, or a
hub id) written in another tool's format.

A suite's folders are named and written by `suite.py`, the code `saescope release` uses too, so
`export --format gemma-scope` and `release` put the same SAE in the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from saescope.activations.store import run_store_path
from saescope.errors import SaescopeError
from saescope.outputs import replacing, strict_json
from saescope.release import hub, interop
from saescope.release.loaded import LoadedSAE
from saescope.release.suite import Writer, format_writer, write_suite

EXPORT_FORMATS = ("gemma-scope", "gemma-scope-2", "saelens", "sparsify", "neuronpedia")


def export(
    src: str | Path,
    dest: str | Path,
    fmt: str,
    *,
    source_format: str | None = None,
    store: str | Path | None = None,
    model: str | None = None,
) -> list[Path]:
    """Write every SAE found at `src` into `dest` in format `fmt`; returns the folders written.

    A single SAE is written into `dest` itself; a suite gets one subfolder per SAE. For
    Neuronpedia, `store` (default: the run's `activations/` when `src` is a run folder) adds top
    activations and `model` (default: the model recorded with the SAE) adds logit-lens tokens."""
    if fmt not in EXPORT_FORMATS:
        raise SaescopeError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    src_path, dest = hub.resolve(src), Path(dest)
    folders = _suite_folders(src_path, source_format)
    if store is None and Path(run_store_path(src_path), "store.json").exists():
        store = run_store_path(src_path)  # a run folder: the store its SAEs were trained on
    write = _neuronpedia_writer(store, model) if fmt == "neuronpedia" else format_writer(fmt)
    with replacing(dest, "DEST", "export.json", _export_names(dest)) as tmp:
        if folders is None:
            write(interop.read(src_path, source_format), src_path, tmp)
            written = [Path()]
        else:
            written = [rel for rel, _ in write_suite(folders, fmt, tmp, source_format=source_format, write=write)]
        (tmp / "export.json").write_text(
            strict_json({"format": fmt, "source": str(src), "saes": [str(rel) for rel in written]}, indent=2)
        )
    return [dest / rel for rel in written]


def _suite_folders(src: Path, source_format: str | None) -> list[Path] | None:
    """The SAE folders under `src`, or None when `src` is one SAE (or `--source-format` says so)."""
    if source_format is not None:
        return None
    try:
        interop.detect_format(src)
        return None
    except SaescopeError:
        folders = interop.find_saes(src)
        if not folders:
            raise
        return folders


def _neuronpedia_writer(store: str | Path | None, model: str | None) -> Writer:
    """Neuronpedia batches need the SAE's own folder (its metrics, its run's store and model)."""

    def write(loaded: LoadedSAE, source: Path, target: Path) -> None:
        # Imported here: it pulls in the browser's statistics, which a format conversion never needs.
        from saescope.release.neuronpedia import export_neuronpedia

        export_neuronpedia(source, target, store=store, model_dir=model)

    return write


def _export_names(dest: Path) -> set[str]:
    """What a previous export in `dest` holds at its top: its index and the folders or files of the
    SAEs it lists (anything else there is the user's and stops the export)."""
    try:
        listed = json.loads((dest / "export.json").read_text())["saes"]
        return {Path(p).parts[0] if Path(p).parts else "" for p in listed} | (
            {p.name for p in dest.iterdir() if p.is_file()} if "." in listed else set()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return set()
