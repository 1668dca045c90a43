"""Weight-only latent statistics: the logit lens and the nearest latents by decoder cosine.

These are the only implementation: the browser's pages and background fill and the Neuronpedia
export (`release/neuronpedia.py`) call `residual_directions`, `logit_lens` and `neighbours`, so a
latent lists the same tokens and the same neighbours wherever it is shown.

Logit lens. A latent writes its decoder row into the residual stream; the final norm then scales
each dimension and the unembedding turns the result into logits. We drop the norm's data-dependent
division (it only rescales the whole vector) and keep its per-dimension scale, as the model
family's row in `models/sites.py` defines it (`1 + weight` for Gemma's RMSNorm).
- `res` and `mlp` decoder rows already live in the residual stream (Gemma's mlp site is after the
  post-MLP norm).
- `att` rows live in the concatenated head outputs: they go through the attention output
  projection first (bias removed), then through the scale of the family's post-attention norm
  where it has one (Gemma 2/3).
- `mlp_in` rows are the MLP's normalised input, not a residual direction: the lens is not
  applicable there and the page says so.

The unembedding is huge (Gemma 3: 262k tokens), so logits are computed in bfloat16 over vocabulary
chunks, and only the candidates for the top/bottom lists are recomputed exactly in float32 from the
model's own matrix (no float32 copy of it is made). One latent costs one pass over the bfloat16
matrix (tens of milliseconds); a block of latents shares that pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from saescope.models.sites import Site, blocks, family_of

TOP_TOKENS = 10
LOGIT_BINS = 24
VOCAB_CHUNK = 32768
LATENT_BLOCK = 128
CANDIDATES = 3 * TOP_TOKENS
LENS_KINDS = ("res", "mlp", "att")  # site kinds whose decoder rows map into the residual stream
NEIGHBOURS = 6  # nearest latents listed in the same SAE (a page adds half as many per adjacent layer)


def residual_directions(model: nn.Module, site: Site, W_dec: torch.Tensor) -> torch.Tensor | None:
    """Decoder rows mapped into the residual stream (None where the lens does not apply)."""
    if site.kind not in LENS_KINDS:
        return None
    W = W_dec.detach().float()
    if site.kind != "att":
        return W
    family = family_of(model)
    block = blocks(model)[site.layer]
    proj = block.get_submodule(family.att[0])
    with torch.no_grad():
        p = next(proj.parameters())
        out = proj(W.to(p.dtype)).float() - proj(torch.zeros(1, W.shape[1], dtype=p.dtype)).float()
    if family.post_att_norm:
        out = out * family.norm_scale(block.get_submodule(family.post_att_norm))
    return out


@dataclass
class Unembedding:
    """The unembedding with the final norm's per-dimension scale folded in: a bfloat16 copy for the
    sweep over the vocabulary, and exact float32 rows on request from the model's own matrix."""

    weight: torch.Tensor  # [vocab, d_model], the model's parameter (not copied)
    scale: torch.Tensor  # [d_model]
    low: torch.Tensor  # bfloat16 [vocab, d_model]: weight * scale

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.weight[index].float() * self.scale


def unembedding(model: nn.Module) -> Unembedding:
    fam = family_of(model)
    weight = model.get_submodule(fam.unembed).weight.detach()
    scale = fam.norm_scale(model.get_submodule(fam.final_norm))
    low = torch.empty(weight.shape, dtype=torch.bfloat16)
    for v0 in range(0, len(weight), VOCAB_CHUNK):  # chunked: no float32 copy of the whole matrix
        low[v0 : v0 + VOCAB_CHUNK] = weight[v0 : v0 + VOCAB_CHUNK].float() * scale
    return Unembedding(weight, scale, low)


