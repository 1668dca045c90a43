"""The statistics pass and the on-demand weight statistics: their numbers agree with direct
recomputation, and the pass is incremental per SAE."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

from saescope.activations.store import ActivationStore
from saescope.browse import lens
from saescope.browse.db import FeatureDB, db_path
from saescope.browse.live import Live
from saescope.browse.ondemand import OnDemand
from saescope.browse.stats import StatsOptions, _by_latent_then_activation, compute_stats, held_out
from saescope.models.loading import load_model
from saescope.release.formats import load

RES = "res.1__w256__c64"


def on_demand(run) -> OnDemand:
    db = FeatureDB(db_path(run))
    return OnDemand(run, db, Live(run, db).model)


def test_frequencies_match_the_evaluation(browse_run):
    db = FeatureDB(db_path(browse_run))
    metrics = json.loads((browse_run / "saes" / RES / "metrics.json").read_text())
    ours = np.array([r[1] for r in db.latent_table(RES, "latent ASC")])
    np.testing.assert_allclose(ours, metrics["firing_frequency"], atol=1e-6)


def test_examples_are_the_real_top_activations_with_their_windows(browse_run):
    db = FeatureDB(db_path(browse_run))
    store = ActivationStore(browse_run / "activations")
    data = held_out(store, StatsOptions())
    x = torch.cat([torch.from_numpy(np.asarray(store.read("res.1", s)[lo:hi])) for s, lo, hi in data.chunks]).float()
    f = load(browse_run / "saes" / RES).encode(x).detach()
    for latent in (0, 7, 100):
        row = db.latent(RES, latent)
        ex = row.examples
        top = ex.act[ex.group == 0]
        expected = f[:, latent].sort(descending=True).values[: len(top)].numpy()
        np.testing.assert_allclose(top, expected, rtol=1e-5)
        assert row.max_act == np.float32(expected[0])
        # the centre of every window is the example's own token, with its own activation
        np.testing.assert_allclose(ex.acts[:, ex.left].astype(np.float32), ex.act, rtol=1e-2)
        centre_row = np.flatnonzero((data.doc == ex.doc[0]) & (data.position == ex.position[0]))[0]
        assert ex.ids[0, ex.left] == data.token[centre_row]
        for d in (-2, -1, 1):  # neighbours carry the latent's activation on their own rows
            if ex.ids[0, ex.left + d] >= 0:
                assert abs(float(ex.acts[0, ex.left + d]) - float(f[centre_row + d, latent])) < 1e-2 * (1 + row.max_act)
        assert sum(row.hist["counts"]) == round(row.frequency * data.rows)


def test_logit_lens_matches_a_direct_computation(browse_run, tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    W_dec = load(browse_run / "saes" / RES).W_dec.detach()
    logits = (W_dec * (1 + model.model.norm.weight)) @ model.lm_head.weight.T
    views = on_demand(browse_run).views(RES, [0, 5])
    for latent, row in zip((0, 5), views):
        assert [t for t, _ in row.logits["top"]] == logits[latent].topk(lens.TOP_TOKENS).indices.tolist()
        assert [t for t, _ in row.logits["bottom"]] == (-logits[latent]).topk(lens.TOP_TOKENS).indices.tolist()
        assert abs(row.logits["top"][0][1] - float(logits[latent].max())) < 1e-3


def test_att_lens_goes_through_the_output_projection(browse_run, tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    block = model.model.layers[2]
    W_dec = load(browse_run / "saes" / "att.2__w256__c64").W_dec.detach()
    resid = (W_dec @ block.self_attn.o_proj.weight.T) * (1 + block.post_attention_layernorm.weight)
    logits = (resid * (1 + model.model.norm.weight)) @ model.lm_head.weight.T
    row = on_demand(browse_run).views("att.2__w256__c64", [3])[0]
    assert [t for t, _ in row.logits["top"]] == logits[3].topk(lens.TOP_TOKENS).indices.tolist()


def test_neighbours_are_decoder_cosines(browse_run):
    W = torch.nn.functional.normalize(load(browse_run / "saes" / RES).W_dec.detach(), dim=1)
    W0 = torch.nn.functional.normalize(load(browse_run / "saes" / "res.0__w256__c64").W_dec.detach(), dim=1)
    ondemand = on_demand(browse_run)
    row = ondemand.views(RES, [11])[0]
    assert ondemand.neighbours(RES, [3, 11])[1] == row.neighbours  # a block gives each latent its own list
    cos = W[11] @ W.T
    cos[11] = -2
    assert row.neighbours["same"][0][0] == int(cos.argmax())
    below = [a for a in row.neighbours["adjacent"] if a["layer"] == 0][0]
    assert below["items"][0][0] == int((W[11] @ W0.T).argmax())
    assert {a["layer"] for a in row.neighbours["adjacent"]} == {0, 2}


def test_topics_and_search(browse_run, hostile_doc_id):
    db = FeatureDB(db_path(browse_run))
    assert "History" in db.meta["topics"]
    assert sum(db.meta["topic_tokens"]) > 0
    row = db.latent(RES, 0)
    assert len(row.topics) == len(db.meta["topics"])
    hits = db.search("city")  # a whole token of the tiny vocabulary, in the hostile document
    assert hits and all(h[0] in db.saes for h in hits)
    assert isinstance(db.search('"; DROP TABLE latents; -- AND OR ('), list)  # quoted: never FTS syntax
    assert db.latent(RES, 0) is not None
    assert db.search("zzzqqxnotaword") == []


def test_second_pass_is_incremental(browse_run):
    assert compute_stats(browse_run, progress=False)["saes"] == 0
    weights = browse_run / "saes" / "mlp.0__w256__c64" / "sae.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    # the SAE itself only: neighbours, which read adjacent SAEs, are computed per view, never stored
    assert compute_stats(browse_run, progress=False)["saes"] == 1
    assert compute_stats(browse_run, progress=False)["saes"] == 0


def test_latent_then_activation_order_is_lexsorts():
    rng = np.random.default_rng(0)
    lats = rng.integers(0, 40, 20000)
    vals = np.concatenate(
        [
            rng.choice(np.float32([1e-30, 0.5, 3.0, 1e30]), 10000),  # ties and extremes
            rng.random(10000, dtype=np.float32) * 50 + 1e-6,
        ]
    )
    assert (_by_latent_then_activation(lats, vals) == np.lexsort((-vals, lats))).all()


def test_a_run_with_its_store_elsewhere_reads_that_store(browse_run, tmp_path):
    """`saescope run --store S` trains on S, not OUT/activations: the statistics pass (the run's last
    stage) and the live model must find S through the run's config.json."""
    other = tmp_path / "run"
    (other / "saes").mkdir(parents=True)
    for folder in (browse_run / "saes").iterdir():
        if folder.name == RES:
            shutil.copytree(folder, other / "saes" / folder.name)
    store = browse_run / "activations"
    (other / "config.json").write_text(json.dumps({"store": str(store)}))
    assert compute_stats(other, progress=False)["saes"] == 1
    ours, theirs = FeatureDB(db_path(other)), FeatureDB(db_path(browse_run))
    assert np.array_equal(ours.max_acts(RES), theirs.max_acts(RES))
    # the last column (logit-lens text) fills lazily as pages are viewed
    assert [r[:-1] for r in ours.latent_table(RES)] == [r[:-1] for r in theirs.latent_table(RES)]
    assert Live(other, ours).model()[0] is not None
