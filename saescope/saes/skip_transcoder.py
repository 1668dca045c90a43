"""A skip transcoder: an SAE of any family plus an affine skip path from its input to its output.

Gemma Scope 2 releases skip transcoders as the usual five arrays plus `affine_skip_connection`
[d_in, d_out]; sparsify as `W_skip` [d_out, d_in] (applied as `x @ W_skip.T`). saescope holds
one as this wrapper: `forward(x) = sae.decode(sae.encode(x)) + x @ affine_skip_connection`, the
latents are the wrapped SAE's, and the skip matrix is kept exactly as Gemma Scope 2 stores it so
that exporting writes back the same bytes. Training uses the family's own skip path
(`transcoder="skip"` in `saes/base.py`); `SAE.folded` hands the trained SAE over as this wrapper,
the released form that loading, running and re-exporting work on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from saescope.errors import SaescopeError

if TYPE_CHECKING:  # only a type: `SAE.folded` builds this wrapper, so base.py imports this module
    from saescope.saes.base import SAE


class SkipTranscoder(nn.Module):
    """`sae` plus `affine_skip_connection` [d_in, d_out]; d_out equals the SAE's d_in."""

    def __init__(self, sae: SAE, affine_skip_connection: np.ndarray | Tensor) -> None:
        super().__init__()
        skip = torch.as_tensor(
            np.asarray(affine_skip_connection)
            if not isinstance(affine_skip_connection, Tensor)
            else affine_skip_connection
        )
        if tuple(skip.shape) != (sae.d_in, sae.d_in):
            raise SaescopeError(
                f"affine_skip_connection has shape {tuple(skip.shape)}, expected "
                f"{(sae.d_in, sae.d_in)} for this SAE; the params file is inconsistent"
            )
        if not skip.is_floating_point():
            raise SaescopeError(f"affine_skip_connection has dtype {skip.dtype}, expected floating point")
        self.sae = sae
        self.affine_skip_connection = nn.Parameter(skip.to(torch.float32).clone(), requires_grad=False)

    @property
    def arch(self) -> str:
        return self.sae.arch

    @property
    def d_in(self) -> int:
        return self.sae.d_in

    @property
    def d_sae(self) -> int:
        return self.sae.d_sae

    @property
    def pre_encoder_bias(self) -> bool:
        return self.sae.pre_encoder_bias

    def encode(self, x: Tensor) -> Tensor:
        return self.sae.encode(x)

    def decode(self, f: Tensor) -> Tensor:
        """The SAE part of the output only; the skip path needs the input, see `forward`."""
        return self.sae.decode(f)

    def reconstruct(self, x: Tensor, f: Tensor) -> Tensor:
        return self.sae.reconstruct(x, f) + x @ self.affine_skip_connection

    def forward(self, x: Tensor) -> Tensor:
        return self.reconstruct(x, self.encode(x))

    def knobs(self) -> dict[str, Any]:
        return self.sae.knobs()

    def params_npz(self) -> dict[str, np.ndarray]:
        skip = self.affine_skip_connection.detach().to("cpu", torch.float32).numpy().copy()
        return self.sae.params_npz() | {"affine_skip_connection": skip}
