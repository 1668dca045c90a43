"""The weight-only statistics computed per latent when needed: the same logit lens as computing a
whole SAE at once, pages that are right before the background fill reaches them, a complete export,
and the same tokens and neighbours in the Neuronpedia export as on the pages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from saescope.browse import lens
from saescope.browse.app import create_app
from saescope.browse.db import FeatureDB, db_path
from saescope.browse.live import Live
from saescope.browse.ondemand import OnDemand
from saescope.cli import main
from saescope.models.loading import load_model
from saescope.models.sites import Site
from saescope.release.formats import load
from saescope.release.neuronpedia import export_neuronpedia

RES = "res.1__w256__c64"


def whole_sae_lens(model, site: Site, W_dec: torch.Tensor) -> list[dict]:
    """The lens as the statistics pass computed it before it was deferred: every latent of an SAE
    in one call (blocks of lens.LATENT_BLOCK latents sharing each pass over the vocabulary)."""
    return lens.logit_lens(lens.residual_directions(model, site, W_dec), lens.unembedding(model))


def same_lens(a: dict, b: dict) -> bool:
    return (
        [t for t, _ in a["top"]] == [t for t, _ in b["top"]]
        and [t for t, _ in a["bottom"]] == [t for t, _ in b["bottom"]]
        and all(abs(x - y) < 1e-4 for (_, x), (_, y) in zip(a["top"] + a["bottom"], b["top"] + b["bottom"]))
    )


def test_on_demand_lens_equals_the_whole_sae_lens_for_every_site_kind(fresh_run, tiny_model_dir):
    db = FeatureDB(db_path(fresh_run))
    ondemand = OnDemand(fresh_run, db, Live(fresh_run, db).model)
    model, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    assert {s.kind for s in db.saes.values()} == {"res", "mlp", "att"}
    for name, s in db.saes.items():
        expected = whole_sae_lens(model, Site(s.layer, s.kind), load(fresh_run / "saes" / name).W_dec.detach())
        assert db.lens_count(name) == 0
        latents = [*range(0, s.d_sae, 8), s.d_sae - 1]
        for latent in latents:  # one latent at a time, as a page asks
            assert same_lens(ondemand.logits(name, [latent])[latent], expected[latent]), (name, latent)
        assert db.lens_count(name) == len(latents)  # stored as they were computed
        assert all(same_lens(db.lens(name, [i])[i], expected[i]) for i in latents)
    assert lens.residual_directions(model, Site(1, "mlp_in"), torch.ones(4, 64)) is None  # not a residual direction


@pytest.mark.slow
def test_on_demand_lens_equals_the_whole_sae_lens_on_gemma(gemma):
    """On the real 262k-token vocabulary, where bfloat16 candidates could differ between one latent
    and a block; both must also equal a plain float32 product over the whole vocabulary."""
    model, _ = gemma
    W_U = lens.unembedding(model)
    torch.manual_seed(0)
    for kind, d_in in (("res", 640), ("mlp", 640), ("att", 1024)):
        directions = lens.residual_directions(model, Site(6, kind), torch.randn(24, d_in) / d_in**0.5)
        block = lens.logit_lens(directions, W_U)
        plain = directions @ (W_U.weight.float() * W_U.scale).T
        for j in range(len(directions)):
            single = lens.logit_lens(directions[j : j + 1], W_U)[0]
            assert same_lens(single, block[j]), (kind, j)
            assert [t for t, _ in single["top"]] == plain[j].topk(lens.TOP_TOKENS).indices.tolist()


def gemma_with_norm_gains(model_dir: Path, dest: Path) -> Path:
    """The run's tiny Gemma with random norm weights: at init they are zero, so Gemma's `1 + w`
    is 1 and a lens that skipped a norm (the post-attention one, say) would go unnoticed."""
    model, tokenizer = load_model(str(model_dir), "float32", "cpu")
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.data.normal_(0.0, 0.5)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def test_neuronpedia_export_lists_the_pages_tokens_and_neighbours(fresh_run, tiny_model_dir, tmp_path):
    """For res, mlp and att SAEs of a tiny Gemma: a latent's logit-lens tokens (with their logits)
    and its decoder-cosine neighbours are the same in the export as on its browser page."""
    model_dir = gemma_with_norm_gains(tiny_model_dir, tmp_path / "model")
    db = FeatureDB(db_path(fresh_run))
    loaded = load_model(str(model_dir), "float32", "cpu")
    ondemand = OnDemand(fresh_run, db, lambda: loaded)
    kinds = {"res", "mlp", "att"}
    for name in [n for n, s in db.saes.items() if s.layer == 1 and s.kind in kinds]:
        kinds.remove(db.saes[name].kind)
        batches = export_neuronpedia(fresh_run / "saes" / name, tmp_path / name, model_dir=str(model_dir))
        features = [f for path in batches for f in json.loads(path.read_text())["features"]]
        assert [f["feature_index"] for f in features] == list(range(db.saes[name].d_sae))
        for row, f in zip(ondemand.views(name, [f["feature_index"] for f in features]), features):
            top, bottom = row.logits["top"], row.logits["bottom"]
            assert f["pos_str"] == [db.token(t) for t, _ in top] and f["pos_values"] == [v for _, v in top]
            assert f["neg_str"] == [db.token(t) for t, _ in bottom] and f["neg_values"] == [v for _, v in bottom]
            assert [[i, c] for i, c in zip(f["topkCosSimIndices"], f["topkCosSimValues"])] == row.neighbours["same"]
    assert not kinds  # each kind was compared


def test_a_latent_viewed_before_the_background_fill_renders_correctly(fresh_run, tiny_model_dir):
    app = create_app(fresh_run, fill_lens=True)
    db, ondemand = app.state.db, app.state.ondemand
    last = list(db.saes)[-1]  # the fill goes SAE by SAE: this one comes last
    url = f"/latent/{last}/7"
    with ondemand.serving(), TestClient(app, base_url="http://127.0.0.1") as client:  # the fill waits
        assert ondemand.thread is not None and ondemand.thread.is_alive()
        assert sum(db.lens_count(n) for n in db.saes) == 0
        assert 'id="lens-pending"' in client.get(f"/sae/{last}/").text
        first = client.get(url)
        assert first.status_code == 200 and db.lens_count(last) == 1
    ondemand.thread.join(timeout=120)
    assert not ondemand.thread.is_alive()
    assert all(db.lens_count(n) == s.d_sae for n, s in db.saes.items())
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get(url).text == first.text  # the stored lens is the one the first view showed
        assert 'id="lens-pending"' not in client.get(f"/sae/{last}/").text
    model, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    s = db.saes[last]
    expected = whole_sae_lens(model, Site(s.layer, s.kind), load(fresh_run / "saes" / last).W_dec.detach())[7]
    for t, v in expected["top"]:
        assert f"{v:+.3f}" in first.text and repr(db.token(t)).replace("'", "&#x27;") in first.text


def test_export_has_every_page_with_its_lens(fresh_run, tmp_path):
    site = tmp_path / "site"
    assert main(["browse", str(fresh_run), "--export", str(site)]) == 0
    db = FeatureDB(db_path(fresh_run))
    pages = {str(p.relative_to(site)) for p in site.rglob("*.html")}
    assert pages == {"index.html"} | {f"sae/{n}/index.html" for n in db.saes} | {
        f"sae/{n}/{i}.html" for n, s in db.saes.items() for i in range(s.d_sae)
    }
    for name, s in db.saes.items():
        assert db.lens_count(name) == s.d_sae
        table = (site / "sae" / name / "index.html").read_text()
        assert 'id="lens-pending"' not in table
        page = (site / "sae" / name / "3.html").read_text()
        assert "top logits" in page and "not applicable" not in page and "layer " in page
