"""`saescope compare`: several SAE families on the same site and the same tokens, side by side.

Every family and sparsity level is trained in one Trainer, so each batch is read from the store
once and every SAE sees exactly the same tokens in the same order; then `saescope evaluate`
measures them all on the same held-out rows and text. The result is the sparsity-fidelity
frontier the seed papers plot: delta LM loss against L0 and FVU against L0, one line per family
(OUT/compare.md, OUT/compare.json, OUT/compare.png), and beside it the Gemma Scope paper's delta LM
loss by token position (a table per SAE; a third panel with each family's SAE nearest the middle
matched L0).

Sweeps name each family's own sparsity knob (`saescope.saes.registry.sweep_knobs`): the target L0
for jumprelu (lambda with `--family-knobs jumprelu.l0_penalty=l0`, the Gemma Scope objective), the
L1 coefficient for relu/gated/atm, k for topk/batchtopk/matryoshka.

With `--baseline saelens`, SAELens' own JumpReLU and TopK are then trained by SAELens' own code on
the same rows in the same order (`saescope/saelens_baseline.py`), written beside ours as families
saelens-jumprelu and saelens-topk, and evaluated, tabulated and plotted (dashed) like them.

Sweeps rarely land two families on the same L0, so the matched-L0 table reads each family's
frontier at common L0 targets (`--matched-l0`, default 16, 32, 64): delta LM loss and FVU
interpolated linearly in log(L0) between the two measured SAEs around the target, read at the
family's nearest SAE where the target lies outside its measured L0 range by at most 2% (a JumpReLU
trained at the target lands about there), and "-" beyond (no extrapolation: a frontier's slope
beyond its last point is not known). Every SAE is measured on the same held-out sequences, so beside
it each family's gap to saescope's JumpReLU is paired sequence by sequence, with its standard error
over the sequences (`saescope/matched.py`): whether the evaluation text alone could have produced it.
A second paired table reads every family at the L0 each of our JumpReLU SAEs actually landed on, so a
JumpReLU that lands more than 2% off a target (a "-" above) is still compared at one L0 with the rest.

With `--seeds N` the whole comparison runs N times (seeds SEED..SEED+N-1: every SAE's
initialisation and the order of the rows), each in OUT/seed<k> with its own tables and plot, and
OUT/compare.md gives each family's mean and range over the seeds at every matched L0 (a gap between
two families means something only where it is larger than their ranges), and the paired gaps of the
seed-averaged SAEs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from saescope.config import STORE_FOLDER, device_option, option, part, rescaled, same_as, save_config
from saescope.errors import SaescopeError
from saescope.evaluate.metrics import EvalConfig
from saescope.evaluate.position import POSITION_LABELS, curve, position_table
from saescope.evaluate.report import SUITE_NUMBERS, suite_numbers
from saescope.evaluate.suite import SuiteConfig, run_suite
from saescope.io import read_json, write_json_atomic
from saescope.matched import interpolate_log_l0, paired_section
from saescope.run import RUN_SCHEDULE
from saescope.saelens_baseline import DEFAULT_SWEEPS as DEFAULT_BASELINE_SWEEPS
from saescope.saelens_baseline import FAMILIES as BASELINE_FAMILIES
from saescope.saelens_baseline import require_saelens, train_saelens
from saescope.saes.registry import ARCHITECTURES, sweep_knobs
from saescope.seed_spread import FRONTIER, seed_spread, shown, spread_table
from saescope.train.job import TrainConfig, parse_knobs
from saescope.train.schedule import Schedule
from saescope.train.trainer import Trainer

DEFAULT_SWEEPS = "jumprelu=16/32/64,topk=16/32/64,batchtopk=16/32/64,gated=0.3/1/3,relu=1/3/10"
DEFAULT_MATCHED_L0 = "16,32,64"
SUITE_COLUMNS = {
    key: SUITE_NUMBERS[key] for key in ("probing_top1", "absorption", "full_absorption", "topic_absorption")
}


@dataclass
class CompareConfig(Schedule):
    store: str = option(STORE_FOLDER, "activation store to train and evaluate on")
    out: str = option("runs/compare", "run folder: SAEs in OUT/saes, the table and plot in OUT/compare.*")
    site: str = option("res.6", "the one site every family is trained on")
    width: int = option(4096, "dictionary size of every SAE")
    sweeps: str = option(
        DEFAULT_SWEEPS,
        "family=v1/v2/...,family=... : each family's sparsity knob values "
        "(jumprelu's target L0, or lambda with jumprelu.l0_penalty=l0; the L1 "
        "coefficient; or k)",
    )
    family_knobs: str = option("", "per-family options as family.key=value,... (e.g. jumprelu.bandwidth=0.01)")
    baseline: Literal["", "saelens"] = option(
        "",
        "reference SAEs trained by their own library on the same rows as "
        "saescope's: saelens trains SAELens' JumpReLU and TopK on the same "
        "rows (needs sae-lens)",
    )
    baseline_sweeps: str = option(
        DEFAULT_BASELINE_SWEEPS,
        "with --baseline saelens: jumprelu=v1/v2/...,topk=k1/k2/... "
        "(SAELens' l0_coefficient on the normalised rows, and k)",
    )
    matched_l0: str = option(
        DEFAULT_MATCHED_L0,
        "L0 targets of the matched-L0 table (delta LM loss and FVU interpolated linearly in log L0), comma-separated",
    )
    seeds: int = option(
        1,
        "run the whole comparison with seeds SEED..SEED+N-1, each in OUT/seed<k>; OUT/compare.md then "
        "gives each family's mean and range over them at every matched L0",
    )
    eval_sequences: int = option(16, "held-out sequences for delta LM loss")
    eval_context_len: int = same_as(EvalConfig, "eval_context_len")
    eval_offset: int = same_as(EvalConfig, "eval_offset")
    suite: str = same_as(SuiteConfig, "suite")
    device: str = device_option()


CompareConfig = rescaled(CompareConfig, RUN_SCHEDULE)  # the default run's schedule


def parse_sweeps(
    text: str, family_knobs: str = "", flag: str = "--sweeps", families: Collection[str] = tuple(ARCHITECTURES)
) -> list[tuple[str, list[float], dict]]:
    """`topk=16/32,relu=1/3` -> [("topk", [16.0, 32.0], {}), ("relu", [1.0, 3.0], {})]; errors name
    `flag`, and only `families` (each a saescope family, whose knob type checks the values) are accepted."""
    knobs: dict[str, dict] = defaultdict(dict)
    for key, value in parse_knobs(family_knobs).items():
        family, dot, name = key.partition(".")
        if not dot or family not in ARCHITECTURES:
            raise SaescopeError(
                f"bad --family-knobs entry {key!r}: use family.key=value with a family of {sorted(ARCHITECTURES)}"
            )
        knobs[family][name] = value
    out = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        family, eq, values = item.partition("=")
        family = family.strip()
        if not eq or family not in families:
            raise SaescopeError(f"bad {flag} entry {item!r}: use family=v1/v2 with a family of {sorted(families)}")
        try:
            numbers = [float(v) for v in values.split("/") if v.strip()]
        except ValueError:
            raise SaescopeError(f"bad {flag} values in {item!r}: numbers separated by '/'") from None
        if not numbers:
            raise SaescopeError(f"{flag} entry {item!r} has no values")
        try:
            for v in numbers:
                sweep_knobs(family, v)  # integer checks for k
        except SaescopeError as e:
            raise SaescopeError(f"bad {flag} values in {item!r}: {e}") from None
        out.append((family, numbers, knobs.get(family, {})))
    if not out:
        raise SaescopeError(f"{flag} names no family: pass e.g. topk=16/32/64")
    return out


def parse_baseline(baseline: str, sweeps: str) -> list[tuple[str, list[float], dict]]:
    """The baseline's families and sweep values; [] without --baseline. Checked before any training."""
    if not baseline:
        return []
    if baseline != "saelens":
        raise SaescopeError(f"unknown --baseline {baseline!r}: use --baseline saelens, or leave it out")
    require_saelens()
    return parse_sweeps(sweeps, flag="--baseline-sweeps", families=tuple(BASELINE_FAMILIES))


