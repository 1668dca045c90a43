"""JumpReLUSAE's fast steps against the plain autograd reference written straight from the recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saescope.errors import SaescopeError
from saescope.saes import JumpReLUSAE, make_sae, sparse
from saescope.saes.jumprelu import FREE_INIT_NORM, reference_forward
from saescope.saes.jumprelu_paths import PATH_VARIABLE
from saescope.saes.l0_penalty import STEER_GAIN
from saescope.saes.registry import sae_from_state
from saescope.saes.sparse import JumpReLUStep, dense_pre


@pytest.fixture(autouse=True)
def _one_thread():
    """These shapes are tiny: a second thread only adds synchronisation, and on a shared
    2-core machine a busy core stalls every parallel region (steps went from 6 ms to 190 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the reference: recipe.md's estimators as plain autograd (saescope/saes/jumprelu.py) ---------
def reference_loss(sae: JumpReLUSAE, x: torch.Tensor, sparsity_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss with every penalty written out again, on the reference forward."""
    x_hat, token_l0, counts = reference_forward(
        x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold, sae.bandwidth, sae.pre_encoder_bias
    )
    mse = (x_hat - x).pow(2).sum(1).mean()
    T = sae.target_l0
    if sae.l0_penalty == "l0":
        penalty = sae.l0_coefficient * token_l0.mean()
    elif sae.l0_penalty == "quadratic":
        penalty = sae.l0_coefficient * (2 / T * (token_l0 - T) ** 2).mean()
    elif sae.l0_penalty == "mean-quadratic":
        penalty = sae.l0_coefficient * 2 / T * (token_l0.mean() - T) ** 2
    else:  # steered: lambda = base * (1 + gain * (running L0 ratio - 1)), a constant within the step
        base, ratio = sae.l0_steer.tolist()
        penalty = base * (1 + STEER_GAIN * (ratio - 1)) * token_l0.mean()
    penalty = penalty + sae.freq_coefficient * (counts / len(x) - sae.freq_line()).relu().sum()
    return mse + sparsity_scale * penalty, token_l0.mean()


PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


def _sae(seed: int = 0, d_in: int = 48, d_sae: int = 384, **knobs) -> JumpReLUSAE:
    """An SAE in a trained-looking state: biases set, thresholds spread so that a few percent
    of latents fire and a good number of entries sit inside the estimator's window."""
    torch.manual_seed(seed)
    knobs = {"bandwidth": 0.04, "l0_coefficient": 3e-3, "unit_decoder": True, **knobs}
    sae = JumpReLUSAE(d_in, d_sae, **knobs)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn_like(sae.W_enc) / d_in**0.5)
        sae.b_enc.copy_(0.02 * torch.randn(d_sae))
        sae.b_dec.copy_(0.05 * torch.randn(d_in))
        sae.threshold.copy_(torch.empty(d_sae).uniform_(0.25, 0.5))
    return sae


def _x(n: int = 512, d_in: int = 48, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g) / d_in**0.5 * (1 + torch.rand(n, 1, generator=g))


def _grads(sae: JumpReLUSAE, loss: torch.Tensor, x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    sae.zero_grad()
    if x is not None:
        x.grad = None
    loss.backward()
    out = {k: getattr(sae, k).grad.clone() for k in PARAMS}
    if x is not None:
        out["x"] = x.grad.clone()
    return out


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float) -> None:
    for k in a:
        scale = b[k].abs().max().clamp_min(1e-12)
        err = (a[k] - b[k]).abs().max() / scale
        assert err < rtol, f"{k}: max error {err:.2e} of its scale"


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"l0_penalty": "quadratic", "target_l0": 6.0, "l0_coefficient": 0.01},
        {"l0_penalty": "mean-quadratic", "target_l0": 6.0, "l0_coefficient": 0.01},
        {"l0_penalty": "steered", "target_l0": 6.0, "l0_coefficient": 0.05},
        {"freq_coefficient": 0.5, "freq_target": 0.02},
        {"pre_encoder_bias": False},
        {"bandwidth": 1e-3},
    ],
    ids=["default", "quadratic", "mean-quadratic", "steered", "freq", "no-pre-bias", "recipe-eps"],
)
def test_float32_gradients_equal_dense_reference(knobs):
    sae = _sae(matmul_dtype="float32", **knobs)
    if sae.l0_steer is not None:  # a steered lambda some steps into training
        sae.l0_steer.copy_(torch.tensor([0.004, 1.3]))
    x = _x().requires_grad_()
    out = sae.loss(x, sparsity_scale=0.7)
    ref_loss, ref_l0 = reference_loss(sae, x, sparsity_scale=0.7)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert out.l0 == ref_l0
    assert 0.01 < out.l0 / sae.d_sae < 0.1
    ours, ref = _grads(sae, out.loss, x), _grads(sae, ref_loss, x)
    _assert_close(ours, ref, rtol=1e-5)
    assert ref["threshold"].abs().max() > 0


