"""Against the real `sae-lens` package: our exports load with SAELens' own loader and give the same
latents and reconstructions; SAEs saved by SAELens load in saescope with the same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import D_IN, D_SAE, activations, jumprelu, random_params, topk

import saescope
from saescope.release import interop
from saescope.release.loaded import build_sae
from saescope.release.saelens import write_saelens

try:
    import sae_lens
except Exception as e:  # not installed, or installed against an incompatible torch
    pytest.skip(
        f"sae-lens is not importable ({type(e).__name__}: {e}); install the test extra: pip install -e '.[test]'",
        allow_module_level=True,
    )

META = {"site": "res", "layer": 2, "model": "embedded", "model_name": "google/gemma-3-270m", "context_len": 64}


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding at the scale of the larger outputs."""
    return torch.allclose(a, b, atol=1e-6 * max(1.0, float(b.abs().max())), rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        jumprelu,
        lambda: jumprelu(pre_encoder_bias=True),
        topk,
        lambda: topk(pre_encoder_bias=False),
        lambda: jumprelu(knobs={"token_norm": True}),
    ],
)
def test_our_export_loads_in_saelens_with_the_same_outputs(tmp_path, make):
    """A token_norm SAE goes out as SAELens' constant_norm_rescale, the same function."""
    sae, x = make(), activations() * torch.linspace(0.1, 10, 200)[:, None]
    write_saelens(sae, META, {"firing_frequency": [0.01] * D_SAE}, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.architecture() == sae.arch and theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert theirs.cfg.metadata.model_name == "google/gemma-3-270m"
    with torch.no_grad():
        assert torch.equal(theirs.encode(x) > 0, sae.encode(x) > 0)
        assert same(theirs.encode(x), sae.encode(x)) and same(theirs(x), sae(x))


def test_our_skip_transcoder_loads_in_saelens(tmp_path):
    params = random_params(5) | {"affine_skip_connection": (np.eye(D_IN) / 3).astype(np.float32)}
    sae = build_sae("jumprelu", params)
    write_saelens(sae, META | {"site": "mlp_in", "transcoder": True}, {}, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    assert theirs.cfg.architecture() == "jumprelu_skip_transcoder"
    x = activations()
    with torch.no_grad():
        assert same(theirs.encode(x), sae.encode(x)) and same(theirs(x), sae(x))


def _fill(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.rand(p.shape, generator=g) * 0.4 + 0.1
                if name == "threshold"
                else torch.randn(p.shape, generator=g) / 4
            )


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "standard", "jumprelu-rescaled"])
def test_saes_saved_by_saelens_load_with_the_same_outputs(tmp_path, arch):
    arch, rescaled = arch.removesuffix("-rescaled"), arch.endswith("-rescaled")
    configs = {
        "jumprelu": sae_lens.JumpReLUSAEConfig,
        "topk": sae_lens.TopKSAEConfig,
        "standard": sae_lens.StandardSAEConfig,
    }
    extra = {"k": 6} if arch == "topk" else {}
    extra |= {"normalize_activations": "constant_norm_rescale"} if rescaled else {}
    cfg = configs[arch](d_in=D_IN, d_sae=D_SAE, **extra)
    cfg.metadata.model_name, cfg.metadata.hook_name = "gpt2", "blocks.4.hook_mlp_out"
    theirs = sae_lens.SAE.from_dict(cfg.to_dict())
    _fill(theirs, 3)
    theirs.save_model(tmp_path)
    loaded = interop.read(tmp_path)
    ours, x = loaded.sae, activations() * torch.linspace(0.1, 10, 200)[:, None]
    assert ours.knobs().get("token_norm", False) == rescaled
    assert loaded.format == "saelens" and (loaded.meta["site"], loaded.meta["layer"]) == ("mlp", 4)
    assert ours.pre_encoder_bias == cfg.apply_b_dec_to_input
    with torch.no_grad():
        assert torch.equal(ours.encode(x) > 0, theirs.encode(x) > 0)
        assert same(ours.encode(x), theirs.encode(x)) and same(ours(x), theirs(x))
    # Exported back, SAELens reads the same arrays it wrote.
    write_saelens(ours, loaded.meta, {}, tmp_path / "back")
    again = sae_lens.SAE.load_from_disk(tmp_path / "back")
    assert again.cfg.architecture() == arch and again.cfg.normalize_activations == cfg.normalize_activations
    for name, p in theirs.state_dict().items():
        assert torch.equal(p, again.state_dict()[name]), name


def test_gemma_scope_npz_matches_saelens_jumprelu(tmp_path):
    """SAELens loads Gemma Scope params.npz by copying the five arrays; so do we."""
    params = random_params(9)
    np.savez(tmp_path / "params.npz", **params)
    ours = saescope.load(tmp_path)
    cfg = sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)
    theirs = sae_lens.SAE.from_dict(cfg.to_dict())
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    x = activations()
    with torch.no_grad():
        assert same(ours.encode(x), theirs.encode(x)) and same(ours(x), theirs(x))
