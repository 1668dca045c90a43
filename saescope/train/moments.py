"""Per-latent corrections of Adam's step, applied by the trainer around every optimiser step.

Adam scales each entry's step by its own second moments. A latent that was silent for long, or one
token that many latents reconstruct together, breaks that scaling for a few latents at a time; the
two functions here repair it latent by latent, along each parameter's latent axis (`SAE.latent_axes`).
"""

from __future__ import annotations

import torch

from saescope.saes.base import SAE


@torch.no_grad()
def floor_stale_moments(opt: torch.optim.Adam, sae: SAE) -> None:
    """Lift Adam's second moments of `sae.stale_latents()` to at least the mean of their tensor,
    along each per-latent parameter's latent axis.

    Why: a latent with no gradient for many steps keeps second moments near 0 (or, for a JumpReLU
    threshold and b_enc, the revival term's tiny ones), so its first real gradients once it fires
    again move each of its entries by up to ~30x lr (beta2 0.999). Revived latents then fired with
    huge activations: on att.6 at target 14 (width 4096) training FVU jumped to 5-14 and 90% of
    latents ended dead. Floored, they take ordinary steps: 4% dead, delta loss 0.047 -> 0.024
    (README, "Reviving without the jolt")."""
    stale = sae.stale_latents()
    if stale is None or stale.numel() == 0:
        return
    for name, axis in sae.latent_axes.items():
        state = opt.state.get(getattr(sae, name))
        if state and "exp_avg_sq" in state:
            v = state["exp_avg_sq"]
            v.index_copy_(axis, stale, v.index_select(axis, stale).clamp(min=v.mean()))


@torch.no_grad()
def clip_jolts(opt: torch.optim.Adam, sae: SAE) -> None:
    """Scale all of a latent's gradients (its slices along `SAE.latent_axes`) by one factor, so that
    its decoder row's is at most `sae.jolt_clip` times the norm that row's bias-corrected Adam second
    moments expect (their mean floored at the tensor's, so rare latents are judged as ordinary ones).

    Why: one token that many latents reconstruct together can cost hundreds of times a batch's usual
    error, which Adam turns into steps of 10-30x lr on those latents: the default run's att.5 went from
    training FVU 0.34 to 7,400 in 14 steps, 1,901 of 2,048 latents dead (README, "Clipping jolts").
    The decoder row alone is measured because it is contiguous: a reduction along W_enc's latent
    axis reads memory 7x slower, and measuring it too cost the default run's step 12%."""
    state = opt.state.get(sae.W_dec)
    if not sae.jolt_clip or sae.W_dec.grad is None or not state or "exp_avg_sq" not in state:
        return
    beta2 = next(g["betas"][1] for g in opt.param_groups if any(q is sae.W_dec for q in g["params"]))
    v = state["exp_avg_sq"].mean(dim=1)
    expected = v.clamp(min=v.mean().clamp(min=torch.finfo(v.dtype).tiny)) * sae.W_dec.shape[1]
    norm = torch.linalg.vector_norm(sae.W_dec.grad.float(), dim=1)
    scale = sae.jolt_clip * (expected / (1 - beta2 ** float(state["step"]))).sqrt() / norm
    clipped = (scale < 1).nonzero().squeeze(1)  # only these latents' slices are written
    if not len(clipped):
        return
    for name, axis in sae.latent_axes.items():
        g = getattr(sae, name).grad
        if g is not None:
            shape = [-1 if d == axis else 1 for d in range(g.dim())]
            g.index_copy_(axis, clipped, g.index_select(axis, clipped) * scale[clipped].view(shape).to(g.dtype))
