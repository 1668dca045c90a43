"""Every format round-trips bit-exactly and gives the same outputs; bad files fail in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import D_IN, D_SAE, activations, arrays, assert_bit_exact, jumprelu, random_params, topk, write_trained
from safetensors.numpy import save_file

import saescope
from saescope.errors import SaescopeError
from saescope.release import interop
from saescope.release.export import export
from saescope.release.gemma_scope import write_gemma_scope, write_gemma_scope_2
from saescope.release.loaded import build_sae
from saescope.release.saelens import write_saelens
from saescope.release.sparsify import write_sparsify
from saescope.saes.skip_transcoder import SkipTranscoder

META = {
    "site": "res",
    "layer": 3,
    "model": "embedded",
    "model_name": "gemma-3-270m",
    "dataset": "wiki",
    "context_len": 64,
}


def same_outputs(a, b, x) -> None:
    assert torch.equal(a.encode(x), b.encode(x))
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize(
    "fmt,make",
    [
        ("gemma-scope", jumprelu),
        ("gemma-scope-2", jumprelu),
        ("saelens", jumprelu),
        ("saelens", topk),
        ("sparsify", topk),
        ("gemma-scope", lambda: jumprelu(knobs={"token_norm": True})),
        ("gemma-scope-2", lambda: jumprelu(knobs={"token_norm": True})),
        ("saelens", lambda: jumprelu(knobs={"token_norm": True})),
    ],
)
def test_round_trip_is_bit_exact_with_same_outputs(tmp_path, fmt, make):
    sae, x = make(), activations()
    interop.WRITERS[fmt](sae, META, {"l0": 12.3}, tmp_path / "out")
    back = saescope.load(tmp_path / "out")
    assert interop.detect_format(tmp_path / "out") == fmt
    assert (
        back.arch == sae.arch
        and back.pre_encoder_bias == sae.pre_encoder_bias
        and back.knobs().get("k") == sae.knobs().get("k")
        and back.knobs().get("token_norm") == sae.knobs().get("token_norm")
    )
    assert_bit_exact(arrays(back), arrays(sae))
    same_outputs(back, sae, x)
    meta = interop.read(tmp_path / "out").meta
    assert (meta["site"], meta["layer"], meta["model_name"]) == ("res", 3, "gemma-3-270m")
    # And once more through the loaded copy: the files themselves are reproduced byte for byte.
    interop.WRITERS[fmt](back, meta, {"l0": 12.3}, tmp_path / "again")
    weights = {
        "gemma-scope": "params.npz",
        "gemma-scope-2": "params.safetensors",
        "saelens": "sae_weights.safetensors",
        "sparsify": "sae.safetensors",
    }[fmt]
    assert (tmp_path / "out" / weights).read_bytes() == (tmp_path / "again" / weights).read_bytes()


def test_sparsify_refuses_an_sae_that_rescales_tokens(tmp_path):
    sae = build_sae("topk", random_params(0, threshold=False), knobs={"k": 5, "token_norm": True})
    with pytest.raises(SaescopeError, match="export it as saelens"):
        interop.WRITERS["sparsify"](sae, META, {}, tmp_path)
    assert not any(tmp_path.iterdir())


def test_gemma_scope_2_files_use_lower_case_keys_and_its_config(tmp_path):
    write_gemma_scope_2(jumprelu(), META | {"model_type": "gemma3_text"}, {}, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "params.safetensors"), "np") as f:
        assert sorted(f.keys()) == ["b_dec", "b_enc", "threshold", "w_dec", "w_enc"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "jump_relu" and config["hf_hook_point_in"] == "model.layers.3.output"


def test_skip_transcoder_keeps_affine_skip_connection(tmp_path):
    """Gemma Scope 2 skip transcoder: five arrays + affine_skip_connection [d_in, d_out]; loaded as
    a SkipTranscoder whose output adds x @ affine_skip_connection."""
    params = random_params(3)
    params["affine_skip_connection"] = (np.random.default_rng(4).normal(size=(D_IN, D_IN)) / 4).astype(np.float32)
    folder = tmp_path / "transcoder" / "layer_2_width_64_l0_small"
    folder.mkdir(parents=True)
    save_file(
        {({"W_enc": "w_enc", "W_dec": "w_dec"}).get(k, k): v for k, v in params.items()},
        str(folder / "params.safetensors"),
    )
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "jump_relu",
                "model_name": "gemma-3-270m-pt",
                "hf_hook_point_in": "model.layers.2.pre_feedforward_layernorm.output",
                "hf_hook_point_out": "model.layers.2.post_feedforward_layernorm.output",
                "affine_connection": True,
            }
        )
    )
    loaded = interop.read(folder)
    sae, x = loaded.sae, activations()
    assert isinstance(sae, SkipTranscoder) and loaded.meta["transcoder"] and loaded.meta["site"] == "mlp_in"
    p = {k: torch.from_numpy(v) for k, v in params.items()}
    pre = x @ p["W_enc"] + p["b_enc"]
    expected = (pre * (pre > p["threshold"])) @ p["W_dec"] + p["b_dec"] + x @ p["affine_skip_connection"]
    assert torch.allclose(sae(x), expected, atol=1e-6)
    for fmt in ("gemma-scope-2", "gemma-scope", "saelens"):
        interop.WRITERS[fmt](sae, loaded.meta, {}, tmp_path / fmt)
        back = saescope.load(tmp_path / fmt)
        assert isinstance(back, SkipTranscoder)
        assert_bit_exact(arrays(back), params)
        same_outputs(back, sae, x)


def test_hand_built_gemma_scope_npz_gives_the_reference_forward(tmp_path):
    params = random_params(7)
    np.savez(tmp_path / "params.npz", **params)
    sae, x = saescope.load(tmp_path / "params.npz"), activations()
    pre = x.numpy() @ params["W_enc"] + params["b_enc"]
    acts = (pre > params["threshold"]) * np.maximum(pre, 0)
    recon = acts @ params["W_dec"] + params["b_dec"]
    assert np.allclose(sae.encode(x).detach().numpy(), acts, atol=1e-6)
    assert np.allclose(sae(x).detach().numpy(), recon, atol=1e-5)
    assert sae.arch == "jumprelu" and not sae.pre_encoder_bias


def test_sparsify_layout_and_folding_of_an_sae_without_pre_encoder_bias(tmp_path):
    from safetensors import safe_open

    sae, x = topk(pre_encoder_bias=False), activations()
    write_sparsify(sae, META, {}, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["num_latents"], cfg["k"], cfg["transcode"]) == (D_IN, D_SAE, 5, False)
    with safe_open(str(tmp_path / "sae.safetensors"), "np") as f:
        assert f.get_tensor("encoder.weight").shape == (D_SAE, D_IN) and f.get_tensor("W_dec").shape == (D_SAE, D_IN)
    back = saescope.load(tmp_path)
    assert back.pre_encoder_bias  # sparsify always subtracts b_dec; b_enc absorbed it
    assert torch.equal(back.encode(x) > 0, sae.encode(x) > 0)
    assert torch.allclose(back(x), sae(x), atol=1e-5)
    with pytest.raises(SaescopeError, match="sparsify only loads TopK"):
        write_sparsify(jumprelu(), META, {}, tmp_path / "j")


def test_a_file_that_is_not_an_sae_says_so(tmp_path):
    np.savez(tmp_path / "params.npz", weights=np.zeros((3, 3), np.float32), bias=np.zeros(3, np.float32))
    with pytest.raises(SaescopeError, match="is not an SAE: it holds arrays"):
        saescope.load(tmp_path / "params.npz")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "params.npz").write_text("hello")
    with pytest.raises(SaescopeError, match="is not an SAE"):
        saescope.load(tmp_path / "junk")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SaescopeError, match="holds no SAE"):
        saescope.load(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SaescopeError, match="not an SAE file"):
        saescope.load(tmp_path / "notes.txt")
    with pytest.raises(SaescopeError, match="does not exist locally and is not a hub id"):
        saescope.load("./no/such/thing")


def test_pickled_npz_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "params.npz", "w") as z:
        z.write(tmp_path / "obj.npy", "W_enc.npy")
    with pytest.raises(SaescopeError, match="not an SAE"):
        saescope.load(tmp_path / "params.npz")


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: p.update(W_dec=p["W_dec"][:, :-1]), "W_dec has shape"),
        (lambda p: p.update(threshold=p["threshold"][:-2]), "threshold has shape"),
        (lambda p: p.update(b_enc=p["b_enc"].astype(np.int32)), "dtype int32, expected floating point"),
        (lambda p: p.pop("threshold"), r"missing arrays \['threshold'\]"),
        (lambda p: p.update(W_enc=p["W_enc"][0]), "W_enc must be 2-D"),
    ],
)
def test_shapes_and_dtypes_are_validated(tmp_path, change, message):
    params = random_params()
    change(params)
    np.savez(tmp_path / "params.npz", **params)
    with pytest.raises(SaescopeError, match=message):
        saescope.load(tmp_path)


def test_half_precision_files_load_exactly_widened(tmp_path):
    params = {k: v.astype(np.float16) for k, v in random_params().items()}
    save_file(
        {({"W_enc": "w_enc", "W_dec": "w_dec"}).get(k, k): v for k, v in params.items()},
        str(tmp_path / "params.safetensors"),
    )
    sae = saescope.load(tmp_path)
    assert_bit_exact(arrays(sae), {k: v.astype(np.float32) for k, v in params.items()})


def test_folder_with_many_saes_names_them(tmp_path):
    for layer in (1, 2):
        write_gemma_scope(jumprelu(layer), META | {"layer": layer}, {"l0": 3}, tmp_path / f"res/layer_{layer}/w")
    with pytest.raises(SaescopeError, match="holds 2 SAEs, not one: pass one of its folders"):
        saescope.load(tmp_path)


def test_suite_export_to_every_format_and_back(tmp_path):
    """A run-like folder of trained SAEs exported as a suite; each SAE reloads bit-exactly."""
    run = tmp_path / "run"
    saes = {}
    for kind, layer in (("res", 0), ("mlp", 1), ("att", 1)):
        sae = jumprelu(layer + len(kind))
        write_trained(
            run,
            f"{kind}.{layer}__w64__c0.001",
            sae,
            META | {"site": kind, "layer": layer},
            {"l0": 7.4, "fvu": 0.2, "firing_frequency": [0.1] * D_SAE},
        )
        saes[(kind, layer)] = sae
    expected = {
        "gemma-scope": "res/layer_0/width_64/average_l0_7",
        "gemma-scope-2": "mlp_out/layer_1_width_64_l0_7",
        "saelens": "blocks.1.attn.hook_z/width_64_l0_7",
    }
    for fmt, one in expected.items():
        written = export(run, tmp_path / fmt, fmt)
        assert len(written) == 3 and (tmp_path / fmt / one).is_dir()
        for folder in written:
            loaded = interop.read(folder)
            assert_bit_exact(arrays(loaded.sae), arrays(saes[(loaded.meta["site"], loaded.meta["layer"])]))
    assert (
        json.loads((tmp_path / "saelens" / expected["saelens"] / "cfg.json").read_text())["reshape_activations"]
        == "hook_z"
    )
    with pytest.raises(SaescopeError, match="sparsify only loads TopK"):
        export(run, tmp_path / "sparsify", "sparsify")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saescope", *args], capture_output=True, text=True, timeout=120)


def test_cli_load_and_export(tmp_path):
    write_saelens(topk(), META, {"l0": 5.0}, tmp_path / "sl")
    out = cli("load", str(tmp_path / "sl"))
    assert out.returncode == 0, out.stderr
    assert "format            saelens" in out.stdout and "architecture      topk" in out.stdout
    assert "d_sae             64" in out.stdout and "site              res.3" in out.stdout
    out = cli("export", "--format", "sparsify", str(tmp_path / "sl"), str(tmp_path / "sp"))
    assert out.returncode == 0, out.stderr
    assert_bit_exact(arrays(saescope.load(tmp_path / "sp")), arrays(saescope.load(tmp_path / "sl")))
    out = cli("load", "--format", "sparsify", str(tmp_path / "sl"))
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "has no sae.safetensors" in out.stderr
