"""`saescope browse RUN --export DIR`: the suite as static HTML files, for sharing without a server.

The same renderers as the live app write the pages, with relative links, so the folder can be
opened from disk or put on any static host. Prompt, steering and search need the model or the
database and are left out; the latent tables keep client-side sorting and filtering. Every page
is complete: the logit lens of each exported latent is computed first where the server has not
stored it yet (`ondemand`, one SAE at a time).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm

from saescope.browse import render
from saescope.browse.app import STATIC
from saescope.browse.db import FeatureDB, db_path
from saescope.browse.live import Live
from saescope.browse.ondemand import OnDemand
from saescope.errors import SaescopeError
from saescope.outputs import check_replaceable, replacing

SITE_FILES = ("index.html", ("static", "sae"))  # a previous export's index and what else it holds


def export_site(run: str | Path, dest: str | Path, latents_per_sae: int = 0, progress: bool = True) -> Path:
    """Write DEST/index.html, DEST/sae/<name>/index.html and one page per latent.

    `latents_per_sae` > 0 keeps only that many latents per SAE (the most frequent ones), for a
    smaller site; the SAE tables still list every latent, linking only the exported ones.
    """
    run, dest = Path(run).resolve(), check_destination(run, dest)
    db = FeatureDB(db_path(run))
    ondemand = OnDemand(run, db, Live(run, db).model)
    with replacing(dest, "--export", *SITE_FILES) as tmp:
        _write_site(db, ondemand, tmp, latents_per_sae, progress)
    return dest


def check_destination(run: str | Path, dest: str | Path) -> Path:
    """The export folder, resolved, if it may be written: not inside the run's own folders, and
    empty, new or a previous export (checked before the statistics, which can take minutes)."""
    run, dest = Path(run).resolve(), Path(dest).resolve()
    own = [run] + [run / d for d in ("saes", "activations", "release", "train", "browse")]
    if any(dest == d or d in dest.parents for d in own[1:]) or dest == run:
        raise SaescopeError(
            f"export folder {dest} would mix with the run's own files: choose a folder "
            f"outside {run} or a new subfolder such as {run / 'site'}"
        )
    return check_replaceable(dest, "--export", *SITE_FILES)


def _write_site(db: FeatureDB, ondemand: OnDemand, dest: Path, latents_per_sae: int, progress: bool) -> None:
    """Every page of the site into `dest` (a fresh temporary folder)."""
    shutil.copytree(STATIC, dest / "static", dirs_exist_ok=True)
    (dest / "index.html").write_text(render.overview(db, render.Links("", True)), encoding="utf-8")
    links = render.Links("../../", True)
    total = sum(min(s.d_sae, latents_per_sae or s.d_sae) for s in db.saes.values())
    bar = tqdm(total=total, desc="export", unit="page", dynamic_ncols=True, disable=not progress)
    for name in db.saes:
        ondemand.logits(name, list(range(db.saes[name].d_sae)))  # the SAE table lists every latent's top logits
        rows = db.latent_table(name, "frequency DESC")
        chosen = [r[0] for r in (rows[:latents_per_sae] if latents_per_sae else rows)]
        folder = dest / "sae" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.html").write_text(render.sae_page(db, name, links, exported=set(chosen)), encoding="utf-8")
        for row in ondemand.views(name, chosen):
            (folder / f"{row.latent}.html").write_text(render.latent_page(db, row, links), encoding="utf-8")
            bar.update()
    bar.close()
