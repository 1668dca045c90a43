"""Server-side HTML for every page, shared by the live app and the static export.

All text that comes from the corpus, the tokenizer, the user or the run folder goes through `e()`
(html.escape with quotes) before it reaches the page; nothing is ever inserted unescaped, so a
document or prompt containing `<script>` shows as text. `Links` is the only thing that differs
between the server (absolute URLs) and the export (relative file paths).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from urllib.parse import quote, urlencode

from saescope.browse import evalview, family, plots
from saescope.browse.db import Examples, FeatureDB, LatentRow
from saescope.browse.evalview import METRICS, fmt
from saescope.browse.lens import LENS_KINDS

SORTS = {"freq_desc": "frequency DESC", "freq_asc": "frequency ASC", "index": "latent ASC", "max_act": "max_act DESC"}


def e(text: object) -> str:
    return escape(str(text), quote=True)


@dataclass
class Links:
    """URLs of the pages: absolute for the server, relative `.html` files for the static export."""

    prefix: str = "/"
    static_site: bool = False

    def home(self) -> str:
        return self.prefix + ("index.html" if self.static_site else "")

    def sae(self, name: str) -> str:
        return f"{self.prefix}sae/{quote(name)}/" + ("index.html" if self.static_site else "")

    def latent(self, name: str, index: int) -> str:
        return (
            f"{self.prefix}sae/{quote(name)}/{int(index)}.html"
            if self.static_site
            else f"{self.prefix}latent/{quote(name)}/{int(index)}"
        )

    def static(self, file: str) -> str:
        return f"{self.prefix}static/{file}"

    def live(self, page: str, **params) -> str:
        return f"{self.prefix}{page}" + (f"?{urlencode(params)}" if params else "")


def page(title: str, body: str, links: Links) -> str:
    nav = [f'<a class="brand" href="{e(links.home())}">saescope</a>', f'<a href="{e(links.home())}">suite</a>']
    if not links.static_site:
        nav += [
            f'<a href="{e(links.live("prompt"))}">prompt</a>',
            f'<a href="{e(links.live("steer"))}">steer</a>',
            f'<form action="{e(links.live("search"))}" method="get" style="display:inline">'
            f'<input type="search" name="q" placeholder="search latents by word"></form>',
        ]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} - saescope</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="{e(links.static("style.css"))}">'
        f'<script src="{e(links.static("app.js"))}" defer></script></head>'
        f"<body><header>{''.join(nav)}</header><main>{body}</main></body></html>"
    )


def error_page(status: int, message: str, links: Links) -> str:
    return page(
        f"{status}",
        f'<h1>{status}</h1><p class="error">{e(message)}</p><p><a href="{e(links.home())}">back to the suite</a></p>',
        links,
    )


def _shade(value: float, lo: float, hi: float) -> str:
    t = 0.0 if hi <= lo or not math.isfinite(value) else min(max((value - lo) / (hi - lo), 0.0), 1.0)
    return f"background: rgba(33, 150, 243, {0.08 + 0.6 * t:.2f})"


# ---- suite overview ------------------------------------------------------------------------------


def overview(db: FeatureDB, links: Links, metric: str = "l0") -> str:
    metric = metric if metric in METRICS else "l0"
    kinds = sorted({s.kind for s in db.saes.values()})
    layers = sorted({s.layer for s in db.saes.values()})
    choose = " ".join(
        f'<a href="{e(links.home() if links.static_site else links.live("", metric=m))}">'
        f"{'<b>' + e(label) + '</b>' if m == metric else e(label)}</a>"
        for m, label in METRICS.items()
        if not links.static_site or m == metric
    )
    values = [float(s.metrics.get(metric, float("nan"))) for s in db.saes.values()]
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    head = "".join(f"<th>{layer}</th>" for layer in layers)
    rows = []
    for kind in kinds:
        cells = []
        for layer in layers:
            here = [s for s in db.saes.values() if s.kind == kind and s.layer == layer]
            inner = "".join(
                f'<a href="{e(links.sae(s.name))}" title="{e(s.name)}" '
                f'style="{_shade(float(s.metrics.get(metric, float("nan"))), lo, hi)}">'
                f"{e(fmt(s.metrics.get(metric, '-')))}</a>"
                for s in here
            )
            cells.append(f"<td>{inner}</td>")
        rows.append(f"<tr><th>{e(kind)}</th>{''.join(cells)}</tr>")
    charts = []
    for m in ("l0", "fvu", "delta_loss", "ce_loss_recovered", "dead_latents"):
        series = {
            k: [(s.layer, float(s.metrics.get(m, float("nan")))) for s in db.saes.values() if s.kind == k]
            for k in kinds
        }
        charts.append(plots.lines(series, f"{METRICS[m]} by layer"))
    meta = db.meta
    body = (
        f"<h1>Suite: {e(meta.get('model', ''))}</h1>"
        f"<p>{len(db.saes)} SAEs; statistics over {meta.get('rows', 0)} held-out tokens of "
        f"<code>{e(meta.get('dataset', ''))}</code>.</p>"
        f"<h2>{e(METRICS[metric])} per site and layer</h2><p>metric: {choose}</p>"
        f'<table class="grid" id="grid"><thead><tr><th>site</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        f'<h2>Metrics by layer</h2><div class="plots">{"".join(charts)}</div>'
    )
    return page("suite", body, links)


# ---- SAE page ---------------------------------------------------------------------------------------


def sae_page(
    db: FeatureDB, name: str, links: Links, sort: str = "freq_desc", query: str = "", exported: set[int] | None = None
) -> str:
    s = db.saes[name]
    rows = db.latent_table(name, SORTS.get(sort, SORTS["freq_desc"]))
    if query:
        hits = {latent for _, latent, _, _ in db.search(query, sae=name, limit=s.d_sae)}
        rows = [r for r in rows if r[0] in hits]
    histogram, dead = evalview.frequency_histogram([r[1] for r in db.latent_table(name, "latent ASC")])
    lensed = db.lens_count(name)
    pending = (
        ""
        if lensed == s.d_sae or s.kind not in LENS_KINDS
        else f'<p class="note" id="lens-pending">Top logits of {lensed} of {s.d_sae} latents so far: the rest are '
        f"computed in the background, and on a latent's first view.</p>"
    )
    table = []
    for latent, freq, max_act, snippet, logit_summary in rows:
        link = (
            f'<a href="{e(links.latent(name, latent))}">{latent}</a>'
            if exported is None or latent in exported
            else str(latent)
        )
        table.append(
            f"<tr><td data-v={latent}>{link}</td><td class=num data-v={freq!r}>{freq:.2e}</td>"
            f"<td class=num>{max_act:.3g}</td><td>{e(snippet)}</td><td>{e(logit_summary)}</td></tr>"
        )
    sort_links = (
        " ".join(f'<a href="{e(links.live("sae/" + quote(name) + "/", sort=k, q=query))}">{e(k)}</a>' for k in SORTS)
        if not links.static_site
        else ""
    )
    search = (
        ""
        if links.static_site
        else f'<form method="get"><input type="search" name="q" value="{e(query)}" placeholder="word in top examples '
        f'or logit tokens"><input type="hidden" name="sort" value="{e(sort)}"> <button>search</button></form>'
        f"<p>sort: {sort_links}</p>"
    )
    body = (
        f"<h1>{e(name)}</h1><p>site <b>{e(s.kind)}</b>, layer <b>{s.layer}</b>, {s.d_sae} latents, "
        f"d_in {s.d_in}; {dead} latents never fired on the held-out tokens.</p>"
        f'<div class="cols"><div><table>{evalview.metrics_table(s.metrics)}</table></div><div>{histogram}</div></div>'
        f"{evalview.breakdown_section(s.metrics)}<h2>Latents ({len(rows)})</h2>{pending}{search}"
        f'<p><input class="filter" data-table="latents" type="search" placeholder="filter this table"></p>'
        f'<table id="latents"><thead><tr><th class=sortable>latent</th><th class=sortable>frequency</th>'
        f"<th class=sortable>max act</th><th class=sortable>top example</th><th class=sortable>top logits</th>"
        f"</tr></thead><tbody>{''.join(table)}</tbody></table>"
    )
    return page(name, body, links)


# ---- latent dashboard ---------------------------------------------------------------------------------


def tokens_html(db: FeatureDB, ids, acts, scale: float, centre: int | None = None) -> str:
    """A token window with each token's background proportional to its activation."""
    out = []
    for j, (t, a) in enumerate(zip(ids, acts)):
        if t < 0:
            continue
        a = float(a)
        text = db.token(t).replace("\n", "\u21b5")
        cls = "tok centre" if j == centre else "tok"
        if a > 0 and scale > 0:  # only active tokens carry a colour and a value: pages stay small
            out.append(
                f'<span class="{cls}" style="background:rgba(255,120,0,{min(a / scale, 1.0):.2f})" '
                f'title="{a:.3g}">{e(text)}</span>'
            )
        else:
            out.append(f'<span class="{cls}">{e(text)}</span>')
    return "".join(out)


