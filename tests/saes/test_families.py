"""Every SAE family: its estimator's gradients against a dense reference written from the paper,
dead-latent revival, BatchTopK's inference threshold, save/load round trips."""

from __future__ import annotations

import inspect

import pytest
import torch

from saescope.errors import SaescopeError
from saescope.models import loading
from saescope.release import interop
from saescope.saes import (
    ARCHITECTURES,
    ATMSAE,
    SAE,
    BatchTopKSAE,
    GatedSAE,
    JumpReLUSAE,
    MatryoshkaBatchTopKSAE,
    ReLUSAE,
    TopKSAE,
    jumprelu,
    jumprelu_paths,
    make_sae,
    sae_from_state,
    sparse,
    sweep_knobs,
)
from saescope.saes.base import token_scale


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


D_IN, D_SAE = 24, 96
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _x(n: int = 256, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) / D_IN**0.5 + 0.1


def _perturb(sae, seed: int = 0):
    """Move the SAE away from its symmetric init so every gradient term is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.add_(0.3 * torch.randn(sae.W_enc.shape, generator=g) / D_IN**0.5)
        sae.b_enc.copy_(0.02 * torch.randn(sae.d_sae, generator=g))
        sae.b_dec.copy_(0.05 * torch.randn(sae.d_in, generator=g))
    return sae


def _grads(sae, loss: torch.Tensor, names=PARAMS) -> dict[str, torch.Tensor]:
    sae.zero_grad()
    loss.backward()
    return {k: getattr(sae, k).grad.clone() for k in names}


def _close(a: dict, b: dict, rtol: float = 1e-4) -> None:
    for k in a:
        err = (a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)
        assert err < rtol, f"{k}: max error {err:.2e} of its scale"


def _dense_topk_reference(sae, x: torch.Tensor, batch: bool, prefixes: list[int] | None = None) -> torch.Tensor:
    """The TopK / BatchTopK / Matryoshka loss with dense tensors and plain autograd."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if batch:
        flat = pre.detach().flatten()
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(x.shape[0] * sae.k).indices] = True
        keep = keep.view_as(pre)
    else:
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.detach().topk(sae.k, dim=1).indices, True)
    f = pre.relu() * keep
    if prefixes is None:
        return (f @ sae.W_dec + sae.b_dec - x).pow(2).sum(1).mean()
    losses = [(f[:, :m] @ sae.W_dec[:m] + sae.b_dec - x).pow(2).sum(1).mean() for m in prefixes]
    return torch.stack(losses).mean()


# ---- estimators ------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE, MatryoshkaBatchTopKSAE])
def test_topk_families_sparse_gradients_equal_dense_reference(cls):
    torch.manual_seed(0)
    sae = _perturb(cls(D_IN, D_SAE, k=6, matmul_dtype="float32"))
    x = _x()
    ours = _grads(sae, sae.loss(x).loss)
    prefixes = sae.prefix_sizes() if cls is MatryoshkaBatchTopKSAE else None
    ref = _grads(sae, _dense_topk_reference(sae, x, batch=cls is not TopKSAE, prefixes=prefixes))
    _close(ours, ref)


@pytest.mark.parametrize("shape", [(2048, 640), (48, 32), (50, 32), (32, 7), (8192, 640 + 16)])
def test_tiled_transpose_equals_the_plain_one(shape):
    """Shapes that tile into 16 x 16 blocks, shapes that fall back (not multiples of 16, over 16 MiB) and a
    non-contiguous input."""
    m = torch.randn(shape)
    assert torch.equal(sparse.transposed(m), m.t().contiguous()) and sparse.transposed(m).is_contiguous()
    assert torch.equal(sparse.transposed(m.t()), m)


def test_batchtopk_keeps_n_times_k_entries_and_tokens_differ():
    sae = _perturb(BatchTopKSAE(D_IN, D_SAE, k=5, matmul_dtype="float32"))
    x = _x() * torch.linspace(0.2, 3.0, 256).unsqueeze(1)  # tokens of very different norms
    pre = sae.pre_acts(x).detach()
    rows, cols = sae.select(pre)
    assert rows.numel() == 256 * 5 and bool((rows[1:] >= rows[:-1]).all())
    per_token = torch.bincount(rows, minlength=256)
    assert per_token.min() < 5 < per_token.max()


