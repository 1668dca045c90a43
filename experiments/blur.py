"""Why delta LM loss and KL can rank two SAEs differently: per held-out position, delta CE is the KL
to the clean model plus a term that only the text's actual next token decides.

    python experiments/blur.py runs/att6_c64 [--offsets 0,32]

For the SAEs of a `saescope compare` folder (its seed*/saes), on the held-out sequences compare
measured them on (its --eval-sequences x --eval-context-len, after --eval-offset N for each N of
--offsets), with the SAE spliced in at the compared site, per counted position with next token y:

- delta CE = log p_clean(y) - log p_spliced(y); its mean is delta LM loss.
- KL = sum_v p_clean(v) (log p_clean(v) - log p_spliced(v)): delta CE's mean if y were drawn from
  the clean model's own distribution.
- delta CE - KL: what the actual next tokens add. Negative where the splice moved probability
  toward the tokens that came more than the clean model's distribution says it should have.
- blur = H(p_spliced) - H(p_clean), the entropy the splice adds.

And the clean model alone with its logits divided by a temperature T: if its CE falls for T > 1 the
model is over-confident on this text, and a splice that flattens its distribution (more blur) earns
a lower delta CE - KL without being closer to the model. Means over seeds per family.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from saescope.activations.store import ActivationStore
from saescope.evaluate import heldout
from saescope.evaluate.heldout import HeldOutText
from saescope.evaluate.metrics import EvalConfig, load_trained
from saescope.io import read_json
from saescope.models.loading import load_model
from saescope.models.sites import Site, replace

TEMPERATURES = (1.0, 1.05, 1.1, 1.2)
STATS = ("delta_ce", "kl", "gap", "blur")


def position_stats(clean: torch.Tensor, spliced: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position: delta CE, KL(clean || spliced), their gap and the entropy the splice adds."""
    lc, ls = F.log_softmax(clean.float(), -1), F.log_softmax(spliced.float(), -1)
    pc, ps = lc.exp(), ls.exp()
    y = targets[:, None]
    delta_ce = (lc.gather(-1, y) - ls.gather(-1, y)).squeeze(-1)
    kl = (pc * (lc - ls)).sum(-1)
    blur = (pc * lc).sum(-1) - (ps * ls).sum(-1)
    return {"delta_ce": delta_ce, "kl": kl, "gap": delta_ce - kl, "blur": blur}


def measure(folder: Path, offset: int, chunk: int = 4) -> tuple[dict[str, dict[str, float]], dict[float, float]]:
    """Per SAE (seed/name) the mean of each of STATS, and the clean CE per temperature."""
    cfg_json = read_json(folder / "config.json")
    store = ActivationStore(cfg_json["store"])
    cfg = EvalConfig(
        out=str(folder),
        eval_sequences=cfg_json["eval_sequences"],
        eval_context_len=cfg_json["eval_context_len"],
        eval_offset=offset,
    )
    model, tokenizer = load_model(store.info["model"], cfg.eval_dtype, cfg.device)
    heldout.CLEAN_CACHE_SHARE = 0  # the clean pass runs beside each batch's splices below instead
    text = HeldOutText(
        model, tokenizer, store.info["dataset"], store.info.get("text_field", "text"), store.info["rows"], cfg
    )
    site = Site.parse(cfg_json["site"])
    device = next(model.parameters()).device
    saes = {f"{d.parent.parent.name}/{d.name}": load_trained(d, device)[0] for d in sorted(folder.glob("seed*/saes/*"))}
    sums: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(STATS, 0.0))
    temp_sums = dict.fromkeys(TEMPERATURES, 0.0)
    with torch.inference_mode():
        for ids, am, keep, count in text.batches:
            clean = model(input_ids=ids, attention_mask=am).logits[:, :-1].flatten(0, 1)
            targets, weight = ids[:, 1:].flatten(), count.flatten().double()
            for t in TEMPERATURES:
                for i in range(0, len(clean), chunk):
                    ce = F.cross_entropy(clean[i : i + chunk].float() / t, targets[i : i + chunk], reduction="none")
                    temp_sums[t] += (ce.double() * weight[i : i + chunk]).sum().item()
            for name, sae in saes.items():
                with replace(
                    model, site, lambda x, sae=sae: sae.reconstruct(x.float(), sae.encode(x.float())), keep=keep
                ):
                    spliced = model(input_ids=ids, attention_mask=am).logits[:, :-1].flatten(0, 1)
                for i in range(0, len(clean), chunk):
                    stats = position_stats(clean[i : i + chunk], spliced[i : i + chunk], targets[i : i + chunk])
                    for k, v in stats.items():
                        sums[name][k] += (v.double() * weight[i : i + chunk]).sum().item()
    means = {name: {k: v / text.tokens for k, v in s.items()} for name, s in sums.items()}
    return means, {t: v / text.tokens for t, v in temp_sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a `saescope compare` folder with seed*/saes")
    parser.add_argument("--offsets", default="0", help="held-out samples: --eval-offset values, comma-separated")
    args = parser.parse_args()
    folder = Path(args.folder)
    for offset in (int(v) for v in args.offsets.split(",")):
        means, temps = measure(folder, offset)
        print(f"\n{folder}, held-out sequences after --eval-offset {offset}")
        print("clean CE at temperature T: " + ", ".join(f"T={t}: {ce:.4f}" for t, ce in temps.items()))
        families: dict[str, list[dict]] = defaultdict(list)
        for name, m in means.items():
            families[name.split("/", 1)[1].split("__")[0]].append(m)
        print("| family | seeds | delta CE | KL | delta CE - KL | blur |")
        print("|---|---:|---:|---:|---:|---:|")
        for family, rows in sorted(families.items()):
            mean = {k: sum(r[k] for r in rows) / len(rows) for k in STATS}
            print(f"| {family} | {len(rows)} | " + " | ".join(f"{mean[k]:.4f}" for k in STATS) + " |")


if __name__ == "__main__":
    main()