def examples_html(db: FeatureDB, ex: Examples, rows: range | list[int], scale: float) -> str:
    out = []
    for j in rows:
        title, topic = db.doc(int(ex.doc[j]))
        label = f"{float(ex.act[j]):.3g} · {title}" + (f" ({topic})" if topic else "")
        out.append(
            f'<div class="ex"><span class="meta">{e(label)}</span>'
            f"{tokens_html(db, ex.ids[j], ex.acts[j], scale, ex.left)}</div>"
        )
    return "".join(out)


def latent_page(db: FeatureDB, row: LatentRow, links: Links) -> str:
    s = db.saes[row.sae]
    ex, scale = row.examples, row.max_act
    top = [j for j in range(len(ex)) if ex.group[j] == 0]
    bins = sorted({int(g) for g in ex.group if g > 0})
    quant = []
    for b in bins:
        js = [j for j in range(len(ex)) if ex.group[j] == b]
        acts = [float(ex.act[j]) for j in js]
        quant.append(
            f"<h3>quantile bin {b} (activations {min(acts):.3g} to {max(acts):.3g})</h3>"
            f"{examples_html(db, ex, js, scale)}"
        )
    lg = row.logits
    if lg is not None:
        lens = (
            "<div class=cols><div><table><tr><th>top logits</th><th></th></tr>"
            + "".join(
                f"<tr><td>{e(repr(db.token(t)))}</td><td class='num pos'>{v:+.3f}</td></tr>" for t, v in lg["top"]
            )
            + "</table></div><div><table><tr><th>bottom logits</th><th></th></tr>"
            + "".join(
                f"<tr><td>{e(repr(db.token(t)))}</td><td class='num negv'>{v:+.3f}</td></tr>" for t, v in lg["bottom"]
            )
            + "</table></div><div>"
            + plots.bars(
                lg["hist"]["counts"],
                lg["hist"]["lo"],
                lg["hist"]["hi"],
                "logit lens: all tokens",
                log=True,
                color="#607d8b",
            )
            + "</div></div>"
        )
    else:
        lens = (
            '<p class="note">Logit lens not applicable: mlp_in latents live in the normalised MLP input, '
            "not in the residual stream.</p>"
        )
    topic_names, topic_tokens = db.meta.get("topics", []), db.meta.get("topic_tokens", [])
    topics = "".join(
        f"<tr><td>{e(t)}</td><td class=num>{c / max(n, 1):.3%}</td><td class=num>{n}</td></tr>"
        for t, c, n in zip(topic_names, row.topics, topic_tokens)
    )
    same = " ".join(
        f'<a class="chip" href="{e(links.latent(row.sae, i))}">#{i} ({c:.2f})</a>'
        for i, c in row.neighbours.get("same", [])
    )
    adj = "".join(
        f"<p>layer {a['layer']} (<code>{e(a['sae'])}</code>): "
        + " ".join(f'<a class="chip" href="{e(links.latent(a["sae"], i))}">#{i} ({c:.2f})</a>' for i, c in a["items"])
        + "</p>"
        for a in row.neighbours.get("adjacent", [])
    )
    nav = " ".join(
        f'<a href="{e(links.latent(row.sae, i))}">{label}</a>'
        for i, label in ((row.latent - 1, "&larr; previous"), (row.latent + 1, "next &rarr;"))
        if 0 <= i < s.d_sae
    )
    steer_at = f"{2 * row.max_act:.3g}"
    steer = (
        ""
        if links.static_site
        else f' · <a href="{e(links.live("steer", latents=f"{row.sae}:{row.latent}", strength=steer_at))}">'
        f"steer with this latent</a>"
    )
    hist = row.hist
    density = plots.bars(hist["counts"], 0.0, hist["max"], "activation density (non-zero)", log=True)
    body = (
        f"<h1>{e(row.sae)} · latent {row.latent}</h1>"
        f'<p><a href="{e(links.sae(row.sae))}">{e(s.kind)} layer {s.layer}</a> · {nav}{steer}</p>'
        f'<p>firing frequency <b id="freq">{row.frequency:.3e}</b> · max activation <b>{row.max_act:.4g}</b> · '
        f"mean when active {row.mean_act:.4g}</p>"
        f'<div class="plots">{density}</div>'
        f"<h2>Logit lens</h2>{lens}"
        f'<h2>Top activations</h2><div id="top-examples">{examples_html(db, ex, top, scale)}</div>'
        + ("<h2>Activation quantiles</h2>" + "".join(quant) if quant else "")
        + (
            f"<h2>Firing rate by topic</h2><table><tr><th>topic</th><th>rate</th><th>tokens</th></tr>{topics}</table>"
            if topic_names
            else ""
        )
        + f"<h2>Similar latents (decoder cosine)</h2><p>same SAE: {same}</p>{adj}{family.section(row, links)}"
    )
    if not len(ex):
        body += '<p class="note">This latent never fired on the held-out tokens (dead).</p>'
    return page(f"{row.sae} #{row.latent}", body, links)


