"""What every SAE family shares: the four linear parameters, the decoder constraint, folding
and the Gemma Scope `params.npz` layout.

A family adds its activation function, its training loss, its knobs (`knob_names`) and any extra
released arrays (JumpReLU's threshold) through the small hooks at the bottom of `SAE`.

Every family takes `matmul_dtype`: "float32", "bfloat16", or "auto" (the default), which is
bfloat16 where the hardware multiplies it natively and float32 elsewhere (`SAE.uses_bf16`).

Transcoders are SAEs of any family with `transcoder="plain"` or `"skip"`: they read one site
(the MLP input) and predict another (the MLP output), so `loss` takes a `target`; the recipe
gives them no pre-encoder bias and no transposed init. `"skip"` adds Gemma Scope 2's affine
skip path `x @ affine_skip_connection` [d_in, d_out], initialised to zero so training starts
from the plain transcoder.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError
from saescope.models.loading import native_bf16_matmul
from saescope.saes.skip_transcoder import SkipTranscoder

# JumpReLU's default `jolt_clip`: a latent's gradients are scaled down before Adam's step once its
# decoder row's exceeds this multiple of the norm its second moments expect (`clip_jolts` in the
# trainer says why; README, "Clipping jolts").
DEFAULT_JOLT_CLIP = 3.0


@dataclass
class LossOutput:
    """One training step's loss and the detached numbers the trainer logs.

    `loss` is the only tensor with a graph; everything else is detached so that logging
    never keeps a step's activations alive.
    """

    loss: Tensor  # scalar to backprop
    mse: Tensor  # squared error summed over d_in, mean over tokens
    l0: Tensor  # mean number of active latents per token
    fvu: Tensor  # mse / summed per-dimension variance of the batch
    fired: Tensor  # bool [d_sae]: latents active on at least one token of this batch
    penalty: Tensor  # the sparsity term as it entered the loss (after sparsity_scale)


TRANSCODER_KINDS = ("none", "plain", "skip")
MATMUL_DTYPES = ("auto", "float32", "bfloat16")
SHARED_KNOBS = ("matmul_dtype", "pre_encoder_bias", "transcoder", "token_norm")  # keyword arguments of `SAE` itself


def token_scale(x: Tensor) -> Tensor:
    """|x| / sqrt(d_in) per row [tokens, 1]: dividing by it puts every token at norm sqrt(d_in) (SAELens'
    `constant_norm_rescale`), so latents fire by the token's direction, not its loudness. A site the
    model reads through an RMSNorm costs the same for the same relative error at any norm; on Gemma 3's
    att.6 it still did not help the JumpReLU (README, "Token norm")."""
    norms = x.float().norm(dim=-1, keepdim=True)
    return (norms / x.shape[-1] ** 0.5).clamp(min=1e-12).to(x.dtype)


def mse_of(y_hat: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Squared error summed over d_in, mean over tokens; with `weight` (mean 1 over the batch),
    each token's counted by its weight (the trainer's token weights, train/normalize.py)."""
    err = (y_hat - y).pow(2).sum(dim=1)
    return err.mean() if weight is None else (err * weight).mean()


def batch_variance(y: Tensor) -> Tensor:
    """Summed per-dimension variance of a batch (detached): FVU's denominator."""
    with torch.no_grad():
        return (y - y.mean(dim=0)).pow(2).sum(dim=1).mean()


