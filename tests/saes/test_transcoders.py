"""Transcoders: any family reading one site and predicting another, plain or with Gemma Scope 2's
affine skip connection; init, training signal, folding and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saescope.errors import SaescopeError
from saescope.release import interop
from saescope.saes import make_sae, sweep_knobs
from saescope.saes.skip_transcoder import SkipTranscoder

D = 16


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _task(seed: int = 0):
    """y = x @ A (a dense linear map, what a skip path can carry) + a sparse non-linear part."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g) / D**0.5
    B = torch.randn(D, 48, generator=g) / D**0.5
    C = torch.randn(48, D, generator=g) / 48**0.5

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, D, generator=g) / D**0.5
        return x, x @ A + 0.3 * (x @ B - 0.3).relu() @ C

    return batch


def test_skip_transcoder_init_follows_the_recipe():
    torch.manual_seed(0)
    tc = make_sae("jumprelu", D, 64, transcoder="skip", unit_decoder=True)
    assert not tc.pre_encoder_bias  # recipe: no pre-encoder bias for transcoders
    assert not torch.equal(tc.W_enc, tc.W_dec.t())  # and no transposed init
    torch.testing.assert_close(tc.W_enc.norm(dim=0), torch.ones(64))
    assert tc.affine_skip_connection.shape == (D, D) and not tc.affine_skip_connection.any()
    x = torch.randn(8, D)
    torch.testing.assert_close(tc(x), tc.decode(tc.encode(x)))  # zero skip: starts as the plain transcoder
    assert "affine_skip_connection" not in dict(make_sae("jumprelu", D, 64, transcoder="plain").named_parameters())


def test_transcoder_misuse_is_a_one_line_error():
    with pytest.raises(SaescopeError, match="no pre-encoder bias"):
        make_sae("topk", D, 64, k=4, transcoder="plain", pre_encoder_bias=True)
    with pytest.raises(SaescopeError, match="needs target"):
        make_sae("topk", D, 64, k=4, transcoder="plain").loss(torch.randn(4, D))
    with pytest.raises(SaescopeError, match="unknown transcoder"):
        make_sae("relu", D, 64, transcoder="affine")


@pytest.mark.parametrize("arch", ["jumprelu", "topk", "relu"])
def test_skip_path_learns_the_linear_part_and_beats_plain(arch):
    batch = _task()
    value = 4 if arch == "topk" else 1e-3
    results = {}
    for kind in ("plain", "skip"):
        torch.manual_seed(0)
        tc = make_sae(arch, D, 64, transcoder=kind, **sweep_knobs(arch, value), matmul_dtype="float32")
        opt = torch.optim.Adam(tc.parameters(), lr=3e-3, betas=(0.0, 0.999))
        for _ in range(300):
            x, y = batch(256)
            out = tc.loss(x, 1.0, target=y)
            opt.zero_grad()
            out.loss.backward()
            tc.remove_parallel_decoder_grad()
            opt.step()
            tc.normalize_decoder()
        x, y = batch(2048)
        with torch.no_grad():
            results[kind] = tc.loss(x, 1.0, target=y).fvu.item()
        if kind == "skip":
            assert tc.affine_skip_connection.abs().max() > 0.05
    assert results["skip"] < results["plain"], results


@pytest.mark.parametrize("fmt", ["gemma-scope", "gemma-scope-2"])
def test_skip_transcoder_folds_and_exports_with_its_skip(tmp_path, fmt):
    torch.manual_seed(0)
    tc = make_sae("jumprelu", D, 64, transcoder="skip", unit_decoder=True)
    with torch.no_grad():
        tc.affine_skip_connection.copy_(torch.randn(D, D) / D)
        tc.b_enc.uniform_(-0.05, 0.05)
        tc.b_dec.uniform_(-0.1, 0.1)
    with pytest.raises(SaescopeError, match="folded"):
        tc.params_npz()
    released = tc.folded(3.0)
    assert isinstance(released, SkipTranscoder) and released.sae.transcoder == "plain"
    assert torch.equal(released.affine_skip_connection, tc.affine_skip_connection.detach())
    x = torch.randn(32, D) / D**0.5
    with torch.no_grad():
        torch.testing.assert_close(released(3.0 * x), 3.0 * tc(x), atol=1e-5, rtol=1e-5)
    params = released.params_npz()
    np.testing.assert_array_equal(params["affine_skip_connection"], tc.affine_skip_connection.detach().numpy())
    interop.WRITERS[fmt](released, {"site": "mlp_in", "layer": 2, "transcoder": True}, {}, tmp_path)
    loaded = interop.read(tmp_path).sae
    assert isinstance(loaded, SkipTranscoder) and loaded.sae.knobs().get("transcoder") == "plain"
    with torch.no_grad():
        torch.testing.assert_close(loaded(3.0 * x), 3.0 * tc(x), atol=1e-5, rtol=1e-5)
