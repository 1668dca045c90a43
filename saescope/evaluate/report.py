"""What `saescope evaluate` prints after the suite: the run's metrics table, delta LM loss by token
position per SAE, the suite's headline numbers per SAE and their means per kind of site (OUT/suite.md).

A part that did not apply to an SAE (a model whose probes fail the gate at that site, no second
width) is "-" in the per-SAE table and left out of its kind's mean, whose "n" column says how many
SAEs it averages.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from saescope.evaluate.metrics import EvalConfig, metrics_file, sae_config, trained_folders
from saescope.evaluate.position import position_table
from saescope.release.files import read_json_with

SUITE_NUMBERS = {  # key: (suite part, its headline number in metrics.json's "suite", heading)
    "probing_llm": ("probing", "llm_test_accuracy", "probe on activations"),
    "probing_top1": ("probing", "sae_top_1_test_accuracy", "sparse probing top-1"),
    "probing_top5": ("probing", "sae_top_5_test_accuracy", "top-5"),
    "probing_all": ("probing", "sae_test_accuracy", "all latents"),
    "tpp": ("tpp", "tpp_threshold_20_total_metric", "TPP"),
    "absorption": ("absorption", "first_letter_absorption_fraction", "absorption"),
    "full_absorption": ("absorption", "first_letter_full_absorption", "full absorption"),
    "topic_absorption": ("absorption", "topic_absorption_fraction", "topic absorption"),
}


def suite_numbers(metrics: dict) -> dict[str, float | None]:
    """The SUITE_NUMBERS of one SAE's metrics.json (None where a part was not run or did not apply)."""
    suite = metrics.get("suite", {})
    return {key: suite.get(part, {}).get(name) for key, (part, name, _) in SUITE_NUMBERS.items()}


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def suite_tables(out: str | Path) -> str:
    """The per-kind means and the per-SAE table of the suite's numbers, as markdown."""
    rows = []
    for folder in trained_folders(out):
        meta, metrics = sae_config(folder), read_json_with(folder / metrics_file())
        rows.append((meta["site"], meta["layer"], folder.name, suite_numbers(metrics)))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    heads = [heading for _, _, heading in SUITE_NUMBERS.values()]
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for kind, _, _, numbers in rows:
        by_kind[kind].append(numbers)
    lines = ["| site | SAEs | " + " | ".join(f"{h} (n)" for h in heads) + " |", "|---|---:|" + "---:|" * len(heads)]
    for kind, numbers in by_kind.items():
        cells = []
        for key in SUITE_NUMBERS:
            found = [n[key] for n in numbers if n[key] is not None]
            cells.append(f"{sum(found) / len(found):.3f} ({len(found)})" if found else "- (0)")
        lines.append(f"| {kind} | {len(numbers)} | " + " | ".join(cells) + " |")
    lines += ["", "| SAE | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    lines += [f"| {name} | " + " | ".join(_cell(n[key]) for key in SUITE_NUMBERS) + " |" for *_, name, n in rows]
    return "\n".join(lines)


def suite_summary(cfg: EvalConfig) -> str:
    """The run's metrics table and by-position table (for `--text`, on that text) and, for the corpus
    text, the suite's tables, which it also writes to OUT/suite.md."""
    from saescope.run import summary_table  # the default run's table, which `saescope run` prints too

    rows = [(f.name, read_json_with(f / metrics_file(cfg.text))) for f in trained_folders(cfg.out)]
    text = summary_table(cfg.out, cfg.text)
    text += f"\n\nDelta LM loss by token position (index in its document, BOS at 0):\n\n{position_table(rows)}"
    if not cfg.text:
        tables = suite_tables(cfg.out)
        Path(cfg.out, "suite.md").write_text(tables + "\n")
        text += f"\n\nEvaluation suite (means per kind of site over the SAEs where a part applies):\n\n{tables}"
    return text
