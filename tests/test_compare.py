"""`saescope compare` end to end on a tiny model, and the transcoder path through train, evaluate
and release."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import saescope
from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.loader import ShuffledLoader
from saescope.compare import (
    CompareConfig,
    compare,
    matched_l0,
    matched_table,
    parse_sweeps,
    parse_targets,
)
from saescope.errors import SaescopeError
from saescope.evaluate.metrics import EvalConfig, evaluate
from saescope.matched import interpolate_log_l0
from saescope.release.formats import release
from saescope.saelens_baseline import to_saescope, train_saelens, training_sae
from saescope.saes.skip_transcoder import SkipTranscoder
from saescope.seed_spread import seed_spread, spread_table
from saescope.train.job import TrainConfig
from saescope.train.normalize import estimate_standardization
from saescope.train.trainer import Trainer, lr_at


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model_dir):
    cfg = HarvestConfig(
        model=str(tiny_model_dir),
        sites="res,mlp,mlp_in",
        layers="1",
        tokens=4096,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=1024,
        store=str(tmp_path_factory.mktemp("store")),
        device="cpu",
    )
    return harvest(cfg)


def test_parse_sweeps():
    assert parse_sweeps("topk=8/16, relu=0.5", "relu.unit_decoder=true") == [
        ("topk", [8.0, 16.0], {}),
        ("relu", [0.5], {"unit_decoder": True}),
    ]
    for bad, match in (
        ("topk", "family=v1/v2"),
        ("mystery=1", "family=v1/v2"),
        ("topk=a/b", "numbers"),
        ("topk=2.5", "integer"),
        ("", "names no family"),
    ):
        with pytest.raises(SaescopeError, match=match):
            parse_sweeps(bad)
    with pytest.raises(SaescopeError, match="family.key=value"):
        parse_sweeps("topk=8", "bandwidth=0.1")
    with pytest.raises(SaescopeError, match="bad --baseline-sweeps entry 'relu=1'"):
        parse_sweeps("relu=1", flag="--baseline-sweeps", families=("jumprelu", "topk"))
    with pytest.raises(SaescopeError, match="bad --baseline-sweeps values in 'topk=2.5'.*integer"):
        parse_sweeps("topk=2.5", flag="--baseline-sweeps", families=("jumprelu", "topk"))


def test_matched_l0_table_per_family():
    rows = [
        {"family": "topk", "l0": 16.0, "fvu": 0.2, "fvu_weighted": 0.4, "delta_loss": 0.8, "absorption": 0.3},
        {"family": "topk", "l0": 64.0, "fvu": 0.1, "fvu_weighted": 0.2, "delta_loss": 0.4, "absorption": 0.1},
        {"family": "jumprelu", "l0": 20.0, "fvu": 0.3, "delta_loss": None},
        {"family": "jumprelu", "l0": 80.0, "fvu": 0.1, "delta_loss": 0.5},
    ]
    matched = matched_l0(rows, [16.0, 32.0, 64.0])
    assert [m.pop("absorption") for m in matched] == [[None] * 3, [0.3, pytest.approx(0.2), 0.1]]
    assert all(
        m.pop(key) == [None] * 3 for m in matched for key in ("probing_top1", "full_absorption", "topic_absorption")
    )
    weighted = matched_table(matched, [16.0, 32.0, 64.0]).splitlines()
    assert weighted[0].endswith("| weighted FVU @ L0 16 | weighted FVU @ L0 32 | weighted FVU @ L0 64 |")
    assert weighted[2].endswith("| - | - | - |") and weighted[3].endswith("| 0.4000 | 0.3000 | 0.2000 |")
    assert [m.pop("fvu_weighted") for m in matched] == [[None] * 3, [0.4, pytest.approx(0.3), 0.2]]
    assert [m.pop("kl_div") for m in matched] == [[None] * 3, [None] * 3]  # no KL in these rows
    assert matched == [
        {
            "family": "jumprelu",
            "delta_loss": [None, None, None],
            "fvu": [
                None,
                pytest.approx(0.3 - 0.2 * math.log(1.6) / math.log(4)),
                pytest.approx(0.3 - 0.2 * math.log(3.2) / math.log(4)),
            ],
        },
        {"family": "topk", "delta_loss": [0.8, pytest.approx(0.6), 0.4], "fvu": [0.2, pytest.approx(0.15), 0.1]},
    ]
    text = matched_table(matched, [16.0, 32.0, 64.0])
    assert "absorption" not in text and "weighted" not in text  # no suite numbers, no weighted FVU: not shown
    matched[1] |= {"absorption": [0.3, 0.2, 0.1], "probing_top1": [None] * 3}
    matched[0] |= {"absorption": [None] * 3, "probing_top1": [None] * 3}
    suite_table = matched_table(matched, [16.0, 32.0, 64.0]).split("\n\n")[1].splitlines()
    assert suite_table[0] == "| family | absorption @ L0 16 | absorption @ L0 32 | absorption @ L0 64 |"
    assert suite_table[2:] == ["| jumprelu | - | - | - |", "| topk | 0.300 | 0.200 | 0.100 |"]
    assert text.splitlines()[0] == (
        "| family | delta LM loss @ L0 16 | delta LM loss @ L0 32 | delta LM loss @ L0 64 | "
        "FVU @ L0 16 | FVU @ L0 32 | FVU @ L0 64 |"
    )
    assert text.splitlines()[2] == "| jumprelu | - | - | - | - | 0.2322 | 0.1322 |"
    assert text.splitlines()[3] == "| topk | 0.8000 | 0.6000 | 0.4000 | 0.2000 | 0.1500 | 0.1000 |"
    assert parse_targets("8, 100") == [8.0, 100.0]
    for bad in ("", "a,b", "16,-1", "0"):
        with pytest.raises(SaescopeError, match="--matched-l0"):
            parse_targets(bad)


def tiny_compare(store, out, **kw) -> CompareConfig:
    """A comparison on the tiny store's res.1, width 64, evaluated at L0 5 and 6."""
    base = dict(site="res.1", width=64, batch_size=256, eval_sequences=2, eval_context_len=32, matched_l0="5,6")
    return CompareConfig(store=str(store), out=str(out), device="cpu", **{**base, **kw})