@pytest.mark.parametrize("path", ["sparse", "dense", "plain"])
def test_each_forced_path_equals_the_reference(monkeypatch, path):
    """SAESCOPE_JUMPRELU_PATH picks the step; `plain` is the reference itself, never a fast step."""
    monkeypatch.setenv(PATH_VARIABLE, path)
    if path == "plain":
        monkeypatch.setattr(JumpReLUStep, "apply", lambda *a: pytest.fail("a fast step ran on the plain path"))
    sae = _sae(matmul_dtype="float32", freq_coefficient=0.5, freq_target=0.02)
    x = _x().requires_grad_()
    out = sae.loss(x, sparsity_scale=0.7)
    ref_loss, ref_l0 = reference_loss(sae, x, sparsity_scale=0.7)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert out.l0 == ref_l0
    _assert_close(_grads(sae, out.loss, x), _grads(sae, ref_loss, x), rtol=1e-5)


def test_sparse_products_skip_entries_only_in_the_window(monkeypatch):
    """Decoding and every gradient product but the threshold's run over the active entries alone
    (an entry only in the window carries a zero value), with the reference's values and gradients."""
    monkeypatch.setenv(PATH_VARIABLE, "sparse")
    summed: list[int] = []
    gather_sum = sparse.gather_sum
    monkeypatch.setattr(sparse, "gather_sum", lambda index, *a: summed.append(len(index)) or gather_sum(index, *a))
    sae = _sae(matmul_dtype="float32", bandwidth=0.2)  # a wide window: many entries in it alone
    x = _x().requires_grad_()
    out = sae.loss(x)
    ref_loss, _ = reference_loss(sae, x)
    _assert_close(_grads(sae, out.loss, x), _grads(sae, ref_loss, x), rtol=1e-5)
    active, kept = round(out.l0.item() * len(x)), round(sae.kept_share.item() * len(x) * sae.d_sae)
    assert kept > 1.5 * active > 0
    assert summed == [active] * 4  # the decode, then the gradients to W_dec, W_enc and x


def test_an_unknown_path_is_one_line(monkeypatch):
    monkeypatch.setenv(PATH_VARIABLE, "fast")
    with pytest.raises(SaescopeError, match="auto, sparse, dense, plain"):
        _sae().loss(_x())


def test_threshold_gradient_formulas():
    """Each estimator on its own: the L0 counts give -(1/eps) * (window count) per latent and the
    reconstruction gives -(theta/eps) * sum of dL/df over the window, nothing to pre from L0."""
    sae = _sae(matmul_dtype="float32")
    x = _x()
    eps = sae.bandwidth
    args = (x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold, eps, True, False, False)  # sparse
    with torch.no_grad():
        pre = sae.pre_acts(x)
        window = (pre - sae.threshold).abs() < eps / 2
    assert window.sum() > 50

    x_hat, token_l0, counts, _ = JumpReLUStep.apply(*args)
    w = torch.randn(x.shape[0])
    (token_l0 * w).sum().backward()
    expected = -(window * w[:, None]).sum(0) / eps
    torch.testing.assert_close(sae.threshold.grad, expected, rtol=1e-5, atol=1e-4)
    assert sae.W_enc.grad.abs().max() == 0 and sae.b_enc.grad.abs().max() == 0

    sae.zero_grad()
    x_hat, token_l0, counts, _ = JumpReLUStep.apply(*args)
    g = torch.randn_like(x_hat)
    (x_hat * g).sum().backward()
    dL_df = g @ sae.W_dec.detach().t()
    expected = -(sae.threshold.detach() / eps) * (window * dL_df).sum(0)
    torch.testing.assert_close(sae.threshold.grad, expected, rtol=1e-4, atol=1e-4)
    dL_dpre = dL_df * (pre > sae.threshold)
    torch.testing.assert_close(sae.b_enc.grad, dL_dpre.sum(0), rtol=1e-4, atol=1e-5)


