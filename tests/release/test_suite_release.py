"""A whole run released in Gemma Scope's layout, loaded back, checked with the reference forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import saescope
from saescope.activations.store import ActivationStore
from saescope.run import RunConfig, run, stage_minutes


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(
        model=str(tiny_model_dir),
        out=str(out),
        sites="res,mlp,att",
        layers="0,2",
        tokens=6144,
        shard_rows=2048,
        context_len=128,
        widths=[256],
        l0_coefficients=[32],
        train_tokens=1024 * 30,
        batch_size=1024,
        lr_warmup_steps=5,
        l0_warmup_steps=15,
        device="cpu",
        dtype="float32",
        eval_sequences=4,
        eval_context_len=64,
    )
    return run(cfg)


def reference_forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * np.maximum(pre, 0)
    return acts, acts @ p["W_dec"] + p["b_dec"]


def test_release_layout_and_reference_forward(tiny_run):
    release = tiny_run / "release"
    suite = json.loads((release / "suite.json").read_text())
    assert len(suite["saes"]) == 6 and {e["site"] for e in suite["saes"]} == {"res", "mlp", "att"}
    store = ActivationStore(tiny_run / "activations")
    for entry in suite["saes"]:
        folder = release / entry["path"]
        kind, layer, width, l0 = entry["path"].split("/")
        assert (kind, layer, width) == (entry["site"], f"layer_{entry['layer']}", "width_256")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert l0 == f"average_l0_{round(metrics['l0'])}"
        config = json.loads((folder / "config.json").read_text())
        assert {
            "model",
            "site",
            "layer",
            "d_in",
            "d_sae",
            "architecture",
            "sparsity_coefficient",
            "tokens_trained",
            "normalization_scale",
        } <= config.keys()
        with np.load(folder / "params.npz", allow_pickle=False) as npz:
            p = {k: npz[k] for k in npz.files}
        d_in = config["d_in"]
        assert {k: (v.shape, v.dtype) for k, v in p.items()} == {
            "W_enc": ((d_in, 256), np.float32),
            "W_dec": ((256, d_in), np.float32),
            "b_enc": ((256,), np.float32),
            "b_dec": ((d_in,), np.float32),
            "threshold": ((256,), np.float32),
        }
        # The released arrays run on raw activations with the reference forward, and agree with
        # saescope.load; their L0 on the held-out shard is the one the folder is named after.
        x = store.read(f"{entry['site']}.{entry['layer']}", store.n_shards - 1).float().numpy()
        acts, recon = reference_forward(p, x)
        sae = saescope.load(folder)
        with torch.no_grad():
            f = sae.encode(torch.from_numpy(x))
            np.testing.assert_allclose(f.numpy(), acts, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(sae.decode(f).numpy(), recon, rtol=1e-4, atol=1e-4)
        assert (acts > 0).sum(1).mean() == pytest.approx(metrics["l0"], rel=1e-3)
        fvu = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        assert fvu == pytest.approx(metrics["fvu"], rel=1e-3) and fvu < 0.8


def test_run_writes_config_and_summary(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["job"] == "RunConfig" and config["widths"] == [256]
    summary = (tiny_run / "summary.md").read_text()
    assert summary.count("\n| ") >= 7 and "delta loss" in summary
    minutes = stage_minutes(tiny_run)  # what benchmarks/run_floor.py reads back
    assert list(minutes) == ["harvest", "train", "evaluate", "release", "browse"]
    assert all(m >= 0 for m in minutes.values())


def test_load_rejects_what_is_not_an_sae(tmp_path):
    (tmp_path / "params.npz").write_bytes(b"not a zip")
    with pytest.raises(saescope.SaescopeError, match="not a readable .npz"):
        saescope.load(tmp_path)
    np.savez(
        tmp_path / "params.npz",
        W_enc=np.zeros((4, 8), np.float32),
        W_dec=np.zeros((8, 5), np.float32),
        b_enc=np.zeros(8, np.float32),
        b_dec=np.zeros(4, np.float32),
        threshold=np.zeros(8, np.float32),
    )
    with pytest.raises(saescope.SaescopeError, match="W_dec has shape"):
        saescope.load(tmp_path)
    with pytest.raises(saescope.SaescopeError, match="does not exist"):
        saescope.load(tmp_path / "nope")


def test_readme_table_is_regenerated_between_markers(tiny_run, tmp_path):
    from saescope.run import write_readme_table

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- saescope-table:start -->\nSTALE-ROW\n<!-- saescope-table:end -->\noutro\n")
    write_readme_table(tiny_run, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "STALE-ROW" not in text
    assert text.count("| res |") == 2 and "| att | 2 | 256 |" in text
    readme.write_text("no markers")
    with pytest.raises(saescope.SaescopeError, match="markers"):
        write_readme_table(tiny_run, readme)


def test_evaluation_reuses_the_model_the_harvest_loaded_and_measures_what_a_fresh_load_does(
    tiny_run, tiny_model_dir, tmp_path
):
    from dataclasses import replace

    from saescope.activations.harvest import HarvestConfig
    from saescope.evaluate.metrics import EvalConfig, Evaluation
    from saescope.models.loading import compute_dtype
    from saescope.run import evaluation_model, harvest_keeping_the_model

    kept: list = []
    harvest = HarvestConfig(
        model=str(tiny_model_dir), store=str(tmp_path / "store"), sites="res", layers="0", tokens=2048,
        shard_rows=1024, context_len=128, device="cpu", dtype="float32",
    )  # fmt: skip
    harvest_keeping_the_model(harvest, kept)
    assert len(kept) == 2 and (tmp_path / "store" / "store.json").exists()
    cfg = EvalConfig(out=str(tiny_run), eval_sequences=4, eval_context_len=64, eval_dtype="float32", device="cpu")
    assert evaluation_model(cfg, kept) == tuple(kept)
    other = replace(cfg, eval_dtype="bfloat16")  # the same model in another dtype is loaded again
    runs_other = compute_dtype("bfloat16", torch.device("cpu")) != torch.float32
    assert (evaluation_model(other, kept) is None) == runs_other
    assert evaluation_model(cfg, []) is None
    folder = next((tiny_run / "saes").iterdir())
    fresh = Evaluation(cfg).measure(folder)
    reused = Evaluation(cfg, evaluation_model(cfg, kept)).measure(folder)
    for name in ("ce_clean", "ce_spliced", "ce_zero_ablation", "delta_loss", "kl_div", "l0", "fvu"):
        assert reused[name] == fresh[name], name
