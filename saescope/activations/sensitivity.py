"""How much the LM loss depends on each dimension of each site, measured once per store.

An SAE trained on an MSE spends its capacity where the squared error is large. The model does not
read every dimension of a site equally: the next RMSNorm's gain, the unembedding after the last
layer and everything in between make an error in some dimensions cost far more loss than the same
error in others. To second order the loss change from an error e at a site is 1/2 e^T F e, F the
Fisher of the loss in that site's activations; its diagonal F_d = E[(dL/dx_d)^2] takes one
backward pass over a few thousand tokens, for every site at once. `--normalize sensitivity`
(train/normalize.py) weights the MSE with it.

The store keeps F per site in `sensitivity.safetensors`, written when the harvest finishes (a
harvest run again on a store without one adds it), from the first SENSITIVITY_TOKENS training
tokens of the same text.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from saescope.activations.documents import iter_documents
from saescope.activations.packing import pack_documents
from saescope.errors import SaescopeError
from saescope.models.sites import Site, replace

SENSITIVITY_FILE = "sensitivity.safetensors"
# Tokens the estimate averages over: on Gemma 3 270M res.6 the square roots of F from 2,048 and
# 8,192 tokens correlate at 0.999 across dimensions (experiments/sensitivity.py).
SENSITIVITY_TOKENS = 2048


def loss_sensitivity(model, batches, sites: list[Site], full: bool = False) -> dict[str, torch.Tensor]:
    """E[(dL/dx_d)^2] per dimension of each site over the scored tokens of `batches` (the LM loss
    at the true next token; BOS, EOS and padding neither scored nor averaged over); with `full`,
    the whole matrix E[g g^T] (experiments/fisher.py), g the gradient at the site."""
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for batch in batches:
        probes: dict[str, torch.Tensor] = {}  # a zero added at each site: its gradient is the site's

        def add_probe(name: str, x: torch.Tensor, probes: dict = probes) -> torch.Tensor:
            probes[name] = torch.zeros_like(x, requires_grad=True)
            return x + probes[name]

        ids, am = batch.input_ids.to(device), batch.attention_mask.to(device)
        with ExitStack() as hooks, torch.enable_grad():
            for site in sites:
                hooks.enter_context(replace(model, site, lambda x, n=site.name: add_probe(n, x)))
            logits = model(input_ids=ids, attention_mask=am).logits[:, :-1].float()
            scored = (batch.train_mask[:, :-1] & batch.attention_mask[:, 1:].bool()).to(device)
            F.cross_entropy(logits[scored], ids[:, 1:][scored], reduction="sum").backward()
        mask = batch.train_mask.to(device)
        for name, probe in probes.items():
            g = probe.grad[mask].double()
            sums[name] = sums.get(name, 0) + (g.T @ g if full else g.pow(2).sum(0))
        count += int(mask.sum())
    if not count:
        raise SaescopeError("no tokens to measure the loss sensitivity on: the dataset is empty")
    return {name: (total / count).float().cpu() for name, total in sums.items()}


def write_sensitivity(
    store: Path, model, tokenizer, sites: list[Site], dataset: str, text_field: str, context_len: int
) -> None:
    """Measure every site's sensitivity on the store's first training text and keep it beside the
    shards (written whole: a temporary file renamed into place)."""
    docs = iter_documents(dataset, text_field)
    batches = pack_documents(docs, tokenizer, context_len, 1, max_tokens=SENSITIVITY_TOKENS)
    result = loss_sensitivity(model, batches, sites)
    for name, f in result.items():
        if not bool(torch.isfinite(f).all()):
            raise SaescopeError(
                f"the loss gradient at {name} is not finite: the model's outputs overflow; harvest with --dtype float32"
            )
    tmp = store / f".{SENSITIVITY_FILE}.tmp"
    save_file({name: f.contiguous() for name, f in result.items()}, str(tmp))
    os.replace(tmp, store / SENSITIVITY_FILE)


def read_sensitivity(store: Path, site: str) -> torch.Tensor:
    path = store / SENSITIVITY_FILE
    if not path.exists():
        raise SaescopeError(
            f"store {store} has no loss sensitivities ({SENSITIVITY_FILE}, written by harvests since "
            f"--normalize sensitivity exists): run `saescope harvest --out {store}` again to add them, "
            f"or train with --normalize standardize"
        )
    try:
        values = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise SaescopeError(f"{path} is damaged ({e}): delete it and run `saescope harvest --out {store}`") from None
    if site not in values:
        raise SaescopeError(f"{path} has no entry for {site}: delete it and run `saescope harvest --out {store}`")
    return values[site]
