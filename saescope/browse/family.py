"""A latent's family across widths on its page: its parent in the next narrower SAE of the same
site, family and sparsity value, and its children in the next wider one (`evaluate/splitting.py`'s
pairing and decoder-cosine matching, computed per view from the decoders `ondemand` keeps, like the
neighbours).

Parent: the narrower SAE's latent of largest decoder cosine; below MIN_COSINE it is shown as the
nearest only and the latent as novel. Children: the wider SAE's latents whose parent this latent is
(cosine >= MIN_COSINE). Finding them exactly takes every wide row against the narrow decoder, so a
page looks only at the CANDIDATES wide latents nearest to this one: a parent with more children
than that lists its nearest CANDIDATES (the `saescope evaluate` suite's splitting results hold all).
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

import torch

from saescope.browse import lens
from saescope.evaluate.splitting import MIN_COSINE, decoder_parents, ranked, width_pairs

if TYPE_CHECKING:
    from saescope.browse.db import LatentRow
    from saescope.browse.ondemand import OnDemand
    from saescope.browse.render import Links

CANDIDATES = 32
BLOCK = 1024  # narrow latents per similarity matrix (BLOCK x wide width floats)


def attach(ondemand: OnDemand, name: str, latents: list[int], out: list[dict]) -> None:
    """Adds "family" ({"parent": ..., "children": ...}, each None without a narrower or wider SAE)
    to each latent's neighbours dict in `out`."""
    pairs = width_pairs({n: s.config for n, s in ondemand.suite.items()})
    narrower = next((a for a, b in pairs if b == name), None)
    wider = next((b for a, b in pairs if a == name), None)
    own, index = ondemand.decoder(name), torch.tensor(latents)
    parents = children = [None] * len(latents)
    if narrower is not None:
        cos, parent = decoder_parents(ondemand.decoder(narrower), own[index])
        parents = [
            _side(ondemand, narrower, lens.pairs(parent[j : j + 1], cos[j : j + 1])) for j in range(len(latents))
        ]
    if wider is not None:
        children = [_side(ondemand, wider, items) for items in _children(own, ondemand.decoder(wider), index)]
    for j in range(len(latents)):
        out[j]["family"] = {"parent": parents[j], "children": children[j]}


def _side(ondemand: OnDemand, name: str, items: list[list]) -> dict:
    return {"sae": name, "width": ondemand.suite[name].d_sae, "items": items}


def _children(narrow: torch.Tensor, wide: torch.Tensor, latents: torch.Tensor) -> list[list[list]]:
    """Per narrow latent: [[wide latent, cosine], ...] of its children among its CANDIDATES nearest
    wide latents, best first."""
    blocks = range(0, len(latents), BLOCK)  # an export asks for every latent at once
    near = torch.cat([lens.nearest(narrow[latents[lo : lo + BLOCK]], wide, CANDIDATES)[1] for lo in blocks])
    candidates, where = torch.unique(near, return_inverse=True)
    parent_cos, parent = (t[where] for t in decoder_parents(narrow, wide[candidates]))
    mine = (parent == latents[:, None]) & (parent_cos >= MIN_COSINE)
    return [ranked(lens.pairs(near[j][mine[j]], parent_cos[j][mine[j]])) for j in range(len(latents))]


def section(row: LatentRow, links: Links) -> str:
    """The page's "Across widths" section; empty for a latent of an SAE with no other width."""
    family = (row.neighbours or {}).get("family") or {}
    parent, children = family.get("parent"), family.get("children")
    if parent is None and children is None:
        return ""

    def e(text: object) -> str:
        return escape(str(text), quote=True)

    def chips(side: dict) -> str:
        return " ".join(
            f'<a class="chip" href="{e(links.latent(side["sae"], i))}">#{i} ({c:.2f})</a>' for i, c in side["items"]
        )

    def where(side: dict) -> str:
        return f"<code>{e(side['sae'])}</code> (width {side['width']})"

    body = '<h2>Across widths (decoder cosine)</h2><div id="family">'
    if parent is not None:
        novel = parent["items"][0][1] < MIN_COSINE
        label = f"no parent (cosine below {MIN_COSINE}): a novel latent; nearest" if novel else "parent"
        body += f"<p>{label} in {where(parent)}: {chips(parent)}</p>"
    if children is not None:
        found = chips(children) or f"none with cosine >= {MIN_COSINE}"
        body += f"<p>children in {where(children)}: {found}</p>"
    return body + "</div>"
