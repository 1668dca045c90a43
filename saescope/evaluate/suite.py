"""`saescope evaluate`: the evaluation suite, each part cached per SAE and resumable.

Parts (`--suite`, default all):

    core        L0, FVU, delta LM loss, KL, CE recovered, dead/dense latents   evaluate/metrics.py
    position    the core loss and FVU numbers per token-position bucket        evaluate/position.py
    topics      the same per document topic of the corpus                      evaluate/position.py
    probing     sparse probing of the corpus topics (SAEBench)                 evaluate/probing.py
    tpp         targeted probe perturbation (SAEBench)                         evaluate/probing.py
    absorption  feature absorption: first letter (SAEBench) and topic probes   evaluate/absorption.py
    splitting   feature splitting across widths of one site                    evaluate/splitting.py

core always runs (metrics.json is the index of the others; position and topics come from its forward
passes). Every result is stored with its key (`evaluate/cache.py`: the sha256 of the SAE's weights
and the settings that change it), written as soon as it is measured, and reused while the key holds:
an interrupted suite resumes where it stopped, and one retrained SAE is all a second run measures.

Files per SAE folder (OUT/saes/<sae>/):

    metrics.json          core metrics, by_position, by_topic, by_sequence (delta loss and KL per
                          held-out sequence, which `compare` pairs SAEs by), and "suite": per part
                          its file and headline numbers, or {"not_applicable": why} / {"not_available": why}
    metrics.<text>.json   the same for `--text FILE` (core, position and topics on that text)
    eval/<part>.json      {"key", "result"} of probing, tpp, absorption; splitting's lives in the
                          wider SAE of each width pair
    saebench/<eval>/<sae>_eval_results.json   SAEBench's schema (evaluate/saebench.py)

A part that does not apply (no topics, no second width, a model whose probes fail the gate, a
transcoder where the method needs an SAE) is recorded as {"not_applicable": why}, never an error;
a part whose module is missing from this install is {"not_available": why}.
"""

from __future__ import annotations

import functools
import importlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from saescope.activations.documents import iter_documents, load_documents
from saescope.config import option
from saescope.errors import SaescopeError
from saescope.evaluate import cache, saebench
from saescope.evaluate.metrics import (
    EvalConfig,
    Evaluation,
    finished_store,
    load_trained,
    metrics_file,
    sae_config,
    trained_folders,
)
from saescope.evaluate.position import BREAKDOWNS
from saescope.io import write_json_atomic
from saescope.models.sites import Site
from saescope.release.files import read_json_with

PARTS = ("core", "position", "topics", "probing", "tpp", "absorption", "splitting")
GROUPINGS = {"position": "position", "topics": "topic"}  # suite part -> position.py grouping
EVAL = "eval"  # per-SAE folder of the parts' results
PROBE_TOKENS = 256  # tokens per document the probes read (probing.site_documents' cap)
SUITE_MEMORY = 8 * 2**30  # bytes of site activations held at once: the probing documents' (in the model's
# dtype, every token up to PROBE_TOKENS counted) and, apart, the first-letter words' (float32)
SUITE_HELP = (
    "the evaluation suite per SAE: L0, FVU, delta LM loss, KL, CE recovered, dead/dense latents, the same by token "
    "position and topic, sparse probing, TPP, absorption, feature splitting (each part cached)"
)


@dataclass
class SuiteConfig(EvalConfig):
    suite: str = option(
        ",".join(PARTS),
        "evaluations to run, comma-separated, of: " + ", ".join(PARTS) + " (core always runs; each part is "
        "cached per SAE and measured again only when its weights or the settings change)",
    )


def parse_suite(text: str) -> list[str]:
    """`core,probing` -> the parts in suite order, core always first; unknown names are one line."""
    names = {p.strip() for p in text.split(",") if p.strip()}
    unknown = sorted(names - set(PARTS))
    if unknown:
        raise SaescopeError(f"--suite names unknown part(s) {', '.join(unknown)}: choose from {','.join(PARTS)}")
    return [p for p in PARTS if p in names | {"core"}]


def check_text(path: str) -> None:
    """Refuse an unusable `--text` before the model loads: iter_documents reads its first document,
    which is where an empty file or one that is not UTF-8 fails (one line)."""
    iter_documents(path)


