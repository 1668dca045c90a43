"""Tokens/s of one full JumpReLU training step: ours (float32 and bfloat16 encoder matmul)
against the plain dense PyTorch loop a user writes first, and SAELens if it is installed.

A step is: loss, backward, remove the decoder-parallel gradient, Adam(betas=(0, 0.999)) step,
renormalise the decoder (SAELens runs its own trainer's step body instead: forward, firing
statistics, backward, gradient clipping, Adam step).

Realistic sparsity: the inputs are sums of 32 of 4096 random unit directions (a sparse
dictionary), scaled to E||x||^2 = 1 as the recipe normalises them, and before timing every
latent's threshold is set to the (1 - l0_frac) quantile of its pre-activations on the batch,
so each latent fires on l0_frac of the tokens and the mean L0 is l0_frac * width (1.5% of
16384 = 246 by default, the range of Gemma Scope's released 16k SAEs). All variants start from
the same weights and see the same batch. Rounds interleave the variants so machine noise hits
them alike; ratios measured in one run are the evidence, not absolute times.

    python benchmarks/train_step.py [--steps 5] [--width 16384] [--d-in 640] [--batch 4096]
    python benchmarks/train_step.py --compare-fvu 300   # FVU cost of the bfloat16 matmul

One row per other SAE family (issue 4) steps the same batch with the family's own loss at the
same L0 (k = l0_frac * width for the TopK families; the L1 families at their default
coefficient, whose L0 on this batch is printed), and one row steps a freshly initialised
JumpReLU SAE (threshold 0.001, about half the latents active: the dense path). Every row's
ratio is against the plain dense JumpReLU loop measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from unittest import mock

import torch
from machine import cpu  # benchmarks/machine.py, beside this script
from torch import Tensor, nn

from saescope.memory import keep_freed_memory
from saescope.saes import JumpReLUSAE, jumprelu, jumprelu_paths, make_sae, sparse, sweep_knobs

LR = 7e-5
BETAS = (0.0, 0.999)
L0_COEFFICIENT = 1e-3


# ---- the baseline: the plain dense loop a user writes first, on saescope's reference estimators -------
class PlainJumpReLU(nn.Module):
    def __init__(self, src: JumpReLUSAE) -> None:
        super().__init__()
        for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            setattr(self, k, nn.Parameter(getattr(src, k).detach().clone()))
        self.eps = src.bandwidth

    def loss(self, x: Tensor) -> Tensor:
        x_hat, token_l0, _ = jumprelu.reference_forward(
            x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.threshold, self.eps, True
        )
        mse = (x_hat - x).pow(2).sum(-1).mean()
        return mse + L0_COEFFICIENT * token_l0.mean()


# ---- inputs ----------------------------------------------------------------------------------
def sparse_activations(n: int, d_in: int, n_true: int = 4096, k: int = 32, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, d_in, generator=g)
    D /= D.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_true, generator=g).topk(k, dim=1).indices
    mags = torch.zeros(n, n_true).scatter_(1, idx, torch.rand(n, k, generator=g).exponential_())
    x = mags @ D
    return x / x.pow(2).sum(1).mean().sqrt()


@torch.no_grad()
def calibrate_thresholds(sae: JumpReLUSAE, x: Tensor, l0_frac: float) -> None:
    pre = sae.pre_acts(x)
    k = max(1, min(x.shape[0], round((1 - l0_frac) * x.shape[0])))
    sae.threshold.copy_(pre.kthvalue(k, dim=0).values.clamp_min(1e-3))


# ---- the variants ----------------------------------------------------------------------------
# saescope's JumpReLU defaults other than the target L0 (set from --l0-frac)
DEFAULT_KNOBS = dict(
    l0_penalty=jumprelu.DEFAULT_L0_PENALTY,
    l0_coefficient=jumprelu.DEFAULT_L0_COEFFICIENTS[jumprelu.DEFAULT_L0_PENALTY],
    bandwidth=jumprelu.DEFAULT_BANDWIDTH,
    freq_coefficient=jumprelu.DEFAULT_FREQ_COEFFICIENT,
    freq_target=jumprelu.DEFAULT_FREQ_TARGET,
    unit_decoder=False,
    threshold_lr=jumprelu.DEFAULT_THRESHOLD_LR,
)


def forced(step: Callable[[], float], path: str) -> Callable[[], float]:
    """`step` on the JumpReLU path `path` (`sparse`, `dense`, or `auto`: the one the last step's kept
    share chooses)."""

    def run() -> float:
        with mock.patch.dict(os.environ, {jumprelu_paths.PATH_VARIABLE: path}):
            return step()

    return run


def probing_each_batch(sae: JumpReLUSAE, x: Tensor) -> Callable[[], float]:
    """`ours_step` on the path `auto` chooses, with the probe (`jumprelu_paths.dense_share`) run on every
    batch, as a first step runs it: its row against "path chosen" is what following the share the
    last step kept saves."""
    step = ours_step(sae, x)

    def run() -> float:
        sae.kept_share.fill_(-1.0)
        return step()

    return forced(run, "auto")


def float32_encoder(step: Callable[[], float]) -> Callable[[], float]:
    """`step` with the dense path's encoder product kept in float32 at every bandwidth (as before
    sparse.BF16_PRE_MIN_BANDWIDTH), so its row against "dense path bf16" is that product's saving."""

    def run() -> float:
        with mock.patch.object(sparse, "BF16_PRE_MIN_BANDWIDTH", float("inf")):
            return step()

    return run