def test_auxk_gradient_equals_dense_reference():
    torch.manual_seed(0)
    sae = _perturb(TopKSAE(D_IN, D_SAE, k=4, aux_k=8, aux_coefficient=0.5, dead_tokens=10_000, matmul_dtype="float32"))
    dead = torch.arange(0, D_SAE, 3)
    sae.tokens_since_fired[dead] = 10**6
    x = _x()
    # The dense reference sees the dead set this batch starts with, minus latents firing in it.
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, pre.detach().topk(sae.k, dim=1).indices, True)
    f = pre.relu() * keep
    x_hat = f @ sae.W_dec + sae.b_dec
    fired = (f > 0).any(0)
    still_dead = torch.zeros(D_SAE, dtype=torch.bool)
    still_dead[dead] = True
    still_dead &= ~fired
    masked = pre.detach().masked_fill(~still_dead, -torch.inf)
    k_aux = min(8, int(still_dead.sum()))
    assert k_aux >= 2
    aux_keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, masked.topk(k_aux, dim=1).indices, True)
    e_hat = (pre.relu() * aux_keep) @ sae.W_dec
    ref_loss = (x_hat - x).pow(2).sum(1).mean() + 0.5 * (e_hat - (x - x_hat).detach()).pow(2).sum(1).mean()
    ref = _grads(sae, ref_loss)
    ours = _grads(sae, sae.loss(x).loss)
    _close(ours, ref)


def test_jumprelu_dense_and_sparse_paths_give_the_same_gradients(monkeypatch):
    torch.manual_seed(0)
    sae = _perturb(JumpReLUSAE(D_IN, D_SAE, bandwidth=0.05, l0_coefficient=3e-3, matmul_dtype="float32"))
    with torch.no_grad():
        sae.threshold.uniform_(0.0, 0.3)
    x = _x().requires_grad_(True)
    names = (*PARAMS, "threshold")
    monkeypatch.setenv(jumprelu_paths.PATH_VARIABLE, "sparse")
    sparse = _grads(sae, sae.loss(x).loss, names)
    monkeypatch.setenv(jumprelu_paths.PATH_VARIABLE, "dense")
    dense = _grads(sae, sae.loss(x).loss, names)
    _close(sparse, dense)
    assert sparse["threshold"].abs().sum() > 0


def _dense_bf16_against_float32(monkeypatch, bandwidth: float):
    """The dense path's loss outputs and gradients with float32 and bfloat16 products on the same SAE and
    rows, whose thresholds sit exactly on some float32 pre-activations (bfloat16 rounding moves those
    across), and the float32 and bfloat16-product pre-activations themselves."""
    monkeypatch.setenv(jumprelu_paths.PATH_VARIABLE, "dense")
    out, grads, x = {}, {}, _x().requires_grad_(True)
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        sae = _perturb(JumpReLUSAE(D_IN, D_SAE, bandwidth=bandwidth, matmul_dtype=dtype))
        with torch.no_grad():
            pre32 = sae.pre_acts(x)
            sae.threshold.copy_(pre32[torch.arange(D_SAE) % len(x), torch.arange(D_SAE)].clamp(min=0))
        out[dtype] = sae.loss(x)
        grads[dtype] = _grads(sae, out[dtype].loss, (*PARAMS, "threshold"))
    pre16 = sparse.dense_pre(sae.encoder_input(x).detach(), sae.W_enc.detach(), sae.b_enc.detach(), True)
    return out, grads, pre32, pre16, sae.threshold.detach()


def test_jumprelu_dense_path_in_bfloat16_rounds_the_encoder_where_the_window_is_wide(monkeypatch):
    """At saescope's 0.05 window the encoder product is bfloat16 too: L0 is counted on its rounded
    pre-activations, which move a decision only for entries within that rounding of the threshold,
    and every gradient stays within 5% of float32's scale."""
    assert 0.05 >= sparse.BF16_PRE_MIN_BANDWIDTH
    out, grads, pre32, pre16, theta = _dense_bf16_against_float32(monkeypatch, 0.05)
    flipped = (pre32 > theta) != (pre16 > theta)
    assert flipped.any(), "test data too easy: bf16 rounding flips no decision"
    assert ((pre32 - theta).abs()[flipped] < 1e-2).all()
    assert torch.equal(out["bfloat16"].l0, (pre16 > theta).float().sum(1).mean())
    assert torch.equal(out["float32"].l0, (pre32 > theta).float().sum(1).mean())
    # a flipped entry carries its whole value (here as large as the threshold) in or out of the code
    _close(grads["bfloat16"], grads["float32"], rtol=5e-2)


