"""Is delta LM loss rewarding reconstructions that are slightly too small?

On att.6 at L0 16 the TopK SAEs cost less delta LM loss than saescope's JumpReLU at the same or a higher
KL (README, "saescope's JumpReLU against TopK and SAELens"), and their reconstructions are shorter
(relative reconstruction bias 0.97-0.98 against 0.98). This scales the reconstruction of trained SAEs
by each factor (decoder weights and bias times s, so x_hat becomes s * x_hat) and measures them again on
the same held-out text. Measured: on att.6 of Gemma 3 delta loss and KL do not move at all (the site
feeds the post-attention RMSNorm, which undoes any scale), while FVU does; so the length of a
reconstruction there is invisible to the model, and shrinkage explains none of the gap. The second
table splits each SAE's FVU on the store's held-out rows: the part left when every row's reconstruction
is stretched to its best length (1 - cos^2 of x and x_hat, times |x|^2) is what the model can see.
Measured: 0.3875 -> 0.3822 for our JumpReLU at L0 16, so length is about 1% of the error.

    python experiments/shrink_probe.py runs/h2h_att6_t16/seed0 \
        jumprelu__att.6__w4096__c16 topk__att.6__w4096__c16 saelens-topk__att.6__w4096__c16
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saescope.activations.loader import ShuffledLoader
from saescope.activations.store import ActivationStore
from saescope.evaluate.metrics import EvalConfig, evaluate, load_trained
from saescope.evaluate.rows import reconstruct
from saescope.io import read_json


@torch.no_grad()
def length_and_direction(folder: Path, store: ActivationStore) -> tuple[float, float]:
    """FVU on the held-out rows, and the FVU left with every row's reconstruction at its best length."""
    sae, meta = load_trained(folder, torch.device("cpu"))
    loader = ShuffledLoader(store, [meta["hook"]], batch_size=4096, split="eval", drop_last=False)
    err = direction = sq = 0.0
    sums = torch.zeros(sae.d_in, dtype=torch.float64)
    n = 0
    for batch in loader:
        x = batch.acts[meta["hook"]].float()
        x_hat = reconstruct(sae, x, sae.encode(x))
        err += (x - x_hat).double().pow(2).sum().item()
        cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=1).double()
        direction += (x.double().pow(2).sum(1) * (1 - cos.pow(2))).sum().item()
        sq += x.double().pow(2).sum().item()
        sums += x.double().sum(0)
        n += len(x)
    spread = sq - sums.dot(sums).item() / n
    return err / spread, direction / spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a compare or train run folder (its config.json names the store)")
    parser.add_argument("saes", nargs="+", help="SAE folder names under RUN/saes")
    parser.add_argument("--scales", default="1,0.98,0.96", help="factors on the reconstruction, comma-separated")
    args = parser.parse_args()
    run = Path(args.run)
    config = read_json(run / "config.json")
    scales = [float(s) for s in args.scales.split(",")]
    work = Path(tempfile.mkdtemp(prefix="saescope-shrink-"))
    try:
        for name in args.saes:
            weights = load_file(run / "saes" / name / "sae.safetensors")
            for s in scales:
                folder = work / "saes" / f"{name}__x{s:g}"
                folder.mkdir(parents=True)
                shutil.copy2(run / "saes" / name / "config.json", folder / "config.json")
                scaled = weights | {"W_dec": weights["W_dec"] * s, "b_dec": weights["b_dec"] * s}
                save_file({k: v.contiguous() for k, v in scaled.items()}, folder / "sae.safetensors")
        settings = {k: config[k] for k in ("eval_sequences", "eval_context_len") if k in config}
        results = evaluate(EvalConfig(out=str(work), store=config["store"], **settings))
    finally:
        shutil.rmtree(work)
    print("| SAE | scale | delta LM loss | KL | FVU |\n|---|---:|---:|---:|---:|")
    for folder, m in results.items():
        name, _, s = folder.rpartition("__x")
        print(f"| {name} | {s} | {m['delta_loss']:.4f} | {m['kl_div']:.4f} | {m['fvu']:.4f} |")
    store = ActivationStore(config["store"])
    print("\n| SAE | FVU | FVU at each row's best length |\n|---|---:|---:|")
    for name in args.saes:
        fvu, direction = length_and_direction(run / "saes" / name, store)
        print(f"| {name} | {fvu:.4f} | {direction:.4f} |")


if __name__ == "__main__":
    main()