class Context:
    """What the parts share, each built on first use: the store, the model, the core evaluation, and
    the sites' probing documents and first-letter words, read for a group of sites in one pass."""

    def __init__(self, cfg: SuiteConfig, folders: list[Path]):
        self.cfg, self.store = cfg, finished_store(cfg)
        self.info = self.store.info
        self.widths = {input_site(meta): meta["d_in"] for meta in map(sae_config, folders)}
        self.sites = sorted(self.widths)  # the sites still to read (run_per_sae narrows it to the stale ones)
        self._held: dict[str, tuple[tuple[Site, ...], dict]] = {}

    @functools.cached_property
    def model(self) -> tuple:
        from saescope.models.loading import load_model

        return load_model(self.info["model"], self.cfg.eval_dtype, self.cfg.device)

    @functools.cached_property
    def evaluation(self) -> Evaluation:
        return Evaluation(self.cfg, self.model)

    def settings(self, text: bool) -> dict:
        return cache.settings(self.cfg, self.info, text)

    def held(self, what: str, site: Site, bytes_per_dim: int, read: Callable[[list[Site]], dict]) -> object:
        """`read(group)[site]` for the group of `self.sites` holding `site`: consecutive sites whose
        data (`bytes_per_dim` x width each) fits SUITE_MEMORY together, so one model pass serves a
        group (all 54 sites of the default run) and a group's data is dropped when the next is read."""
        group = next(g for g in site_groups(self.sites, self.widths, bytes_per_dim) if site in g)
        if self._held.get(what, ((),))[0] != group:
            self._held.pop(what, None)
            self._held[what] = (group, read(list(group)))
        return self._held[what][1][site]

    @functools.cached_property
    def topic_documents(self) -> list:
        """The probing documents: a seeded sample of each topic of the embedded corpus (whatever the
        run harvested: its 12 topics are the labels, and a hub corpus would have to be read whole)."""
        return external("probing", "sample_topic_documents")(load_documents("wiki"))

    def documents(self, site: Site):
        """The site's per-token activations on the probing documents (probing.DocumentActivations)."""
        model, tokenizer = self.model
        docs, size = self.topic_documents, next(model.parameters()).element_size()
        read = external("probing", "sites_documents")
        return self.held(
            "documents", site, len(docs) * PROBE_TOKENS * size, lambda g: read(model, tokenizer, g, docs, PROBE_TOKENS)
        )

    def letters(self, site: Site) -> tuple:
        """The site's first-letter task and its config (absorption.letter_data)."""
        model, tokenizer = self.model
        read = external("absorption", "letter_data")

        def per_site(group: list[Site]) -> dict:
            data, config = read(model, tokenizer, group)
            return {s: (data[s], config) for s in group}

        return self.held("letters", site, external("absorption", "MAX_WORDS") * 4, per_site)  # float32 rows

    @functools.cached_property
    def device(self):
        from saescope.models.loading import resolve_device

        return resolve_device(self.cfg.device)


def site_groups(sites: list[Site], widths: dict[Site, int], bytes_per_dim: int) -> list[tuple[Site, ...]]:
    """`sites` in order, cut into consecutive groups whose data fits SUITE_MEMORY (one site at least)."""
    groups: list[list[Site]] = [[]]
    used = 0
    for site in sites:
        size = widths[site] * bytes_per_dim
        if groups[-1] and used + size > SUITE_MEMORY:
            groups, used = groups + [[]], 0
        groups[-1].append(site)
        used += size
    return [tuple(g) for g in groups]


def input_site(meta: dict) -> Site:
    """The site an SAE reads (a transcoder's mlp_in.L)."""
    return Site(meta["layer"], meta["site"])


def external(module: str, name: str) -> Callable | str:
    """saescope.evaluate.<module>.<name>, or why it is not available in this install."""
    try:
        return getattr(importlib.import_module(f"saescope.evaluate.{module}"), name)
    except (ImportError, AttributeError) as e:
        return f"saescope.evaluate.{module}.{name} is not available: {e}"


# ---- core, position, topics -------------------------------------------------------------------------


def run_core(ctx: Context, folders: list[Path], parts: list[str], bar: tqdm) -> dict[str, dict]:
    """metrics.json (or metrics.<text>.json) of every SAE, measured where its key or a wanted
    breakdown is missing; SAEBench's core file beside it (for the held-out corpus text)."""
    wanted = [GROUPINGS[p] for p in parts if p in GROUPINGS]
    settings = ctx.settings(text=True)
    index = {}
    for folder in folders:
        bar.set_postfix_str(f"core {folder.name}")
        key, path = cache.key([folder], "core", settings), folder / metrics_file(ctx.cfg.text)
        metrics = cache.cached(path, key)
        if metrics is None or any(k not in metrics for k in ("by_sequence", *(BREAKDOWNS[g] for g in wanted))):
            metrics = ctx.evaluation.measure(folder, wanted) | {"key": key, "suite": {}}
            write_json_atomic(path, metrics)
        if not ctx.cfg.text and not saebench.results_path(folder, "core").exists():
            sae, meta = load_trained(folder, ctx.device)
            config = saebench.core_config(settings, ctx.cfg)
            saebench.write(folder, "core", meta, config, saebench.core_metrics(metrics, sae), [], path.name)
        index[folder.name] = {"core": {"file": path.name}}
        for part in parts:
            if part in GROUPINGS:
                found = metrics[BREAKDOWNS[GROUPINGS[part]]]
                index[folder.name][part] = found if "not_applicable" in found else {"file": path.name}
        bar.update(1 + len(wanted))
    return index


