"""Metrics of an SAE on the held-out rows of the store: what it does to the activations themselves.

L0, FVU (squared error over squared deviation from the dataset mean, both summed over all held-out
tokens), the same FVU with each dimension divided by the scale the SAE was trained under
(`fvu_weighted`: with a per-dimension `--normalize` it is the training objective's own error, so it
tells how well a trainer minimised its objective apart from what that objective values, and it is far
steadier between seeds than delta LM loss on a few thousand held-out tokens: README, round 25), MSE,
firing frequencies, dead latents (never fired), dense latents (firing on more than 10% of tokens) and a
firing-frequency histogram; and the numbers SAEBench's core evaluation reports on the reconstruction's
shape: mean L1 of the latents, mean cosine of x and x_hat, mean norms in and out and their mean ratio,
the relative reconstruction bias (sum |x_hat|^2 / sum x . x_hat, 1 when the SAE neither shrinks nor
inflates; Rajamanoharan et al. 2024, eq. 10) and the "legacy" explained variance (per token, against
the mean of its batch of 4,096 rows).
"""

from __future__ import annotations

import numpy as np
import torch

from saescope.activations.loader import ShuffledLoader
from saescope.errors import SaescopeError
from saescope.models.sites import Site
from saescope.saes.base import SAE

DENSE_FREQUENCY = 0.1
HISTOGRAM_EDGES = np.arange(-7.0, 0.5, 0.5)  # log10 firing frequency bins


def _refuse_nonfinite(x: torch.Tensor, site: str, loader: ShuffledLoader) -> None:
    """One NaN in the held-out rows would turn FVU into NaN; stop and say where it is (batches mix
    shards, so the held-out shards are searched for it, which only a failing evaluation pays for)."""
    if torch.isfinite(x).all():
        return
    s, where = Site.parse(site), f"shard(s) {', '.join(str(i) for i in loader.shards)}"
    for shard in loader.shards:
        rows = ~torch.isfinite(loader.store.read(site, shard).float()).all(1)
        if rows.any():
            where = f"shard {shard}, row {int(rows.nonzero()[0])}"
            break
    raise SaescopeError(
        f"NaN or inf in the held-out activations of site {s.kind}, layer {s.layer} (store "
        f"{loader.store.path}, {where}): harvest that store again"
    )


class Shape:
    """Running sums of SAEBench's per-token reconstruction-shape numbers (module docstring)."""

    def __init__(self):
        self.sums = dict.fromkeys(
            ("l1", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio", "ev_legacy", "xx", "xh"), 0.0
        )

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        norm_in, norm_out = x.norm(dim=-1), x_hat.norm(dim=-1)
        spread = (x - x.mean(0)).pow(2).sum(-1)
        for k, v in (
            ("l1", f.abs().sum(-1)),
            ("cossim", torch.nn.functional.cosine_similarity(x, x_hat, dim=-1)),
            ("l2_norm_in", norm_in),
            ("l2_norm_out", norm_out),
            ("l2_ratio", norm_out / torch.where(norm_in < 1e-4, 1.0, norm_in)),
            ("ev_legacy", 1 - (x - x_hat).pow(2).sum(-1) / spread.clamp(min=1e-12)),
            ("xx", norm_out.pow(2)),
            ("xh", (x * x_hat).sum(-1)),
        ):
            self.sums[k] += v.sum().item()

    def means(self, n: int) -> dict[str, float]:
        s = self.sums
        return {
            **{k: s[k] / n for k in ("l1", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio")},
            "relative_reconstruction_bias": s["xx"] / s["xh"] if s["xh"] else 0.0,
            "explained_variance_legacy": s["ev_legacy"] / n,
        }


def unexplained(sq_err: torch.Tensor, sums: torch.Tensor, sq_sums: torch.Tensor, n: int, weight=1.0) -> float:
    """Squared error over squared deviation from the mean, from per-dimension sums, each dimension weighted."""
    return ((sq_err * weight).sum() / ((sq_sums - sums.pow(2) / n) * weight).sum()).item()


@torch.no_grad()
def store_metrics(
    sae: SAE, loader: ShuffledLoader, site: str, target: str | None = None, scale: torch.Tensor | None = None
) -> dict:
    """L0, FVU, firing statistics and reconstruction shape of one SAE on the held-out rows of its
    site; a transcoder is scored against its `target` site's rows. `scale`: the per-dimension divisor
    of the SAE's training rows (its config's normalization_scale), for `fvu_weighted`; None for one scale."""
    n, l0_sum, shape = 0, 0.0, Shape()
    sq_err = torch.zeros(sae.d_in, dtype=torch.float64)
    sums = torch.zeros(sae.d_in, dtype=torch.float64)
    sq_sums = torch.zeros(sae.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    for batch in loader:
        x = batch.acts[site]
        _refuse_nonfinite(x, site, loader)
        f = sae.encode(x)
        x_hat = sae.reconstruct(x, f)
        x = batch.acts[target] if target else x
        if target:
            _refuse_nonfinite(x, target, loader)
        active = f > 0
        n += len(x)
        sq_err += (x_hat - x).double().pow(2).sum(0).cpu()
        l0_sum += active.sum().item()
        fired += active.sum(0).double().cpu()
        sums += x.double().sum(0).cpu()
        sq_sums += x.double().pow(2).sum(0).cpu()
        shape.add(x, x_hat, f)
    weight = 1.0 if scale is None else scale.double().cpu().pow(-2)
    freq = (fired / n).numpy()
    with np.errstate(divide="ignore"):
        hist, _ = np.histogram(np.log10(freq[freq > 0]), HISTOGRAM_EDGES)
    return {
        "tokens": n,
        "l0": l0_sum / n,
        "fvu": unexplained(sq_err, sums, sq_sums, n),
        "fvu_weighted": unexplained(sq_err, sums, sq_sums, n, weight),
        "mse": sq_err.sum().item() / n,
        "dead_latents": int((fired == 0).sum()),
        "dead_fraction": float((fired == 0).double().mean()),
        "dense_latents": int((freq > DENSE_FREQUENCY).sum()),
        **shape.means(n),
        "frequency_histogram": {"log10_edges": HISTOGRAM_EDGES.tolist(), "counts": hist.tolist()},
        "firing_frequency": freq.tolist(),
    }