def test_compare_trains_every_family_on_the_same_tokens_and_plots(store, tmp_path):
    cfg = tiny_compare(
        store,
        tmp_path,
        sweeps="jumprelu=4/8,topk=4/8,batchtopk=4,gated=0.3,relu=0.3",
        eval_sequences=4,
        matched_l0="5,6,8",
        family_knobs="jumprelu.bandwidth=0.05",
        train_tokens=256 * 12,
        lr=3e-3,
        lr_warmup_steps=2,
        l0_warmup_steps=4,
    )
    rows = compare(cfg)
    assert sorted(r["family"] for r in rows) == ["batchtopk", "gated", "jumprelu", "jumprelu", "relu", "topk", "topk"]
    configs = [json.loads(p.read_text()) for p in (tmp_path / "saes").glob("*/config.json")]
    assert {c["tokens_trained"] for c in configs} == {256 * 12} and len({c["seed"] for c in configs}) == 1
    assert {c["architecture"] for c in configs} == {"jumprelu", "topk"}  # how each family is released
    topk = {r["value"]: r for r in rows if r["family"] == "topk"}
    assert topk[4.0]["l0"] <= 4 + 1e-6 and topk[8.0]["l0"] <= 8 + 1e-6
    assert all(np.isfinite(r["fvu"]) and np.isfinite(r["delta_loss"]) for r in rows)
    # the per-dimension normalisation each SAE was trained under weights its held-out error
    assert all(np.isfinite(r["fvu_weighted"]) and abs(r["fvu_weighted"] - r["fvu"]) > 1e-4 for r in rows)
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    families = sorted({r["family"] for r in rows})
    md = (tmp_path / "compare.md").read_text()
    # per SAE, matched (2), paired to jumprelu at the targets and at its own L0s, by position
    tables = (len(rows) + 1) + 2 * (len(families) + 1) + 2 * len(families) + (len(rows) + 1)
    assert md.count("\n| ") == tables
    assert "sparse probing top-1 @ L0 5" in md and all(0 <= r["probing_top1"] <= 1 for r in rows)
    assert "| weighted FVU |" in md and "| weighted FVU @ L0 5 |" in md
    assert all(r["absorption"] is None for r in rows)  # the tiny model spells no letter: not applicable
    by_position = md.split("Delta LM loss by token position")[1]
    assert "| pos 1 | pos 2-4 |" in by_position and "| topk 8 (L0 " in by_position
    assert all(len(r["by_position"]) == 6 for r in rows)
    matched = json.loads((tmp_path / "compare.json").read_text())["matched_l0"]
    assert matched["targets"] == [5.0, 6.0, 8.0] and [m["family"] for m in matched["families"]] == families
    topk_matched = next(m for m in matched["families"] if m["family"] == "topk")
    assert all(np.isfinite(v) for v in topk_matched["delta_loss"] + topk_matched["fvu"])
    # paired over the held-out sequences, a family's gap to jumprelu is the gap of the matched numbers
    assert matched["paired"]["reference"] == "jumprelu" and "Paired against jumprelu" in md
    numbers = {m["family"]: m for m in matched["families"]}
    seen = 0
    for gaps in matched["paired"]["families"]:
        for key in ("delta_loss", "kl_div"):
            for i, g in enumerate(gaps[key]):
                ours, theirs = numbers["jumprelu"][key][i], numbers[gaps["family"]][key][i]
                assert (g is None) == (ours is None or theirs is None)
                if g is not None:
                    assert g["gap"] == pytest.approx(theirs - ours, abs=1e-9) and g["se"] > 0
                    seen += 1
    assert seen >= 2  # topk at L0 8, in delta loss and KL
    # and at the L0 each jumprelu SAE landed on: every family read off its own frontier there
    at = matched["paired"]["at_reference"]
    ours = sorted((r for r in rows if r["family"] == "jumprelu"), key=lambda r: r["value"])
    assert at["values"] == [4.0, 8.0] and at["l0"] == pytest.approx([r["l0"] for r in ours])
    assert "The same at the L0 each jumprelu SAE landed on" in md
    for gaps in at["families"]:
        theirs = [(r["l0"], r["delta_loss"]) for r in rows if r["family"] == gaps["family"]]
        for r, g in zip(ours, gaps["delta_loss"]):
            value = interpolate_log_l0(theirs, r["l0"])
            assert (g is None) == (value is None)
            if g is not None:
                assert g["gap"] == pytest.approx(value - r["delta_loss"], abs=1e-9)
                seen += 1
    assert seen >= 3