def test_jumprelu_dense_path_in_bfloat16_decides_as_float32_under_the_recipes_window(monkeypatch):
    """Under the recipe's 0.001 window, which bfloat16 rounding would scramble, the pre-activations
    stay float32: identical L0 counts, and only values carry bfloat16 rounding."""
    assert 0.001 < sparse.BF16_PRE_MIN_BANDWIDTH
    out, grads, pre32, pre16, theta = _dense_bf16_against_float32(monkeypatch, 0.001)
    assert ((pre32 > theta) != (pre16 > theta)).any(), "test data too easy: bf16 rounding flips no decision"
    assert torch.equal(out["float32"].l0, out["bfloat16"].l0)
    assert torch.equal(out["float32"].fired, out["bfloat16"].fired)
    _close(grads["bfloat16"], grads["float32"], rtol=3e-2)
    assert any((grads["bfloat16"][k] != grads["float32"][k]).any() for k in grads["float32"])  # really bf16


def test_jumprelu_takes_the_dense_path_right_after_init():
    sae = JumpReLUSAE(D_IN, D_SAE)  # theta = 0.001: about half of the latents fire
    share = jumprelu_paths.dense_share(_x(), sae.W_enc, sae.b_enc, sae.b_dec, sae.threshold, sae.bandwidth, True)
    assert share > max(jumprelu_paths.DENSE_ABOVE.values())


def test_the_dense_probe_reads_a_thirty_second_of_the_batch_and_at_least_16_rows():
    sae = JumpReLUSAE(D_IN, D_SAE, threshold_init=0.5)

    def share(x):
        return jumprelu_paths.dense_share(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.threshold, sae.bandwidth, True)

    for n, read in ((1024, 32), (256, 16)):
        x = _x(n)
        loud = x.clone()
        loud[read:] = 100.0  # every latent of these rows fires: the probe must not see them
        assert share(loud) == share(x)
        loud[read - 1] = 100.0
        assert share(loud) > share(x)


@pytest.mark.parametrize("path", ["sparse", "dense"])
def test_jumprelu_steps_after_the_first_take_the_path_the_share_kept_by_the_step_before_asks_for(path, monkeypatch):
    sae, x = JumpReLUSAE(D_IN, D_SAE, bandwidth=0.05, matmul_dtype="float32"), _x()
    with torch.no_grad():  # each latent active on a tenth of the tokens
        sae.threshold.copy_(sae.pre_acts(x).quantile(0.9, dim=0))
    monkeypatch.setenv(jumprelu_paths.PATH_VARIABLE, path)
    sae.loss(x)
    with torch.no_grad():  # the step's share is exact, on the whole batch, by either path
        kept = (sae.pre_acts(x) > sae.threshold - sae.bandwidth / 2).float().mean().item()
    assert 0 < kept < 1 and sae.kept_share.item() == pytest.approx(kept, rel=1e-6)
    sae.eval()
    sae.loss(2 * x)  # only training steps move it
    assert sae.kept_share.item() == pytest.approx(kept, rel=1e-6)
    sae.train()

    monkeypatch.setenv(jumprelu_paths.PATH_VARIABLE, "auto")
    monkeypatch.setattr(jumprelu_paths, "dense_share", lambda *a: pytest.fail("probed after the first step"))
    seen, step = {}, jumprelu.JumpReLUStep.apply

    def spy(*args):
        seen["dense"] = args[-1]
        return step(*args)

    monkeypatch.setattr(jumprelu.JumpReLUStep, "apply", spy)
    for share, dense in ((0.9, True), (0.001, False)):
        sae.kept_share.fill_(share)
        sae.loss(x)
        assert seen["dense"] is dense


