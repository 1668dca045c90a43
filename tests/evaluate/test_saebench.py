"""Our SAEBench result files, read by sae-bench's own code: its result dataclasses (pydantic, from which
its published JSON schemas are generated) validate every file, and its plotting code's reader
(`graphing_utils.get_eval_results`) loads them as it loads SAEBench's own.

sae-bench's declared dependencies would replace this venv's torch 2.13.0 CPU, numpy and datasets, so it
is not in the test extra: `make install` installs it with --no-deps (these modules need only pydantic,
pandas, plotly, scipy and matplotlib). The reader's module imports seaborn for plots the reader does not
draw; an empty stand-in module is enough. Without sae-bench these tests skip."""

from __future__ import annotations

import json
import sys
import types

import pytest
from suite_helpers import config, make_run

from saescope.evaluate import saebench
from saescope.evaluate.suite import run_suite
from saescope.models.loading import load_model
from saescope.models.sites import Site
from saescope.release.formats import load

pytest.importorskip("sae_bench")
OUTPUTS = {
    "core": ("sae_bench.evals.core.eval_output", "CoreEvalOutput"),
    "probing": ("sae_bench.evals.sparse_probing.eval_output", "SparseProbingEvalOutput"),
    "tpp": ("sae_bench.evals.scr_and_tpp.eval_output", "TppEvalOutput"),
    "absorption": ("sae_bench.evals.absorption.eval_output", "AbsorptionEvalOutput"),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir):
    out = make_run(tmp_path_factory.mktemp("bench"), tiny_model_dir)
    run_suite(config(out, suite="core,probing,tpp"))
    return out


def validate(part: str, path) -> object:
    """The file parsed by sae-bench's own result dataclass for `part` (raises if it does not fit)."""
    from importlib import import_module

    from pydantic import TypeAdapter

    module, name = OUTPUTS[part]
    return TypeAdapter(getattr(import_module(module), name)).validate_python(json.loads(path.read_text()))


def read_with_saebench(monkeypatch, folder) -> dict:
    """sae-bench's reader on every result file under `folder`, as its plots call it."""
    monkeypatch.setitem(sys.modules, "seaborn", sys.modules.get("seaborn") or types.ModuleType("seaborn"))
    from sae_bench.sae_bench_utils.graphing_utils import find_eval_results_files, get_eval_results

    return get_eval_results(find_eval_results_files([str(folder)]))


@pytest.mark.parametrize("part", ["core", "probing", "tpp"])
def test_result_files_load_with_saebench(run_dir, part, monkeypatch):
    if part != "core":
        pytest.importorskip("saescope.evaluate.probing")
    names = sorted(p.name for p in (run_dir / "saes").iterdir())
    for name in names:
        path = saebench.results_path(run_dir / "saes" / name, part)
        output = validate(part, path)
        assert output.eval_type_id == saebench.EVAL_TYPE_IDS[part] and output.sae_lens_id == name
    results = {}
    for name in names:
        results |= read_with_saebench(monkeypatch, saebench.results_path(run_dir / "saes" / name, part).parent)
    assert sorted(results) == names
    metrics = json.loads((run_dir / "saes" / names[0] / "metrics.json").read_text())
    first = results[names[0]]
    assert first["sae_class"] == "jumprelu" and first["d_sae"] == "0k"  # its label for widths under 1,000
    if part == "core":
        assert first["l0"] == metrics["l0"] and first["explained_variance"] == pytest.approx(1 - metrics["fvu"])
        assert first["ce_loss_score"] == metrics["ce_loss_recovered"]
    if part == "probing":
        assert first["sae_top_1_test_accuracy"] == metrics["suite"]["probing"]["sae_top_1_test_accuracy"]
    if part == "tpp":
        assert first["tpp_threshold_20_total_metric"] == metrics["suite"]["tpp"]["tpp_threshold_20_total_metric"]


def test_absorption_file_loads_with_saebench(run_dir, tiny_model_dir, monkeypatch):
    """Absorption with the probe gate lowered to F1 > 0 (the tiny model spells no letter well enough
    for SAEBench's 0.6), so that there are letters to write."""
    module = pytest.importorskip("saescope.evaluate.absorption")
    folder, site = run_dir / "saes" / "res.1__w128__c8", Site(1, "res")
    model, tokenizer = load_model(str(tiny_model_dir), "float32", "cpu")
    data, config = module.letter_data(model, tokenizer, [site], max_words=400)
    result = module.evaluate_task(data[site], {"s": load(folder)}, "letter", 1, config, min_f1=0.0)
    meta = json.loads((folder / "config.json").read_text())
    path = saebench.write(folder, "absorption", meta, *saebench.absorption_fields(result["s"]), "eval/absorption.json")
    assert validate("absorption", path).eval_result_details
    read = read_with_saebench(monkeypatch, path.parent)
    assert read[folder.name]["mean_absorption_fraction_score"] == pytest.approx(
        result["s"]["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"]
    )