def parse_targets(text: str) -> list[float]:
    """`16,32,64` -> [16.0, 32.0, 64.0]: the L0s of the matched-L0 table."""
    try:
        targets = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SaescopeError(
            f"bad --matched-l0 {text!r}: positive L0 values separated by commas, e.g. 16,32,64"
        ) from None
    if not targets or not all(math.isfinite(t) and t > 0 for t in targets):
        raise SaescopeError(f"bad --matched-l0 {text!r}: positive L0 values separated by commas, e.g. 16,32,64")
    return targets


def family_of(meta: dict) -> str:
    """The family a trained SAE's config.json names (its architecture in configs older than families)."""
    return meta.get("family", meta["architecture"])


def collect(out: str | Path) -> list[dict]:
    """One row per evaluated SAE of a compare run: family, sweep value, L0, FVU, delta loss, and the
    suite's headline numbers (None where a part was not run or does not apply)."""
    rows = []
    for folder in sorted(Path(out, "saes").glob("*")):
        if not (folder / "metrics.json").exists():
            continue
        meta, m = read_json(folder / "config.json"), read_json(folder / "metrics.json")
        rows.append(
            {
                "family": family_of(meta),
                "value": meta["sparsity_coefficient"],
                "l0": m["l0"],
                "fvu": m["fvu"],
                "fvu_weighted": m.get("fvu_weighted"),
                "delta_loss": m.get("delta_loss"),
                "kl_div": m.get("kl_div"),
                "ce_loss_recovered": m.get("ce_loss_recovered"),
                "dead_fraction": m.get("dead_fraction"),
                "name": folder.name,
                "by_position": m.get("by_position"),
                "by_sequence": m.get("by_sequence"),
            }
            | {key: value for key, value in suite_numbers(m).items() if key in SUITE_COLUMNS}
        )
    return sorted(rows, key=lambda r: (r["family"], r["l0"]))