def test_bfloat16_matmul_decides_exactly_like_float32():
    """bf16 rounding of the pre-activations exceeds eps/2 here, so without the float32
    recompute some window/active decisions would flip; with it the L0 and the L0-term
    threshold gradient match float32 exactly and the other gradients to bf16 precision."""
    sae = _sae(matmul_dtype="bfloat16", bandwidth=1e-3)
    x = _x(n=1024)
    eps = sae.bandwidth
    with torch.no_grad():
        pre32 = sae.pre_acts(x)
        pre16 = (sae.encoder_input(x).bfloat16() @ sae.W_enc.bfloat16()).float() + sae.b_enc
        t = sae.threshold
        flips = ((pre32 > t) != (pre16 > t)).sum() + (
            ((pre32 - t).abs() < eps / 2) != ((pre16 - t).abs() < eps / 2)
        ).sum()
    assert flips > 0, "test data too easy: bf16 rounding flips no decision"

    args = (x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.threshold, eps, True, True, False)  # sparse
    _, token_l0, counts, _ = JumpReLUStep.apply(*args)
    assert torch.equal(token_l0, (pre32 > t).sum(1).float())
    assert torch.equal(counts, (pre32 > t).sum(0).float())
    token_l0.sum().backward()
    expected = -((pre32 - t).abs() < eps / 2).sum(0).float() / eps
    assert torch.equal(sae.threshold.grad, expected)

    out = sae.loss(x)
    ref_loss, ref_l0 = reference_loss(sae, x)
    assert out.l0 == ref_l0
    torch.testing.assert_close(out.loss, ref_loss, rtol=2e-3, atol=0)
    _assert_close(_grads(sae, out.loss), _grads(sae, ref_loss), rtol=3e-2)


def test_bfloat16_gradients_with_wide_window():
    """A 0.04 window takes the dense path with a bfloat16 encoder product (sparse.BF16_PRE_MIN_BANDWIDTH):
    its rounding moves a few entries across the threshold or a window edge, which moves L0 by a fraction
    of a percent; the latents none of whose entries moved get float32's gradients to bfloat16 precision."""
    sae = _sae(matmul_dtype="bfloat16")
    x = _x()
    out = sae.loss(x)
    ref_loss, ref_l0 = reference_loss(sae, x)
    with torch.no_grad():
        theta, half = sae.threshold, sae.bandwidth / 2
        pre32 = sae.pre_acts(x)
        pre16 = dense_pre(sae.encoder_input(x), sae.W_enc, sae.b_enc, True)
        moved = ((pre32 > theta) != (pre16 > theta)) | (
            ((pre32 - theta).abs() < half) != ((pre16 - theta).abs() < half)
        )
    assert moved.any(), "test data too easy: bf16 rounding moves no entry"
    assert (out.l0 - ref_l0).abs() < 2e-3 * ref_l0
    still = ~moved.any(0)
    got, want = _grads(sae, out.loss), _grads(sae, ref_loss)
    for grads in (got, want):
        for name in ("b_enc", "W_dec", "threshold"):
            grads[name] = grads[name][still]
        grads["W_enc"] = grads["W_enc"][:, still]
    _assert_close(got, want, rtol=3e-2)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_bfloat16_paths_decide_in_float32_and_match_the_reference(monkeypatch, path):
    """Either fast path with bfloat16 products: the same L0 and L0-term threshold gradient as
    float32 (decisions come from float32 pre-activations), the rest to bfloat16 precision. The dense
    path decides in float32 below sparse.BF16_PRE_MIN_BANDWIDTH; the sparse path at any bandwidth."""
    monkeypatch.setenv(PATH_VARIABLE, path)
    bandwidth = 0.04 if path == "sparse" else 0.005
    sae = _sae(matmul_dtype="bfloat16", freq_coefficient=0.5, freq_target=0.02, bandwidth=bandwidth)
    x = _x(n=1024).requires_grad_()
    out = sae.loss(x, sparsity_scale=0.7)
    ref_loss, ref_l0 = reference_loss(sae, x, sparsity_scale=0.7)
    assert out.l0 == ref_l0
    torch.testing.assert_close(out.loss, ref_loss, rtol=2e-3, atol=0)
    _assert_close(_grads(sae, out.loss, x), _grads(sae, ref_loss, x), rtol=3e-2)


