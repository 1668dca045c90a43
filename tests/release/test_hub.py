"""Hub loading and pushing against a local folder laid out like the Hub; only the network calls
(`snapshot_download`, `HfApi`) are replaced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from helpers import D_SAE, activations, arrays, assert_bit_exact, jumprelu
from huggingface_hub.utils import filter_repo_objects

import saescope
from saescope.errors import SaescopeError
from saescope.release import hub
from saescope.release.formats import release
from saescope.release.gemma_scope import write_gemma_scope, write_gemma_scope_2

META = {"model": "embedded", "model_name": "gemma-3-270m", "dataset": "wiki", "context_len": 64}


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """`tmp/hub/<owner>/<repo>/...` stands for the Hub; downloads copy the allowed files into a cache."""
    root = tmp_path / "hub"
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **_):
        calls.append((repo_id, allow_patterns))
        src = root / repo_id
        if not src.is_dir():
            raise huggingface_hub.errors.RepositoryNotFoundError(f"404 {repo_id}")
        files = [str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()]
        dest = tmp_path / "cache" / repo_id.replace("/", "--")
        for rel in filter_repo_objects(files, allow_patterns=allow_patterns):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dest / rel)
        dest.mkdir(parents=True, exist_ok=True)
        return str(dest)

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, repo_type="model", private=False, exist_ok=False):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, repo_type="model", commit_message=""):
            calls.append(("upload", repo_id))
            shutil.copytree(folder_path, root / repo_id, dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return root, calls


def test_load_by_hub_id_downloads_only_that_folder(fake_hub):
    root, calls = fake_hub
    sae = jumprelu(2)
    write_gemma_scope_2(sae, META | {"site": "res", "layer": 1}, {}, root / "me/scope-2/resid_post/layer_1_w")
    write_gemma_scope(jumprelu(3), META | {"site": "res", "layer": 2}, {}, root / "me/scope-2/other/layer_2")
    loaded = saescope.load("me/scope-2/resid_post/layer_1_w")
    assert_bit_exact(arrays(loaded), arrays(sae))
    assert calls[-1] == ("me/scope-2", ["resid_post/layer_1_w/*"])
    assert not any((Path(p).name == "other") for p in (root.parent / "cache").rglob("*"))
    with pytest.raises(SaescopeError, match="cannot download me/missing"):
        saescope.load("me/missing/x")
    with pytest.raises(SaescopeError, match="holds 2 SAEs"):
        saescope.load("me/scope-2")


def make_release(run: Path) -> Path:
    for kind, layer in (("res", 0), ("mlp", 1)):
        sae = jumprelu(layer)
        folder = run / "saes" / f"{kind}.{layer}__w64__c0.001"
        folder.mkdir(parents=True)
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(v) for k, v in sae.params_npz().items()}, str(folder / "sae.safetensors"))
        (folder / "config.json").write_text(
            json.dumps(
                META
                | {
                    "site": kind,
                    "layer": layer,
                    "architecture": "jumprelu",
                    "d_in": sae.d_in,
                    "d_sae": D_SAE,
                    "knobs": sae.knobs(),
                    "sparsity_coefficient": 0.001,
                }
            )
        )
        (folder / "metrics.json").write_text(
            json.dumps(
                {
                    "l0": 9.6,
                    "fvu": 0.125,
                    "delta_loss": 0.03,
                    "ce_loss_recovered": 0.9,
                    "firing_frequency": [0.1] * D_SAE,
                }
            )
        )
    return release(run)


def test_push_per_kind_writes_model_cards_and_loads_back(tmp_path, fake_hub):
    root, calls = fake_hub
    rel = make_release(tmp_path / "run")
    pushed = hub.push(tmp_path / "run", "me/scope")
    assert pushed == ["me/scope-mlp", "me/scope-res"] or pushed == ["me/scope-res", "me/scope-mlp"]
    assert ("create", "me/scope-res", False) in calls
    card = (root / "me/scope-res/README.md").read_text()
    front = card.split("---")[1]
    assert "license: apache-2.0" in front and "base_model: google/gemma-3-270m" in front
    assert "library_name: saescope" in front and "- sparse-autoencoder" in front and "- jumprelu" in front
    assert "| `layer_0/width_64/average_l0_10` | res | 0 | 64 | jumprelu | 9.6 | 0.125 | 0.03 | 0.9 |" in card
    assert 'saescope.load("me/scope-res/layer_0/width_64/average_l0_10")' in card
    assert 'SAE.from_pretrained("me/scope-res", "saelens/layer_0/width_64/average_l0_10")' in card
    assert (
        json.loads((root / "me/scope-res/suite.json").read_text())["saes"][0]["path"]
        == "layer_0/width_64/average_l0_10"
    )
    assert not (rel / "README.md").exists()  # the release itself is left as it was
    x = activations()
    original = saescope.load(rel / "res/layer_0/width_64/average_l0_10")
    from_hub = saescope.load("me/scope-res/layer_0/width_64/average_l0_10")
    saelens_copy = saescope.load("me/scope-res/saelens/layer_0/width_64/average_l0_10")
    assert_bit_exact(arrays(from_hub), arrays(original))
    assert torch.equal(saelens_copy(x), original(x))


def test_push_single_repository_and_bad_arguments(tmp_path, fake_hub):
    root, calls = fake_hub
    make_release(tmp_path / "run")
    assert hub.push(tmp_path / "run" / "release", "me/all", layout="single", saelens=False) == ["me/all"]
    assert (root / "me/all/res/layer_0/width_64/average_l0_10/params.npz").exists()
    assert not (root / "me/all/saelens").exists()
    with pytest.raises(SaescopeError, match="--repo must be OWNER/NAME"):
        hub.push(tmp_path / "run", "me/all/sub")
    with pytest.raises(SaescopeError, match="has no suite.json"):
        hub.push(tmp_path, "me/x")
