"""`saescope run`: harvest, train, evaluate, release, build the browser's database and summarise.

The defaults are sized for the embedded Gemma 3 270M on a 2-core CPU: every layer's res, mlp
and att sites, one JumpReLU SAE each (target L0 64, the frequency penalty on), the whole job in
about 16 minutes with AMX, 21-23 with AVX512-BF16 alone, 37-41 with AVX2 alone (README, "The default
run"). Every option is the harvest, train or evaluate job's own, with its default, except the few that
`RUN_SCALE` sets for that size (as nanoGPT's config files override train.py): the recipe's own
scale (4B tokens, widths 16k+, lr 7e-5, 1k/10k warm-ups, 2048 x 1024 evaluation tokens) is the
default of `saescope train` / `evaluate` and reachable here through the same flags.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path

from saescope import distributed
from saescope.activations.harvest import HarvestConfig, harvest
from saescope.browse.stats import compute_stats
from saescope.config import RUN_FOLDER, option, part, rescaled, save_config
from saescope.errors import SaescopeError
from saescope.evaluate.metrics import EvalConfig, evaluate, summary_rows
from saescope.models.loading import compute_dtype, load_model, resolve_device
from saescope.release.formats import release
from saescope.train.job import TrainConfig
from saescope.train.trainer import Trainer

# The short schedule (400 steps instead of a million) needs the larger learning rate and shorter
# warm-up; `saescope compare` trains on it too.
RUN_SCHEDULE = {
    "train_tokens": 204_800,  # 400 steps, 2.1 epochs over the training shards
    "batch_size": 512,  # more steps for the same tokens: 10% less delta loss than 1024 (README, round 14)
    "lr": 3e-3,  # the recipe's 7e-5 is for billions of tokens
    "lr_warmup_steps": 10,
    "adam_beta1": 0.5,  # on weights and biases; JumpReLU thresholds take none (README, round 14)
}
RUN_SCALE = RUN_SCHEDULE | {
    "tokens": 114_688,  # 6 training shards + 1 held-out shard of 16384
    "shard_rows": 16384,
    "widths": [2048],
    "buffer_rows": 16384,  # memory: rows x total site width x dtype size
    "checkpoint_every": 200,  # each writes every SAE and its Adam state: ~2 GB
    "log_every": 10,
    "eval_sequences": 4,
    # The browser's SAEs: at most 11 of 2048 latents fire on > 10% of tokens (up to 238 per att SAE without it) for
    # 0-6% more delta loss (README, "The default run"); `saescope train` and `compare` keep it off. A --knobs
    # given to `run` replaces this one, so name it again beside others.
    "knobs": "freq_coefficient=0.003",
}


@dataclass
class RunConfig(EvalConfig, TrainConfig, HarvestConfig):
    out: str = option(RUN_FOLDER, "run folder: activations, checkpoints, SAEs, release and summary")
    store: str = option("", "activation store (default: OUT/activations)")

    def part(self, cls: type):
        """The sub-job's own config, with the store inside the run folder unless given."""
        return part(self, cls, store=self.store or str(Path(self.out) / "activations"))


RunConfig = rescaled(RunConfig, RUN_SCALE)