# ---- per-SAE parts: probing, tpp, absorption ---------------------------------------------------------


def headline(part: str, result: dict) -> dict:
    """The few numbers of a part's result that tables show (metrics.json's suite entry)."""
    if part == "probing":
        return result["llm"] | result["sae"]
    if part == "tpp":
        return dict(result["tpp_metrics"])
    out = {}
    for variant, r in result.items():  # absorption: first_letter and topic
        if "not_applicable" in r:
            out[f"{variant}_not_applicable"] = r["not_applicable"]
        else:
            out[f"{variant}_absorption_fraction"] = r["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"]
            out[f"{variant}_full_absorption"] = r["eval_result_metrics"]["mean"]["mean_full_absorption_score"]
    return out


def applies(result: dict) -> bool:
    """False for a result that is a refusal (the part's own, or both absorption variants')."""
    if "not_applicable" in result:
        return False
    return not all(isinstance(r, dict) and "not_applicable" in r for r in result.values())


def write_saebench(ctx: Context, folder: Path, part: str, result: dict) -> None:
    """SAEBench's file for one part's result, where SAEBench has that evaluation and it applied."""
    if part == "absorption":
        result = result.get("first_letter", {})
    if "not_applicable" in result or not result:
        return
    meta = sae_config(folder)
    model = str(ctx.info.get("model"))
    if part == "probing":
        fields = saebench.probing_fields(result | {"max_tokens": PROBE_TOKENS}, ctx.cfg, model)
    elif part == "tpp":
        fields = saebench.tpp_fields(result, ctx.cfg, model)
    else:
        fields = saebench.absorption_fields(result)
    saebench.write(folder, part, meta, *fields, f"{EVAL}/{part}.json")


def entry(part: str, result: dict) -> dict:
    if not applies(result):
        return {"not_applicable": result.get("not_applicable", "; ".join(headline(part, result).values()))}
    return {"file": f"{EVAL}/{part}.json", **headline(part, result)}


def probing_results(ctx: Context, part: str, site: Site, saes: dict) -> dict[str, dict]:
    """sparse_probing or tpp of every SAE of one input site, on that site's document activations."""
    fn = external("probing", {"probing": "sparse_probing", "tpp": "tpp"}[part])
    if isinstance(fn, str):
        return {name: {"not_available": fn} for name in saes}
    if not ctx.topic_documents:
        return {name: {"not_applicable": NO_TOPICS} for name in saes}
    acts = ctx.documents(site)
    return {name: fn(acts, sae) for name, sae in saes.items()}


def absorption_results(ctx: Context, _part: str, site: Site, saes: dict) -> dict[str, dict]:
    """First-letter and topic absorption of every SAE of one input site (each task's probes fit once)."""
    score, topic_data, min_letters, min_topics = (
        external("absorption", name) for name in ("evaluate_task", "topic_data", "MIN_LETTERS", "MIN_TOPICS")
    )
    if missing := next((why for why in (score, topic_data) if isinstance(why, str)), None):
        return {name: {"not_available": missing} for name in saes}
    data, config = ctx.letters(site)
    letters = score(data, saes, "letter", min_letters, config)
    if ctx.topic_documents:
        data, config = topic_data(ctx.documents(site))
        topics = score(data, saes, "topic", min_topics, config)
    else:
        topics = {name: {"not_applicable": NO_TOPICS} for name in saes}
    return {name: {"first_letter": letters[name], "topic": topics[name]} for name in saes}


MEASURES = {"probing": probing_results, "tpp": probing_results, "absorption": absorption_results}
NO_TOPICS = "the embedded corpus' documents carry no topic"


