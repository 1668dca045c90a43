"""What every format's reader returns and every writer takes: a `LoadedSAE`, built from
Gemma-Scope-named arrays and turned back into them.

Readers translate their tool's names into Gemma Scope's (`W_enc [d_in, d_sae]`, `W_dec [d_sae,
d_in]`, `b_enc`, `b_dec`, the family's extra arrays, `affine_skip_connection`) and call
`build_sae`; writers start from `gemma_scope_arrays`. Keeping one vocabulary in the middle is what
lets any reader pair with any writer without a converter per pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from saescope.errors import SaescopeError
from saescope.saes.base import SAE
from saescope.saes.registry import ARCHITECTURES
from saescope.saes.skip_transcoder import SkipTranscoder

PARAM_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")


@dataclass
class LoadedSAE:
    """A loaded SAE with where it came from and what it was trained on; `meta` uses saescope's
    `config.json` vocabulary (site, layer, model, model_name, dataset, context_len, ...)."""

    sae: SAE | SkipTranscoder
    format: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per fact, for `saescope load`."""
        m = self.meta
        site = f"{m['site']}.{m['layer']}" if m.get("site") is not None and m.get("layer") is not None else "unknown"
        rows = [
            ("source", self.source),
            ("format", self.format),
            ("architecture", self.sae.arch),
            ("d_in", self.sae.d_in),
            ("d_sae", self.sae.d_sae),
            ("site", site),
            ("pre-encoder bias", self.sae.pre_encoder_bias),
            ("skip connection", isinstance(self.sae, SkipTranscoder)),
            ("model", m.get("model_name") or m.get("model") or "unknown"),
        ]
        rows += [(k, v) for k, v in self.sae.knobs().items() if k == "k"]
        rows += [(k, self.metrics[k]) for k in ("l0", "fvu", "delta_loss") if self.metrics.get(k) is not None]
        return "\n".join(f"{k:18s}{v}" for k, v in rows)


def family_class(arch: str) -> type[SAE]:
    """The registry's SAE class for an architecture name."""
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    raise SaescopeError(f"unknown SAE architecture {arch!r}; saescope loads {sorted(ARCHITECTURES)}")


def build_sae(
    arch: str,
    params: dict[str, np.ndarray],
    *,
    pre_encoder_bias: bool = False,
    knobs: dict[str, Any] | None = None,
    where: str = "SAE",
) -> SAE | SkipTranscoder:
    """An SAE from Gemma-Scope-named float arrays, validating names, dtypes and shapes first.

    `affine_skip_connection`, if present, wraps the SAE in a SkipTranscoder."""
    cls = family_class(arch)
    expected = (*PARAM_NAMES, *cls.extra_params)
    if not any(k in params for k in expected):
        raise SaescopeError(f"{where} is not an SAE: it holds arrays {sorted(params)[:8]}, expected {list(expected)}")
    missing = [k for k in expected if k not in params]
    if missing:
        raise SaescopeError(f"{where} is missing arrays {missing} of a {arch} SAE; is it another architecture?")
    for k, v in params.items():
        if not np.issubdtype(np.asarray(v).dtype, np.floating):
            raise SaescopeError(f"{where}: array {k} has dtype {np.asarray(v).dtype}, expected floating point")
    knobs = dict(knobs or {})
    knobs.pop("pre_encoder_bias", None)
    arrays = {k: np.asarray(params[k]) for k in expected}
    checked = cls.from_params(arrays, **knobs)  # raises one-line errors on inconsistent shapes
    if pre_encoder_bias:
        sae = cls(checked.d_in, checked.d_sae, **(knobs | {"pre_encoder_bias": True}))
        sae.load_state_dict(checked.state_dict())
    else:
        sae = checked
    sae = sae.eval()
    if "affine_skip_connection" in params:
        return SkipTranscoder(sae, params["affine_skip_connection"]).eval()
    return sae


def gemma_scope_arrays(sae: SAE | SkipTranscoder) -> dict[str, np.ndarray]:
    """Gemma-Scope-named float32 arrays of any SAE, whether or not it has a pre-encoder bias."""
    inner = sae.sae if isinstance(sae, SkipTranscoder) else sae
    tensors = {k: getattr(inner, k) for k in PARAM_NAMES} | inner.extra_arrays()
    out = {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in tensors.items()}
    if isinstance(sae, SkipTranscoder):
        out["affine_skip_connection"] = sae.affine_skip_connection.detach().cpu().numpy().copy()
    return out


def without_pre_encoder_bias(sae: SAE | SkipTranscoder) -> SAE | SkipTranscoder:
    """The same function with b_dec folded out of the encoder input, for formats that cannot say
    "subtract b_dec first" (exact in function; b_enc rounds at float32)."""
    if not sae.pre_encoder_bias:
        return sae
    if isinstance(sae, SkipTranscoder):
        return SkipTranscoder(sae.sae.folded(1.0), sae.affine_skip_connection.detach())
    return sae.folded(1.0)


def native_meta(sae: SAE | SkipTranscoder, meta: dict) -> dict:
    """saescope's own config.json for `sae`: the metadata plus what rebuilding it needs, carried
    along in every format so that a round trip through another tool loses nothing."""
    return meta | {"architecture": sae.arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "knobs": sae.knobs()}
