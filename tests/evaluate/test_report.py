"""What `saescope evaluate` prints after the suite (saescope/evaluate/report.py): per-kind means over
the SAEs where a part applied, the per-SAE table, OUT/suite.md."""

from __future__ import annotations

import json

from saescope.evaluate.report import SUITE_NUMBERS, suite_numbers, suite_tables


def _sae(run, site: str, layer: int, suite: dict) -> None:
    folder = run / "saes" / f"{site}.{layer}__w64__c8"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"site": site, "layer": layer, "d_in": 8, "d_sae": 64}))
    (folder / "metrics.json").write_text(json.dumps({"suite": suite}))


def test_kind_means_skip_parts_that_did_not_apply(tmp_path):
    probing = {"file": "eval/probing.json", "llm_test_accuracy": 0.9, "sae_top_1_test_accuracy": 0.7}
    _sae(tmp_path, "res", 2, {"probing": probing, "absorption": {"first_letter_absorption_fraction": 0.2}})
    _sae(tmp_path, "res", 10, {"probing": probing | {"sae_top_1_test_accuracy": 0.8}, "absorption": {}})
    _sae(tmp_path, "att", 2, {"absorption": {"not_applicable": "0 of 26 letter probes pass"}})
    kinds, per_sae = suite_tables(tmp_path).split("\n\n")
    heads = [h for _, _, h in SUITE_NUMBERS.values()]
    assert kinds.splitlines()[0] == "| site | SAEs | " + " | ".join(f"{h} (n)" for h in heads) + " |"
    att, res = kinds.splitlines()[2:]
    assert res.startswith("| res | 2 | 0.900 (2) | 0.750 (2) | - (0) |") and "| 0.200 (1) |" in res
    assert att == "| att | 1 | " + " | ".join(["- (0)"] * len(heads)) + " |"
    rows = per_sae.splitlines()[2:]
    assert [r.split(" |")[0] for r in rows] == ["| att.2__w64__c8", "| res.2__w64__c8", "| res.10__w64__c8"]
    assert rows[2].startswith("| res.10__w64__c8 | 0.900 | 0.800 | - |")


def test_suite_numbers_of_an_index_entry():
    numbers = suite_numbers({"suite": {"tpp": {"tpp_threshold_20_total_metric": 0.25}}})
    assert numbers["tpp"] == 0.25 and sum(v is None for v in numbers.values()) == len(SUITE_NUMBERS) - 1
    assert suite_numbers({}) == dict.fromkeys(SUITE_NUMBERS)