def ours_step(sae: JumpReLUSAE, x: Tensor) -> Callable[[], float]:
    opt = torch.optim.Adam(sae.parameters(), lr=LR, betas=BETAS)

    def step() -> float:
        out = sae.loss(x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        sae.remove_parallel_decoder_grad()
        opt.step()
        sae.normalize_decoder()
        return out.l0.item()

    return step


def plain_step(model: PlainJumpReLU, x: Tensor) -> Callable[[], float]:
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS)

    def step() -> float:
        loss = model.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            unit = model.W_dec / model.W_dec.norm(dim=1, keepdim=True)
            model.W_dec.grad -= (model.W_dec.grad * unit).sum(1, keepdim=True) * unit
        opt.step()
        with torch.no_grad():
            model.W_dec /= model.W_dec.norm(dim=1, keepdim=True)
        return float("nan")

    return step


def saelens_step(src: JumpReLUSAE, x: Tensor) -> Callable[[], float] | str:
    """SAELens' JumpReLU training step, or the reason it cannot run."""
    try:
        from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
    except ImportError as e:
        return f"sae_lens not importable ({e}); pip install sae-lens"
    cfg = JumpReLUTrainingSAEConfig(
        d_in=src.d_in,
        d_sae=src.d_sae,
        dtype="float32",
        device=str(x.device),
        jumprelu_bandwidth=src.bandwidth,
        jumprelu_init_threshold=src.threshold_init,
        l0_coefficient=L0_COEFFICIENT,
    )
    sae = JumpReLUTrainingSAE(cfg).to(x.device)
    with torch.no_grad():
        for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            getattr(sae, k).copy_(getattr(src, k))
    opt = torch.optim.Adam(sae.parameters(), lr=LR, betas=BETAS)
    fired_since = torch.zeros(src.d_sae, device=x.device)
    freq = torch.zeros(src.d_sae, device=x.device)

    def step() -> float:
        nonlocal fired_since
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={"l0": L0_COEFFICIENT},
                dead_neuron_mask=None,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        with torch.no_grad():  # the bookkeeping SAETrainer._train_step does every step
            firing = out.feature_acts.bool().float()
            fired_since += 1
            fired_since[firing.sum(-2).bool()] = 0
            freq.add_(firing.sum(0))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return float("nan")

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    x = sparse_activations(args.batch, args.d_in, seed=args.seed).to(device)
    # The recipe's knobs (lambda * L0, bandwidth 0.001, unit rows), which SAELens' step is also given.
    recipe = dict(l0_penalty="l0", l0_coefficient=L0_COEFFICIENT, bandwidth=1e-3, freq_coefficient=0.0)
    base = JumpReLUSAE(args.d_in, args.width, **recipe, unit_decoder=True, threshold_lr=1.0).to(device)
    calibrate_thresholds(base, x, args.l0_frac)

    def clone(**knobs) -> JumpReLUSAE:
        sae = JumpReLUSAE(args.d_in, args.width, **(base.knobs() | knobs)).to(device)
        sae.load_state_dict(sae.state_dict() | base.state_dict())  # keeps its own steered lambda, if any
        return sae

    defaults = DEFAULT_KNOBS | {"target_l0": max(1.0, args.l0_frac * args.width)}
    variants: dict[str, Callable[[], float]] = {
        "saescope float32": ours_step(clone(matmul_dtype="float32"), x),
        "saescope bfloat16": ours_step(clone(matmul_dtype="bfloat16"), x),
        # saescope's default knobs: 30x the bandwidth puts more entries in the estimator's window,
        # which can send the step down either path; each path forced, and the chosen one
        **{
            f"saescope defaults, {label}": forced(ours_step(clone(**defaults, matmul_dtype=dtype), x), path)
            for label, dtype, path in (
                ("dense path float32", "float32", "dense"),
                ("dense path bf16", "auto", "dense"),
                ("sparse path", "auto", "sparse"),
                ("path chosen", "auto", "auto"),
            )
        },
        "saescope defaults, path chosen, probing each batch": probing_each_batch(
            clone(**defaults, matmul_dtype="auto"), x
        ),
        "saescope defaults, dense path bf16, float32 encoder": float32_encoder(
            forced(ours_step(clone(**defaults, matmul_dtype="auto"), x), "dense")
        ),
        "plain dense loop": plain_step(PlainJumpReLU(base).to(device), x),
    }
    if not args.no_families:
        k = max(1, round(args.l0_frac * args.width))
        for arch in ("topk", "batchtopk", "matryoshka", "relu", "gated", "atm"):
            knobs = sweep_knobs(arch, k) if arch in ("topk", "batchtopk", "matryoshka") else {}
            fam = make_sae(arch, args.d_in, args.width, **knobs).to(device)
            with torch.no_grad():
                fam.W_enc.copy_(base.W_enc)
                fam.W_dec.copy_(base.W_dec)
            variants[arch] = ours_step(fam, x)
        # the recipe's init (threshold 0.001: about half the latents fire, the dense path); saescope's
        # default starts at the target L0 instead (Trainer.init_from_data), i.e. the rows above
        variants["jumprelu, recipe init"] = ours_step(
            JumpReLUSAE(args.d_in, args.width, l0_penalty="l0", bandwidth=1e-3, freq_coefficient=0.0).to(device), x
        )
    sl = "skipped (--no-saelens)" if args.no_saelens else saelens_step(base, x)
    if isinstance(sl, str):
        print(f"SAELens row skipped: {sl}")
    else:
        variants["SAELens"] = sl
    print(
        f"{cpu()}; d_in {args.d_in}, width {args.width}, batch {args.batch}, device {device}, "
        f"threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"auto matmul dtype here: {'bfloat16' if base.uses_bf16(device) else 'float32'}"
    )

    times: dict[str, list[float]] = {k: [] for k in variants}
    l0s: dict[str, float] = {}
    for name, step in variants.items():  # warm-up: allocator, thread pool, Adam state
        for _ in range(args.warmup):
            l0s[name] = step()
    for _ in range(args.steps):
        for name, step in variants.items():
            sync(device)
            t0 = time.perf_counter()
            l0s[name] = step()
            sync(device)
            times[name].append(time.perf_counter() - t0)

    print(
        f"mean L0 at start: {args.l0_frac * args.width:.0f} of {args.width} latents ({args.l0_frac:.1%});"
        f" ours measured {l0s['saescope float32']:.0f} after the run"
    )
    # Noise on a shared machine only ever adds time, so the best step is the steadiest
    # estimate; the median is shown too.
    for label, stat in (("median", statistics.median), ("best", min)):
        t = {k: stat(v) for k, v in times.items()}
        print(f"\n{label} of {args.steps} interleaved steps")
        print(
            f"{'variant':56s} {'s/step':>7s} {'tokens/s':>9s} {'vs plain':>9s} {'L0':>7s}"
            + (f" {'vs SAELens':>10s}" if "SAELens" in t else "")
        )
        for name, secs in t.items():
            row = (
                f"{name:56s} {secs:7.3f} {args.batch / secs:9.0f} {t['plain dense loop'] / secs:8.2f}x {l0s[name]:7.0f}"
            )
            if "SAELens" in t:
                row += f" {t['SAELens'] / secs:9.2f}x"
            print(row)


