"""Neuronpedia feature records from a tiny model's activation store and its unembedding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import random_params
from safetensors.torch import save_file
from tinymodels import tiny_model

from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.store import ActivationStore
from saescope.browse import lens
from saescope.models.sites import Site
from saescope.release.export import export
from saescope.release.loaded import build_sae
from saescope.release.neuronpedia import (
    LatentRecord,
    add_logit_lens,
    add_top_activations,
    neuronpedia_feature,
    records_from_metrics,
    write_neuronpedia,
)

D_SAE = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("np") / "activations"
    cfg = HarvestConfig(
        sites="res",
        layers="1",
        tokens=1500,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=512,
        store=str(path),
        device="cpu",
    )
    return ActivationStore(harvest(cfg, tiny_model("gemma3_text"), tiny_tokenizer))


def tiny_sae():
    params = random_params(11, d_in=64, d_sae=D_SAE)
    params["threshold"][:] = 0.05
    return build_sae("jumprelu", params)


def test_top_activations_windows_come_from_the_same_document(store, tiny_tokenizer):
    sae = tiny_sae()
    records = records_from_metrics(D_SAE, {})
    rows = add_top_activations(records, sae, store, "res.1", tiny_tokenizer, n_examples=4, window=3)
    eval_shard = store.n_shards - 1
    assert rows == store.shard_rows(eval_shard)
    x, tokens = store.read("res.1", eval_shard).float(), np.asarray(store.read_tokens(eval_shard))
    with torch.no_grad():
        acts = sae.encode(x)
    j = int(acts.gt(0).sum(0).argmax())
    rec = records[j]
    assert rec.firing_frequency == pytest.approx(float(acts[:, j].gt(0).float().mean()))
    top = rec.top_examples[0]
    best = int(acts[:, j].argmax())
    assert max(top["values"]) == pytest.approx(float(acts[best, j]))
    assert top["tokens"][top["top_token"]] == tiny_tokenizer.decode([int(tokens[best, 0])])
    assert 1 <= len(top["tokens"]) <= 7
    values, heights = rec.activation_histogram
    assert sum(heights) == int(acts[:, j].gt(0).sum()) and len(values) == len(heights) == 20
    assert [e["values"][e["top_token"]] for e in rec.top_examples] == sorted(
        (e["values"][e["top_token"]] for e in rec.top_examples), reverse=True
    )


def test_logit_lens_uses_gemma_norm_gain_and_unembedding(tiny_tokenizer):
    model = tiny_model("gemma3_text")
    sae = tiny_sae()
    records = [LatentRecord(i) for i in range(D_SAE)]
    assert add_logit_lens(records, sae, model, tiny_tokenizer, Site(1, "res"))
    gain = 1 + model.model.norm.weight.float()
    logits = (sae.W_dec[7].detach() * gain.detach()) @ model.lm_head.weight.float().T
    top = logits.topk(lens.TOP_TOKENS)
    assert [v for _, v in records[7].top_logits] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert records[7].top_logits[0][0] == tiny_tokenizer.decode([int(top.indices[0])])
    assert records[7].bottom_logits[0][1] == pytest.approx(float(logits.min()), abs=1e-4)
    assert sum(records[7].logit_histogram[1]) == logits.numel()


def test_att_lens_goes_through_the_output_projection_and_gemmas_post_attention_norm(tiny_tokenizer):
    model = tiny_model("gemma3_text")
    block = model.model.layers[1]
    block.post_attention_layernorm.weight.normal_()  # zero at init: 1 + w would not show
    sae = build_sae("jumprelu", random_params(12, d_in=96, d_sae=D_SAE))
    records = [LatentRecord(i) for i in range(D_SAE)]
    assert add_logit_lens(records, sae, model, tiny_tokenizer, Site(1, "att"))
    resid = (sae.W_dec.detach() @ block.self_attn.o_proj.weight.T) * (1 + block.post_attention_layernorm.weight)
    logits = (resid * (1 + model.model.norm.weight)) @ model.lm_head.weight.T
    for j in (0, 5, 31):
        assert [t for t, _ in records[j].top_logits] == tiny_tokenizer.batch_decode(
            [[i] for i in logits[j].topk(lens.TOP_TOKENS).indices.tolist()]
        )


def test_no_logit_lens_where_the_browser_has_none(tiny_tokenizer):
    records = [LatentRecord(i) for i in range(D_SAE)]
    assert not add_logit_lens(records, tiny_sae(), tiny_model("gemma3_text"), tiny_tokenizer, Site(1, "mlp_in"))
    assert all(not r.top_logits and not r.bottom_logits for r in records)


def test_feature_json_and_batches(tmp_path):
    rec = LatentRecord(
        3,
        0.25,
        [{"tokens": ["a", "b"], "values": [0.0, 2.5], "top_token": 1}],
        ([0.5, 1.5], [4, 1]),
        [("x", 1.0)],
        [("y", -1.0)],
        ([0.0], [7]),
        [(1, 0.5)],
    )
    feature = neuronpedia_feature(rec)
    assert feature["feature_index"] == 3 and feature["frac_nonzero"] == 0.25 and feature["maxActApprox"] == 2.5
    assert feature["activations"][0] == {
        "tokens": ["a", "b"],
        "values": [0.0, 2.5],
        "maxValue": 2.5,
        "qualifying_token_index": 1,
    }
    assert (feature["pos_str"], feature["neg_values"]) == (["x"], [-1.0])
    assert len(feature["freq_hist_data_bar_values"]) == len(feature["freq_hist_data_bar_heights"])
    paths = write_neuronpedia(
        [LatentRecord(i) for i in range(5)], tmp_path, model_id="m", layer=2, sae_set="res-x", batch_size=2
    )
    assert [p.name for p in paths] == ["batch-0.json", "batch-1.json", "batch-2.json"]
    batch = json.loads(paths[1].read_text())
    assert batch["layer"] == "2-res-x" and [f["feature_index"] for f in batch["features"]] == [2, 3]


def test_export_neuronpedia_from_a_run(tmp_path, store, tiny_model_dir):
    sae = tiny_sae()
    folder = tmp_path / "run" / "saes" / "res.1__w32__c0.001"
    folder.mkdir(parents=True)
    save_file({k: torch.from_numpy(v) for k, v in sae.params_npz().items()}, str(folder / "sae.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "jumprelu",
                "d_in": 64,
                "d_sae": D_SAE,
                "site": "res",
                "layer": 1,
                "knobs": sae.knobs(),
                "model": str(tiny_model_dir),
                "model_name": "tiny",
            }
        )
    )
    (folder / "metrics.json").write_text(json.dumps({"l0": 4.2, "firing_frequency": [0.125] * D_SAE}))
    written = export(tmp_path / "run", tmp_path / "np", "neuronpedia", store=store.path)
    assert written == [tmp_path / "np" / "res-1" / "width_32_l0_4"]
    features = json.loads((written[0] / "batch-0.json").read_text())["features"]
    assert len(features) == D_SAE and features[0]["frac_nonzero"] == 0.125
    assert any(f["activations"] for f in features) and all(len(f["pos_str"]) == lens.TOP_TOKENS for f in features)
    assert all(len(f["topkCosSimIndices"]) == lens.NEIGHBOURS for f in features)