def summary_table(out: str | Path, text: str = "") -> str:
    """Markdown table of every evaluated SAE of a run (the README's table comes from here); with
    `text`, the metrics `evaluate --text` measured on that text."""
    rows = summary_rows(out, text)
    lines = [
        "| site | layer | width | L0 | L0 on text | FVU | delta loss | CE recovered | KL | dead | dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        text_l0 = f"{r['text_l0']:.1f}" if "text_l0" in r else "-"
        lines.append(
            f"| {r['site']} | {r['layer']} | {r['width']} | {r['l0']:.1f} | {text_l0} | {r['fvu']:.3f} | "
            f"{r['delta_loss']:.3f} | {r['ce_loss_recovered']:.3f} | {r['kl_div']:.3f} | "
            f"{r['dead_latents']} | {r['dense_latents']} |"
        )
    return "\n".join(lines)


TABLE_START, TABLE_END = "<!-- saescope-table:start -->", "<!-- saescope-table:end -->"


def write_readme_table(out: str | Path, readme: str | Path) -> None:
    """Replace the README's marked table with this run's metrics (`saescope table RUN --readme README.md`)."""
    path = Path(readme)
    text = path.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        raise SaescopeError(f"{path} has no {TABLE_START} ... {TABLE_END} block to fill: add the two markers")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    times = (
        Path(out, "summary.md").read_text().rsplit("Time: ", 1)[-1].strip() if Path(out, "summary.md").exists() else ""
    )
    block = f"{TABLE_START}\n{summary_table(out)}\n\nRun folder `{out}`; {times}.\n{TABLE_END}"
    path.write_text(head + block + tail)


def harvest_keeping_the_model(cfg: HarvestConfig, kept: list) -> None:
    """The harvest, its (model, tokenizer) left in `kept` for evaluation (`evaluation_model`): loading
    them again took ~9 s (a 262k-token tokenizer and 1 GB of float32 weights). One process only."""
    if distributed.world_size() == 1:
        kept[:] = load_model(cfg.model, cfg.dtype, cfg.device)
    harvest(cfg, *kept)


def evaluation_model(cfg: EvalConfig, kept: list) -> tuple | None:
    """The harvest's (model, tokenizer) when evaluation asks for the same device and dtype (the store
    both read is the one that harvest wrote with that model)."""
    if not kept:
        return None
    device, weights = resolve_device(cfg.device), next(kept[0].parameters())
    same = weights.device.type == device.type and weights.dtype == compute_dtype(cfg.eval_dtype, device)
    return tuple(kept) if same else None


TIME_LINE = "Time: "  # summary.md's last line, "Time: harvest 4.9 min, train 18.9 min, ..."


def stage_minutes(out: str | Path) -> dict[str, float]:
    """The stage times a finished run wrote into its summary.md, in minutes, by stage name."""
    path = Path(out) / "summary.md"
    text = path.read_text() if path.is_file() else ""
    if TIME_LINE not in text:
        raise SaescopeError(f"{path} holds no stage times: pass the folder of a finished `saescope run`")
    line = text.rsplit(TIME_LINE, 1)[-1]
    return {name.strip(): float(minutes) for name, minutes in re.findall(r"([a-z -]+?) ([0-9.]+) min", line)}


def run(cfg: RunConfig) -> Path:
    out = Path(cfg.out)
    save_config(cfg, out / "config.json")
    timings, kept = {}, []

    def evaluate_on(text: str) -> None:
        ec = dataclasses.replace(cfg.part(EvalConfig), text=text)
        evaluate(ec, evaluation_model(ec, kept))

    for name, job in (
        ("harvest", lambda: harvest_keeping_the_model(cfg.part(HarvestConfig), kept)),
        ("train", lambda: Trainer(cfg.part(TrainConfig)).train()),
        ("evaluate", lambda: evaluate_on("")),
        *([("evaluate --text", lambda: evaluate_on(cfg.text))] if cfg.text else []),
        ("release", lambda: release(out)),
        ("browse", lambda: compute_stats(out)),
    ):
        print(f"saescope: == {name} ==")
        start = time.perf_counter()
        job()
        timings[name] = time.perf_counter() - start
    table = summary_table(out)
    times = ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
    (out / "summary.md").write_text(f"# saescope run: {out}\n\n{table}\n\n{TIME_LINE}{times}\n")
    print(table)
    print(f"saescope: {times}")
    print(f"saescope: release in {out / 'release'}; summary in {out / 'summary.md'}")
    print(f"saescope: browse the features: saescope browse {out}")
    print(f"saescope: or write them as a static site: saescope browse {out} --export {out / 'site'}")
    return out
