"""How a site's activations are put on the unit scale an SAE trains on.

The recipe divides by one constant C with E||x/C||^2 = 1; saescope's default subtracts each
dimension's mean and divides by its spread (why: README, "Per-dimension standardisation"). Both are
estimated once from the first training rows and folded into the released weights.
"""

from __future__ import annotations

import math

import torch

from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError

# Rows of a site that data-dependent initialisation (JumpReLU thresholds) looks at.
INIT_ROWS = 4096


def first_rows(store: ActivationStore, site: str, rows: int) -> torch.Tensor:
    """The first `rows` rows of a site in store order (training shards come first)."""
    parts, count = [], 0
    for shard in range(store.n_shards):
        x = store.read(site, shard)[: rows - count]
        parts.append(x)
        count += len(x)
        if count >= rows:
            break
    return torch.cat([torch.as_tensor(p) for p in parts])


@torch.no_grad()
def estimate_scale(store: ActivationStore, site: str, rows: int) -> float:
    """C with E[||x/C||^2] = 1, from the first `rows` training rows (the recipe's normalisation)."""
    x = first_rows(store, site, rows).double()
    total = x.pow(2).sum().item()
    if not math.isfinite(total) or total <= 0:
        raise SaescopeError(f"site {site}: activations are all zero or not finite; harvest again")
    return math.sqrt(total / len(x))


@torch.no_grad()
def estimate_standardization(store: ActivationStore, site: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, mean) per dimension, with x = (x_raw - mean) / scale having unit variance spread
    evenly over the dimensions (E||x||^2 = 1, as the scalar normalisation gives).

    Why: an MSE on x_raw / C spends the SAE on the few dimensions that hold most of the variance;
    in Gemma 3 270M the hundreds of others carry what the next layers read, and their error is
    what costs LM loss (measured in the README)."""
    x = first_rows(store, site, rows).double()
    mean = x.mean(0)
    std = (x.pow(2).mean(0) - mean.pow(2)).clamp(min=0).sqrt()
    if not bool(torch.isfinite(std).all()) or float(std.max()) <= 0:
        raise SaescopeError(f"site {site}: activations are constant or not finite; harvest again")
    std = std.clamp(min=1e-6 * float(std.mean()))  # a constant dimension must not divide by zero
    return (std * math.sqrt(len(std))).float(), mean.float()
