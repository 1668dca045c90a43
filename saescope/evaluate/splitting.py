"""Feature splitting across widths: which latents of a wider SAE refine a latent of a narrower one,
and which see something the narrower SAE misses.

SAEs of one site trained at several widths (`--widths 1024,4096`, same family and sparsity value)
are paired by consecutive width. Each latent of the wide SAE (a child) gets a parent, the latent of
the narrow SAE nearest to it, two ways:

- decoder cosine: the parent's decoder row has the largest cosine with the child's. A child whose
  best cosine is below `min_cosine` has no good parent: a *novel* latent (the Gemma Scope paper's
  open question of how much wider SAEs see that narrow ones miss; Bussmann and Leask, "Stitching
  SAEs of different sizes", 2024, draw the same line between novel and split latents).
- co-activation on held-out rows of the store: the parent's firing pattern (the tokens it fires on)
  has the largest cosine with the child's, |both| / sqrt(|child| |parent|). The parent is good
  when it fires on at least `min_containment` of the child's tokens.

Thresholds. If a parent's direction is the mean of k orthogonal children, its cosine to each is
1/sqrt(k): 0.71 for two children, 0.5 for four. MIN_COSINE = 0.5 thus admits four-way splits of
orthogonal children and more of children that share the parent's direction, while staying far
above chance (640 dimensions: random unit vectors have cosine sd 0.04, the best of 2048 about 0.16).
The firing cosine mirrors it: a child firing on a share s of its parent's tokens (and only there)
has firing cosine sqrt(s). MIN_CONTAINMENT = 0.5: the parent fires on most of the child's tokens.

Per parent we report its number of children and its coverage: the share of the tokens it fires on
where at least one of its children fires too (1.0: the children together still see everything the
parent saw; low: the wide SAE dropped part of the concept, or spends it on novel latents).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import torch

from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore, run_store
from saescope.browse import lens
from saescope.errors import SaescopeError
from saescope.io import read_json
from saescope.models.sites import Site
from saescope.saes.base import SAE

MIN_COSINE = 0.5
MIN_CONTAINMENT = 0.5
MAX_ROWS = 16384  # held-out rows encoded per pair: two SAEs' encodes, a few seconds on 2 cores
BATCH = 4096  # rows (and wide latents) per block
SAE_FIX = "train or evaluate it again"


# ---- which SAEs pair up, and on which rows ------------------------------------------------------------


def family_key(config: dict) -> tuple:
    """What must be equal for two SAEs to differ only by width: family, site (a transcoder's target
    too) and sparsity value."""
    family = config.get("family", config.get("architecture"))
    return family, config["site"], int(config["layer"]), config.get("target_site"), config.get("sparsity_coefficient")


def width_pairs(configs: dict[str, dict]) -> list[tuple[str, str]]:
    """(narrow, wide) names of SAEs with the same family_key at consecutive widths, from their
    config.json contents by name. The browser's latent page and the suite use this one rule."""
    ladders: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for name, config in configs.items():
        ladders[family_key(config)].append((int(config["d_sae"]), name))
    pairs = []
    for ladder in ladders.values():
        ladder.sort()
        pairs += [(a, b) for (wa, a), (wb, b) in zip(ladder, ladder[1:]) if wa < wb]
    return sorted(pairs)


def splitting_pairs(out: Path) -> list[tuple[str, str]]:
    """The (narrow, wide) SAE folder names of a run to compare; empty when no site has two widths."""
    folders = sorted(p.parent for p in Path(out, "saes").glob("*/config.json"))
    return width_pairs({f.name: read_json(f / "config.json", SAE_FIX) for f in folders})