def loss_output(loss: Tensor, mse: Tensor, y: Tensor, token_l0: Tensor, fired: Tensor, penalty: Tensor) -> LossOutput:
    """The LossOutput every family returns, with the numbers detached for logging."""
    return LossOutput(
        loss=loss,
        mse=mse.detach(),
        l0=token_l0.detach().float().mean(),
        fvu=mse.detach() / batch_variance(y),
        fired=fired.detach(),
        penalty=penalty.detach(),
    )


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SaescopeError(f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=16384")
    return value


def non_negative_knob(name: str, value: Any) -> float:
    """A number knob where 0 turns the part off; a string from `--knobs` that is not a number is refused."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise SaescopeError(f"{name} is a number >= 0, got {value!r}; pass e.g. {name}=0 to turn it off")
    return float(value)


def flag_knob(name: str, value: Any) -> bool:
    """A true/false knob: `--knobs name=maybe` reaches an SAE as the string 'maybe', which bool()
    would take for true."""
    if not isinstance(value, bool):
        raise SaescopeError(f"{name} is true or false, got {value!r}; pass e.g. {name}=false")
    return value


class SAE(nn.Module, ABC):
    """A sparse autoencoder `x -> act(x @ W_enc + b_enc) @ W_dec + b_dec`.

    Weights are stored in the Gemma Scope orientation (W_enc [d_in, d_sae], W_dec
    [d_sae, d_in]) so that releasing is a copy, not a transpose. While training, the input is
    centred by b_dec before encoding (`pre_encoder_bias`); `folded` removes that and the
    input scale so the released SAE runs on raw activations with the reference forward.
    """

    arch: ClassVar[str]
    extra_params: ClassVar[tuple[str, ...]] = ()  # released arrays of shape [d_sae] beyond the four
    # The knob `saescope train` sweeps (--l0-coefficients) for this family, and its type.
    sweep_knob: ClassVar[str] = "sparsity_coefficient"
    sweep_type: ClassVar[type] = float
    unit_decoder: bool = True  # decoder rows held at unit norm while training (a family may make it a knob)
    # The family's own keyword arguments, each kept as the attribute of that name: with the shared
    # ones they are its `knobs`.
    knob_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def sweep_knob_for(cls, knobs: dict[str, Any]) -> str:
        """The sweep knob given the other knobs (JumpReLU sweeps a target L0 or lambda by its penalty)."""
        return cls.sweep_knob

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        matmul_dtype: str = "auto",
        pre_encoder_bias: bool | None = None,
        transcoder: str = "none",
        token_norm: bool = False,
    ) -> None:
        super().__init__()
        self.d_in = _positive_int("d_in", d_in)
        self.d_sae = _positive_int("d_sae", d_sae)
        if matmul_dtype not in MATMUL_DTYPES:
            raise SaescopeError(f"unknown matmul_dtype {matmul_dtype!r}; use one of {list(MATMUL_DTYPES)}")
        self.matmul_dtype = matmul_dtype
        if transcoder not in TRANSCODER_KINDS:
            raise SaescopeError(f"unknown transcoder {transcoder!r}; use one of {list(TRANSCODER_KINDS)}")
        if transcoder != "none" and pre_encoder_bias:
            raise SaescopeError(
                "a transcoder has no pre-encoder bias (b_dec lives in the target site); drop pre_encoder_bias=True"
            )
        self.transcoder = transcoder
        if token_norm and transcoder != "none":
            raise SaescopeError("a transcoder predicts another site, so it cannot rescale tokens; drop token_norm")
        # Released form only: the input is divided by `token_scale` and the output multiplied by it.
        # The trainer rescales raw rows itself before standardising, so a training-form SAE never has it.
        self.token_norm = flag_knob("token_norm", token_norm)
        self.pre_encoder_bias = transcoder == "none" if pre_encoder_bias is None else bool(pre_encoder_bias)
        # Recipe init: He-uniform decoder scaled to unit rows, encoder its transpose, zero biases.
        # Transcoders map one space to another, so their encoder is drawn on its own (same scale).
        W_dec = nn.init.kaiming_uniform_(torch.empty(d_sae, d_in))
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        if transcoder == "none":
            self.W_enc = nn.Parameter(W_dec.t().contiguous())
        else:
            W_enc = nn.init.kaiming_uniform_(torch.empty(d_sae, d_in))
            self.W_enc = nn.Parameter((W_enc / W_enc.norm(dim=1, keepdim=True)).t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if transcoder == "skip":
            self.affine_skip_connection = nn.Parameter(torch.zeros(d_in, d_in))

    # ---- inference -------------------------------------------------------------------
    def encoder_input(self, x: Tensor) -> Tensor:
        x = x / token_scale(x) if self.token_norm else x
        return x - self.b_dec if self.pre_encoder_bias else x

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.encoder_input(x) @ self.W_enc + self.b_enc

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Dense latent activations [n, d_sae]: the inference path, with no estimator tricks."""

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def uses_bf16(self, device: torch.device) -> bool:
        """Whether this SAE's training matmuls on `device` run in bfloat16 (`matmul_dtype`)."""
        if self.matmul_dtype == "auto":
            return native_bf16_matmul(device.type)
        return self.matmul_dtype == "bfloat16"

    def dense_matmuls(self, device: torch.device) -> contextlib.AbstractContextManager:
        """A dense step's context: bfloat16 autocast where `uses_bf16`, else nothing."""
        return torch.autocast(device.type, dtype=torch.bfloat16) if self.uses_bf16(device) else contextlib.nullcontext()

    def reconstruct(self, x: Tensor, f: Tensor) -> Tensor:
        """The output for input `x` with latents `f = encode(x)`: decode(f), back at x's norm with
        token_norm, plus the skip path of a skip transcoder."""
        out = self.decode(f) * token_scale(x) if self.token_norm else self.decode(f)
        return out + x @ self.affine_skip_connection if self.transcoder == "skip" else out

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x, self.encode(x))

    def loss(
        self, x: Tensor, sparsity_scale: float = 1.0, target: Tensor | None = None, weight: Tensor | None = None
    ) -> LossOutput:
        """The training loss on a batch already divided by the site's normalising constant;
        `sparsity_scale` in [0, 1] is the trainer's warm-up factor on the sparsity term.
        Transcoders predict `target` (the output site, divided by the input's constant). `weight`
        [tokens] weights each token's squared error (`mse_of`)."""
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise SaescopeError(f"SAE input must be [tokens, {self.d_in}], got {tuple(x.shape)}")
        if self.token_norm:
            raise SaescopeError("this SAE is in released form (token_norm); train with --token-norm instead")
        x = x.to(torch.float32)
        if (target is None) != (self.transcoder == "none"):
            raise SaescopeError(
                "a transcoder needs target= (its output site) and an SAE takes none; check the transcoder knob"
            )
        y = x if target is None else target.to(torch.float32)
        if y.shape != x.shape:
            raise SaescopeError(f"transcoder target must be [tokens, {self.d_in}] like its input, got {tuple(y.shape)}")
        if self.transcoder != "skip":
            return self._loss(x, y, sparsity_scale, weight)
        # The SAE part fits what the skip path leaves; the skip matrix learns through that target.
        out = self._loss(x, y - x @ self.affine_skip_connection, sparsity_scale, weight)
        return replace(out, fvu=out.mse / batch_variance(y))

    def _loss(self, x: Tensor, y: Tensor, sparsity_scale: float, weight: Tensor | None = None) -> LossOutput:
        """The family's loss for reconstructing `y` from `x` (y is x for an SAE), each token's
        squared error weighted by `weight` when given."""
        raise SaescopeError(f"{type(self).__name__} cannot be trained; it was loaded for inference only")

    # ---- decoder constraint ----------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient along each decoder row: the step then cannot change a
        row's norm to first order, so normalising afterwards does not undo the update."""
        grad = self.W_dec.grad
        if grad is None or not self.unit_decoder:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        grad -= (grad * unit).sum(dim=1, keepdim=True) * unit

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm rows stop the sparsity term from being gamed by shrinking activations
        and growing the decoder; families whose loss is blind to that trade set unit_decoder False."""
        if self.unit_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    def lr_scales(self) -> dict[str, float]:
        """Parameter name -> factor on the learning rate, for parameters a family trains faster
        or slower than the rest (none by default)."""
        return {}

    # Parameters Adam moves without momentum whatever --adam-beta1 says (none by default).
    momentum_free: ClassVar[tuple[str, ...]] = ()

    # Each per-latent parameter and the axis its latents lie along (`stale_latents`).
    latent_axes: ClassVar[dict[str, int]] = {"W_enc": 1, "b_enc": 0, "W_dec": 0}

    def dead_latents(self) -> Tensor:
        """Latents silent for more than dead_tokens training tokens, in the families that count
        silence (a `tokens_since_fired` buffer and a `dead_tokens` knob: JumpReLU, TopK)."""
        return (self.tokens_since_fired > self.dead_tokens).nonzero().squeeze(1)

    def after_step(self, l0: Tensor) -> None:
        """Called by the trainer after each optimiser step with the mean L0 of the whole batch (over
        every data rank), so that state a family steers by stays equal on all ranks; none by default."""

    # Per-latent gradient clipping against Adam's second moments (`clip_jolts`), 0 = off.
    jolt_clip: float = 0.0

    def stale_latents(self) -> Tensor | None:
        """Indices of latents whose Adam second moments the trainer lifts to their tensor's mean
        after each step (`floor_stale_moments`), or None: none by default."""
        return None

    # ---- knobs, folding and release --------------------------------------------------
    def knobs(self) -> dict[str, Any]:
        """Everything `make_sae(arch, d_in, d_sae, **knobs)` needs to rebuild this SAE."""
        knobs: dict[str, Any] = {"pre_encoder_bias": self.pre_encoder_bias}
        knobs |= {"transcoder": self.transcoder} if self.transcoder != "none" else {}
        knobs |= {"token_norm": True} if self.token_norm else {}
        return knobs | {k: getattr(self, k) for k in self.knob_names} | {"matmul_dtype": self.matmul_dtype}

    def release_form(self) -> tuple[type[SAE], dict[str, Tensor], dict[str, Any]]:
        """(class, arrays, knobs) of the released SAE, before folding: arrays in this SAE's
        units and with its pre-encoder bias. By default the family releases itself; families
        whose inference is a JumpReLU (ReLU, Gated, BatchTopK) return JumpReLU arrays here."""
        arrays = {k: getattr(self, k).detach() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
        return type(self), arrays | self.extra_arrays(), self.knobs()

    @torch.no_grad()
    def folded(
        self, scale: float | Tensor, shift: Tensor | None = None, token_norm: bool = False
    ) -> SAE | SkipTranscoder:
        """The released SAE: it takes raw activations and gives back raw reconstructions, with no
        pre-encoder bias. `token_norm`: it was trained on rows divided by `token_scale` before the
        scale and shift, so the released SAE divides by it too (and multiplies its output back). A
        skip transcoder comes back as a `SkipTranscoder` around the plain one (the skip is unchanged
        by folding).

        A number C (the recipe, `x_raw = C * x`): b_enc' = C*b_enc - C*(b_dec @ W_enc),
        b_dec' = C*b_dec, extra per-latent arrays (the threshold) scaled by C, W_enc and W_dec
        unchanged; latents come out C times larger.
        A vector s with a shift m (per-dimension standardisation, `x_raw = s * x + m`):
        W_enc' = W_enc / s (per input row), b_enc' = b_enc - (m / s + b_dec) @ W_enc,
        W_dec' = W_dec * s (per output column), b_dec' = s * b_dec + m; latents and thresholds
        unchanged, decoder rows no longer unit-norm.
        """
        vector = isinstance(scale, Tensor)
        ok = (
            bool(torch.isfinite(scale).all() and (scale > 0).all())
            if vector
            else (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0)
        )
        if not ok:
            raise SaescopeError(f"folding scale must be positive and finite, got {scale!r}")
        if self.transcoder != "none" and vector:
            raise SaescopeError("transcoders are trained with the recipe's scalar normalisation only")
        cls, arrays, knobs = self.release_form()
        W_enc, b_enc, b_dec, W_dec = arrays["W_enc"], arrays["b_enc"], arrays["b_dec"], arrays["W_dec"]
        if vector:
            s = scale.to(W_enc)
            m = torch.zeros_like(s) if shift is None else shift.to(W_enc)
            pre_shift = m / s + (b_dec if self.pre_encoder_bias else 0.0)
            params = {
                "W_enc": W_enc / s[:, None],
                "W_dec": W_dec * s,
                "b_enc": b_enc - pre_shift @ W_enc,
                "b_dec": s * b_dec + m,
            }
            params |= {k: arrays[k] for k in cls.extra_params}
        else:
            if self.pre_encoder_bias:
                b_enc = b_enc - b_dec @ W_enc
            params = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": scale * b_enc, "b_dec": scale * b_dec}
            params |= {k: scale * arrays[k] for k in cls.extra_params}
        knobs = knobs | {"pre_encoder_bias": False} | ({"token_norm": True} if token_norm else {})
        if self.transcoder == "skip":
            knobs["transcoder"] = "plain"
        out = cls.from_params(params, **knobs).to(self.W_enc.device)
        if self.transcoder == "skip":
            return SkipTranscoder(out, self.affine_skip_connection.detach()).to(self.W_enc.device)
        return out

    def params_npz(self) -> dict[str, np.ndarray]:
        """The Gemma Scope `params.npz` arrays (float32, released orientation)."""
        if self.pre_encoder_bias or self.transcoder == "skip":
            raise SaescopeError("this SAE is in training form; release sae.folded(C) instead")
        tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec}
        tensors |= self.extra_arrays()
        return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in tensors.items()}

    @classmethod
    def from_params(cls, params: dict[str, np.ndarray | Tensor], **knobs: Any) -> SAE:
        """Build an SAE (no pre-encoder bias) from released arrays, checking every shape so a
        mismatched file fails here with its name rather than deep inside a matmul."""
        names = ("W_enc", "W_dec", "b_enc", "b_dec", *cls.extra_params)
        missing = [k for k in names if k not in params]
        if missing:
            raise SaescopeError(f"SAE params are missing {missing}; expected keys {list(names)}")
        tensors = {k: torch.as_tensor(params[k]).detach() for k in names}
        if tensors["W_enc"].ndim != 2:
            raise SaescopeError(f"W_enc must be 2-D [d_in, d_sae], got shape {tuple(tensors['W_enc'].shape)}")
        d_in, d_sae = tensors["W_enc"].shape
        expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        expected |= {k: (d_sae,) for k in cls.extra_params}
        for k, shape in expected.items():
            if tuple(tensors[k].shape) != shape:
                raise SaescopeError(
                    f"{k} has shape {tuple(tensors[k].shape)} but W_enc implies {shape}; "
                    "the params file is inconsistent"
                )
        if knobs.get("transcoder") == "skip":
            raise SaescopeError(
                "released arrays keep a skip transcoder's skip in a SkipTranscoder; "
                "build the SAE with transcoder='plain' and wrap it"
            )
        sae = cls(d_in, d_sae, **(knobs | {"pre_encoder_bias": False}))
        with torch.no_grad():
            for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(sae, k).copy_(tensors[k].to(torch.float32))
            sae.load_extra_arrays({k: tensors[k].to(torch.float32) for k in cls.extra_params})
        return sae

    # ---- family hooks ----------------------------------------------------------------
    def init_from_data(self, x: Tensor) -> None:
        """Data-dependent initialisation, called once on normalised training rows before the first
        step (JumpReLU sets its thresholds here); most families need none."""

    def extra_arrays(self) -> dict[str, Tensor]:
        """Released per-latent arrays beyond the four linear parameters (detached)."""
        return {}

    def load_extra_arrays(self, arrays: dict[str, Tensor]) -> None:
        """Inverse of `extra_arrays`, called under no_grad."""
