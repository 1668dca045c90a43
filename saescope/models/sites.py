"""Where each site lives in each model family, and hooks that read or rewrite it.

A site is a (kind, layer) pair. The four kinds follow the Gemma Scope recipe:

- `res`    residual stream after the whole block (the block's output);
- `mlp`    the MLP branch output exactly as it is added to the residual (after the post-MLP norm
           in Gemma 2/3, the bare MLP output elsewhere);
- `att`    all heads' outputs concatenated, i.e. the input of the attention output projection;
- `mlp_in` the MLP input after the pre-MLP norm (the transcoder input).

Every family is one row of `FAMILIES`: where the blocks are, and for each kind which submodule of
a block carries it and whether it is that module's input or output. Adding a family is adding a row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from saescope.errors import SaescopeError

SITE_KINDS = ("res", "mlp", "att", "mlp_in")


@dataclass(frozen=True)
class Family:
    """Module paths of one model family; each site is (submodule of the block, 'input' | 'output').

    The last two fields are what carries a direction to the logits (the logit lens): a norm's
    per-dimension scale is `norm_offset + weight` (Gemma's RMSNorm stores the gain minus one), and
    `post_att_norm` names the block's norm on the attention branch before the residual add, which
    only Gemma 2/3 have (Llama's `post_attention_layernorm` is its pre-MLP norm, hence a field).
    """

    layers: str
    final_norm: str
    unembed: str
    res: tuple[str, str]
    mlp: tuple[str, str]
    att: tuple[str, str]
    mlp_in: tuple[str, str]
    norm_offset: float = 0.0
    post_att_norm: str = ""

    def norm_scale(self, norm: nn.Module) -> torch.Tensor:
        """A norm's per-dimension scale in float32, without its data-dependent division (which only
        rescales the whole vector, so the lens drops it)."""
        return self.norm_offset + norm.weight.detach().float()


_GEMMA = Family(
    "model.layers",
    "model.norm",
    "lm_head",
    ("", "output"),
    ("post_feedforward_layernorm", "output"),
    ("self_attn.o_proj", "input"),
    ("mlp", "input"),
    norm_offset=1.0,
    post_att_norm="post_attention_layernorm",
)
_LLAMA = Family(
    "model.layers",
    "model.norm",
    "lm_head",
    ("", "output"),
    ("mlp", "output"),
    ("self_attn.o_proj", "input"),
    ("mlp", "input"),
)
_GPT2 = Family(
    "transformer.h",
    "transformer.ln_f",
    "lm_head",
    ("", "output"),
    ("mlp", "output"),
    ("attn.c_proj", "input"),
    ("mlp", "input"),
)

FAMILIES: dict[str, Family] = {
    "gemma3_text": _GEMMA,
    "gemma3": _GEMMA,
    "gemma2": _GEMMA,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gpt2": _GPT2,
}


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    kind: str

    @property
    def name(self) -> str:
        """Folder- and key-friendly name, e.g. `res.5`."""
        return f"{self.kind}.{self.layer}"

    @staticmethod
    def parse(name: str) -> Site:
        kind, _, layer = name.partition(".")
        if kind not in SITE_KINDS or not layer.isdigit():
            raise SaescopeError(f"bad site name '{name}': expected KIND.LAYER with KIND in {', '.join(SITE_KINDS)}")
        return Site(int(layer), kind)


def family_of(model: nn.Module) -> Family:
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in FAMILIES:
        raise SaescopeError(
            f"model family '{model_type}' has no site table: supported are {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def blocks(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(family_of(model).layers)


def n_layers(model: nn.Module) -> int:
    return len(blocks(model))


def site_width(model: nn.Module, kind: str) -> int:
    """Width of a site: d_model for res/mlp/mlp_in, n_heads*head_dim for att."""
    if kind not in SITE_KINDS:
        raise SaescopeError(f"unknown site '{kind}': valid sites are {', '.join(SITE_KINDS)}")
    cfg = model.config
    d_model = getattr(cfg, "hidden_size", None) or cfg.n_embd
    if kind != "att":
        return d_model
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
    return n_heads * head_dim


def parse_sites(model: nn.Module, sites: str | list[str] = "res,mlp,att", layers: str = "all") -> list[Site]:
    """Turn `res,mlp` and `all` / `0,3,5` / `2-7` into validated Site objects, sorted by layer."""
    family_of(model)
    kinds = [s.strip() for s in sites.split(",")] if isinstance(sites, str) else list(sites)
    for kind in kinds:
        if kind not in SITE_KINDS:
            raise SaescopeError(f"unknown site '{kind}': valid sites are {', '.join(SITE_KINDS)}")
    total = n_layers(model)
    chosen = parse_layers(layers, total)
    return sorted(Site(layer, kind) for layer in chosen for kind in kinds)


def parse_layers(layers: str | int | list[int], total: int) -> list[int]:
    if isinstance(layers, int):
        chosen = [layers]
    elif isinstance(layers, list):
        chosen = layers
    elif layers == "all":
        chosen = list(range(total))
    else:
        chosen = []
        try:
            for part in str(layers).split(","):
                lo, _, hi = part.strip().partition("-")
                chosen += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError as e:
            raise SaescopeError(f"bad layers '{layers}': use all, 3, 0,4,8 or 2-7") from e
    bad = [layer for layer in chosen if not 0 <= layer < total]
    if bad:
        raise SaescopeError(f"unknown layer {bad[0]}: this model has layers 0-{total - 1}")
    if not chosen:  # an empty range such as 3-1 would harvest no site at all
        raise SaescopeError(f"--layers {layers!r} names no layer: write ranges low-high, e.g. 1-3")
    return sorted(set(chosen))


def site_module(model: nn.Module, site: Site) -> tuple[nn.Module, str]:
    family = family_of(model)
    if site.kind not in SITE_KINDS:
        raise SaescopeError(f"unknown site '{site.kind}': valid sites are {', '.join(SITE_KINDS)}")
    total = n_layers(model)
    if not 0 <= site.layer < total:
        raise SaescopeError(f"unknown layer {site.layer}: this model has layers 0-{total - 1}")
    path, where = getattr(family, site.kind)
    block = blocks(model)[site.layer]
    return (block.get_submodule(path) if path else block), where


class StopForward(Exception):
    """Raised from a hook once the last needed site has been seen, so later layers and the LM head never run."""


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _hook(module: nn.Module, where: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register `fn` on a module's input or output; a non-None return value replaces the activation."""
    if where == "output":

        def on_output(_m, _args, out):
            new = fn(_first(out))
            if new is None:
                return None
            return (new, *out[1:]) if isinstance(out, tuple) else new

        return module.register_forward_hook(on_output)

    def on_input(_m, args):
        new = fn(args[0])
        return None if new is None else (new, *args[1:])

    return module.register_forward_pre_hook(on_input)


@contextmanager
def capture(
    model: nn.Module, sites: list[Site], on_activation: Callable[[Site, torch.Tensor], None], stop_after: bool = True
) -> Iterator[None]:
    """Call `on_activation(site, tensor)` for each site during forwards inside the block.

    With `stop_after`, the forward is cut short (StopForward) right after the last layer any site
    needs; `run_to_sites` catches that.
    """
    handles = []
    try:
        for site in sites:
            module, where = site_module(model, site)
            handles.append(_hook(module, where, lambda x, s=site: on_activation(s, x)))
        if stop_after and sites:
            last = blocks(model)[max(s.layer for s in sites)]

            def stop(_m, _a, _o):
                raise StopForward

            handles.append(last.register_forward_hook(stop))
        yield
    finally:
        for h in handles:
            h.remove()


def run_to_sites(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    sites: list[Site],
    on_activation: Callable[[Site, torch.Tensor], None],
) -> None:
    """One forward pass that feeds every site and stops after the last layer needed (no LM head)."""
    inner = model.get_submodule(family_of(model).layers.rsplit(".", 1)[0])
    with capture(model, sites, on_activation), torch.inference_mode():
        try:
            inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass


@contextmanager
def replace(
    model: nn.Module, site: Site, fn: Callable[[torch.Tensor], torch.Tensor], keep: torch.Tensor | None = None
) -> Iterator[None]:
    """Replace a site's activation by `fn(activation)` during forwards inside the block.

    `keep` (bool [batch, seq]) marks positions whose original activation is kept, e.g. BOS, whose
    huge residual norm no SAE is trained on. Used for spliced-in reconstructions and steering.
    """
    module, where = site_module(model, site)

    def swap(x: torch.Tensor) -> torch.Tensor:
        new = fn(x).to(x.dtype)
        if new.shape != x.shape:
            raise SaescopeError(f"replacement for {site.name} has shape {tuple(new.shape)}, expected {tuple(x.shape)}")
        return new if keep is None else torch.where(keep.unsqueeze(-1), x, new)

    handle = _hook(module, where, swap)
    try:
        yield
    finally:
        handle.remove()


def list_sites(model: nn.Module) -> list[tuple[str, int, int]]:
    """(kind, number of layers, width) per site kind, for `saescope sites`."""
    total = n_layers(model)
    return [(kind, total, site_width(model, kind)) for kind in SITE_KINDS]
