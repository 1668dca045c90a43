"""The JumpReLU SAE of Gemma Scope and its training step on one screen.

`reference_forward` is the recipe written as plain autograd: the JumpReLU and the step function
with their straight-through estimators. It defines what training computes. Training normally
runs a hand-written step (saescope/saes/sparse.py: sparse after one dense matmul, or dense while
many entries are active, optionally with bfloat16 products) that gives the same values and
gradients up to float rounding, several times faster; tests/saes/test_jumprelu.py holds it to the
reference. saescope/saes/jumprelu_paths.py says which path a step takes: for debugging,
`SAESCOPE_JUMPRELU_PATH=plain` trains with the reference instead (`sparse` or `dense` forces one fast
path; `auto`, the default, goes by the share the last step kept).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError
from saescope.saes import jumprelu_paths
from saescope.saes.base import DEFAULT_JOLT_CLIP, SAE, LossOutput, flag_knob, loss_output, mse_of, non_negative_knob
from saescope.saes.l0_penalty import DEFAULT_L0_COEFFICIENTS, L0_PENALTIES, l0_term, steer_after_step
from saescope.saes.sparse import BLOCK_ELEMENTS, JumpReLUStep

# saescope's defaults, each measured against the recipe's (README, "JumpReLU defaults" and round 26);
# `--preset gemma-scope` restores the recipe (l0, bandwidth and threshold 0.001, unit rows, no data init,
# no revival). Round 26: the steered penalty with free rows from 0.3, thresholds at 3x the learning rate
# and bandwidth 0.05 lowered held-out weighted FVU at L0 16/32/64 by 11/11/13% (res.6), 9/9/11% (mlp.6)
# and 7/15/24% (att.6) against the mean-quadratic defaults; the frequency penalty drove steered SAEs far below
# target at 0.03, and at 0.003 holds it and clears dense latents but costs att.6 15% weighted FVU (round 27).
DEFAULT_L0_PENALTY = "steered"
DEFAULT_TARGET_L0 = 64.0
DEFAULT_BANDWIDTH = 0.05
DEFAULT_FREQ_COEFFICIENT = 0.0
DEFAULT_THRESHOLD_LR = 3.0
# Gemma Scope calls latents firing on > 10% of tokens "high frequency"; the penalty charges from half that
# share, so latents stay clear of it on unseen text (attention sites kept 50-170 such latents with 0.1).
DEFAULT_FREQ_TARGET = 0.05

# The frequency penalty never charges below this multiple of the target's mean firing share
# T / d_sae: a target of 100 of 1024 latents has a mean share of ~10%, and a fixed 5% line then
# fought the L0 target (a real-model test ended at L0 45 for a target of 100).
FREQ_ABOVE_MEAN = 1.5

# A latent silent for this many tokens is dead, and the revival term pulls it back (TopK: AuxK): it kept all
# but 6-9 of 2048 attention latents alive where 54-75 died, at the same delta loss (round 15, README).
DEFAULT_DEAD_TOKENS = 10_000
DEFAULT_REVIVE_COEFFICIENT = 1e-3
# revive_power > 0 weakens the pull below target L0 64 by (T / 64) ** revive_power: at 1.5, L0 16 cost res.6
# and mlp.6 less in two seeds each but att.6 more at L0 16 and 32, so the default keeps one pull (round 24).
DEFAULT_REVIVE_POWER = 0.0

# Free decoder rows (unit_decoder=false, the default) start at this norm, encoder their transpose: 0.1
# (SAELens') lost at low L0 on res.6 (rounds 7, 9), 0.3 closed a third to two thirds of the gap to SAELens'
# JumpReLU on res.6 and mlp.6 (round 25) and, with the steered penalty, passed it (round 26).
FREE_INIT_NORM = 0.3


# ---- the recipe's estimators: plain autograd, the reference every fast path is tested against -----
def _window(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """K((pre - theta) / eps) with the rectangle kernel K(u) = 1[|u| < 1/2]."""
    return ((pre - theta).abs() < eps / 2).to(pre.dtype)


class _Estimated(torch.autograd.Function):
    """A function of (pre, theta) whose gradient to theta is a straight-through estimate."""

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, float], output: Tensor) -> None:
        pre, theta, ctx.eps = inputs
        ctx.save_for_backward(pre, theta)


class _JumpReLU(_Estimated):
    """pre * H(pre - theta); gradient H(pre - theta) to pre, -(theta / eps) K((pre - theta) / eps) to theta."""

    @staticmethod
    def forward(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, theta = ctx.saved_tensors
        d_theta = (-(theta / ctx.eps) * _window(pre, theta, ctx.eps) * g).sum(0)
        return (pre > theta) * g, d_theta, None


class _Step(_Estimated):
    """H(pre - theta), what L0 counts; gradient -(1 / eps) K((pre - theta) / eps) to theta, none to pre."""

    @staticmethod
    def forward(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[None, Tensor, None]:
        pre, theta = ctx.saved_tensors
        return None, (-(1 / ctx.eps) * _window(pre, theta, ctx.eps) * g).sum(0), None


def ste_jumprelu(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """JumpReLU of [tokens, d_sae] pre-activations, threshold learned through the estimator."""
    return _JumpReLU.apply(pre, theta, eps)


def ste_step(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """1 where a latent fires, else 0: summed, the L0 that the sparsity penalty differentiates."""
    return _Step.apply(pre, theta, eps)


def reference_forward(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    b_dec: Tensor,
    theta: Tensor,
    eps: float,
    pre_encoder_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """x_hat, each token's L0 and each latent's firing count, as the fast steps return them."""
    pre = (x - b_dec if pre_encoder_bias else x) @ W_enc + b_enc
    fired = ste_step(pre, theta, eps)
    return ste_jumprelu(pre, theta, eps) @ W_dec + b_dec, fired.sum(1), fired.sum(0)


class JumpReLUSAE(SAE):
    """f = pre * H(pre - theta) with a learned threshold theta per latent (Gemma Scope).

    The threshold is a parameter in its own units, not exp(log_threshold): Adam moves a parameter by about lr
    per step, so at the recipe's lr a log-threshold from 0.001 only doubles in 10k steps ("L0 will not come
    down", as peers' users report). It is projected back to >= 0 before each training forward."""

    arch: ClassVar[str] = "jumprelu"
    extra_params: ClassVar[tuple[str, ...]] = ("threshold",)
    sweep_knob: ClassVar[str] = "target_l0"
    knob_names: ClassVar[tuple[str, ...]] = (
        "l0_coefficient",
        "bandwidth",
        "threshold_init",
        "l0_penalty",
        "target_l0",
        "freq_coefficient",
        "freq_target",
        "init_l0",
        "unit_decoder",
        "init_norm",
        "threshold_lr",
        "relative_threshold",
        "revive_coefficient",
        "revive_power",
        "dead_tokens",
        "revive_bias",
        "floor_moments",
        "jolt_clip",
    )

    @classmethod
    def sweep_knob_for(cls, knobs: dict[str, Any]) -> str:
        """A sweep sets the target L0 of the penalties that have one, and lambda for the recipe's."""
        return "l0_coefficient" if knobs.get("l0_penalty", DEFAULT_L0_PENALTY) == "l0" else "target_l0"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l0_coefficient: float | None = None,
        bandwidth: float = DEFAULT_BANDWIDTH,
        threshold_init: float = 1e-3,
        l0_penalty: str = DEFAULT_L0_PENALTY,
        target_l0: float | None = DEFAULT_TARGET_L0,
        freq_coefficient: float = DEFAULT_FREQ_COEFFICIENT,
        freq_target: float = DEFAULT_FREQ_TARGET,
        init_l0: float | None = None,
        unit_decoder: bool = False,
        init_norm: float | None = None,
        threshold_lr: float = DEFAULT_THRESHOLD_LR,
        revive_coefficient: float = DEFAULT_REVIVE_COEFFICIENT,
        revive_power: float = DEFAULT_REVIVE_POWER,
        dead_tokens: int = DEFAULT_DEAD_TOKENS,
        revive_bias: bool = True,
        floor_moments: bool = True,
        jolt_clip: float = DEFAULT_JOLT_CLIP,
        relative_threshold: bool = False,
        **common: Any,
    ) -> None:
        """`common`: matmul_dtype, pre_encoder_bias and transcoder, as for every family (`SAE`)."""
        super().__init__(d_in, d_sae, **common)
        if l0_penalty not in L0_PENALTIES:
            raise SaescopeError(f"unknown l0_penalty {l0_penalty!r}; use one of {list(L0_PENALTIES)}")
        if l0_penalty != "l0" and not (target_l0 is not None and target_l0 > 0):
            raise SaescopeError(f"l0_penalty={l0_penalty!r} needs target_l0 > 0, e.g. target_l0=64")
        for name, value in (("bandwidth", bandwidth), ("threshold_init", threshold_init)):
            if not value > 0:
                raise SaescopeError(f"{name} must be > 0, got {value!r}")
        if not 0 < freq_target <= 1:
            raise SaescopeError(f"freq_target is a share of tokens in (0, 1], got {freq_target!r}")
        if init_l0 is None:  # start at the target, if the penalty has one
            init_l0 = 0.0 if l0_penalty == "l0" else min(float(target_l0), d_sae / 2)
        if not init_l0 >= 0 or init_l0 >= d_sae:
            raise SaescopeError(
                f"init_l0 is a starting L0 in [0, d_sae={d_sae}), got {init_l0!r}; 0 keeps threshold_init"
            )
        if (l0_coefficient is not None and l0_coefficient < 0) or freq_coefficient < 0:
            raise SaescopeError("l0_coefficient and freq_coefficient must be >= 0")
        if l0_penalty == "steered" and l0_coefficient == 0:
            raise SaescopeError("l0_penalty=steered scales its starting lambda by l0_coefficient; give one > 0")
        self.l0_coefficient = DEFAULT_L0_COEFFICIENTS[l0_penalty] if l0_coefficient is None else float(l0_coefficient)
        self.bandwidth = float(bandwidth)
        self.threshold_init = float(threshold_init)
        self.l0_penalty = l0_penalty
        self.target_l0 = None if target_l0 is None else float(target_l0)
        self.freq_coefficient = float(freq_coefficient)
        self.freq_target = float(freq_target)
        self.init_l0 = float(init_l0)
        self.unit_decoder = flag_knob("unit_decoder", unit_decoder)
        if init_norm is None:
            init_norm = 1.0 if unit_decoder else FREE_INIT_NORM
        if not init_norm > 0 or (unit_decoder and init_norm != 1):
            raise SaescopeError(
                f"init_norm (starting decoder row norm, encoder its transpose) must be > 0 and "
                f"needs unit_decoder=false to last, got {init_norm!r}"
            )
        self.init_norm = float(init_norm)
        with torch.no_grad():  # SAELens starts its rows at 0.1: pre-activations 10x smaller at first
            self.W_dec.mul_(self.init_norm)
            self.W_enc.mul_(self.init_norm)
        if not dead_tokens > 0:
            raise SaescopeError(f"dead_tokens is a silence in tokens, > 0; got {dead_tokens!r}")
        if not threshold_lr > 0:
            raise SaescopeError(f"threshold_lr is a factor on the learning rate, > 0; got {threshold_lr!r}")
        self.threshold_lr = float(threshold_lr)
        self.relative_threshold = flag_knob("relative_threshold", relative_threshold)
        self.revive_coefficient = non_negative_knob("revive_coefficient", revive_coefficient)
        self.revive_power = non_negative_knob("revive_power", revive_power)
        self.dead_tokens = int(dead_tokens)
        self.revive_bias = flag_knob("revive_bias", revive_bias)
        self.floor_moments = flag_knob("floor_moments", floor_moments)
        self.jolt_clip = non_negative_knob("jolt_clip", jolt_clip)
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.int64))
        self.threshold = nn.Parameter(torch.full((d_sae,), self.threshold_init))
        # (base lambda, running L0 / target) of the steered penalty; in checkpoints, never in releases
        steer = torch.tensor([self.l0_coefficient / self.target_l0, 1.0]) if l0_penalty == "steered" else None
        self.register_buffer("l0_steer", steer)
        # the last training step's share of entries kept (-1: none yet); in checkpoints, so resumes take the same paths
        self.register_buffer("kept_share", torch.tensor(-1.0))

    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """With init_l0 > 0, set each latent's threshold to the (1 - init_l0/d_sae) quantile of
        its pre-activations on `x` (training rows, normalised): every latent then fires on about
        init_l0/d_sae of the tokens, the first step is already at L0 ~ init_l0, and none is dead.

        Why: the recipe's constant threshold (0.001 on unit-scale inputs) lets about half of
        all latents fire at first; a short run then spends its budget (and dense steps) bringing
        L0 down from ~1000 instead of learning features, which is what TopK never has to do."""
        if self.init_l0 <= 0:
            return
        xc = self.encoder_input(x.to(self.W_enc))
        n = len(xc)
        firing = min(n - 1, max(1, round(n * self.init_l0 / self.d_sae)))  # tokens above the threshold
        step = max(1, BLOCK_ELEMENTS // max(1, n))
        for start in range(0, self.d_sae, step):
            cols = slice(start, start + step)
            pre = torch.addmm(self.b_enc[cols], xc, self.W_enc[:, cols])
            self.threshold[cols] = pre.kthvalue(n - firing, dim=0).values
        if self.relative_threshold:
            self.threshold.div_(self.W_enc.norm(dim=0))
        # A latent whose quantile is below zero fires on more than half the tokens; the JumpReLU
        # threshold is >= 0, so it starts at a small positive value instead.
        self.threshold.clamp_(min=1e-6)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        return pre * (pre > self.effective_threshold())

    def effective_threshold(self) -> Tensor:
        """The threshold pre-activations are compared with. With relative_threshold the learned
        parameter is in units of the latent's encoder column norm, so a threshold follows an encoder
        that grows from a small start (free rows) without a faster learning rate."""
        if not self.relative_threshold:
            return self.threshold
        # The norm is a scale, not a path for the L0 penalty to reshape the encoder by.
        return self.threshold * self.W_enc.norm(dim=0).detach()

    # Momentum carries a threshold past the target L0 when the penalty turns (Adam beta1 0.9 on
    # every parameter: L0 49 for a target of 64 and 108 dead latents on res.6, README round 7);
    # on the weights alone it trains better SAEs for the same steps (round 14).
    momentum_free: ClassVar[tuple[str, ...]] = ("threshold",)

    def lr_scales(self) -> dict[str, float]:
        """threshold_lr: Adam moves a threshold by about lr per step, too slowly to follow
        pre-activations that grow (free decoder rows from a small init)."""
        return {} if self.threshold_lr == 1 else {"threshold": self.threshold_lr}

    def freq_line(self) -> float:
        """The firing share above which the frequency penalty charges: freq_target, raised to
        FREQ_ABOVE_MEAN times the mean share a target L0 asks for, so that it never fights the target."""
        if self.target_l0 is None or self.l0_penalty == "l0":
            return self.freq_target
        return max(self.freq_target, FREQ_ABOVE_MEAN * self.target_l0 / self.d_sae)

    def _loss(self, x: Tensor, y: Tensor, sparsity_scale: float, weight: Tensor | None = None) -> LossOutput:
        """Squared error (sum over d_in, mean over tokens) + sparsity_scale * penalty, where the
        penalty is the L0 term of `l0_penalty` (saescope/saes/l0_penalty.py: lambda * L0 with a
        fixed or a steered lambda, or a quadratic pull to the target L0), plus freq_coefficient * sum
        over latents of max(0, p - freq_line()) on each latent's batch firing share p (our choice for
        Gemma Scope 2's frequency penalty: an extra L0 coefficient on over-frequent latents only)."""
        with torch.no_grad():
            self.threshold.clamp_(min=0.0)
        x_hat, token_l0, latent_counts = self._train_forward(x, self.effective_threshold())
        n = x.shape[0]
        mse = mse_of(x_hat, y, weight)
        penalty = l0_term(self.l0_penalty, self.l0_coefficient, token_l0, self.target_l0, self.l0_steer)
        if self.freq_coefficient > 0:
            penalty = penalty + self.freq_coefficient * (latent_counts / n - self.freq_line()).relu().sum()
        penalty = sparsity_scale * penalty
        if self.training:
            with torch.no_grad():
                self.tokens_since_fired.add_(n).masked_fill_(latent_counts > 0, 0)
        loss = mse + penalty + self.revival(x)
        return loss_output(loss, mse, y, token_l0, latent_counts > 0, penalty)

    def _train_forward(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x_hat and the L0 counts by the path `step_path` names. With `auto` the step (`JumpReLUStep`)
        is dense while the last step kept more than `dense_above` (for its products' dtype and the CPU) of the
        entries, active or in the window, else sparse; only a first step probes its batch (`dense_share`)."""
        args = (x, self.W_enc, self.b_enc, self.W_dec, self.b_dec, theta, self.bandwidth, self.pre_encoder_bias)
        path, bf16 = jumprelu_paths.step_path(), self.uses_bf16(x.device)
        if path == "plain":
            return reference_forward(*args)
        if path == "auto":
            share = self.kept_share.item()
            if share < 0:
                share = jumprelu_paths.dense_share(x, self.W_enc, self.b_enc, self.b_dec, theta.detach(), *args[-2:])
            path = "dense" if share > jumprelu_paths.dense_above(bf16, x.device) else "sparse"
        x_hat, token_l0, latent_counts, kept = JumpReLUStep.apply(*args, bf16, path == "dense")
        if self.training:
            self.kept_share.copy_(kept / (len(x) * self.d_sae))
        return x_hat, token_l0, latent_counts

    def revival(self, x: Tensor) -> Tensor:
        """revive_pull() * mean over tokens of sum over dead latents of relu(theta - pre): a
        dead latent's threshold falls and its b_enc rises until it fires (Anthropic's pre-activation
        loss, on dead latents only); without it 10-20% of latents ended dead at low targets. Not
        W_enc: pulled by this term alone, a dead column grew ~lr * sqrt(d_in) per Adam step and
        wrecked the reconstruction once it fired (mlp.6, target 14: FVU 3.0, 72% dead).
        revive_bias=false moves only the thresholds, which stop at 0 (README, round 18)."""
        dead = self.dead_latents()
        if self.revive_coefficient == 0 or not self.training or dead.numel() == 0:
            return torch.zeros((), device=x.device)
        with torch.no_grad():
            proj = self.encoder_input(x) @ self.W_enc[:, dead]
        pre = proj + (self.b_enc[dead] if self.revive_bias else self.b_enc[dead].detach())
        theta = self.threshold[dead]
        if self.relative_threshold:  # in the encoder's units, without a gradient to W_enc
            theta = theta * self.W_enc[:, dead].norm(dim=0).detach()
        return self.revive_pull() * (theta - pre).relu().sum(1).mean()

    def revive_pull(self) -> float:
        """revive_coefficient, times (target / 64) ** revive_power below the default target: a revived
        latent spends a larger share of a small target's L0 (README, round 24)."""
        below = min(1.0, self.target_l0 / DEFAULT_TARGET_L0) if self.l0_penalty != "l0" else 1.0
        return self.revive_coefficient * below**self.revive_power

    def after_step(self, l0: Tensor) -> None:
        """The steered penalty moves its lambda by the whole batch's L0 (saescope/saes/l0_penalty.py)."""
        if self.l0_penalty == "steered":
            steer_after_step(self.l0_steer, l0, self.target_l0)

    latent_axes: ClassVar[dict[str, int]] = SAE.latent_axes | {"threshold": 0}

    def stale_latents(self) -> Tensor | None:
        """The dead latents, while the revival term acts and floor_moments is on (`floor_stale_moments`)."""
        return self.dead_latents() if self.revive_coefficient and self.floor_moments else None

    def extra_arrays(self) -> dict[str, Tensor]:
        return {"threshold": self.effective_threshold().detach().clamp(min=0.0)}

    def release_form(self) -> tuple[type[SAE], dict[str, Tensor], dict[str, Any]]:
        """Released arrays hold the absolute threshold, so the released SAE compares with it as is."""
        cls, arrays, knobs = super().release_form()
        return cls, arrays, knobs | {"relative_threshold": False}

    def load_extra_arrays(self, arrays: dict[str, Tensor]) -> None:
        if (arrays["threshold"] < 0).any():
            raise SaescopeError("threshold has negative entries; a JumpReLU threshold must be >= 0")
        self.threshold.copy_(arrays["threshold"])