@pytest.mark.parametrize("flags", [{"avx2", "avx512f"}, {"avx2"}], ids=["avx512", "avx2"])
def test_jumprelu_goes_dense_at_a_lower_share_when_its_products_run_in_bfloat16(monkeypatch, flags):
    """bfloat16 products make the dense step cheap first; float32 ones on a CPU with AVX2 at the widest last."""
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset(flags))
    x = _x()
    seen, step = {}, jumprelu.JumpReLUStep.apply

    def spy(*args):
        seen["dense"] = args[-1]
        return step(*args)

    monkeypatch.setattr(jumprelu.JumpReLUStep, "apply", spy)
    cpu = torch.device("cpu")
    bf16, fp32 = jumprelu_paths.dense_above(True, cpu), jumprelu_paths.dense_above(False, cpu)
    assert fp32 == jumprelu_paths.DENSE_ABOVE["float32, AVX2" if "avx512f" not in flags else "float32"]
    assert jumprelu_paths.dense_above(False, torch.device("cuda")) == jumprelu_paths.DENSE_ABOVE["float32"]
    middle = (bf16 + fp32) / 2
    for dtype, dense in (("bfloat16", True), ("float32", False)):
        sae = JumpReLUSAE(D_IN, D_SAE, bandwidth=0.05, matmul_dtype=dtype)
        with torch.no_grad():  # each latent active or in the window on `middle` of the tokens
            pre = sae.pre_acts(x)
            sae.threshold.copy_(pre.quantile(1 - middle, dim=0) + sae.bandwidth / 2)
        share = jumprelu_paths.dense_share(x, sae.W_enc, sae.b_enc, sae.b_dec, sae.threshold, sae.bandwidth, True)
        assert bf16 < share < fp32
        seen.clear()
        sae.loss(x)
        assert seen["dense"] is dense, dtype


def test_relu_l1_is_weighted_by_decoder_row_norms():
    torch.manual_seed(0)
    sae = _perturb(ReLUSAE(D_IN, D_SAE, sparsity_coefficient=2.0, matmul_dtype="float32"))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE).unsqueeze(1))
    x = _x()
    out = sae.loss(x)
    f = sae.encode(x).detach()
    expected = 2.0 * (f * sae.W_dec.norm(dim=1)).sum(1).mean()
    torch.testing.assert_close(out.penalty, expected)
    # Scaling a decoder row up and its encoder column down leaves the loss unchanged: the
    # penalty cannot be gamed by the decoder scale, so no unit-norm constraint is needed.
    before = out.loss.item()
    with torch.no_grad():
        sae.W_dec[3] *= 4.0
        sae.W_enc[:, 3] /= 4.0
        sae.b_enc[3] /= 4.0
    assert sae.loss(x).loss.item() == pytest.approx(before, rel=1e-5)
    W = sae.W_dec.detach().clone()
    sae.normalize_decoder()
    assert torch.equal(sae.W_dec, W)  # unit_decoder=False: rows stay free


def test_gated_gradients_follow_the_paper():
    """The gate learns only from the L1 and auxiliary terms, the magnitude path only from the
    reconstruction, and the auxiliary term does not move the decoder."""
    torch.manual_seed(0)
    sae = _perturb(GatedSAE(D_IN, D_SAE, sparsity_coefficient=0.1, matmul_dtype="float32"))
    x = _x()
    names = (*PARAMS, "r_mag", "b_mag")
    total = _grads(sae, sae.loss(x).loss, names)
    xc = x - sae.b_dec
    pi_gate = xc @ sae.W_enc + sae.b_enc
    pi_mag = (xc @ sae.W_enc) * sae.r_mag.exp() + sae.b_mag
    f = (pi_gate.detach() > 0) * pi_mag.relu()
    mse = (f @ sae.W_dec + sae.b_dec - x).pow(2).sum(1).mean()
    recon = _grads(sae, mse, ("W_dec", "r_mag", "b_mag"))
    torch.testing.assert_close(total["b_mag"], recon["b_mag"])
    torch.testing.assert_close(total["r_mag"], recon["r_mag"])
    torch.testing.assert_close(total["W_dec"], recon["W_dec"])
    gate_only = _grads(
        sae,
        0.1 * pi_gate.relu().sum(1).mean()
        + (pi_gate.relu() @ sae.W_dec.detach() + sae.b_dec.detach() - x).pow(2).sum(1).mean(),
        ("b_enc",),
    )
    torch.testing.assert_close(total["b_enc"], gate_only["b_enc"])


