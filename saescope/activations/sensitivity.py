"""How much the LM loss depends on each dimension of each site, measured once per store.

An SAE trained on an MSE spends its capacity where the squared error is large. The model does not
read every dimension of a site equally: the next RMSNorm's gain, the unembedding after the last
layer and everything in between make an error in some dimensions cost far more loss than the same
error in others. To second order the loss change from an error e at a site is 1/2 e^T F e, F the
Fisher of the loss in that site's activations; its diagonal F_d = E[(dL/dx_d)^2] takes one
backward pass over a few thousand tokens, for every site at once. Tokens differ as dimensions do:
the same pass measures how a token's sensitivity grows or falls with its activation's norm
(`norm_power`). `--normalize sensitivity` (train/normalize.py) weights the MSE with the first,
`sensitivity-tokens` with both.

The store keeps F and the norm power per site in `sensitivity.safetensors`, written when the harvest finishes (a
harvest run again on a store without one adds it), from the first SENSITIVITY_TOKENS training
tokens of the same text.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from saescope.activations.documents import iter_documents
from saescope.activations.packing import pack_documents
from saescope.errors import SaescopeError
from saescope.evaluate.heldout import chunk_rows
from saescope.models.sites import Site, replace

SENSITIVITY_FILE = "sensitivity.safetensors"
POWER_SUFFIX = ".norm_power"  # the key of a site's `norm_power` beside its own
# Tokens the estimate averages over: on Gemma 3 270M res.6 the square roots of F from 2,048 and
# 8,192 tokens correlate at 0.999 across dimensions (experiments/sensitivity.py).
SENSITIVITY_TOKENS = 2048


def site_gradients(model, batches, sites: list[Site]) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per batch, every site's (loss gradient, activation) on the scored tokens: the LM loss at the
    true next token, BOS, EOS and padding neither scored nor returned."""
    device = next(model.parameters()).device
    for batch in batches:
        probes: dict[str, torch.Tensor] = {}  # a zero added at each site: its gradient is the site's
        inputs: dict[str, torch.Tensor] = {}

        def add_probe(name: str, x: torch.Tensor, probes: dict = probes, inputs: dict = inputs) -> torch.Tensor:
            probes[name], inputs[name] = torch.zeros_like(x, requires_grad=True), x.detach()
            return x + probes[name]

        ids, am = batch.input_ids.to(device), batch.attention_mask.to(device)
        with ExitStack() as hooks, torch.enable_grad():
            for site in sites:
                hooks.enter_context(replace(model, site, lambda x, n=site.name: add_probe(n, x)))
            logits = model(input_ids=ids, attention_mask=am).logits
            scored = (batch.train_mask[:, :-1] & batch.attention_mask[:, 1:].bool()).to(device)
            logits.backward(cross_entropy_gradient(logits, ids, scored))
        mask = batch.train_mask.to(device)
        yield {name: (probe.grad[mask], inputs[name][mask]) for name, probe in probes.items()}


@torch.no_grad()
def cross_entropy_gradient(logits: Tensor, ids: Tensor, scored: Tensor) -> Tensor:
    """d/d logits of the summed next-token CE over the `scored` positions [B, T-1]: softmax minus the
    one-hot target, in float32 a few positions at a time (`chunk_rows`), in the logits' dtype.

    Why not autograd through F.cross_entropy on float32 logits (`reference_cross_entropy_gradient`, its
    test): with a 262k vocabulary that held ~6 float32 copies of every logit at once, ~7 GB per 1,024
    tokens, and fresh memory costs microseconds a page here (saescope/memory.py). `python
    benchmarks/sensitivity.py` timed a harvest's pass (fresh processes) at 25.9 s against 65.5 s."""
    grad = torch.zeros_like(logits)
    flat_grad, flat_logits = grad.view(-1, logits.shape[-1]), logits.reshape(-1, logits.shape[-1])
    b, t = scored.nonzero(as_tuple=True)
    rows, targets = b * logits.shape[1] + t, ids[b, t + 1]  # flat positions, and the next token at each
    chunk = chunk_rows(logits.shape[-1], logits.device)
    for i in range(0, len(rows), chunk):
        at = rows[i : i + chunk]
        p = torch.softmax(flat_logits[at].float(), -1)
        p[torch.arange(len(at), device=p.device), targets[i : i + chunk]] -= 1
        flat_grad[at] = p.to(grad.dtype)
    return grad


def reference_cross_entropy_gradient(logits: Tensor, ids: Tensor, scored: Tensor) -> Tensor:
    """The same gradient by autograd through F.cross_entropy on float32 logits (the plain reference)."""
    leaf = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        z = leaf[:, :-1].float()
        F.cross_entropy(z[scored], ids[:, 1:][scored], reduction="sum").backward()
    return leaf.grad


def loss_sensitivity(model, batches, sites: list[Site], full: bool = False) -> dict[str, torch.Tensor]:
    """E[(dL/dx_d)^2] per dimension of each site over the scored tokens of `batches`; with `full`,
    the whole matrix E[g g^T] (experiments/fisher.py), g the gradient at the site."""
    return measure_sensitivity(model, batches, sites, full)[0]


