"""`saescope evaluate --suite`: the index, the per-SAE cache, parts that do not apply, bad input."""

from __future__ import annotations

import json

import pytest
from suite_helpers import config, make_run, write_sae

from saescope.cli import main
from saescope.evaluate import suite
from saescope.evaluate.metrics import Evaluation
from saescope.evaluate.position import POSITION_LABELS
from saescope.evaluate.report import suite_summary
from saescope.evaluate.suite import run_suite
from saescope.models.sites import Site


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    return make_run(tmp_path_factory.mktemp("suite"), tiny_model_dir)


def test_core_position_topics_and_splitting_in_the_index(run_dir):
    index = run_suite(config(run_dir, suite="position,topics,splitting"))
    for name in ("res.1__w128__c8", "res.1__w256__c8", "res.1__w128__c16"):
        m = json.loads((run_dir / "saes" / name / "metrics.json").read_text())
        assert list(m["by_position"]) == list(POSITION_LABELS)
        assert sum(b["tokens"] for b in m["by_position"].values()) == m["eval_text_tokens"]
        assert len(m["by_topic"]) >= 2 and sum(t["tokens"] for t in m["by_topic"].values()) == m["eval_text_tokens"]
        assert m["suite"] == index[name]
        assert set(m["suite"]) == {"core", "position", "topics", "splitting"}
        assert m["key"]["weights_sha256"] and m["key"]["part"] == "core"
    pair = index["res.1__w256__c8"]["splitting"]["pairs"]
    assert [(p["narrow"], p["wide"]) for p in pair] == [("res.1__w128__c8", "res.1__w256__c8")]
    assert index["res.1__w128__c8"]["splitting"]["pairs"] == pair
    assert (run_dir / "saes" / "res.1__w256__c8" / pair[0]["file"].split("/", 1)[1]).exists()
    assert "another width" in index["res.1__w128__c16"]["splitting"]["not_applicable"]


def test_cached_parts_are_reused_until_the_weights_change(run_dir, monkeypatch):
    run_suite(config(run_dir, suite="core,position,splitting"))  # all cached by now, or measured once
    measured: list[str] = []
    original = Evaluation.measure

    def counting(self, folder, *args, **kw):
        measured.append(folder.name)
        return original(self, folder, *args, **kw)

    monkeypatch.setattr(Evaluation, "measure", counting)
    split_calls: list[str] = []
    real_split = suite.split_pair
    monkeypatch.setattr(
        suite, "split_pair", lambda ctx, n, w, fn: split_calls.append(w.name) or real_split(ctx, n, w, fn)
    )
    run_suite(config(run_dir, suite="core,position,splitting"))
    assert measured == [] and split_calls == []
    write_sae(run_dir / "saes" / "res.1__w256__c8", 256, 8.0, 7)  # retrained: new weights
    run_suite(config(run_dir, suite="core,position,splitting"))
    assert measured == ["res.1__w256__c8"] and split_calls == ["res.1__w256__c8"]
    measured.clear()
    run_suite(config(run_dir, suite="core,position", eval_sequences=2))  # other settings: measured again
    assert len(measured) == 3
    measured.clear()
    run_suite(config(run_dir, suite="core,position", eval_sequences=2, eval_offset=2))  # other text: again
    assert len(measured) == 3


def test_a_missing_part_is_not_available_and_never_fails(run_dir, monkeypatch):
    real = suite.external
    monkeypatch.setattr(
        suite,
        "external",
        lambda module, name: f"{module}.{name} missing" if module == "probing" else real(module, name),
    )
    index = run_suite(config(run_dir, suite="probing,tpp"))
    for entry in index.values():
        assert entry["probing"] == {"not_available": "probing.sparse_probing missing"}
        assert entry["tpp"] == {"not_available": "probing.tpp missing"}
    assert not list(run_dir.glob("saes/*/eval/probing.json"))


