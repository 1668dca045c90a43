"""A latent's parent and children across widths on its page, in a run that gains a wider SAE of
res.1 whose latents 0 and 1 split the narrow latent 0 and whose others copy the narrow ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from saescope.browse.app import create_app
from saescope.browse.stats import compute_stats
from saescope.evaluate.splitting import print_splitting, splitting_pairs, splitting_results
from saescope.release.formats import load

NARROW, WIDE = "res.1__w256__c64", "res.1__w257__c64"


def split_first_latent(narrow: dict[str, torch.Tensor], d_sae: int) -> dict[str, torch.Tensor]:
    """The narrow SAE's arrays with latent 0 twice (every array with a latent axis), and the two
    copies' decoder rows turned apart: d0 +/- u/2 for a unit u orthogonal to d0 (cosine 0.89 to d0)."""
    wide = {}
    for key, a in narrow.items():
        axis = a.shape.index(d_sae) if d_sae in a.shape else None
        wide[key] = a if axis is None else torch.cat([a.narrow(axis, 0, 1), a], axis)
    d0 = narrow["W_dec"][0]
    u = torch.randn(len(d0), generator=torch.Generator().manual_seed(0))
    u -= (u @ d0) / (d0 @ d0) * d0
    u *= d0.norm() / u.norm()
    wide["W_dec"][0], wide["W_dec"][1] = d0 + u / 2, d0 - u / 2
    return wide


@pytest.fixture(scope="module")
def widths_run(browse_run, tmp_path_factory) -> Path:
    """The browse run's SAEs and store (linked) plus the wider res.1 SAE, with browse statistics."""
    run = tmp_path_factory.mktemp("widths") / "run"
    (run / "saes").mkdir(parents=True)
    (run / "activations").symlink_to(browse_run / "activations")
    for folder in (browse_run / "saes").iterdir():
        (run / "saes" / folder.name).symlink_to(folder)
    (run / "browse").mkdir()
    shutil.copy(browse_run / "browse" / "features.sqlite", run / "browse" / "features.sqlite")
    narrow = load(browse_run / "saes" / NARROW)
    arrays = {k: torch.from_numpy(v) for k, v in narrow.params_npz().items()}
    (run / "saes" / WIDE).mkdir()
    save_file(split_first_latent(arrays, narrow.d_sae), run / "saes" / WIDE / "sae.safetensors")
    config = json.loads((browse_run / "saes" / NARROW / "config.json").read_text())
    (run / "saes" / WIDE / "config.json").write_text(json.dumps(config | {"d_sae": narrow.d_sae + 1}))
    compute_stats(run, progress=False)  # only the new SAE: the others' inputs are unchanged
    return run


@pytest.fixture(scope="module")
def client(widths_run):
    return TestClient(create_app(widths_run), base_url="http://127.0.0.1", raise_server_exceptions=False)


def test_a_parent_lists_its_children(client):
    page = client.get(f"/latent/{NARROW}/0").text
    assert "Across widths" in page
    assert f"children in <code>{WIDE}</code> (width 257):" in page
    assert f'href="/latent/{WIDE}/0">#0 (0.89)</a>' in page and f'href="/latent/{WIDE}/1">#1 (0.89)</a>' in page
    assert f'href="/latent/{WIDE}/4">#4 (1.00)</a>' in client.get(f"/latent/{NARROW}/3").text  # its copy


def test_a_child_lists_its_parent(client):
    page = client.get(f"/latent/{WIDE}/1").text
    assert (
        f'parent in <code>{NARROW}</code> (width 256): <a class="chip" href="/latent/{NARROW}/0">#0 (0.89)</a>' in page
    )
    assert "children in" not in page  # no wider SAE


def test_an_sae_of_one_width_has_no_family_section(client, widths_run):
    other = next(p.name for p in (widths_run / "saes").iterdir() if p.name.startswith("mlp."))
    page = client.get(f"/latent/{other}/0")
    assert page.status_code == 200 and "Across widths" not in page.text


def test_the_page_and_the_evaluation_find_the_same_children(client, widths_run):
    assert splitting_pairs(widths_run) == [(NARROW, WIDE)]
    decoder = splitting_results(widths_run)[f"{NARROW} -> {WIDE}"]["decoder"]
    assert [c for c, _ in decoder["children"][0]] == [0, 1] and decoder["children_histogram"][2] == 1
    ondemand = client.app.state.ondemand
    shown = ondemand.neighbours(NARROW, list(range(16)))
    assert [n["family"]["children"]["items"] for n in shown] == decoder["children"][:16]


def test_compare_prints_the_table_for_a_run_with_two_widths(widths_run, capsys):
    print_splitting(widths_run)
    out = capsys.readouterr().out
    assert "Feature splitting across widths" in out
    assert f"| {NARROW} -> {WIDE} | decoder cosine | 257 | 0.0% |" in out


def test_a_novel_latent_says_so():
    from types import SimpleNamespace

    from saescope.browse.family import section
    from saescope.browse.render import Links

    side = {"sae": "res.1__w<b>__c1", "width": 64, "items": [[7, 0.31]]}
    html = section(SimpleNamespace(neighbours={"family": {"parent": side, "children": None}}), Links())
    assert "no parent (cosine below 0.5): a novel latent; nearest in <code>res.1__w&lt;b&gt;__c1</code>" in html
    assert "#7 (0.31)" in html and "children in" not in html