def test_gated_release_is_the_same_function_as_jumprelu():
    torch.manual_seed(0)
    sae = _perturb(GatedSAE(D_IN, D_SAE))
    with torch.no_grad():
        sae.r_mag.uniform_(-0.5, 0.5)
        sae.b_mag.uniform_(-0.05, 0.05)
    released = sae.folded(3.0)
    assert isinstance(released, JumpReLUSAE) and (released.threshold >= 0).all()
    x = _x()
    torch.testing.assert_close(released.encode(3.0 * x), 3.0 * sae.encode(x), atol=1e-5, rtol=1e-5)


def test_atm_masks_only_unimportant_latents_after_its_start():
    torch.manual_seed(0)
    sae = _perturb(ATMSAE(D_IN, D_SAE, sparsity_coefficient=0.1, mask_start=3, ema_decay=0.5))
    x = _x()
    assert not sae.mask_probability().any()
    for _ in range(3):
        sae.loss(x)
    assert int(sae.steps) == 3 and sae.ema_frequency.max() > 0
    with torch.no_grad():
        sae.ema_magnitude[:5] = 0
        sae.ema_frequency[:5] = 0
        sae.ema_contribution[:5] = 0
    p = sae.mask_probability()
    assert (p[:5] > 0).all() and p[:5].min() >= p[5:].max()
    assert (p[sae.importance() > sae.importance().mean()] == 0).all()


# ---- dead latents ----------------------------------------------------------------------------
def _sparse_data(n_true: int = 48, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, D_IN, generator=g)
    D /= D.norm(dim=1, keepdim=True)

    def batch(n: int) -> torch.Tensor:
        idx = torch.rand(n, n_true, generator=g).argsort(1)[:, :k]
        mags = torch.zeros(n, n_true).scatter_(1, idx, 0.5 + torch.rand(n, k, generator=g))
        return mags @ D / k**0.5

    return batch


@pytest.mark.parametrize("cls", [TopKSAE, BatchTopKSAE])
def test_auxk_revives_dead_latents(cls):
    """Half the latents are killed (encoder bias far below the rest, so they almost never win the
    top k) and marked dead, on data with more true directions than live latents; with AuxK most
    fire again within 300 steps, without it (nothing else moves them) they stay dead."""

    def run(aux_coefficient: float) -> int:
        torch.manual_seed(0)
        batch = _sparse_data(n_true=192)
        sae = cls(D_IN, D_SAE, k=3, aux_k=16, aux_coefficient=aux_coefficient, dead_tokens=256, matmul_dtype="float32")
        killed = torch.arange(D_SAE // 2, D_SAE)
        with torch.no_grad():
            sae.b_enc[killed] = -0.8
        sae.tokens_since_fired[killed] = 10**6
        opt = torch.optim.Adam(sae.parameters(), lr=3e-3, betas=(0.0, 0.999))
        fired = torch.zeros(D_SAE, dtype=torch.bool)
        for step in range(300):
            out = sae.loss(batch(256))
            opt.zero_grad()
            out.loss.backward()
            sae.remove_parallel_decoder_grad()
            opt.step()
            sae.normalize_decoder()
            if step >= 250:
                fired |= out.fired
        return int(fired[killed].sum())

    assert run(0.0) <= 4
    assert run(1 / 32) >= D_SAE // 3


# ---- BatchTopK's inference threshold ---------------------------------------------------------
def test_batchtopk_inference_threshold_reproduces_training_l0():
    torch.manual_seed(0)
    batch = _sparse_data(n_true=64, k=4)
    k = 6
    sae = BatchTopKSAE(D_IN, D_SAE, k=k, matmul_dtype="float32", threshold_window=50)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-3, betas=(0.0, 0.999))
    for _ in range(400):
        out = sae.loss(batch(512))
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
    assert out.l0.item() == pytest.approx(k, rel=1e-6)  # training keeps exactly n*k entries
    x = batch(4096)
    inference_l0 = (sae.eval().encode(x) > 0).float().sum(1).mean().item()
    assert inference_l0 == pytest.approx(k, rel=0.10), inference_l0
    released = sae.folded(2.0)
    assert isinstance(released, JumpReLUSAE)
    torch.testing.assert_close(released.threshold, torch.full((D_SAE,), 2.0 * float(sae.threshold)))
    released_l0 = (released.encode(2.0 * x) > 0).float().sum(1).mean().item()
    assert released_l0 == pytest.approx(inference_l0, rel=1e-3)