@torch.no_grad()
def logit_lens(directions: torch.Tensor, W_U: Unembedding, pause: Callable[[], object] | None = None) -> list[dict]:
    """Per latent: top/bottom tokens with exact logits and a histogram of all its logits. `pause` is
    called before each vocabulary chunk (the background fill waits there while a page is served)."""
    W_U_low = W_U.low
    vocab = W_U_low.shape[0]
    k = min(CANDIDATES, vocab)
    out = []
    for lo in range(0, len(directions), LATENT_BLOCK):
        d = directions[lo : lo + LATENT_BLOCK]
        d_low = d.bfloat16()
        top_v = torch.full((len(d), 0), 0.0)
        top_i = torch.zeros((len(d), 0), dtype=torch.long)
        bot_v, bot_i = top_v.clone(), top_i.clone()
        chunks = []
        for v0 in range(0, vocab, VOCAB_CHUNK):
            if pause is not None:
                pause()
            logits = (d_low @ W_U_low[v0 : v0 + VOCAB_CHUNK].T).float()
            chunks.append(logits.to(torch.float16))  # kept only for the histogram
            tv, ti = logits.topk(min(k, logits.shape[1]), dim=1)
            bv, bi = (-logits).topk(min(k, logits.shape[1]), dim=1)
            top_v, top_i = _merge(top_v, top_i, tv, ti + v0, k)
            bot_v, bot_i = _merge(bot_v, bot_i, bv, bi + v0, k)
        lo_edge = torch.stack([c.amin(1) for c in chunks], 1).float().amin(1)
        hi_edge = torch.stack([c.amax(1) for c in chunks], 1).float().amax(1)
        span = (hi_edge - lo_edge).clamp_min(1e-12)
        counts = torch.zeros(len(d), LOGIT_BINS, dtype=torch.long)
        for c in chunks:  # a second sweep over the kept chunks: the bin edges needed the extremes
            bins = ((c.float() - lo_edge[:, None]) / span[:, None] * LOGIT_BINS).long().clamp_(0, LOGIT_BINS - 1)
            counts.scatter_add_(1, bins, torch.ones_like(bins))
        for j in range(len(d)):
            exact_top = d[j] @ W_U.rows(top_i[j]).T
            exact_bot = d[j] @ W_U.rows(bot_i[j]).T
            ot = exact_top.argsort(descending=True)[:TOP_TOKENS]
            ob = exact_bot.argsort()[:TOP_TOKENS]
            out.append(
                {
                    "top": [[int(top_i[j, i]), round(float(exact_top[i]), 4)] for i in ot],
                    "bottom": [[int(bot_i[j, i]), round(float(exact_bot[i]), 4)] for i in ob],
                    "hist": {"lo": float(lo_edge[j]), "hi": float(hi_edge[j]), "counts": counts[j].tolist()},
                }
            )
    return out


def _merge(values: torch.Tensor, index: torch.Tensor, new_v: torch.Tensor, new_i: torch.Tensor, k: int):
    v = torch.cat([values, new_v], 1)
    i = torch.cat([index, new_i], 1)
    keep = v.topk(min(k, v.shape[1]), dim=1).indices
    return v.gather(1, keep), i.gather(1, keep)


@torch.no_grad()
def nearest(
    rows: torch.Tensor, W: torch.Tensor, k: int = 6, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k decoder cosines of some decoder rows against all rows of W; `exclude[j]` is the index in
    W of row j itself (same SAE), left out of its own list. W's norms divide the products rather
    than a normalised copy of W being made: a page asks for one row against three decoders."""
    a = nn.functional.normalize(rows.detach().float(), dim=1)
    W = W.detach().float()
    if a.shape[1] != W.shape[1]:
        raise ValueError("decoders of different widths cannot be compared")
    cos = (a @ W.T) / W.norm(dim=1).clamp_min(1e-12)
    if exclude is not None:
        cos[torch.arange(len(a)), exclude] = -2.0
    values, index = cos.topk(min(k, cos.shape[1]), dim=1)
    return values, index


def neighbours(W: torch.Tensor, latents: torch.Tensor, k: int = NEIGHBOURS) -> list[list[list]]:
    """Per latent, its nearest latents in its own SAE as [[latent, cosine], ...] (cosines to four
    places): what a page lists and what the Neuronpedia export writes, from this one function."""
    values, index = nearest(W[latents], W, k, exclude=latents)
    return [pairs(index[j], values[j]) for j in range(len(latents))]


def pairs(index: torch.Tensor, values: torch.Tensor) -> list[list]:
    """[[latent, cosine], ...] as pages and the database's JSON hold them."""
    return [[int(i), round(float(v), 4)] for i, v in zip(index, values)]