def test_no_active_latents_gives_zero_sparse_gradients():
    sae = _sae(matmul_dtype="float32")
    with torch.no_grad():
        sae.threshold.fill_(100.0)
    out = sae.loss(_x())
    out.loss.backward()
    assert out.l0 == 0 and not out.fired.any()
    assert sae.W_enc.grad.abs().max() == 0 and sae.W_dec.grad.abs().max() == 0
    torch.testing.assert_close(out.mse, (_x() - sae.b_dec).pow(2).sum(1).mean())


def test_training_path_matches_inference_forward():
    sae = _sae(matmul_dtype="float32")
    x = _x()
    out = sae.loss(x)
    torch.testing.assert_close(out.mse, (sae(x) - x).pow(2).sum(1).mean().detach())
    torch.testing.assert_close(out.l0, (sae.encode(x) > 0).sum(1).float().mean())
    assert torch.equal(out.fired, (sae.encode(x) > 0).any(0))
    variance = (x - x.mean(0)).pow(2).sum(1).mean()
    torch.testing.assert_close(out.fvu, out.mse / variance)


# ---- folding and release --------------------------------------------------------------------
def test_folded_sae_on_raw_activations_matches_trained_sae():
    sae = _sae()
    C = 37.5
    x_raw = C * _x()
    folded = sae.folded(C)
    assert type(folded) is JumpReLUSAE and not folded.pre_encoder_bias and sae.pre_encoder_bias
    with torch.no_grad():
        torch.testing.assert_close(folded.encode(x_raw), C * sae.encode(x_raw / C), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(folded(x_raw), C * sae(x_raw / C), rtol=1e-5, atol=1e-4)
        assert torch.equal(folded.encode(x_raw) > 0, sae.encode(x_raw / C) > 0)


def test_params_npz_round_trip_and_reference_forward():
    sae = _sae(l0_penalty="quadratic", target_l0=20.0)
    C = 3.0
    params = sae.folded(C).params_npz()
    assert {k: v.shape for k, v in params.items()} == {
        "W_enc": (48, 384),
        "W_dec": (384, 48),
        "b_enc": (384,),
        "b_dec": (48,),
        "threshold": (384,),
    }
    assert all(v.dtype == np.float32 for v in params.values())

    x = (C * _x()).numpy()
    pre = x @ params["W_enc"] + params["b_enc"]
    acts = (pre > params["threshold"]) * np.maximum(pre, 0)
    recon = acts @ params["W_dec"] + params["b_dec"]

    loaded = JumpReLUSAE.from_params(params, **sae.knobs())
    assert loaded.knobs() == sae.knobs() | {"pre_encoder_bias": False}
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(x)).numpy(), recon, rtol=1e-5, atol=1e-4)
    for k, v in loaded.params_npz().items():
        np.testing.assert_array_equal(v, params[k])


def test_from_params_rejects_bad_shapes_and_unfolded_release():
    params = _sae().folded(1.0).params_npz()
    with pytest.raises(SaescopeError, match="threshold"):
        JumpReLUSAE.from_params(params | {"threshold": params["threshold"][:-1]})
    with pytest.raises(SaescopeError, match="missing"):
        JumpReLUSAE.from_params({k: v for k, v in params.items() if k != "b_dec"})
    with pytest.raises(SaescopeError, match="folded"):
        _sae().params_npz()


