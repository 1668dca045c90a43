"""How a site's activations are put on the unit scale an SAE trains on.

The recipe divides by one constant C with E||x/C||^2 = 1; `standardize` subtracts each dimension's
mean and divides by its spread (why: README, "Per-dimension standardisation"); `sensitivity`, the
default, then weights each dimension by how much the LM loss depends on it; `sensitivity-tokens` also
weights each token's squared error by how the loss's sensitivity scales with the token's norm
(`token_weights`; it helps TopK on attention outputs and not the JumpReLU: README, "Token weighting").
The scales are estimated once from the first training rows (and the store's loss sensitivities) and
folded into the released weights, so a released SAE takes raw activations; the token weights only
shape training."""

from __future__ import annotations

import math

import torch

from saescope.activations.sensitivity import SENSITIVITY_FILE, read_norm_power, read_sensitivity
from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError
from saescope.saes.base import token_scale

# Rows of a site that data-dependent initialisation (JumpReLU thresholds) looks at.
INIT_ROWS = 4096


def first_rows(store: ActivationStore, site: str, rows: int, token_norm: bool = False) -> torch.Tensor:
    """The first `rows` rows of a site in store order (training shards come first), each divided
    by its `token_scale` with `token_norm` (as the trainer feeds them)."""
    parts, count = [], 0
    for shard in range(store.n_shards):
        x = store.read(site, shard)[: rows - count]
        parts.append(x)
        count += len(x)
        if count >= rows:
            break
    x = torch.cat([torch.as_tensor(p) for p in parts])
    return x / token_scale(x) if token_norm else x


@torch.no_grad()
def estimate_scale(store: ActivationStore, site: str, rows: int, token_norm: bool = False) -> float:
    """C with E[||x/C||^2] = 1, from the first `rows` training rows (the recipe's normalisation)."""
    x = first_rows(store, site, rows, token_norm).double()
    total = x.pow(2).sum().item()
    if not math.isfinite(total) or total <= 0:
        raise SaescopeError(f"site {site}: activations are all zero or not finite; harvest again")
    return math.sqrt(total / len(x))


@torch.no_grad()
def estimate_standardization(
    store: ActivationStore, site: str, rows: int, token_norm: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, mean) per dimension, with x = (x_raw - mean) / scale having unit variance spread
    evenly over the dimensions (E||x||^2 = 1, as the scalar normalisation gives).

    Why: an MSE on x_raw / C spends the SAE on the few dimensions that hold most of the variance;
    in Gemma 3 270M the hundreds of others carry what the next layers read, and their error is
    what costs LM loss (measured in the README)."""
    x = first_rows(store, site, rows, token_norm).double()
    mean = x.mean(0)
    std = (x.pow(2).mean(0) - mean.pow(2)).clamp(min=0).sqrt()
    if not bool(torch.isfinite(std).all()) or float(std.max()) <= 0:
        raise SaescopeError(f"site {site}: activations are constant or not finite; harvest again")
    std = std.clamp(min=1e-6 * float(std.mean()))  # a constant dimension must not divide by zero
    return (std * math.sqrt(len(std))).float(), mean.float()


# w_d^SENSITIVITY_POWER weights a standardised dimension's squared error. 1 makes the MSE the
# diagonal second-order estimate of the loss change but over-weights the few most sensitive
# dimensions of a short run's SAE; 0.5 measured best (README, "Loss-sensitivity weighting").
SENSITIVITY_POWER = 0.5
# A dimension the loss does not depend on keeps this share of the mean weight: a zero weight would
# fold into an infinite decoder column.
SENSITIVITY_FLOOR = 1e-3


@torch.no_grad()
def estimate_sensitivity_scaling(
    store: ActivationStore, site: str, rows: int, token_norm: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, mean) per dimension: standardisation, then each dimension weighted by the square
    root of its loss sensitivity in standardised units (F_d sigma_d^2, F from the store, see
    activations/sensitivity.py), still E||x||^2 = 1. Why: the MSE then spends the SAE where an
    error costs LM loss instead of spreading it evenly over dimensions the model reads unevenly."""
    scale, mean = estimate_standardization(store, site, rows, token_norm)
    fisher = read_sensitivity(store.path, site).double()
    if fisher.shape != scale.shape or not bool(torch.isfinite(fisher).all()):
        raise SaescopeError(
            f"the loss sensitivity of {site} in {store.path} does not fit its activations: delete "
            f"{store.path / SENSITIVITY_FILE} and run `saescope harvest --out {store.path}`"
        )
    weight = fisher * (scale.double() ** 2 / len(scale))
    if float(weight.max()) <= 0:
        raise SaescopeError(f"the LM loss does not depend on {site}: train it with --normalize standardize")
    weight = weight.clamp(min=SENSITIVITY_FLOOR * float(weight.mean())) ** SENSITIVITY_POWER
    weight = weight / weight.mean()
    return (scale.double() / weight.sqrt()).float(), mean


# The per-dimension normalisations by name (--normalize), each giving (scale, mean).
PER_DIMENSION = {
    "standardize": estimate_standardization,
    "sensitivity": estimate_sensitivity_scaling,
    "sensitivity-tokens": estimate_sensitivity_scaling,
}
# The normalisation that also weights tokens (`token_weights`).
TOKEN_WEIGHTED = "sensitivity-tokens"


def token_power(store: ActivationStore, site: str, token_norm: bool = False) -> float:
    """The power of a raw row's norm that weights its squared error in training units: the site's norm
    power the harvest measured (activations/sensitivity.py, `norm_power`), plus 2 with `token_norm`,
    whose rows are divided by a scale proportional to their norm, so an error in training units
    costs that scale squared times more in raw units."""
    power = read_norm_power(store.path, site)
    if not math.isfinite(power):
        raise SaescopeError(f"the norm power of {site} in {store.path} is not finite: harvest it again")
    return power + 2.0 if token_norm else power


def token_weights(x: torch.Tensor, power: float) -> torch.Tensor:
    """Each raw row's weight |x|^power, scaled to mean 1 over the batch: the loss's sensitivity to a
    token as a power of its norm (activations/sensitivity.py, `norm_power`), so the squared error is
    spent where the model will notice it (README, "Token weighting")."""
    norms = x.float().norm(dim=1)
    w = norms.clamp(min=1e-3 * float(norms.mean())) ** power
    return w / w.mean()
