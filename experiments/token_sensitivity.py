"""How a token's loss sensitivity at a site scales with the norm of its activation.

The per-dimension sensitivity (README, "Loss-sensitivity weighting") is an average over tokens; tokens
differ too. A site the model reads through an RMSNorm (Gemma's attention output through o_proj and the
post-attention norm, its MLP output through the post-feedforward norm) costs loss in proportion to its
error relative to its own norm, so its low-norm tokens matter most. This measures, per site, the norm
power the harvest stores (`norm_power`: the slope of log mean |dL/dx|^2 against log mean |x| over
sixteen equal-count groups of tokens) on more tokens than the harvest's 2,048, and the share of the
loss sensitivity held by the quarter of tokens with the smallest norm (a quarter if norm did not matter).

    python experiments/token_sensitivity.py --sites res,mlp,att --layers 6 --tokens 8192
"""

from __future__ import annotations

import argparse

import torch

from saescope.activations.documents import iter_documents
from saescope.activations.packing import pack_documents
from saescope.activations.sensitivity import norm_power, site_gradients
from saescope.models.loading import load_model, load_tokenizer
from saescope.models.sites import parse_sites


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dataset", default="wiki")
    parser.add_argument("--sites", default="res,mlp,att")
    parser.add_argument("--layers", default="6")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--context-len", type=int, default=1024)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)[0], load_tokenizer(args.model)
    sites = parse_sites(model, args.sites, args.layers)
    batches = pack_documents(iter_documents(args.dataset), tokenizer, args.context_len, 1, max_tokens=args.tokens)
    g2: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    norms: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    for grads in site_gradients(model, batches, sites):
        for name, (g, x) in grads.items():
            g2[name].append(g.double().pow(2).sum(1))
            norms[name].append(x.double().norm(dim=1))
    print("| site | tokens | norm power | sensitivity held by the lowest-norm quarter |\n|---|---:|---:|---:|")
    for s in sites:
        g, n = torch.cat(g2[s.name]), torch.cat(norms[s.name])
        low = g[n <= n.quantile(0.25)].sum() / g.sum()
        print(f"| {s.name} | {len(n):,} | {norm_power(g, n):.2f} | {low:.2f} |")


if __name__ == "__main__":
    main()
