"""The SAE page's evaluation panels: its metrics, its firing-frequency histogram, and its delta LM loss
and FVU by token position and by topic (`saescope evaluate`'s by_position and by_topic, kept with the
SAE's metrics in the browser's database). Apart from render.py, which holds the pages' frame."""

from __future__ import annotations

import math
from html import escape

from saescope.browse import plots
from saescope.evaluate.position import POSITION_LABELS, curve

METRICS = {
    "l0": "L0",
    "fvu": "FVU",
    "delta_loss": "delta loss",
    "ce_loss_recovered": "CE recovered",
    "kl_div": "KL",
    "dead_latents": "dead",
    "dense_latents": "dense",
}
BREAKDOWN_COLUMNS = {"tokens": "tokens", "delta_loss": "delta loss", "kl_div": "KL", "fvu": "FVU", "l0": "L0"}


def fmt(v: object) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return "-" if v is None else str(v)


def metrics_table(metrics: dict) -> str:
    return "".join(
        f"<tr><th>{escape(METRICS.get(k, k))}</th><td class=num>{escape(fmt(v))}</td></tr>"
        for k, v in metrics.items()
        if k in METRICS or k == "browse_rows"
    )


def frequency_histogram(freqs: list[float]) -> tuple[str, int]:
    """The latents per log10 firing frequency (1e-6 .. 1) as a plot, and how many never fired."""
    counts = [0] * 24
    for f in freqs:
        if f > 0:
            counts[min(max(int((math.log10(f) + 6) / 0.25), 0), 23)] += 1
    plot = plots.bars(counts, -6.0, 0.0, "latents per log10 firing frequency", width=420)
    return plot, sum(1 for f in freqs if f == 0)


def _table(groups: dict, head: str) -> str:
    rows = "".join(
        f"<tr><td>{escape(str(name))}</td>"
        + "".join(f"<td class=num>{escape(fmt(g.get(k)))}</td>" for k in BREAKDOWN_COLUMNS)
        + "</tr>"
        for name, g in groups.items()
    )
    heads = "".join(f"<th>{escape(h)}</th>" for h in BREAKDOWN_COLUMNS.values())
    return f"<table><thead><tr><th>{escape(head)}</th>{heads}</tr></thead><tbody>{rows}</tbody></table>"


def breakdown_section(metrics: dict) -> str:
    """Delta loss and FVU by token position (plots and table) and by topic (table); empty for an
    SAE evaluated before `saescope evaluate` measured them."""
    by_position = metrics.get("by_position")
    if not isinstance(by_position, dict) or "not_applicable" in by_position:
        return ""
    charts = "".join(
        plots.lines(
            {label: [(i, v) for i, v in enumerate(curve(metrics, key)) if v is not None]},
            f"{label} by token position",
            width=420,
            ticks=POSITION_LABELS,
        )
        for key, label in (("delta_loss", "delta LM loss"), ("fvu", "FVU"))
    )
    out = (
        f'<h2>By token position</h2><div class="plots">{charts}</div>'
        f'<p class="note">Position: the token\'s index in its document (BOS is 0), as the held-out text was '
        f"packed; each bucket's losses count the tokens predicted from there.</p>" + _table(by_position, "position")
    )
    by_topic = metrics.get("by_topic")
    if isinstance(by_topic, dict) and by_topic and "not_applicable" not in by_topic:
        out += "<h2>By topic</h2>" + _table(by_topic, "topic")
    return out