def eval_rows(store: ActivationStore | Path, site: str, eval_shards: int = 1, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """Up to `max_rows` held-out rows of `site` (the split `saescope evaluate` scores on), float32."""
    loader = ShuffledLoader(store, [site], batch_size=BATCH, split="eval", eval_shards=eval_shards, drop_last=False)
    rows, n = [], 0
    for batch in loader:
        rows.append(batch.acts[site][: max_rows - n])
        n += len(rows[-1])
        if n >= max_rows:
            break
    return torch.cat(rows).float()


def ranked(pairs: list[list]) -> list[list]:
    """[[latent, score], ...] best first, ties (to the four places kept) by latent: the evaluation and
    a page computing the same cosines in other blocks list children in the same order."""
    return sorted(pairs, key=lambda p: (-p[1], p[0]))


# ---- the matching ------------------------------------------------------------------------------------


@torch.no_grad()
def decoder_parents(narrow: torch.Tensor, wide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per wide decoder row: the largest cosine with a narrow row, and that row's index (the page's
    decoder-cosine neighbours, `lens.nearest`, on blocks of wide rows)."""
    best = [lens.nearest(wide[lo : lo + BATCH], narrow, 1) for lo in range(0, len(wide), BATCH)]
    return torch.cat([v[:, 0] for v, _ in best]), torch.cat([i[:, 0] for _, i in best])


@torch.no_grad()
def firings(sae: SAE, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, latent) indices of every firing of the SAE on the rows: rows x L0 pairs, never rows x width."""
    device = sae.W_dec.device
    found = []
    for lo in range(0, len(rows), BATCH):
        r, latent = (sae.encode(rows[lo : lo + BATCH].to(device).float()) > 0).nonzero(as_tuple=True)
        found.append((r.cpu() + lo, latent.cpu()))
    return torch.cat([r for r, _ in found]), torch.cat([latent for _, latent in found])


def _incidence(rows: torch.Tensor, latents: torch.Tensor, shape: tuple[int, int], transpose: bool) -> torch.Tensor:
    index = torch.stack([latents, rows] if transpose else [rows, latents])
    return torch.sparse_coo_tensor(index, torch.ones(len(rows)), shape, check_invariants=False)


@torch.no_grad()
def coactivation_parents(fired_n, fired_w, n_rows: int, d_narrow: int, d_wide: int) -> tuple[torch.Tensor, ...]:
    """Per wide latent: the narrow latent whose firing pattern has the largest cosine with its own,
    that cosine, and the share of its firings on which that parent fires (containment); -1, 0, 0
    for a wide latent that never fired. Co-firing counts are one sparse product."""
    count_n = torch.bincount(fired_n[1], minlength=d_narrow).float()
    count_w = torch.bincount(fired_w[1], minlength=d_wide).float()
    with warnings.catch_warnings():  # torch calls its own sparse product "beta"; its result is exact counts
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        both = torch.sparse.mm(
            _incidence(*fired_w, (d_wide, n_rows), True), _incidence(*fired_n, (n_rows, d_narrow), False)
        ).coalesce()
    (child, parent), shared = both.indices(), both.values()
    score = shared / (count_w[child] * count_n[parent]).sqrt()
    best = torch.zeros(d_wide).scatter_reduce(0, child, score, "amax")
    first = torch.where(score == best[child], parent, d_narrow)  # ties: the lowest narrow index
    index = torch.full((d_wide,), d_narrow).scatter_reduce(0, child, first, "amin")
    chosen = parent == index[child]
    containment = torch.zeros(d_wide).index_put_((child[chosen],), shared[chosen] / count_w[child[chosen]])
    index[index == d_narrow] = -1
    return index, best, containment


def coverage(parent: torch.Tensor, fired_n, fired_w, d_narrow: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per narrow latent: on how many of its firing tokens one of its children (wide latents with
    `parent` equal to it; -1: none) fires, and on how many tokens it fires."""
    rows, child = fired_w
    p = parent[child]
    covered = torch.unique(rows[p >= 0] * d_narrow + p[p >= 0])
    rows_n, latent_n = fired_n
    hit = torch.isin(rows_n * d_narrow + latent_n, covered)
    return torch.bincount(latent_n[hit], minlength=d_narrow), torch.bincount(latent_n, minlength=d_narrow)


def summary(parent: torch.Tensor, score: torch.Tensor, good: torch.Tensor, fired_n, fired_w, d_narrow: int) -> dict:
    """The numbers of one matching and its per-latent lists: `parent` per wide latent ([latent, score],
    good or not), `children` per narrow latent ([[latent, score], ...] of its good children, best
    first), `coverage` per narrow latent (None if it has no child or never fired)."""
    kept = torch.where(good, parent, -1)
    counts = torch.bincount(kept[good], minlength=d_narrow)
    hit, total = coverage(kept, fired_n, fired_w, d_narrow)
    seen = (counts > 0) & (total > 0)
    share = hit.double() / total.clamp_min(1)
    children: list[list] = [[] for _ in range(d_narrow)]
    for i, ok, pair in zip(parent.tolist(), good.tolist(), lens.pairs(torch.arange(len(parent)), score)):
        if ok:
            children[i].append(pair)
    wide_firings = torch.bincount(fired_w[1], minlength=len(parent)).double()
    return {
        "matched": int(good.sum()),
        "unmatched_fraction": float(1 - good.double().mean()),
        "unmatched_firing_share": float(wide_firings[~good].sum() / wide_firings.sum().clamp_min(1)),
        "parents_with_children": int((counts > 0).sum()),
        "split_parents": int((counts >= 2).sum()),
        "mean_children": float(counts[counts > 0].double().mean()) if (counts > 0).any() else 0.0,
        "max_children": int(counts.max()),
        "children_histogram": torch.bincount(counts).tolist(),
        "coverage_mean": float(share[seen].mean()) if seen.any() else None,
        "coverage_weighted": float(hit[seen].sum() / total[seen].sum()) if seen.any() else None,
        "parent": [None if pair[0] < 0 else pair for pair in lens.pairs(parent, score)],
        "children": [ranked(c) for c in children],
        "coverage": [c if ok else None for c, ok in zip(share.tolist(), seen.tolist())],
    }


@torch.no_grad()
def feature_splitting(
    narrow: SAE, wide: SAE, rows: torch.Tensor, min_cosine: float = MIN_COSINE, min_containment: float = MIN_CONTAINMENT
) -> dict:
    """Match every latent of `wide` to a parent in `narrow` by decoder cosine and by co-activation on
    `rows` (held-out rows of their input site); JSON-able. "decoder" and "coactivation" each hold a
    `summary`; the decoder's unmatched latents are the novel ones. "agreement": the share of wide
    latents with a good parent both ways whose two parents are the same latent."""
    if narrow.d_in != wide.d_in:
        raise SaescopeError(
            f"SAEs of input sizes {narrow.d_in} and {wide.d_in} read different sites: pair same-site SAEs"
        )
    if len(rows) == 0:
        raise SaescopeError("no held-out rows to measure co-activation on: harvest more tokens")
    d_n, d_w = narrow.d_sae, wide.d_sae
    cos, dec_parent = decoder_parents(narrow.W_dec.detach().cpu(), wide.W_dec.detach().cpu())
    fired_n, fired_w = firings(narrow, rows), firings(wide, rows)
    co_parent, co_score, containment = coactivation_parents(fired_n, fired_w, len(rows), d_n, d_w)
    dec_good, co_good = cos >= min_cosine, (co_parent >= 0) & (containment >= min_containment)
    decoder = summary(dec_parent, cos, dec_good, fired_n, fired_w, d_n)
    coactivation = summary(co_parent, co_score, co_good, fired_n, fired_w, d_n)
    coactivation["containment"] = [round(float(c), 4) for c in containment]
    both = dec_good & co_good
    return {
        "narrow_width": d_n,
        "wide_width": d_w,
        "rows": len(rows),
        "min_cosine": min_cosine,
        "min_containment": min_containment,
        "novel_fraction": decoder["unmatched_fraction"],
        "agreement": float((dec_parent[both] == co_parent[both]).double().mean()) if both.any() else None,
        "decoder": decoder,
        "coactivation": coactivation,
    }


# ---- a run's pairs, and the table -------------------------------------------------------------------


def splitting_results(
    out: Path, store: ActivationStore | None = None, eval_shards: int = 1, max_rows: int = MAX_ROWS
) -> dict[str, dict]:
    """feature_splitting of every width pair of a run, keyed `narrow -> wide`; each site's held-out
    rows are read once."""
    from saescope.release.formats import load

    out, store = Path(out), store or run_store(out)
    rows: dict[str, torch.Tensor] = {}
    results = {}
    for narrow, wide in splitting_pairs(out):
        config = read_json(out / "saes" / narrow / "config.json", SAE_FIX)
        site = Site(int(config["layer"]), config["site"]).name
        if site not in rows:
            rows[site] = eval_rows(store, site, eval_shards, max_rows)
        results[f"{narrow} -> {wide}"] = feature_splitting(
            load(out / "saes" / narrow), load(out / "saes" / wide), rows[site]
        )
    return results


def splitting_table(results: dict[str, dict]) -> str:
    """A markdown table: per width pair and matching, wide latents with and without a good parent,
    parents by number of children, and how much of a parent's firing its children cover."""
    lines = [
        "| narrow -> wide | matched by | wide with a parent | without (novel) | their firing share | "
        "parents with 0 / 1 / 2 / 3+ children | mean children | max | coverage (mean / by firing) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pair, r in results.items():
        for label, key in (("decoder cosine", "decoder"), ("co-activation", "coactivation")):
            m = r[key]
            hist = m["children_histogram"] + [0, 0, 0]
            spread = f"{hist[0]} / {hist[1]} / {hist[2]} / {sum(hist[3:])}"
            cover = "-" if m["coverage_mean"] is None else f"{m['coverage_mean']:.3f} / {m['coverage_weighted']:.3f}"
            lines.append(
                f"| {pair} | {label} | {m['matched']} | {m['unmatched_fraction']:.1%} | "
                f"{m['unmatched_firing_share']:.1%} | {spread} | {m['mean_children']:.2f} | {m['max_children']} | "
                f"{cover} |"
            )
    return "\n".join(lines)


def print_splitting(out: Path) -> None:
    """The splitting table of a run that has SAEs of one site at several widths (nothing otherwise);
    a run whose store is gone says so in one line instead."""
    if not splitting_pairs(Path(out)):
        return
    try:
        results = splitting_results(Path(out))
    except SaescopeError as err:
        print(f"saescope: feature splitting across widths skipped: {err}")
        return
    print(
        f"\nFeature splitting across widths (a parent: decoder cosine >= {MIN_COSINE}, or firing on "
        f">= {MIN_CONTAINMENT:.0%} of the wide latent's held-out tokens):\n\n" + splitting_table(results)
    )