def test_skip_transcoder_trains_evaluates_and_releases(store, tmp_path):
    cfg = TrainConfig(
        store=str(store),
        out=str(tmp_path),
        train_sites="mlp_in.1",
        arch="topk",
        widths=[64],
        l0_coefficients=[8],
        transcoder="skip",
        normalize="scalar",
        train_tokens=256 * 10,
        batch_size=256,
        lr=3e-3,
        lr_warmup_steps=2,
        l0_warmup_steps=2,
        buffer_rows=2048,
        device="cpu",
        norm_rows=2048,
    )
    trainer = Trainer(cfg)
    assert set(trainer.sites) == {"mlp_in.1", "mlp.1"}
    trainer.train()
    folder = next((tmp_path / "saes").iterdir())
    meta = json.loads((folder / "config.json").read_text())
    assert meta["transcoder"] and meta["target_site"] == "mlp.1" and meta["site"] == "mlp_in"
    tc = saescope.load(folder)
    assert isinstance(tc, SkipTranscoder) and tc.affine_skip_connection.abs().sum() > 0
    metrics = evaluate(
        EvalConfig(out=str(tmp_path), store=str(store), eval_sequences=2, eval_context_len=32, device="cpu")
    )[folder.name]
    assert np.isfinite(metrics["fvu"]) and np.isfinite(metrics["delta_loss"]) and metrics["l0"] <= 8
    # the MLP branch (the mlp.1 site) was replaced, by the transcoder and by zeros
    assert metrics["ce_spliced"] != metrics["ce_clean"] and metrics["ce_zero_ablation"] != metrics["ce_clean"]
    dest = release(tmp_path)
    params_file = next((dest / "transcoders" / "layer_1").rglob("params.npz"))
    assert params_file.parent.name.endswith("_affine")
    with np.load(params_file) as p:
        assert p["affine_skip_connection"].shape == (64, 64)
        x = torch.randn(4, 64)
        with torch.no_grad():
            torch.testing.assert_close(saescope.load(params_file.parent)(x), tc(x))