def test_unknown_part_and_unusable_text_are_one_line_errors(run_dir, tmp_path, capsys):
    empty, latin = tmp_path / "empty.txt", tmp_path / "latin.txt"
    empty.write_text("")
    latin.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    for args, message in (
        (["--suite", "core,bogus"], "unknown part(s) bogus"),
        (["--text", str(empty)], "no non-empty documents"),
        (["--text", str(latin)], "not UTF-8"),
    ):
        assert main(["evaluate", "--out", str(run_dir), "--device", "cpu", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("saescope: error:") and message in err and "\n" not in err


def test_text_file_gets_the_same_breakdowns_without_topics(run_dir, tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("The quiet river runs beside the mill and sings of rain.\n\n" * 30)
    run_suite(config(run_dir, suite="position,topics", text=str(text)))
    m = json.loads((run_dir / "saes" / "res.1__w128__c8" / "metrics.poem.json").read_text())
    assert list(m["by_position"]) == list(POSITION_LABELS) and m["text_fvu"] is not None
    assert m["by_topic"] == {"not_applicable": "the documents of this text carry no topic"}
    assert m["suite"]["topics"] == m["by_topic"]
    for path in run_dir.glob("saes/*/saebench/core/*.json"):  # SAEBench's core file is the corpus text's only
        assert json.loads(path.read_text())["eval_config"]["dataset"] != str(text)


def test_probing_tpp_and_absorption_read_the_model_once(run_dir, monkeypatch):
    """The probing documents come from one forward pass shared by probing, TPP and topic absorption,
    and the first-letter words from one more, for all the sites of a group; each SAE's document
    latents are encoded once for the three."""
    probing = pytest.importorskip("saescope.evaluate.probing")
    absorption = pytest.importorskip("saescope.evaluate.absorption")
    calls = []
    for module, name in ((probing, "sites_documents"), (absorption, "letter_data")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _n=name, _r=real, **k: calls.append((_n, a[2])) or _r(*a, **k))
    widths = []  # what the document activations pool: the site's activations, or one SAE's latents
    real_pool = probing.DocumentActivations.pool
    monkeypatch.setattr(
        probing.DocumentActivations, "pool", lambda self, fn, w: widths.append(w) or real_pool(self, fn, w)
    )
    for path in run_dir.glob("saes/*/eval/*.json"):
        path.unlink()
    index = run_suite(config(run_dir, suite="probing,tpp,absorption"))
    assert sorted(widths) == [64, 128, 128, 256]  # each SAE encoded once for probing, TPP and topic absorption
    printed = suite_summary(config(run_dir))
    assert (run_dir / "suite.md").read_text().strip() in printed and "| res | 3 | " in printed
    assert sorted(calls) == [("letter_data", [Site(1, "res")]), ("sites_documents", [Site(1, "res")])]
    assert all("file" in entry["probing"] and "file" in entry["tpp"] for entry in index.values())


def test_sites_are_read_in_groups_that_fit_the_memory_budget(run_dir, monkeypatch):
    ctx = suite.Context(config(run_dir), sorted((run_dir / "saes").iterdir()))
    ctx.sites = [Site(layer, "res") for layer in range(5)]
    ctx.widths = dict.fromkeys(ctx.sites, 100)
    monkeypatch.setattr(suite, "SUITE_MEMORY", 2500)  # two sites of 100 x 10 bytes per group
    reads = []

    def read(group):
        reads.append(group)
        return {site: site.layer for site in group}

    assert [ctx.held("x", site, 10, read) for site in ctx.sites + ctx.sites[:1]] == [0, 1, 2, 3, 4, 0]
    assert [[s.layer for s in g] for g in reads] == [[0, 1], [2, 3], [4], [0, 1]]
    assert suite.site_groups(ctx.sites, ctx.widths, 10**6) == [(s,) for s in ctx.sites]  # too big: one site a pass


def test_absorption_on_a_model_too_small_for_the_probe_gate_is_not_applicable(run_dir):
    """The tiny model's first-letter and topic probes fail SAEBench's F1 gate: every SAE records
    why, as a result (cached like any other), and no SAEBench absorption file is written."""
    pytest.importorskip("saescope.evaluate.absorption")
    index = run_suite(config(run_dir, suite="absorption"))
    for name, entry in index.items():
        assert "probe" in entry["absorption"]["not_applicable"]
        assert json.loads((run_dir / "saes" / name / "eval" / "absorption.json").read_text())["result"]
        assert not (run_dir / "saes" / name / "saebench" / "absorption").exists()
