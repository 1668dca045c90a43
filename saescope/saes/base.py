"""What every SAE family shares: the four linear parameters, the decoder constraint, folding
and the Gemma Scope `params.npz` layout.

A family adds its activation function, its training loss and any extra released arrays
(JumpReLU's threshold) through the small hooks at the bottom of `SAE`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError


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


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SaescopeError(f"{name} must be a positive integer, got {value!r}; pass e.g. {name}=16384")
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

    def __init__(self, d_in: int, d_sae: int, *, pre_encoder_bias: bool = True) -> None:
        super().__init__()
        self.d_in = _positive_int("d_in", d_in)
        self.d_sae = _positive_int("d_sae", d_sae)
        self.pre_encoder_bias = bool(pre_encoder_bias)
        # Recipe init: He-uniform decoder scaled to unit rows, encoder its transpose, zero biases.
        W_dec = nn.init.kaiming_uniform_(torch.empty(d_sae, d_in))
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # ---- inference -------------------------------------------------------------------
    def encoder_input(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.pre_encoder_bias else x

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.encoder_input(x) @ self.W_enc + self.b_enc

    @abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Dense latent activations [n, d_sae]: the inference path, with no estimator tricks."""

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @abstractmethod
    def loss(self, x: Tensor, sparsity_scale: float = 1.0) -> LossOutput:
        """The training loss on a batch already divided by the site's normalising constant;
        `sparsity_scale` in [0, 1] is the trainer's warm-up factor on the sparsity term."""

    # ---- decoder constraint ----------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient along each decoder row: the step then cannot change a
        row's norm to first order, so normalising afterwards does not undo the update."""
        grad = self.W_dec.grad
        if grad is None:
            return
        unit = self.W_dec / self.W_dec.norm(dim=1, keepdim=True)
        grad -= (grad * unit).sum(dim=1, keepdim=True) * unit

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Unit-norm rows stop the sparsity term from being gamed by shrinking activations
        and growing the decoder."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    # ---- knobs, folding and release --------------------------------------------------
    def knobs(self) -> dict[str, Any]:
        """Everything `make_sae(arch, d_in, d_sae, **knobs)` needs to rebuild this SAE."""
        return {"pre_encoder_bias": self.pre_encoder_bias}

    @torch.no_grad()
    def folded(self, scale: float) -> SAE:
        """A new SAE of the same family that takes raw activations `x_raw = scale * x` and
        returns `scale *` this SAE's latents and reconstruction, with no pre-encoder bias.

        The recipe's formulas: b_enc' = C*b_enc - C*(b_dec @ W_enc), b_dec' = C*b_dec, extra
        per-latent arrays (the threshold) scaled by C, W_enc and W_dec unchanged.
        """
        if not (isinstance(scale, (int, float)) and np.isfinite(scale) and scale > 0):
            raise SaescopeError(f"folding scale must be a positive finite number, got {scale!r}")
        b_enc = self.b_enc - self.b_dec @ self.W_enc if self.pre_encoder_bias else self.b_enc
        params = {
            "W_enc": self.W_enc.detach(),
            "W_dec": self.W_dec.detach(),
            "b_enc": scale * b_enc,
            "b_dec": scale * self.b_dec.detach(),
        }
        params |= {k: scale * v for k, v in self.extra_arrays().items()}
        knobs = self.knobs() | {"pre_encoder_bias": False}
        out = type(self).from_params(params, **knobs)
        return out.to(self.W_enc.device)

    def params_npz(self) -> dict[str, np.ndarray]:
        """The Gemma Scope `params.npz` arrays (float32, released orientation)."""
        if self.pre_encoder_bias:
            raise SaescopeError(
                "this SAE still subtracts b_dec before encoding; release sae.folded(C) instead"
            )
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
                    f"{k} has shape {tuple(tensors[k].shape)} but W_enc implies {shape}; the params file is inconsistent"
                )
        sae = cls(d_in, d_sae, **(knobs | {"pre_encoder_bias": False}))
        with torch.no_grad():
            for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
                getattr(sae, k).copy_(tensors[k].to(torch.float32))
            sae.load_extra_arrays({k: tensors[k].to(torch.float32) for k in cls.extra_params})
        return sae

    # ---- family hooks ----------------------------------------------------------------
    def extra_arrays(self) -> dict[str, Tensor]:
        """Released per-latent arrays beyond the four linear parameters (detached)."""
        return {}

    def load_extra_arrays(self, arrays: dict[str, Tensor]) -> None:
        """Inverse of `extra_arrays`, called under no_grad."""