# ---- decoder constraint and init ------------------------------------------------------------
def test_decoder_constraint():
    sae = _sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(sae.d_sae, 1) + 0.5)
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad()
    cos = (sae.W_dec.grad * sae.W_dec).sum(1) / (sae.W_dec.grad.norm(dim=1) * sae.W_dec.norm(dim=1))
    assert cos.abs().max() < 1e-5
    sae.normalize_decoder()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.d_sae))

    free = _sae(unit_decoder=False, init_norm=1.0)
    with torch.no_grad():
        free.W_dec.mul_(2.0)
    grad = torch.randn_like(free.W_dec)
    free.W_dec.grad = grad.clone()
    free.remove_parallel_decoder_grad()
    free.normalize_decoder()
    assert torch.equal(free.W_dec.grad, grad)
    torch.testing.assert_close(free.W_dec.norm(dim=1), torch.full((free.d_sae,), 2.0))


def test_frequency_line_never_below_the_targets_mean_share():
    """The frequency penalty starts at freq_target, or at 1.5x the share a target L0 asks for when
    that is higher, so that it cannot pull L0 below the target (100 of 1024 latents: ~10% each)."""
    assert JumpReLUSAE(16, 2048, target_l0=64).freq_line() == pytest.approx(0.05)
    assert JumpReLUSAE(16, 1024, target_l0=100).freq_line() == pytest.approx(1.5 * 100 / 1024)
    assert JumpReLUSAE(16, 1024, l0_penalty="l0", freq_target=0.02).freq_line() == pytest.approx(0.02)


def test_revival_lowers_thresholds_of_dead_latents_only():
    """A latent silent for more than dead_tokens tokens gets a threshold gradient that lowers it
    and a b_enc gradient that raises its pre-activations; live latents and the encoder's weights
    get nothing from it."""
    sae = _sae(revive_coefficient=0.01, dead_tokens=100, matmul_dtype="float32")
    x = torch.randn(64, sae.d_in)
    with torch.no_grad():
        sae.threshold[:3] = 1e3  # cannot fire, and no pre-activation is inside its window
    sae.tokens_since_fired[:3] = 101
    sae.train()
    revival = sae.revival(x)
    assert revival > 0
    revival.backward()
    assert (sae.threshold.grad[:3] > 0).all() and (sae.b_enc.grad[:3] < 0).all()
    assert not sae.threshold.grad[3:].any() and not sae.b_enc.grad[3:].any()
    assert sae.W_enc.grad is None and sae.W_dec.grad is None  # the encoder columns are left to the MSE
    sae.loss(x)  # a step updates the counters: silent latents age, latents that fired restart at 0
    assert (sae.tokens_since_fired[:3] == 101 + 64).all() and (sae.tokens_since_fired[3:] <= 64).all()
    assert make_sae("jumprelu", 8, 16).revival(torch.randn(4, 8)) == 0


def test_revival_pull_shrinks_below_the_default_target():
    """With revive_power the revival term's coefficient is revive_coefficient from target 64 up and
    (T / 64) ** revive_power of it below (at 1.5 a ~10x weaker pull at target 14); the default (0) and
    the recipe's penalty (no target) keep the coefficient as given."""
    x = torch.randn(64, 48)
    terms = {}
    for target, power in ((14, 1.5), (64, 1.5), (96, 1.5), (14, 0.0)):
        sae = _sae(target_l0=target, revive_power=power, revive_coefficient=0.01, dead_tokens=100)
        with torch.no_grad():
            sae.threshold[:3] = 1e3
        sae.tokens_since_fired[:3] = 101
        sae.train()
        terms[target, power] = sae.revival(x)
    assert terms[14, 1.5] > 0
    torch.testing.assert_close(terms[14, 1.5], terms[64, 1.5] * (14 / 64) ** 1.5)
    torch.testing.assert_close(terms[96, 1.5], terms[64, 1.5])
    torch.testing.assert_close(terms[14, 0.0], terms[64, 1.5])
    assert _sae(l0_penalty="l0", revive_coefficient=0.01, revive_power=1.5).revive_pull() == 0.01
    assert _sae(target_l0=14, revive_coefficient=0.01).revive_pull() == 0.01
    with pytest.raises(SaescopeError, match="revive_power"):
        _sae(revive_power=-1)


