"""What the model sees of an attention SAE's error: per held-out row, after o_proj and the post-attention
RMSNorm, beside FVU and how the SAE spreads its L0 over tokens.

`att` feeds o_proj and then Gemma's post-attention RMSNorm, which divides each token by its own norm: an
error on a token with a small attention output costs the model far more than the same error on a large one,
and FVU, which sums squared errors over tokens, does not see that. A JumpReLU fires on the tokens whose
pre-activations clear its thresholds, so its L0 follows the token's norm; TopK gives every token k latents.
This prints, per SAE on the store's held-out rows: FVU; the mean over rows of |e|^2 / |x|^2 after o_proj
(relative error); the mean squared error of the RMSNorm's output, gain included (what the next layers
read); L0 and its 10th / 50th / 90th percentile over tokens; and the correlation of a token's L0 with |x|.

    python experiments/post_norm_error.py runs/h2h_att6_t16/seed0 \
        jumprelu__att.6__w4096__c16 topk__att.6__w4096__c16 saelens-topk__att.6__w4096__c16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore
from saescope.errors import SaescopeError
from saescope.evaluate.metrics import load_trained
from saescope.evaluate.rows import reconstruct
from saescope.io import read_json
from saescope.models.loading import load_model
from saescope.models.sites import Site


@torch.no_grad()
def row_errors(folder: Path, store: ActivationStore, o_proj: torch.Tensor, norm) -> dict[str, float]:
    sae, meta = load_trained(folder, torch.device("cpu"))
    loader = ShuffledLoader(store, [meta["hook"]], batch_size=4096, split="eval", drop_last=False)
    err = sq = 0.0
    sums = torch.zeros(sae.d_in, dtype=torch.float64)
    relative, seen, l0, norms = [], [], [], []
    for batch in loader:
        x = batch.acts[meta["hook"]].float()
        code = sae.encode(x)
        x_hat = reconstruct(sae, x, code)
        err += (x - x_hat).double().pow(2).sum().item()
        sq += x.double().pow(2).sum().item()
        sums += x.double().sum(0)
        y, y_hat = x @ o_proj.T, x_hat @ o_proj.T
        relative.append((y - y_hat).pow(2).sum(1) / y.pow(2).sum(1))
        seen.append((norm(y) - norm(y_hat)).float().pow(2).sum(1))
        l0.append((code != 0).sum(1).float())
        norms.append(x.norm(dim=1))
    n = sum(len(r) for r in relative)
    tokens_l0, x_norm = torch.cat(l0), torch.cat(norms)
    q = torch.quantile(tokens_l0, torch.tensor([0.1, 0.5, 0.9])).tolist()
    corr = torch.corrcoef(torch.stack([tokens_l0, x_norm]))[0, 1].item() if tokens_l0.std() > 0 else float("nan")
    return {
        "fvu": err / (sq - sums.dot(sums).item() / n),
        "relative": torch.cat(relative).mean().item(),
        "seen": torch.cat(seen).mean().item(),
        "l0": tokens_l0.mean().item(),
        "quantiles": "/".join(f"{v:.0f}" for v in q),
        "corr": corr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a compare or train run folder (its config.json names the store)")
    parser.add_argument("saes", nargs="+", help="SAE folder names under RUN/saes, all of one att site")
    args = parser.parse_args()
    run = Path(args.run)
    store = ActivationStore(read_json(run / "config.json")["store"])
    site = Site.parse(read_json(run / "saes" / args.saes[0] / "config.json")["hook"])
    if site.kind != "att":
        raise SaescopeError(f"{site.name} is not an attention site: this measures what o_proj and its norm see")
    layer = load_model(store.info.get("model", "embedded"))[0].model.layers[site.layer]
    o_proj = layer.self_attn.o_proj.weight.detach().float()
    print(
        "| SAE | FVU | relative error after o_proj | error after the RMSNorm | L0 | L0 p10/p50/p90 | corr(L0, norm) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.saes:
        m = row_errors(run / "saes" / name, store, o_proj, layer.post_attention_layernorm.float())
        print(
            f"| {name} | {m['fvu']:.4f} | {m['relative']:.4f} | {m['seen']:.0f} | {m['l0']:.1f} | "
            f"{m['quantiles']} | {m['corr']:.2f} |"
        )


if __name__ == "__main__":
    main()
