"""Random SAEs and activations shared by the release tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from saescope.release.loaded import build_sae, gemma_scope_arrays

D_IN, D_SAE = 16, 64


def random_params(seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE, threshold: bool = True) -> dict[str, np.ndarray]:
    """Gemma-Scope-named float32 arrays with thresholds where about a third of latents fire."""
    rng = np.random.default_rng(seed)
    params = {
        "W_enc": (rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": (rng.normal(size=(d_sae, d_in)) / np.sqrt(d_sae)).astype(np.float32),
        "b_enc": rng.normal(scale=0.1, size=d_sae).astype(np.float32),
        "b_dec": rng.normal(scale=0.1, size=d_in).astype(np.float32),
    }
    if threshold:
        params["threshold"] = rng.uniform(0.2, 0.6, size=d_sae).astype(np.float32)
    return params


def jumprelu(seed: int = 0, **kw):
    return build_sae("jumprelu", random_params(seed), **kw)


def topk(seed: int = 0, k: int = 5, pre_encoder_bias: bool = True):
    return build_sae("topk", random_params(seed, threshold=False), pre_encoder_bias=pre_encoder_bias, knobs={"k": k})


def activations(n: int = 200, d_in: int = D_IN, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, d_in)).astype(np.float32))


def arrays(sae) -> dict[str, np.ndarray]:
    return gemma_scope_arrays(sae)


def assert_bit_exact(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), f"{k} differs"


def write_trained(run: Path, key: str, sae, meta: dict, metrics: dict) -> Path:
    """`run/saes/<key>/` as `saescope train` and `evaluate` leave it: folded arrays in
    sae.safetensors, config.json with what rebuilding the SAE needs, metrics.json."""
    folder = run / "saes" / key
    folder.mkdir(parents=True)
    save_file({k: torch.from_numpy(v) for k, v in arrays(sae).items()}, str(folder / "sae.safetensors"))
    config = meta | {"architecture": sae.arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "knobs": sae.knobs()}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder
