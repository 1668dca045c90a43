"""Inline SVG plots: small, dependency-free and identical in the live app and the static export.

Every label passes through `html.escape`, because SAE and token names reach these plots too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v) if not math.isfinite(v) else "0"
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.1e}"


def bars(
    counts: list[float],
    lo: float,
    hi: float,
    title: str,
    width: int = 320,
    height: int = 110,
    log: bool = False,
    color: str = "#e07b00",
) -> str:
    """A histogram of `counts` over equal bins between lo and hi."""
    n = max(len(counts), 1)
    vals = [math.log10(1 + c) if log else c for c in counts]
    top = max(vals) if vals and max(vals) > 0 else 1
    plot_h, bw = height - 34, (width - 10) / n
    rects = []
    for i, (c, v) in enumerate(zip(counts, vals)):
        h = plot_h * v / top
        rects.append(
            f'<rect x="{5 + i * bw:.1f}" y="{18 + plot_h - h:.1f}" width="{max(bw - 1, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{escape(_fmt(lo + (hi - lo) * i / n))}: '
            f"{escape(_fmt(c))}</title></rect>"
        )
    return (
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<text x="5" y="12" class="ptitle">{escape(title)}</text>{"".join(rects)}'
        f'<text x="5" y="{height - 3}" class="axis">{escape(_fmt(lo))}</text>'
        f'<text x="{width - 5}" y="{height - 3}" class="axis" text-anchor="end">{escape(_fmt(hi))}</text></svg>'
    )


def lines(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    width: int = 360,
    height: int = 180,
    ticks: Sequence[str] = (),
) -> str:
    """One line per series, with a legend; skips non-finite points. x is a layer, or with `ticks`
    the index of its label (token-position buckets)."""

    def name_x(x: float, first: bool = False) -> str:
        if ticks:
            return ticks[int(x)] if int(x) < len(ticks) else ""
        return f"layer {x:g}" if first else f"{x:g}"

    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(y)]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 44, 8, 20, 24

    def sx(x: float) -> float:
        return left + (width - left - right) * (x - x0) / (x1 - x0)

    def sy(y: float) -> float:
        return top + (height - top - bottom) * (1 - (y - y0) / (y1 - y0))

    parts = [
        f'<text x="5" y="13" class="ptitle">{escape(title)}</text>',
        f'<text x="{left - 3}" y="{top + 4}" class="axis" text-anchor="end">{escape(_fmt(y1))}</text>',
        f'<text x="{left - 3}" y="{height - bottom}" class="axis" text-anchor="end">{escape(_fmt(y0))}</text>',
        f'<text x="{left}" y="{height - 6}" class="axis">{escape(name_x(x0, True))}</text>',
        f'<text x="{width - right}" y="{height - 6}" class="axis" text-anchor="end">{escape(name_x(x1))}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="frame"/>',
    ]
    for k, (name, s) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        good = [(x, y) for x, y in s if math.isfinite(y)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in good)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        parts += [
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.2" fill="{color}"><title>{escape(name)} '
            f"{escape(name_x(x, True))}: {escape(_fmt(y))}</title></circle>"
            for x, y in good
        ]
        parts.append(
            f'<text x="{width - right - 60 * (len(series) - k)}" y="13" class="axis" style="fill:{color}">'
            f"{escape(name)}</text>"
        )
    return (
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f"{''.join(parts)}</svg>"
    )