# ---- search, prompt and steering ---------------------------------------------------------------------


def search_page(db: FeatureDB, query: str, links: Links) -> str:
    hits = db.search(query) if query else []
    rows = "".join(
        f'<tr><td><a href="{e(links.latent(s, i))}">{e(s)} #{i}</a></td><td>{e(snip)}</td><td>{e(lg)}</td></tr>'
        for s, i, snip, lg in hits
    )
    body = (
        f'<h1>Search</h1><form method="get"><input type="search" name="q" value="{e(query)}" autofocus> '
        f"<button>search</button></form>"
        + (
            f"<p>{len(hits)} latents whose top examples or logit tokens contain <b>{e(query)}</b>.</p>"
            f'<table id="results"><tr><th>latent</th><th>top example</th><th>top logits</th></tr>{rows}</table>'
            if query
            else ""
        )
    )
    return page("search", body, links)


def prompt_page(db: FeatureDB, links: Links, text: str = "", result=None) -> str:
    body = (
        f'<h1>Prompt</h1><form method="post" id="prompt-form"><textarea name="text" rows="4">{e(text)}</textarea>'
        f'<br><button id="run-prompt">show latents</button></form>'
    )
    if result is not None:
        spans = "".join(
            f'<span class="tok" data-i="{i}" title="{e(repr(t))}">{e(t.replace(chr(10), chr(0x21B5)))}</span>'
            for i, t in enumerate(result.tokens)
        )
        head = "".join(f"<th>{e(k)}</th>" for k in result.kinds)
        rows = []
        for i, t in enumerate(result.tokens):
            cells = "".join(
                "<td>"
                + " ".join(
                    f'<a class="chip" href="{e(links.latent(h.sae, h.latent))}" title="{e(h.sae)}: activation '
                    f'{h.act:.3g} ({h.rel:.0%} of its max)">L{h.layer} #{h.latent} {h.act:.3g}</a>'
                    for h in result.top[i].get(k, [])
                )
                + "</td>"
                for k in result.kinds
            )
            rows.append(f'<tr id="tokrow-{i}"><td>{e(repr(t))}</td>{cells}</tr>')
        note = '<p class="note">The first token (BOS) is skipped: no SAE is trained on it.</p>'
        body += (
            f'<h2>Tokens</h2><div class="prompt-tokens ex" id="prompt-tokens">{spans}</div>{note}'
            f"<h2>Top latents per token (ranked by activation relative to the latent's held-out max)</h2>"
            f'<table id="prompt-table"><thead><tr><th>token</th>{head}</tr></thead><tbody>{"".join(rows)}'
            f"</tbody></table>"
        )
    return page("prompt", body, links)