def table(rows: list[dict]) -> str:
    """A markdown table of the rows (sorted by family, then L0)."""
    suite = [key for key in SUITE_COLUMNS if any(r[key] is not None for r in rows)]
    heads = ["family", "sweep value", "L0", "FVU", "weighted FVU", "delta LM loss", "KL", "CE recovered", "dead"]
    heads += [SUITE_COLUMNS[key][2] for key in suite]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['value']:g} | {r['l0']:.1f} | {r['fvu']:.4f} | {_f(r.get('fvu_weighted'))} | "
            f"{_f(r['delta_loss'])} | "
            f"{_f(r['kl_div'])} | {_f(r['ce_loss_recovered'], 3)} | {_f(r['dead_fraction'], 3)} |"
            + "".join(f" {_f(r[key], 3)} |" for key in suite)
        )
    return "\n".join(lines)


def _f(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def families(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each family."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r["family"]].append(r)
    return out


def matched_l0(rows: list[dict], targets: list[float]) -> list[dict]:
    """Per family: the FRONTIER numbers and the suite's at each target L0 (None where they cannot be
    read off)."""
    out = []
    for family, points in sorted(families(rows).items()):
        entry: dict = {"family": family}
        for key in (*FRONTIER, *SUITE_COLUMNS):
            measured = [(r["l0"], r[key]) for r in points if r.get(key) is not None]
            entry[key] = [interpolate_log_l0(measured, t) for t in targets]
        out.append(entry)
    return out


def matched_table(matched: list[dict], targets: list[float]) -> str:
    """A markdown table: one row per family, delta LM loss, KL, FVU and weighted FVU at each target L0."""
    keys = shown(matched)
    heads = [f"{FRONTIER[key]} @ L0 {t:g}" for key in keys for t in targets]
    lines = ["| family | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for m in matched:
        lines.append(f"| {m['family']} | " + " | ".join(_f(v) for key in keys for v in m[key]) + " |")
    suite = [key for key in SUITE_COLUMNS if any(v is not None for m in matched for v in m.get(key, ()))]
    if suite:  # the evaluation suite's numbers at the same L0 targets, a table of their own
        heads = [f"{SUITE_COLUMNS[key][2]} @ L0 {t:g}" for key in suite for t in targets]
        lines += ["", "| family | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for m in matched:
            lines.append(f"| {m['family']} | " + " | ".join(_f(v, 3) for key in suite for v in m[key]) + " |")
    return "\n".join(lines)


def nearest_l0(rows: list[dict], target: float) -> list[dict]:
    """Per family, its SAE whose L0 is nearest `target` (in log L0) and that has a by-position curve."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["by_position"] and r["l0"] > 0:
            gap = abs(math.log(r["l0"] / target))
            if r["family"] not in best or gap < abs(math.log(best[r["family"]]["l0"] / target)):
                best[r["family"]] = r
    return [best[f] for f in sorted(best)]


def position_panel(ax, rows: list[dict], target: float) -> None:
    """Delta LM loss by token position, one line per family at its SAE nearest L0 `target`."""
    for r in nearest_l0(rows, target):
        values = [float("nan") if v is None else v for v in curve(r)]
        ax.plot(range(len(values)), values, "o-", label=f"{r['family']} (L0 {r['l0']:.0f})")
    ax.set_xticks(range(len(POSITION_LABELS)), POSITION_LABELS)
    ax.set_xlabel("token position in its document")
    ax.set_ylabel("delta LM loss (nats)")
    ax.set_title(f"by position, near L0 {target:g}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def plot(rows: list[dict], path: str | Path, title: str = "", at_l0: float | None = None) -> Path:
    """Delta LM loss vs L0 and FVU vs L0, one line per family, log-scaled L0; beside them delta
    LM loss by token position at L0 `at_l0` (default: the median L0), when evaluate measured it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    curves = any(r["by_position"] for r in rows)
    fig, axes = plt.subplots(1, 3 if curves else 2, figsize=(16 if curves else 11, 4.2))
    if curves:
        position_panel(axes[2], rows, at_l0 or sorted(r["l0"] for r in rows)[len(rows) // 2])
    for family, points in sorted(families(rows).items()):
        points = sorted(points, key=lambda r: r["l0"])
        l0 = [r["l0"] for r in points]
        for ax, key in zip(axes, ("delta_loss", "fvu")):
            style = "o--" if family in BASELINE_FAMILIES.values() else "o-"  # other libraries' SAEs dashed
            ax.plot(l0, [r[key] if r[key] is not None else float("nan") for r in points], style, label=family)
    for ax, label in zip(axes, ("delta LM loss (nats)", "FVU")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels on a log axis overlap
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("L0 (active latents per token)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def compare(cfg: CompareConfig) -> list[dict]:
    """Train, evaluate, tabulate and plot; returns the table rows (of every seed, with --seeds)."""
    families = parse_sweeps(cfg.sweeps, cfg.family_knobs)
    targets = parse_targets(cfg.matched_l0)
    baseline = parse_baseline(cfg.baseline, cfg.baseline_sweeps)
    save_config(cfg, Path(cfg.out) / "config.json")  # `saescope compare --config` re-runs it
    if cfg.seeds > 1:
        return compare_seeds(cfg, targets)
    trainer = Trainer(
        part(
            cfg,
            TrainConfig,
            train_sites=cfg.site,
            arch=families[0][0],
            widths=[cfg.width],
            l0_coefficients=families[0][1],
        ),
        families,
    )
    trainer.train()
    if baseline:
        train_saelens(trainer, baseline)
    run_suite(part(cfg, SuiteConfig))
    return report(cfg.out, f"{cfg.site}, width {cfg.width}, {cfg.train_tokens:,} tokens per SAE", targets)


def compare_seeds(cfg: CompareConfig, targets: list[float]) -> list[dict]:
    """Each seed's comparison in OUT/seed<k> (one already reported is kept: an interrupted run
    resumes), then the matched-L0 table over seeds in OUT/compare.md and .json."""
    rows, matched, per_seed = [], [], []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        sub = replace(cfg, seed=seed, seeds=1, out=str(Path(cfg.out) / f"seed{seed}"))
        if not Path(sub.out, "compare.json").exists():
            compare(sub)
        seed_rows = collect(sub.out)
        rows += seed_rows
        per_seed.append(families(seed_rows))
        matched.append(read_json(Path(sub.out, "compare.json"))["matched_l0"]["families"])
    spread = seed_spread(matched)
    paired, gaps = paired_section(per_seed, targets)
    title = f"{cfg.site}, width {cfg.width}, {cfg.train_tokens:,} tokens per SAE, seeds {cfg.seed}-{seed}"
    text = (
        f"Matched L0 over {cfg.seeds} seeds: mean [min - max] (each seed's tables in OUT/seed<k>/compare.md):\n\n"
        + spread_table(spread, targets)
        + paired
    )
    Path(cfg.out, "compare.md").write_text(f"{title}\n\n{text}\n")
    summary = {"title": title, "seeds": cfg.seeds, "targets": targets, "families": spread, "paired": gaps}
    write_json_atomic(Path(cfg.out, "compare.json"), summary)
    print(text)
    return rows


def report(out: str | Path, title: str = "", targets: list[float] | None = None) -> list[dict]:
    """Write OUT/compare.md, .json and .png from the evaluated SAEs, and print the per-SAE table
    and the matched-L0 table (at `targets`, default 16, 32, 64)."""
    rows = collect(out)
    if not rows:
        raise SaescopeError(f"no evaluated SAEs in {Path(out) / 'saes'}: run `saescope compare --out {out}` first")
    targets = parse_targets(DEFAULT_MATCHED_L0) if targets is None else targets
    matched = matched_l0(rows, targets)
    paired, gaps = paired_section([families(rows)], targets)
    text = (
        table(rows)
        + "\n\nMatched L0 (linear in log L0 between measured SAEs; - more than 2% outside a family's L0 range):\n\n"
        + matched_table(matched, targets)
        + paired
        + "\n\nDelta LM loss by token position (index in its document, BOS at 0):\n\n"
        + position_table([(f"{r['family']} {r['value']:g} (L0 {r['l0']:.1f})", r) for r in rows])
    )
    Path(out, "compare.md").write_text((f"{title}\n\n" if title else "") + text + "\n")
    matched_json = {"targets": targets, "families": matched, "paired": gaps}
    kept = [{k: v for k, v in r.items() if k != "by_sequence"} for r in rows]  # paired above, 2048 numbers at scale
    write_json_atomic(Path(out, "compare.json"), {"title": title, "rows": kept, "matched_l0": matched_json})
    png = plot(rows, Path(out, "compare.png"), title, targets[len(targets) // 2])
    print(text)
    print(f"saescope: plot written to {png}")
    from saescope.evaluate.splitting import print_splitting  # the table when the run has several widths

    print_splitting(out)
    return rows