def test_trainer_rejects_transcoders_on_other_sites(store, tmp_path):
    with pytest.raises(SaescopeError, match="mlp_in"):
        Trainer(TrainConfig(store=str(store), out=str(tmp_path), train_sites="res.1", transcoder="plain", device="cpu"))


# ---- --baseline saelens --------------------------------------------------------------------------
def _tiny_trainer(store, out, **overrides) -> Trainer:
    cfg = TrainConfig(
        store=str(store),
        out=str(out),
        train_sites="res.1",
        arch="topk",
        widths=[32],
        l0_coefficients=[4],
        train_tokens=256 * 16,
        batch_size=256,
        buffer_rows=1024,
        lr=3e-3,
        lr_warmup_steps=2,
        l0_warmup_steps=4,
        lr_decay=0.25,
        normalize="standardize",
        norm_rows=2048,
        device="cpu",
        **overrides,
    )
    return Trainer(cfg, [("topk", [4.0], {})])


def test_saelens_baseline_sees_the_rows_saescope_saw_in_the_same_order(store, tmp_path, monkeypatch):
    from sae_lens.training.sae_trainer import SAETrainer

    trainer = _tiny_trainer(store, tmp_path, seed=3)
    ours: list[torch.Tensor] = []
    train_step = Trainer.train_step
    monkeypatch.setattr(
        Trainer, "train_step", lambda self, acts: (ours.append(acts["res.1"].clone()), train_step(self, acts))[1]
    )
    trainer.train()
    theirs: dict[int, list[torch.Tensor]] = {}
    lrs: list[float] = []
    step = SAETrainer.step
    monkeypatch.setattr(
        SAETrainer,
        "step",
        lambda self, batch: (
            theirs.setdefault(id(self), []).append(batch.clone()),
            lrs.append(self.optimizer.param_groups[0]["lr"]),
            step(self, batch),
        )[2],
    )
    folders = train_saelens(trainer, [("jumprelu", [0.01], {}), ("topk", [4.0], {})])
    assert len(theirs) == 2 and len(ours) == trainer.total_steps == 16  # 4096 rows: more than one epoch of 3072
    scale, mean = estimate_standardization(trainer.store, "res.1", 2048)
    fresh = ShuffledLoader(
        str(store), ["res.1"], batch_size=256, buffer_rows=1024, seed=3, split="train", eval_shards=1
    )
    for step_batches in zip(ours, *theirs.values(), fresh.iterate(0, 16, epochs=None)):
        mine, *saelens, batch = step_batches
        assert torch.equal(batch.acts["res.1"], mine)
        for seen in saelens:
            torch.testing.assert_close(seen, (mine - mean) / scale, rtol=0, atol=0)
    # SAELens' own warm-up (linear from lr/2 over 2 steps; ours is a cosine from lr/10), then the same learning
    # rate at every step, through the linear decay over the last quarter of the run
    per_step = lrs[::2]
    assert lrs[1::2] == per_step and per_step[:2] == pytest.approx([1.5e-3, 3e-3])
    assert per_step[2:] == pytest.approx([lr_at(s, trainer.cfg, 16) for s in range(2, 16)], rel=1e-6)
    assert per_step[-1] == pytest.approx(3e-3 / 4)
    # written with the keys saescope's own SAEs get, plus what SAELens was told
    ours_meta = json.loads((tmp_path / "saes" / "topk__res.1__w32__c4" / "config.json").read_text())
    for folder in folders:
        meta = json.loads((folder / "config.json").read_text())
        assert set(meta) - {"saelens"} == set(ours_meta) and meta["tokens_trained"] == 256 * 16
        assert (
            meta["saelens"]["trainer_config"]["lr"] == 3e-3
            and meta["saelens"]["trainer_config"]["lr_warm_up_steps"] == 2
        )
    assert sorted(f.name for f in folders) == ["saelens-jumprelu__res.1__w32__c0.01", "saelens-topk__res.1__w32__c4"]