def compare_fvu(args: argparse.Namespace) -> None:
    """Train float32 and bfloat16-matmul SAEs from one init on the same synthetic stream with the
    recipe's optimiser, and report the held-out FVU and L0 each reaches."""
    device = torch.device(args.device)
    d_in, width, n = args.d_in, args.width, args.batch
    g_data = torch.Generator().manual_seed(args.seed)
    stream = [int(s) for s in torch.randint(0, 2**31, (args.compare_fvu,), generator=g_data)]
    held_out = sparse_activations(n, d_in, seed=12345).to(device)
    torch.manual_seed(args.seed)
    base = JumpReLUSAE(
        d_in, width, l0_penalty="l0", l0_coefficient=L0_COEFFICIENT, bandwidth=1e-3, freq_coefficient=0.0
    )
    results = {}
    for dtype in ("float32", "bfloat16"):
        sae = JumpReLUSAE(d_in, width, **(base.knobs() | {"matmul_dtype": dtype})).to(device)
        sae.load_state_dict(base.state_dict())
        opt = torch.optim.Adam(sae.parameters(), lr=args.fvu_lr, betas=BETAS)
        t0 = time.perf_counter()
        for i, s in enumerate(stream):
            out = sae.loss(
                sparse_activations(n, d_in, seed=s).to(device), sparsity_scale=min(1.0, i / (len(stream) / 2))
            )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            sae.remove_parallel_decoder_grad()
            opt.step()
            sae.normalize_decoder()
        with torch.no_grad():
            ev = sae.loss(held_out)
        results[dtype] = (ev.fvu.item(), ev.l0.item(), time.perf_counter() - t0)
        print(
            f"{dtype:9s} matmul: held-out FVU {results[dtype][0]:.5f}  L0 {results[dtype][1]:.1f}  "
            f"({results[dtype][2]:.0f} s)"
        )
    diff = results["bfloat16"][0] - results["float32"][0]
    print(f"FVU(bfloat16) - FVU(float32) = {diff:+.5f} ({diff / results['float32'][0]:+.2%} relative)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-in", type=int, default=640)
    p.add_argument("--width", type=int, default=16384)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--l0-frac", type=float, default=0.015, help="share of latents active per token")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-saelens", action="store_true")
    p.add_argument("--no-families", action="store_true", help="only the JumpReLU rows")
    p.add_argument(
        "--compare-fvu",
        type=int,
        default=0,
        metavar="STEPS",
        help="instead of timing, train float32 and bfloat16 for STEPS steps and compare FVU",
    )
    p.add_argument("--fvu-lr", type=float, default=1e-3, help="learning rate for --compare-fvu (short runs)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as every saescope job does (saescope/memory.py): no page faults per step
    if args.compare_fvu:
        compare_fvu(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
