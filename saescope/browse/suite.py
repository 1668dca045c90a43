"""The SAEs of a run folder, found by listing `RUN/saes/*/config.json`.

Every name the browser accepts from a URL or a form is looked up in this listing, never joined onto
a path, which is what keeps request parameters from reaching files outside the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saescope.errors import SaescopeError
from saescope.models.sites import Site


@dataclass(frozen=True)
class SuiteSAE:
    name: str
    folder: Path
    site: Site
    d_sae: int
    d_in: int
    config: dict

    def weights_signature(self) -> str:
        """Changes whenever the weights file is rewritten (retraining), without hashing it."""
        stat = (self.folder / "sae.safetensors").stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def metrics(self) -> dict:
        """The scalar evaluation metrics and the loss by position and topic, if `saescope evaluate`
        has run (not the per-latent lists, which the latent rows hold)."""
        path = self.folder / "metrics.json"
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        return {k: v for k, v in data.items() if not isinstance(v, (list, dict)) or k in ("by_position", "by_topic")}


def list_saes(run: str | Path) -> list[SuiteSAE]:
    run = Path(run)
    if not run.is_dir():
        raise SaescopeError(f"run folder {run} does not exist: pass a folder made by `saescope run`")
    out = []
    for cfg_path in sorted((run / "saes").glob("*/config.json")):
        folder = cfg_path.parent
        if not (folder / "sae.safetensors").exists():
            continue
        cfg = json.loads(cfg_path.read_text())
        out.append(
            SuiteSAE(
                folder.name, folder, Site(int(cfg["layer"]), cfg["site"]), int(cfg["d_sae"]), int(cfg["d_in"]), cfg
            )
        )
    if not out:
        raise SaescopeError(f"no trained SAEs in {run / 'saes'}: run `saescope run --out {run}` first")
    return sorted(out, key=lambda s: (s.site.kind, s.site.layer, s.name))


def adjacent(sae: SuiteSAE, suite: list[SuiteSAE]) -> list[SuiteSAE]:
    """SAEs of the same site kind one layer up or down, preferring the same width and sparsity."""
    out = []
    for layer in (sae.site.layer - 1, sae.site.layer + 1):
        same_site = [s for s in suite if s.site == Site(layer, sae.site.kind)]
        best = sorted(
            same_site,
            key=lambda s: (
                s.d_sae != sae.d_sae,
                s.config.get("sparsity_coefficient") != sae.config.get("sparsity_coefficient"),
                s.name,
            ),
        )
        out += best[:1]
    return out