def steer_page(db: FeatureDB, links: Links, form: dict, result=None, error: str = "") -> str:
    mode = form.get("mode", "add")
    options = "".join(f'<option value="{m}"{" selected" if m == mode else ""}>{m}</option>' for m in ("add", "clamp"))
    body = (
        f'<h1>Steering</h1><form method="post" id="steer-form">'
        f'<p><textarea name="prompt" rows="3">{e(form.get("prompt", ""))}</textarea></p>'
        f'<p>latents <input name="latents" size="60" value="{e(form.get("latents", ""))}" '
        f'placeholder="SAE:LATENT, comma-separated"> mode <select name="mode">{options}</select> '
        f'strength <input name="strength" size="6" value="{e(form.get("strength", "4"))}"> '
        f'new tokens <input name="max_new_tokens" size="4" value="{e(form.get("max_new_tokens", "24"))}"> '
        f'<button id="run-steer">generate</button></p></form>'
        f'<p class="note">add: the latent\'s decoder direction times the strength is added to the site at every '
        f"token; clamp: the latent's activation is set to the strength (the SAE's error term is kept). "
        f"Greedy decoding; the prompt's BOS is never steered.</p>"
    )
    if error:
        body += f'<p class="error" id="steer-error">{e(error)}</p>'
    if result is not None:
        body += (
            f'<div class="cols"><div><h2>unsteered</h2><div class="gen" id="gen-clean">{e(result.clean)}</div></div>'
            f'<div><h2>steered</h2><div class="gen" id="gen-steered">{e(result.steered)}</div></div></div>'
        )
    return page("steer", body, links)