def test_revival_without_bias_moves_thresholds_only():
    """revive_bias=false: the same term, but only the dead latents' thresholds get its gradient;
    b_enc and the encoder get none."""
    sae = _sae(revive_coefficient=0.01, dead_tokens=100, revive_bias=False, matmul_dtype="float32")
    x = torch.randn(64, sae.d_in)
    with torch.no_grad():
        sae.threshold[:3] = 1e3
    sae.tokens_since_fired[:3] = 101
    sae.train()
    sae.revival(x).backward()
    assert (sae.threshold.grad[:3] > 0).all() and not sae.threshold.grad[3:].any()
    assert sae.b_enc.grad is None and sae.W_enc.grad is None
    assert make_sae("jumprelu", 8, 16, revive_bias=False).knobs()["revive_bias"] is False


def test_init_follows_recipe():
    """With unit rows (the recipe) the decoder starts at unit norm; free rows (the default) start at
    FREE_INIT_NORM unless init_norm says otherwise, encoder their transpose either way."""
    sae = JumpReLUSAE(64, 256, threshold_init=0.002, unit_decoder=True)
    assert torch.equal(sae.W_enc, sae.W_dec.t())
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(256))
    free = JumpReLUSAE(64, 256)
    assert not free.unit_decoder and torch.equal(free.W_enc, free.W_dec.t())
    torch.testing.assert_close(free.W_dec.norm(dim=1), torch.full((256,), FREE_INIT_NORM))
    assert torch.equal(sae.threshold, torch.full((256,), 0.002))
    assert not sae.b_enc.any() and not sae.b_dec.any()
    assert sae.pre_encoder_bias and JumpReLUSAE(64, 256).threshold[0] == 1e-3


def test_knobs_rebuild_the_same_sae():
    sae = make_sae("jumprelu", 16, 32, l0_penalty="quadratic", target_l0=4.0, matmul_dtype="float32")
    again = make_sae("jumprelu", 16, 32, **sae.knobs())
    assert again.knobs() == sae.knobs()
    again.load_state_dict(sae.state_dict())


def test_bad_knobs_raise_saescope_error():
    with pytest.raises(SaescopeError, match="target_l0"):
        make_sae("jumprelu", 16, 32, l0_penalty="quadratic", target_l0=None)
    with pytest.raises(SaescopeError, match="init_l0"):
        make_sae("jumprelu", 16, 32, init_l0=32)
    with pytest.raises(SaescopeError, match="matmul_dtype"):
        make_sae("jumprelu", 16, 32, matmul_dtype="fp8")
    with pytest.raises(SaescopeError, match="bandwidth"):
        make_sae("jumprelu", 16, 32, bandwidth=0)
    with pytest.raises(SaescopeError, match="valid knobs"):
        make_sae("jumprelu", 16, 32, l1_coefficient=1.0)
    with pytest.raises(SaescopeError, match=r"\[tokens, 48\]"):
        _sae().loss(torch.randn(4, 16))


def test_unknown_arch_lists_valid_names():
    with pytest.raises(SaescopeError, match="jumprelu"):
        make_sae("gatedd", 16, 32)