def _randomised(arch: str, d_in: int = 16, d_sae: int = 48, k: int = 5):
    """A SAELens training SAE with every parameter moved off its init: biases, decoder norms far
    from 1, thresholds of both signs."""
    torch.manual_seed(0)
    sae = training_sae(arch, 0.01 if arch == "jumprelu" else k, d_in, d_sae, 0, "cpu")
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        sae.W_dec.mul_(torch.rand(d_sae, 1) * 3 + 0.2)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae) * 0.6 - 0.1)
    return sae


@pytest.mark.parametrize("arch", ["jumprelu", "topk"])
@pytest.mark.parametrize("vector", [True, False])
def test_converted_saelens_sae_equals_saelens_forward_on_raw_activations(arch, vector, tmp_path):
    from sae_lens import SAE as SAELensSAE

    sae = _randomised(arch)
    sae.save_inference_model(tmp_path)  # what SAELens users load: its inference class
    inference = SAELensSAE.load_from_disk(tmp_path)
    scale = torch.rand(16) * 4 + 0.5 if vector else 3.7
    mean = torch.randn(16) * 2 if vector else torch.zeros(16)
    x_raw = torch.randn(200, 16) * 5 + 1
    with torch.no_grad():
        folded = to_saescope(sae).folded(scale, mean if vector else None)
        assert folded.arch == arch and not folded.pre_encoder_bias and sae.cfg.apply_b_dec_to_input
        ours = folded(x_raw)
        torch.testing.assert_close(ours, inference((x_raw - mean) / scale) * scale + mean, rtol=1e-4, atol=1e-4)
        if arch == "jumprelu":
            assert (sae.threshold < 0).any()  # SAELens' inference class reads those as 0, and so do we
            sae.threshold.clamp_(min=0)  # as SAELens' training_forward_pass does before every step
        else:
            assert folded.k == 5 and (folded.encode(x_raw) != 0).sum(1).max() <= 5
        torch.testing.assert_close(ours, sae((x_raw - mean) / scale) * scale + mean, rtol=1e-4, atol=1e-4)


def test_compare_with_saelens_baseline_writes_its_rows(store, tmp_path, monkeypatch):
    cfg = CompareConfig(
        store=str(store),
        out=str(tmp_path),
        site="res.1",
        width=32,
        sweeps="topk=4/8",
        baseline="saelens",
        baseline_sweeps="jumprelu=0.001/0.01,topk=4/8",
        train_tokens=256 * 8,
        batch_size=256,
        lr=3e-3,
        lr_warmup_steps=2,
        l0_warmup_steps=4,
        normalize="standardize",
        eval_sequences=2,
        eval_context_len=32,
        device="cpu",
        matched_l0="5,6",
    )
    compare(cfg)
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    by_family = {f: sorted(r["value"] for r in rows if r["family"] == f) for f in {r["family"] for r in rows}}
    assert by_family == {"topk": [4.0, 8.0], "saelens-jumprelu": [0.001, 0.01], "saelens-topk": [4.0, 8.0]}
    assert all(np.isfinite(r[k]) for r in rows for k in ("l0", "fvu", "delta_loss", "kl_div"))
    assert all(r["l0"] <= r["value"] + 1e-6 for r in rows if r["family"].endswith("topk"))
    matched = json.loads((tmp_path / "compare.json").read_text())["matched_l0"]["families"]
    assert {m["family"] for m in matched} == {"topk", "saelens-jumprelu", "saelens-topk"}
    # run again (an interrupted compare resumed, or another --eval-sequences): SAELens' SAEs are kept
    from sae_lens.training.multi_sae_trainer import MultiSAETrainer

    weights = {f: f.read_bytes() for f in tmp_path.glob("saes/saelens-*/sae.safetensors")}
    monkeypatch.setattr(MultiSAETrainer, "fit", lambda self: pytest.fail("SAELens trained again"))
    compare(replace(cfg, eval_sequences=3))
    assert len(weights) == 4 and all(f.read_bytes() == b for f, b in weights.items())
    assert json.loads((tmp_path / "compare.json").read_text())["rows"] != rows  # measured on 3 sequences