# ---- registry, knobs, save and load ----------------------------------------------------------
def _sweep_value(arch: str) -> float:
    return 5 if ARCHITECTURES[arch].sweep_type is int else 0.01


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_checkpoint_round_trip_keeps_weights_buffers_and_knobs(arch):
    sae = _perturb(make_sae(arch, D_IN, D_SAE, **sweep_knobs(arch, _sweep_value(arch))))
    sae.loss(_x())  # moves buffers (dead-latent counts, thresholds, EMAs)
    again = sae_from_state(arch, D_IN, D_SAE, sae.knobs(), sae.state_dict())
    assert again.knobs() == sae.knobs()
    for k, v in sae.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_released_sae_saves_and_loads_with_the_same_outputs(tmp_path, arch):
    torch.manual_seed(0)
    sae = _perturb(make_sae(arch, D_IN, D_SAE, **sweep_knobs(arch, _sweep_value(arch))))
    for _ in range(3):
        sae.loss(_x())
    sae.eval()
    released = sae.folded(2.5)
    interop.WRITERS["gemma-scope"](released, {"site": "res", "layer": 1}, {}, tmp_path / arch)
    loaded = interop.read(tmp_path / arch).sae
    assert loaded.arch == ("topk" if arch == "topk" else "jumprelu")
    # Rows the SAE never saw: BatchTopK's tracked threshold is one of the training rows' pre-activations
    # itself, which the folded weights round to either side of it (in float32 products, not bfloat16 ones).
    x = _x(seed=2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(2.5 * x), 2.5 * sae(x), atol=2e-5, rtol=1e-5)
    if arch == "topk":  # SAELens and sparsify take TopK too
        for fmt in ("saelens", "sparsify"):
            interop.WRITERS[fmt](released, {"site": "res", "layer": 1}, {}, tmp_path / fmt)
            with torch.no_grad():
                torch.testing.assert_close(
                    interop.read(tmp_path / fmt).sae(2.5 * x), 2.5 * sae(x), atol=2e-5, rtol=1e-5
                )


def test_sweep_knobs_name_each_familys_sparsity_knob():
    assert sweep_knobs("jumprelu", 32) == {"target_l0": 32}
    assert sweep_knobs("jumprelu", 1e-3, {"l0_penalty": "l0"}) == {"l0_coefficient": 1e-3}
    assert sweep_knobs("relu", 2.0) == {"sparsity_coefficient": 2.0}
    assert sweep_knobs("topk", 32.0) == {"k": 32} and isinstance(sweep_knobs("batchtopk", 8.0)["k"], int)
    with pytest.raises(SaescopeError, match="integer"):
        sweep_knobs("matryoshka", 0.5)


def test_bad_family_knobs_are_one_line_errors():
    with pytest.raises(SaescopeError, match="k must be an integer"):
        make_sae("topk", D_IN, D_SAE, k=D_SAE + 1)
    with pytest.raises(SaescopeError, match="prefixes"):
        make_sae("matryoshka", D_IN, 8, k=2, prefixes=9)
    with pytest.raises(SaescopeError, match="threshold_window"):
        make_sae("batchtopk", D_IN, D_SAE, threshold_window=0)
    with pytest.raises(SaescopeError, match="valid knobs"):
        make_sae("gated", D_IN, D_SAE, k=3)
    with pytest.raises(SaescopeError, match="ATM needs"):
        make_sae("atm", D_IN, D_SAE, ema_decay=1.5)