# ---- a short training run -------------------------------------------------------------------
def _synthetic_batches(d_in: int, n_true: int, k: int, seed: int = 0):
    """Tokens that are sums of k of n_true unit directions with positive magnitudes, scaled to
    E||x||^2 = 1: a sparse dictionary an SAE can find."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, d_in, generator=g)
    D /= D.norm(dim=1, keepdim=True)

    def batch(n: int) -> torch.Tensor:
        idx = torch.rand(n, n_true, generator=g).argsort(1)[:, :k]
        mags = torch.zeros(n, n_true).scatter_(1, idx, 0.5 + torch.rand(n, k, generator=g))
        return mags @ D / (k**0.5)

    return batch


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_short_training_lowers_fvu_and_approaches_target_l0(matmul_dtype):
    torch.manual_seed(0)
    batch = _synthetic_batches(d_in=32, n_true=96, k=4)
    target = 8.0
    sae = JumpReLUSAE(
        32,
        128,
        l0_penalty="quadratic",
        target_l0=target,
        l0_coefficient=0.05,
        bandwidth=0.05,
        matmul_dtype=matmul_dtype,
    )
    opt = torch.optim.Adam(sae.parameters(), lr=2e-3, betas=(0.0, 0.999))
    first = None
    for step in range(300):
        out = sae.loss(batch(512), sparsity_scale=min(1.0, step / 50))
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
        first = first or (out.fvu.item(), out.l0.item())
    with torch.no_grad():
        final = sae.loss(batch(2048))
    assert final.fvu < 0.5 * first[0], (first, final)
    assert abs(final.l0 - target) < 0.25 * abs(first[1] - target), (first, final)


def test_relative_threshold_is_in_encoder_units_and_releases_absolute():
    """relative_threshold: the parameter times each encoder column's norm is the threshold; the
    data init lands on the same effective thresholds as the absolute one, a training step reaches
    the parameter, and the released SAE (absolute threshold, knob off) computes the same latents."""
    x = torch.randn(512, 24)
    torch.manual_seed(0)
    absolute = JumpReLUSAE(24, 96, unit_decoder=False, init_l0=8, matmul_dtype="float32")
    torch.manual_seed(0)
    relative = JumpReLUSAE(24, 96, unit_decoder=False, init_l0=8, matmul_dtype="float32", relative_threshold=True)
    absolute.init_from_data(x)
    relative.init_from_data(x)
    norms = relative.W_enc.norm(dim=0)
    torch.testing.assert_close(relative.effective_threshold(), absolute.threshold)
    torch.testing.assert_close(relative.threshold * norms, absolute.threshold)
    assert not torch.allclose(relative.threshold, absolute.threshold)  # the parameter itself is rescaled
    relative.train()
    relative.loss(x[:128]).loss.backward()
    assert relative.threshold.grad is not None and relative.threshold.grad.abs().sum() > 0
    released = relative.folded(1.0)
    assert not released.relative_threshold
    with torch.no_grad():
        torch.testing.assert_close(released.encode(x), relative.encode(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [-1, "often", True])
def test_a_jolt_clip_that_is_not_a_non_negative_number_is_refused(bad):
    with pytest.raises(SaescopeError, match="jolt_clip is a number >= 0"):
        make_sae("jumprelu", 8, 16, jolt_clip=bad)
    assert make_sae("jumprelu", 8, 16, jolt_clip=0).jolt_clip == 0.0


def test_steered_lambda_starts_at_coefficient_over_target_and_steers_toward_it():
    """Above the target lambda rises, below it falls, at the target nothing moves; the running ratio
    follows the batches' L0; the state is a buffer (checkpointed) that other penalties do not have."""
    sae = JumpReLUSAE(16, 256, l0_penalty="steered", target_l0=8.0, l0_coefficient=0.04)
    assert sae.l0_steer.tolist() == pytest.approx([0.005, 1.0])
    assert "l0_steer" in sae.state_dict() and "l0_steer" not in sae.release_form()[1]
    assert "l0_steer" not in JumpReLUSAE(16, 256, l0_penalty="l0").state_dict()
    sae.after_step(torch.tensor(8.0))
    assert sae.l0_steer.tolist() == pytest.approx([0.005, 1.0])
    sae.after_step(torch.tensor(16.0))
    base, ratio = sae.l0_steer.tolist()
    assert base > 0.005 and ratio == pytest.approx(1.1)
    for _ in range(200):
        sae.after_step(torch.tensor(2.0))
    base, ratio = sae.l0_steer.tolist()
    assert base < 0.005 * 0.2 and ratio == pytest.approx(0.25, abs=1e-3)
    with pytest.raises(SaescopeError, match="l0_coefficient"):
        JumpReLUSAE(16, 256, l0_penalty="steered", target_l0=8.0, l0_coefficient=0)


def test_a_checkpoint_without_the_steered_state_is_a_one_line_error():
    """A checkpoint written under the mean-quadratic default has no l0_steer: resuming it with today's
    defaults names the mismatch and the way out instead of a torch traceback."""
    old = JumpReLUSAE(16, 64, l0_penalty="mean-quadratic", target_l0=8.0).state_dict()
    with pytest.raises(SaescopeError, match="other knobs.*--knobs or delete the checkpoint"):
        sae_from_state("jumprelu", 16, 64, {"target_l0": 8.0}, old)