def test_baseline_options_fail_in_one_line_before_training(tmp_path, monkeypatch):
    def attempt(**kw) -> str:
        with pytest.raises(SaescopeError) as e:
            compare(CompareConfig(store=str(tmp_path / "no-store"), out=str(tmp_path), sweeps="topk=4", **kw))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "--baseline saelens" in attempt(baseline="saelens-v2")
    assert "--baseline-sweeps" in attempt(baseline="saelens", baseline_sweeps="relu=1")
    assert "--baseline-sweeps" in attempt(baseline="saelens", baseline_sweeps="topk=4.5")
    monkeypatch.setitem(sys.modules, "sae_lens", None)  # what a missing install looks like to import
    assert "pip install sae-lens" in attempt(baseline="saelens")


def test_seed_spread_is_mean_and_range_over_seeds_and_none_where_a_seed_has_no_value():
    per_seed = [
        [{"family": "topk", "delta_loss": [0.4, 0.2], "fvu": [0.3, None], "fvu_weighted": [None, None]}],
        [
            {"family": "topk", "delta_loss": [0.6, 0.1], "fvu": [0.1, 0.2], "fvu_weighted": [None, None]},
            {"family": "relu", "delta_loss": [1, 1], "fvu": [1, 1], "fvu_weighted": [1, 1]},
        ],
    ]
    relu, topk = seed_spread(per_seed)
    assert relu == {"family": "relu", **dict.fromkeys(("delta_loss", "kl_div", "fvu", "fvu_weighted"), [None, None])}
    assert topk["delta_loss"][0] == pytest.approx({"mean": 0.5, "min": 0.4, "max": 0.6})
    assert topk["delta_loss"][1] == pytest.approx({"mean": 0.15, "min": 0.1, "max": 0.2})
    assert topk["fvu"][1] is None
    assert "| topk | 0.5000 [0.4000 - 0.6000] |" in spread_table([topk], [16, 32])


def test_compare_over_seeds_reports_each_seed_and_the_spread_and_resumes(store, tmp_path):
    cfg = tiny_compare(
        store,
        tmp_path,
        sweeps="jumprelu=4/8,topk=4/8",
        train_tokens=256 * 4,
        lr_warmup_steps=1,
        suite="core",
        seed=3,
        seeds=2,
    )
    compare(cfg)
    seeds = [json.loads((tmp_path / f"seed{k}" / "compare.json").read_text()) for k in (3, 4)]
    configs = [
        json.loads(p.read_text()) for k in (3, 4) for p in (tmp_path / f"seed{k}" / "saes").glob("*/config.json")
    ]
    assert {c["seed"] for c in configs} == {3, 4}
    spread = json.loads((tmp_path / "compare.json").read_text())
    assert spread["seeds"] == 2 and spread["targets"] == [5.0, 6.0]
    assert all(next(f for f in spread["families"] if f["family"] == "topk")["delta_loss"])  # k 4 and 8 bracket 5, 6
    for family in spread["families"]:
        per_seed = [next(m for m in s["matched_l0"]["families"] if m["family"] == family["family"]) for s in seeds]
        for i, stats in enumerate(family["delta_loss"]):
            values = [m["delta_loss"][i] for m in per_seed]
            assert (stats is None) == any(v is None for v in values)
            if stats:
                assert stats == pytest.approx({"mean": sum(values) / 2, "min": min(values), "max": max(values)})
    md = (tmp_path / "compare.md").read_text()
    assert "Matched L0 over 2 seeds" in md and "averaged over the 2 seeds" in md
    # paired over seeds: each sequence averaged over the seeds, so the gap is the seeds' mean gap
    assert spread["paired"]["reference"] == "jumprelu"
    (topk,) = spread["paired"]["families"]
    both = [{m["family"]: m for m in s["matched_l0"]["families"]} for s in seeds]
    for i, g in enumerate(topk["delta_loss"]):
        gaps = [
            b["topk"]["delta_loss"][i] - b["jumprelu"]["delta_loss"][i]
            for b in both
            if None not in (b["topk"]["delta_loss"][i], b["jumprelu"]["delta_loss"][i])
        ]
        assert (g is None) == (len(gaps) < 2)
        if g is not None:
            assert g["gap"] == pytest.approx(sum(gaps) / 2, abs=1e-9) and g["se"] > 0
    assert any(topk["delta_loss"])
    before = (tmp_path / "seed3" / "compare.json").stat().st_mtime_ns
    compare(cfg)  # finished seeds are kept, not trained again
    assert (tmp_path / "seed3" / "compare.json").stat().st_mtime_ns == before
