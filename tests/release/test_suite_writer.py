"""One naming rule for a suite's folders: `saescope release` and `saescope export --format
gemma-scope` put the same SAE in the same folder, collisions and skip transcoders included."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import D_IN, jumprelu, random_params, write_trained

from saescope.release.export import export
from saescope.release.formats import release
from saescope.release.loaded import build_sae
from saescope.release.suite import unique_folder, width_name

META = {"model": "embedded", "model_name": "gemma-3-270m", "dataset": "wiki", "context_len": 64}
METRICS = {"l0": 7.4, "fvu": 0.2}


def skip_transcoder():
    params = random_params(5)
    params["affine_skip_connection"] = (np.random.default_rng(6).normal(size=(D_IN, D_IN)) / 4).astype(np.float32)
    return build_sae("jumprelu", params)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """Four res.0 SAEs on the same rounded L0 (three sharing a coefficient: two families of one
    run and a third), one of another coefficient, and a skip transcoder."""
    run = tmp_path / "run"
    res = META | {"site": "res", "layer": 0}
    for seed, key in enumerate(
        (
            "jumprelu__res.0__w64__c0.001",
            "relu__res.0__w64__c0.001",
            "topk__res.0__w64__c0.001",
            "topk__res.0__w64__c0.002",
        )
    ):
        write_trained(run, key, jumprelu(seed), res | {"sparsity_coefficient": float(key.rsplit("__c", 1)[1])}, METRICS)
    write_trained(
        run,
        "mlp_in.1__w64__c0.001",
        skip_transcoder(),
        META
        | {"site": "mlp_in", "layer": 1, "transcoder": True, "target_site": "mlp.1", "sparsity_coefficient": 0.001},
        METRICS,
    )
    return run


def test_width_names():
    assert [width_name(w) for w in (16384, 65536, 131072, 1 << 20, 4096, 512)] == [
        "16k",
        "65k",
        "131k",
        "1m",
        "4k",
        "512",
    ]


def test_release_and_export_write_the_same_folders(run, tmp_path):
    released = json.loads((release(run) / "suite.json").read_text())
    export(run, tmp_path / "gs", "gemma-scope")
    exported = json.loads((tmp_path / "gs" / "export.json").read_text())
    names = [e["path"] for e in released["saes"]]
    assert (
        names
        == exported["saes"]
        == [  # in the trained folders' sorted order
            "res/layer_0/width_64/average_l0_7",
            "transcoders/layer_1/width_64/average_l0_7_affine",
            "res/layer_0/width_64/average_l0_7_c0.001",
            "res/layer_0/width_64/average_l0_7_c0.001_2",
            "res/layer_0/width_64/average_l0_7_c0.002",
        ]
    )
    for name, entry in zip(names, released["saes"]):  # one writer: the same bytes, and the trained config
        for file in ("params.npz", "config.json", "metrics.json"):
            assert (run / "release" / name / file).read_bytes() == (tmp_path / "gs" / name / file).read_bytes()
        trained = json.loads((run / "saes" / entry["trained"] / "config.json").read_text())
        assert json.loads((run / "release" / name / "config.json").read_text()) == trained
    with np.load(run / "release" / names[1] / "params.npz") as params:
        assert params["affine_skip_connection"].shape == (D_IN, D_IN)


def test_every_export_format_uses_the_collision_rule(run, tmp_path):
    written = export(run, tmp_path / "sl", "saelens")
    assert [p.name for p in written if p.parent.name == "blocks.0.hook_resid_post"] == [
        "width_64_l0_7",
        "width_64_l0_7_c0.001",
        "width_64_l0_7_c0.001_2",
        "width_64_l0_7_c0.002",
    ]


def test_a_collision_without_a_coefficient_is_numbered():
    taken = {Path("res/a"), Path("res/a_2")}
    assert unique_folder(Path("res/a"), {}, taken) == Path("res/a_3")
    assert unique_folder(Path("res/b"), {}, taken) == Path("res/b")
    assert unique_folder(Path("res/a"), {"sparsity_coefficient": 32.0}, taken) == Path("res/a_c32")
