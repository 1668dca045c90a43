"""Sparse probing and TPP against hand-computed cases: planted topic directions, a planted SAE,
the logistic probe's closed-form optimum, and the document-level split."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tinymodels import tiny_model

from saescope.activations.documents import Document, load_documents
from saescope.activations.packing import encode_documents
from saescope.evaluate.probing import (
    DocumentActivations,
    fit_probe,
    probe_tasks,
    sample_topic_documents,
    site_documents,
    sites_documents,
    sparse_probing,
    split_documents,
    tpp,
)
from saescope.models.sites import Site, run_to_sites
from saescope.saes.registry import make_sae

D = 8
PERM = [4, 6, 7, 5, 0, 3, 1, 2]  # latent j reads dimension PERM[j]: dimension 3 is latent 5, 0 is 4, 1 is 6


def planted_acts(planted: dict[str, int], per_topic: int = 30, tokens: int = 5, seed: int = 0) -> DocumentActivations:
    """Documents of topics A, B, C (Gaussian tokens, std 0.3); a planted topic's documents carry +2
    on their dimension, so that dimension alone separates the topic from the rest."""
    gen = torch.Generator().manual_seed(seed)
    topics = [t for _ in range(per_topic) for t in "ABC"]
    docs = []
    for topic in topics:
        x = 0.3 * torch.randn(tokens, D, generator=gen)
        if topic in planted:
            x[:, planted[topic]] += 2.0
        docs.append(x)
    offsets = torch.arange(len(docs) + 1) * tokens
    return DocumentActivations(Site(0, "res"), torch.cat(docs), offsets, topics, list(range(len(docs))))


def permutation_sae():
    """A ReLU SAE whose latent j is relu(x[PERM[j]]) and decodes back onto that dimension."""
    sae = make_sae("relu", D, D)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        for j, dim in enumerate(PERM):
            sae.W_enc[dim, j] = 1.0
            sae.W_dec[j, dim] = 1.0
    return sae


def test_k1_probe_finds_the_planted_latent_and_dimension():
    acts = planted_acts({"A": 3})
    result = sparse_probing(acts, permutation_sae(), ks=(1, 2, 5, 20))
    a = result["per_topic"]["A"]
    assert a["sae_top_latents"][0] == 5 and a["sae_top_1_test_accuracy"] == 1.0
    assert a["llm_top_1_test_accuracy"] == 1.0 and a["llm_test_accuracy"] == 1.0
    # B and C carry no signal: their probes are near chance, so the means sit between
    assert result["per_topic"]["B"]["sae_top_1_test_accuracy"] < 0.9
    means = result["sae"]["sae_top_1_test_accuracy"]
    assert means == pytest.approx(sum(r["sae_top_1_test_accuracy"] for r in result["per_topic"].values()) / 3)
    assert "sae_top_20_test_accuracy" not in result["sae"] and "llm_top_20_test_accuracy" not in result["llm"]
    assert result["k_values"] == [1, 2, 5, 20] and result["skipped_topics"] == {}
    json.dumps(result)


def test_tpp_ablating_the_planted_latent_drops_only_its_topic():
    acts = planted_acts({"A": 0, "B": 1, "C": 2})
    result = tpp(acts, permutation_sae(), n_latents=1)
    name = "tpp_threshold_1"
    for topic, latent in zip("ABC", (4, 6, 7)):
        r = result["per_topic"][topic]
        assert r["ablated_latents"] == [latent]
        assert r["llm_test_accuracy"] == 1.0
        assert r[f"{name}_intended_diff_only"] == pytest.approx(0.5)  # positives all fall to the other side
        assert r[f"{name}_unintended_diff_only"] == pytest.approx(0.0)
    assert result["tpp_metrics"][f"{name}_total_metric"] == pytest.approx(0.5)
    json.dumps(result)


def test_split_is_document_level_and_seeded():
    topics = ["A"] * 12 + ["B"] * 7 + ["C"] * 3
    train, test, skipped = split_documents(topics, seed=3)
    again = split_documents(topics, seed=3)
    other = split_documents(topics, seed=4)
    assert set(skipped) == {"C"}
    for topic in ("A", "B"):
        assert torch.equal(train[topic], again[0][topic]) and torch.equal(test[topic], again[1][topic])
        assert not set(train[topic].tolist()) & set(test[topic].tolist())
        assert sorted(train[topic].tolist() + test[topic].tolist()) == [i for i, t in enumerate(topics) if t == topic]
    assert len(test["A"]) == 2 and len(test["B"]) == 1
    assert any(not torch.equal(test[t], other[1][t]) for t in ("A", "B"))


def test_tasks_are_balanced_and_disjoint():
    acts = planted_acts({}, per_topic=10)
    acts.topics[0:3] = ["A", "A", "A"]  # A: 12 documents, B and C: 9 each
    tasks, _ = probe_tasks(acts, seed=0)
    for topic, task in tasks.items():
        for index, labels in ((task.train, task.train_labels), (task.test, task.test_labels)):
            assert labels.sum() * 2 == len(labels)
            assert all(acts.topics[i] == topic for i in index[labels == 1].tolist())
            assert all(acts.topics[i] != topic for i in index[labels == 0].tolist())
        assert not set(task.train.tolist()) & set(task.test.tolist())


def test_too_few_topics_is_not_applicable():
    acts = planted_acts({"A": 3}, per_topic=10)
    acts.topics[:] = ["A"] * 28 + ["B", "C"]
    for result in (sparse_probing(acts, permutation_sae()), tpp(acts, permutation_sae())):
        assert "2" in result["not_applicable"] and set(result["skipped_topics"]) == {"B", "C"}


def test_transcoder_tpp_is_not_applicable():
    sae = make_sae("relu", D, 16, transcoder="plain")
    assert "transcoder" in tpp(planted_acts({"A": 3}), sae)["not_applicable"]


def test_probe_is_the_exact_optimum_in_one_dimension():
    # z = +-1 after standardising; by symmetry b = 0 and w solves w = C N sigmoid(-w) (N = 8, C = 1)
    x = torch.tensor([[1.0]] * 4 + [[-1.0]] * 4)
    labels = torch.tensor([1.0] * 4 + [0.0] * 4)
    lo, hi = 0.0, 8.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < 8 / (1 + math.exp(mid)) else (lo, mid)
    probe = fit_probe(x * 5 + 2, labels)  # scale and shift are standardised away
    assert float(probe.weight[0]) == pytest.approx(lo, abs=1e-9) and probe.bias == pytest.approx(0.0, abs=1e-9)
    assert float(probe.direction[0]) == pytest.approx(lo / 5, abs=1e-9)


def test_probe_gradient_vanishes_with_more_dimensions_than_documents():
    gen = torch.Generator().manual_seed(0)
    x, labels = torch.randn(10, 30, generator=gen), torch.tensor([1.0, 0.0] * 5)
    probe = fit_probe(x, labels)
    w = probe.weight.clone().requires_grad_()
    b = torch.tensor(probe.bias, dtype=torch.float64, requires_grad=True)
    z = (x.double() - probe.mean) / probe.scale
    loss = torch.nn.functional.softplus(-(labels.double() * 2 - 1) * (z @ w + b)).mean() + w @ w / 20
    loss.backward()
    assert float(w.grad.abs().max()) < 1e-9 and abs(float(b.grad)) < 1e-9


def test_site_documents_pools_text_tokens_of_each_document(tiny_tokenizer):
    model = tiny_model("gemma3_text")
    docs = [d for d in load_documents("wiki", limit=40) if d.topic][:6]
    sites = [Site(1, "res"), Site(0, "att")]
    both = sites_documents(model, tiny_tokenizer, sites, docs, max_tokens=24, batch=4)
    one = site_documents(model, tiny_tokenizer, sites[0], docs, max_tokens=24, batch=4)
    assert torch.equal(one.tokens, both[sites[0]].tokens) and one.topics == [d.topic for d in docs]
    assert one.doc_ids == [d.doc_id for d in docs]
    ids = encode_documents([docs[2].text], tiny_tokenizer)[0][:24]
    grabbed = {}
    run_to_sites(model, torch.tensor([ids]), None, sites, grabbed.__setitem__)
    for site in sites:
        acts = both[site]
        mine = acts.tokens[acts.offsets[2] : acts.offsets[3]]
        torch.testing.assert_close(mine, grabbed[site][0, 1:], atol=1e-5, rtol=1e-4)  # BOS left out
        torch.testing.assert_close(acts.pooled[2], grabbed[site][0, 1:].mean(0), atol=1e-5, rtol=1e-4)
    assert acts.pooled.shape == (6, 96)


def test_sample_topic_documents_caps_each_topic():
    docs = [Document(i, "text", topic="AB"[i % 2]) for i in range(20)] + [Document(20, "text")]
    chosen = sample_topic_documents(docs, per_topic=3, seed=1)
    assert [d.topic for d in chosen].count("A") == 3 and [d.topic for d in chosen].count("B") == 3
    assert chosen == sample_topic_documents(docs, per_topic=3, seed=1)
    assert [d.doc_id for d in chosen] == sorted(d.doc_id for d in chosen)


@pytest.mark.slow
def test_real_gemma_topics_are_linearly_readable(gemma):
    model, tok = gemma
    docs = sample_topic_documents(load_documents("wiki"), per_topic=20)
    acts = site_documents(model, tok, Site(6, "res"), docs, max_tokens=64)
    assert acts.pooled.shape == (240, 640) and len(acts.tokens) == int(acts.offsets[-1])
    torch.manual_seed(0)
    sae = make_sae("relu", 640, 256).folded(1.0)
    result = sparse_probing(acts, sae)
    assert len(result["per_topic"]) == 12 and result["skipped_topics"] == {}
    assert result["llm"]["llm_test_accuracy"] > 0.8, result["llm"]  # chance is 0.5 (balanced); measured 0.96
    assert 0.0 <= result["sae"]["sae_top_20_test_accuracy"] <= 1.0
    assert all(len(r["sae_top_latents"]) == 20 for r in result["per_topic"].values())
    metrics = tpp(acts, sae)["tpp_metrics"]
    assert all(math.isfinite(v) for v in metrics.values()) and set(metrics) == {
        "tpp_threshold_20_total_metric",
        "tpp_threshold_20_intended_diff_only",
        "tpp_threshold_20_unintended_diff_only",
    }