def run_per_sae(ctx: Context, folders: list[Path], parts: list[str], bar: tqdm) -> dict:
    """`parts` (of MEASURES) of every SAE, {part: {sae: index entry}}: cached results reused, the rest
    measured an input site at a time, every part on one site before the next, so the documents and
    words read for a group of sites (one forward pass) serve all parts of the group."""
    settings = ctx.settings(text=False)
    index: dict[str, dict] = {part: {} for part in parts}
    stale: dict[Site, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for part in parts:
        for folder in folders:
            key = cache.key([folder], part, settings)
            found = cache.cached(folder / EVAL / f"{part}.json", key)
            if found is not None:
                index[part][folder.name] = entry(part, found["result"])
                bar.update()
            else:
                stale[input_site(sae_config(folder))][part].append((folder, key))
    ctx.sites = sorted(stale)  # a pass reads only the sites with something left to measure
    for site in ctx.sites:  # each SAE loaded once for all parts: its document latents are encoded once
        folders_here = {f.name: f for members in stale[site].values() for f, _ in members}
        loaded = {name: load_trained(f, ctx.device)[0] for name, f in folders_here.items()}
        for part, members in stale[site].items():
            bar.set_postfix_str(f"{part} {site.name}")
            results = MEASURES[part](ctx, part, site, {f.name: loaded[f.name] for f, _ in members})
            for folder, key in members:
                index[part][folder.name] = store_result(ctx, folder, part, key, results[folder.name])
                bar.update()
    return index


def store_result(ctx: Context, folder: Path, part: str, key: dict, result: dict) -> dict:
    """Write one measured result (and its SAEBench file); its index entry. Not-available results are
    not stored: the module may be there next time."""
    if "not_available" in result:
        return result
    (folder / EVAL).mkdir(exist_ok=True)
    write_json_atomic(folder / EVAL / f"{part}.json", {"key": key, "result": result})
    write_saebench(ctx, folder, part, result)
    return entry(part, result)


# ---- splitting: pairs of widths ----------------------------------------------------------------------

NO_PAIR = "no SAE of the same family, site and sparsity value at another width (train with --widths A,B)"


def run_splitting(ctx: Context, folders: list[Path], bar: tqdm) -> dict[str, dict]:
    """feature_splitting of every width pair (consecutive widths of one family, site and sparsity
    value), stored in the wider SAE's folder; SAEs in no pair are not applicable."""
    width_pairs, measure = external("splitting", "width_pairs"), external("splitting", "feature_splitting")
    if isinstance(width_pairs, str) or isinstance(measure, str):
        bar.update(len(folders))
        return {f.name: {"not_available": width_pairs if isinstance(width_pairs, str) else measure} for f in folders}
    by_name = {f.name: f for f in folders}
    pairs = width_pairs({name: sae_config(f, "sparsity_coefficient") for name, f in by_name.items()})
    index: dict[str, dict] = {name: {"pairs": []} for name in by_name}
    settings = ctx.settings(text=False)
    for narrow, wide in pairs:
        bar.set_postfix_str(f"splitting {narrow} -> {wide}")
        key, path = (
            cache.key([by_name[narrow], by_name[wide]], "splitting", settings),
            by_name[wide] / EVAL / "splitting.json",
        )
        found = cache.cached(path, key)
        result = found["result"] if found else split_pair(ctx, by_name[narrow], by_name[wide], measure)
        if found is None:
            path.parent.mkdir(exist_ok=True)
            write_json_atomic(path, {"key": key, "result": result})
        summary = {
            "narrow": narrow,
            "wide": wide,
            "file": f"{wide}/{EVAL}/splitting.json",
            **{k: result[k] for k in ("novel_fraction", "agreement")},
            "mean_children": result["decoder"]["mean_children"],
        }
        index[narrow]["pairs"].append(summary)
        index[wide]["pairs"].append(summary)
    bar.update(len(folders))
    return {name: e if e["pairs"] else {"not_applicable": NO_PAIR} for name, e in index.items()}


def split_pair(ctx: Context, narrow: Path, wide: Path, measure: Callable) -> dict:
    """feature_splitting of one pair on held-out rows of their input site."""
    rows = external("splitting", "eval_rows")(ctx.store, input_site(sae_config(narrow)).name, ctx.cfg.eval_shards)
    small, large = load_trained(narrow, ctx.device)[0], load_trained(wide, ctx.device)[0]
    return measure(small, large, rows) | {"narrow": narrow.name, "wide": wide.name}


# ---- the suite ---------------------------------------------------------------------------------------


def run_suite(cfg: SuiteConfig) -> dict[str, dict]:
    """Every part of `cfg.suite` on every SAE of the run; returns each SAE's index ("suite" entry)
    after writing it into its metrics file."""
    parts = parse_suite(cfg.suite)
    if cfg.text:
        check_text(cfg.text)
    folders = trained_folders(cfg.out)
    ctx = Context(cfg, folders)
    index: dict[str, dict] = {f.name: {} for f in folders}
    with tqdm(total=len(folders) * len(parts), desc="evaluate", unit="part", dynamic_ncols=True) as bar:
        for name, found in run_core(ctx, folders, parts, bar).items():
            index[name] |= found
        if wanted := [p for p in parts if p in MEASURES]:
            for part, entries in run_per_sae(ctx, folders, wanted, bar).items():
                for name, found in entries.items():
                    index[name][part] = found
        if "splitting" in parts:
            for name, found in run_splitting(ctx, folders, bar).items():
                index[name]["splitting"] = found
    for folder in folders:
        path = folder / metrics_file(cfg.text)
        metrics = read_json_with(path)
        write_json_atomic(path, metrics | {"suite": metrics.get("suite", {}) | index[folder.name]})
    return index