def measure_sensitivity(
    model, batches, sites: list[Site], full: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """`loss_sensitivity`, and each site's `norm_power`, from one backward pass per batch."""
    sums: dict[str, torch.Tensor] = {}
    g2s: dict[str, list[torch.Tensor]] = {}
    norms: dict[str, list[torch.Tensor]] = {}
    count = 0
    for grads in site_gradients(model, batches, sites):
        for name, (grad, x) in grads.items():
            g = grad.double()
            sums[name] = sums.get(name, 0) + (g.T @ g if full else g.pow(2).sum(0))
            g2s.setdefault(name, []).append(g.pow(2).sum(1).cpu())
            norms.setdefault(name, []).append(x.double().norm(dim=1).cpu())
        count += len(next(iter(grads.values()))[0]) if grads else 0
    if not count:
        raise SaescopeError("no tokens to measure the loss sensitivity on: the dataset is empty")
    fisher = {name: (total / count).float().cpu() for name, total in sums.items()}
    return fisher, {name: norm_power(torch.cat(g2s[name]), torch.cat(norms[name])) for name in sums}


# Equal-count groups of tokens by the norm of their activation that `norm_power` fits a line through.
NORM_GROUPS = 16


def norm_power(g2: torch.Tensor, norms: torch.Tensor) -> float:
    """p with E[|dL/dx|^2 | |x|] ~ |x|^p: the slope of log mean |g|^2 against log mean |x| over
    NORM_GROUPS equal-count groups of tokens sorted by |x|. Why: a site the model reads through an
    RMSNorm (Gemma's attention and MLP outputs) costs loss in proportion to its error relative to its
    own norm, so its low-norm tokens matter most (att.6 of Gemma 3 270M: p = -2.76 over 9,110 tokens,
    its quarter of lowest-norm tokens holds half the loss sensitivity); `--normalize sensitivity-tokens`
    weights each token's squared error by |x|^p (train/normalize.py)."""
    keep = norms > 0
    order = norms[keep].argsort()
    groups = torch.tensor_split(order, min(NORM_GROUPS, len(order)))
    log_x = torch.stack([norms[keep][i].mean().log() for i in groups])
    log_g = torch.stack([g2[keep][i].mean().clamp(min=1e-300).log() for i in groups])
    if len(groups) < 2 or float(log_x.max() - log_x.min()) <= 0:
        return 0.0
    dx = log_x - log_x.mean()
    return float((dx * (log_g - log_g.mean())).sum() / dx.pow(2).sum())


def write_sensitivity(
    store: Path, model, tokenizer, sites: list[Site], dataset: str, text_field: str, context_len: int
) -> None:
    """Measure every site's sensitivity on the store's first training text and keep it beside the
    shards (written whole: a temporary file renamed into place)."""
    docs = iter_documents(dataset, text_field)
    batches = pack_documents(docs, tokenizer, context_len, 1, max_tokens=SENSITIVITY_TOKENS)
    result, powers = measure_sensitivity(model, batches, sites)
    for name, f in result.items():
        if not bool(torch.isfinite(f).all()) or not math.isfinite(powers[name]):
            raise SaescopeError(
                f"the loss gradient at {name} is not finite: the model's outputs overflow; harvest with --dtype float32"
            )
    tmp = store / f".{SENSITIVITY_FILE}.tmp"
    arrays = {name: f.contiguous() for name, f in result.items()}
    save_file(arrays | {name + POWER_SUFFIX: torch.tensor([p]) for name, p in powers.items()}, str(tmp))
    os.replace(tmp, store / SENSITIVITY_FILE)


def read_sensitivity(store: Path, site: str) -> torch.Tensor:
    """The site's E[(dL/dx_d)^2] per dimension, as the harvest stored it."""
    return _read_entry(store, site)


def read_norm_power(store: Path, site: str) -> float:
    """The site's `norm_power`, as the harvest stored it."""
    return float(_read_entry(store, site + POWER_SUFFIX)[0])


def _read_entry(store: Path, key: str) -> torch.Tensor:
    path = store / SENSITIVITY_FILE
    if not path.exists():
        raise SaescopeError(
            f"store {store} has no loss sensitivities ({SENSITIVITY_FILE}, written by harvests since "
            f"--normalize sensitivity exists): run `{reharvest(store)}` again to add them, "
            f"or train with --normalize standardize"
        )
    try:
        values = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise SaescopeError(f"{path} is damaged ({e}): delete it and run `{reharvest(store)}`") from None
    if key not in values:  # a norm power is missing from files written before it existed
        raise SaescopeError(f"{path} has no entry for {key}: delete it and run `{reharvest(store)}`")
    return values[key]


def reharvest(store: Path) -> str:
    """The harvest command that wrote `store`, with every setting store.json keeps: run again on the
    finished store, it only adds a missing sensitivity file."""
    try:
        settings = json.loads((store / "store.json").read_text()).get("harvest_config", {})
    except (OSError, ValueError):
        settings = {}
    flags = [
        f"--{name.replace('_', '-')} {value}" for name, value in settings.items() if name not in ("store", "device")
    ]
    return " ".join(["saescope harvest --out", str(store), *flags])