def _stepped(arch: str) -> SAE:
    """A perturbed SAE of the family after three loss calls (its running state set), for inference."""
    torch.manual_seed(0)
    sae = _perturb(make_sae(arch, D_IN, D_SAE, **sweep_knobs(arch, _sweep_value(arch))))
    for _ in range(3):
        sae.loss(_x())
    return sae.eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_per_dimension_folding_gives_the_trained_sae_on_raw_activations(arch):
    """Standardised training (x = (x_raw - m) / s): the released SAE takes x_raw, fires the same
    latents with the same values, and returns s * reconstruction + m."""
    sae = _stepped(arch)
    g = torch.Generator().manual_seed(5)
    s = torch.rand(D_IN, generator=g) * 50 + 0.1
    m = torch.randn(D_IN, generator=g) * 100
    x = _x()
    x_raw = x * s + m
    released = sae.folded(s, m)
    assert not released.pre_encoder_bias
    with torch.no_grad():
        torch.testing.assert_close(released.encode(x_raw), sae.encode(x), atol=5e-4, rtol=1e-4)
        torch.testing.assert_close(released(x_raw), sae(x) * s + m, atol=5e-3, rtol=1e-4)
    with pytest.raises(SaescopeError, match="positive"):
        sae.folded(torch.zeros(D_IN), m)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_token_norm_folding_fires_by_direction_and_returns_the_tokens_scale(arch):
    """Trained on rows divided by their token_scale, then standardised: the released SAE takes x_raw,
    fires what the trained SAE fires on the rescaled row, and gives the reconstruction back at x_raw's
    norm; a louder token fires the same latents with the same values."""
    sae = _stepped(arch)
    g = torch.Generator().manual_seed(5)
    s, m = torch.rand(D_IN, generator=g) * 5 + 0.1, torch.randn(D_IN, generator=g)
    x_raw = _x() * torch.logspace(-2, 2, len(_x()))[:, None]
    r = token_scale(x_raw)
    released = sae.folded(s, m, token_norm=True)
    assert released.knobs()["token_norm"] and make_sae(released.arch, D_IN, D_SAE, **released.knobs()).token_norm
    with torch.no_grad():
        z = (x_raw / r - m) / s
        torch.testing.assert_close(released.encode(x_raw), sae.encode(z), atol=5e-4, rtol=1e-4)
        torch.testing.assert_close(released(x_raw), (sae(z) * s + m) * r, atol=5e-3, rtol=1e-4)
        torch.testing.assert_close(released.encode(7 * x_raw), released.encode(x_raw), atol=5e-4, rtol=1e-4)
    with pytest.raises(SaescopeError, match="released form"):
        released.loss(_x())
    with pytest.raises(SaescopeError, match="drop token_norm"):
        make_sae(arch, D_IN, D_SAE, transcoder="plain", token_norm=True)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_knobs_are_the_keyword_arguments(arch):
    """`knobs()` rebuilds the SAE: every keyword argument of the family's constructors (its own and
    its parents') is a knob, under its own name, and nothing else is."""
    cls = ARCHITECTURES[arch]
    keywords = {
        p.name
        for c in cls.__mro__
        if "__init__" in vars(c) and issubclass(c, SAE)
        for p in inspect.signature(c.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY
    }
    sae = make_sae(arch, D_IN, D_SAE, **sweep_knobs(arch, _sweep_value(arch)))
    optional = {"transcoder", "token_norm"}  # knobs only when set, so older config.json files read the same
    assert set(sae.knobs()) - optional == keywords - optional
    assert make_sae(arch, D_IN, D_SAE, **sae.knobs()).knobs() == sae.knobs()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_a_token_weight_counts_its_squared_error_as_that_many_copies_of_the_token(arch):
    """The trainer's token weights (--normalize sensitivity) enter every family's squared error as
    a per-token count: linear in the weights, and weights c / mean(c) give the error of the batch with
    each token repeated c times (where a token's code does not depend on the rest of the batch)."""
    torch.manual_seed(0)
    sae = _perturb(make_sae(arch, D_IN, D_SAE)).eval()  # eval: no batch statistics move between calls
    x = _x(64)
    counts = torch.randint(1, 4, (64,)).float()
    a, b = counts / counts.mean(), torch.rand(64)
    weighted = sae.loss(x, weight=a)
    torch.testing.assert_close(weighted.mse + sae.loss(x, weight=b).mse, sae.loss(x, weight=a + b).mse)
    plain = sae.loss(x)
    torch.testing.assert_close(sae.loss(x, weight=torch.ones(64)).loss, plain.loss)
    assert abs(weighted.mse.item() - plain.mse.item()) > 1e-4 * plain.mse.item()  # the weights did something
    if not isinstance(sae, BatchTopKSAE):  # BatchTopK picks its entries across the batch
        repeated = sae.loss(x.repeat_interleave(counts.long(), dim=0))
        torch.testing.assert_close(weighted.mse, repeated.mse, rtol=1e-5, atol=1e-7)
