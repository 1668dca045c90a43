"""Names of our sites in the other tools' vocabularies: TransformerLens hook names (what SAELens
writes in `hook_name`), Hugging Face module paths (Gemma Scope's `hf_hook_point_in`, sparsify's
hookpoints) and Gemma Scope 2 folder names.

Why a table and not string surgery: the same activation has a different name in every tool, and
an SAE loaded on the wrong one is silently useless. One table keeps import and export symmetric.

| site     | TransformerLens                  | HF module (Gemma 2/3)                          | Gemma Scope 2 |
|----------|----------------------------------|------------------------------------------------|---------------|
| `res`    | `blocks.L.hook_resid_post`       | `model.layers.L` output                        | `resid_post`  |
| `mlp`    | `blocks.L.hook_mlp_out`          | `model.layers.L.post_feedforward_layernorm` output | `mlp_out` |
| `att`    | `blocks.L.attn.hook_z`           | `model.layers.L.self_attn.o_proj` input        | `attn_out`    |
| `mlp_in` | `blocks.L.ln2.hook_normalized`   | `model.layers.L.mlp` input                     | `transcoder`  |

TransformerLens applies Gemma's post-MLP norm before `hook_mlp_out`, so that hook is our `mlp`.
`ln2.hook_normalized` is taken before the norm's gain, so it equals our `mlp_in` only when the
model is loaded with the gain folded into the MLP weights (TransformerLens' default
`fold_ln=True`). SAELens names Gemma Scope 2 transcoder inputs `blocks.L.hook_mlp_in` (before
the norm); on import both names map to `mlp_in`, and the name a file came with is written back.
"""

from __future__ import annotations

import re

from saescope.errors import SaescopeError
from saescope.models.sites import FAMILIES, SITE_KINDS

TL_HOOKS = {
    "res": "blocks.{layer}.hook_resid_post",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "att": "blocks.{layer}.attn.hook_z",
    "mlp_in": "blocks.{layer}.ln2.hook_normalized",
}
# Other TransformerLens names that carry one of our sites in some release.
_TL_ALIASES = {
    "hook_mlp_in": "mlp_in",
    "ln2.hook_normalized": "mlp_in",
    "hook_resid_post": "res",
    "hook_mlp_out": "mlp",
    "attn.hook_z": "att",
}
GEMMA_SCOPE_2_FOLDERS = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out", "mlp_in": "transcoder"}


def tl_hook(kind: str, layer: int) -> str:
    """TransformerLens hook name of a site, e.g. ('res', 5) -> 'blocks.5.hook_resid_post'."""
    if kind not in TL_HOOKS:
        raise SaescopeError(f"unknown site '{kind}': valid sites are {', '.join(SITE_KINDS)}")
    return TL_HOOKS[kind].format(layer=layer)


def site_of_tl_hook(name: str) -> tuple[str, int] | None:
    """(kind, layer) of a TransformerLens hook name, or None if it is not one of our sites."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name or "")
    if not match or match.group(2) not in _TL_ALIASES:
        return None
    return _TL_ALIASES[match.group(2)], int(match.group(1))


def hf_hook(kind: str, layer: int, model_type: str) -> str:
    """Hugging Face module path plus `.input`/`.output`, as Gemma Scope writes `hf_hook_point_in`."""
    if model_type not in FAMILIES:
        raise SaescopeError(
            f"model family '{model_type}' has no site table: supported are {', '.join(sorted(FAMILIES))}"
        )
    family = FAMILIES[model_type]
    sub, where = getattr(family, kind)
    return ".".join(p for p in (family.layers, str(layer), sub, where) if p)


def site_of_hf_hook(name: str, model_type: str | None = None) -> tuple[str, int] | None:
    """(kind, layer) of a module path such as 'model.layers.5.output' or sparsify's hookpoint
    'layers.5.mlp' (no suffix means the module's output, sparsify's convention). With a model
    type only that family's table is used; without, the first family that has the path wins."""
    match = re.fullmatch(r"(?:model\.|transformer\.)?(?:layers|h)\.(\d+)((?:\.\w+)*?)(?:\.(input|output))?", name or "")
    if not match:
        return None
    layer, sub, where = int(match.group(1)), match.group(2).lstrip("."), match.group(3) or "output"
    if (sub, where) == ("pre_feedforward_layernorm", "output"):
        return "mlp_in", layer
    families = [FAMILIES[model_type]] if model_type in FAMILIES else list(FAMILIES.values())
    for family in families:
        for kind in SITE_KINDS:
            if getattr(family, kind) == (sub, where):
                return kind, layer
    return None


def model_type_of(meta: dict) -> str | None:
    """The model family behind an SAE's metadata, when it can be known without loading the model."""
    if meta.get("model_type") in FAMILIES:
        return meta["model_type"]
    from saescope.models.loading import EMBEDDED_NAMES

    if meta.get("model") in EMBEDDED_NAMES:
        return "gemma3_text"
    name = str(meta.get("model_name") or meta.get("model") or "").lower()
    for key, model_type in (
        ("gemma-3", "gemma3_text"),
        ("gemma-2", "gemma2"),
        ("llama", "llama"),
        ("mistral", "mistral"),
        ("qwen", "qwen2"),
        ("gpt2", "gpt2"),
    ):
        if key in name:
            return model_type
    return None


def site_from_names(meta: dict, *names: str | None) -> dict:
    """`meta` with `site`/`layer` filled from the first of `names` (a TransformerLens hook, a
    Hugging Face module path, or a Gemma Scope 1 or 2 folder path) that identifies them: files
    from other tools often say where an SAE reads only through such a name."""
    if meta.get("site") is not None and meta.get("layer") is not None:
        return meta
    for name in filter(None, names):
        found = site_of_tl_hook(name) or site_of_hf_hook(name) or _site_of_folder(name)
        if found:
            return meta | {"site": found[0], "layer": found[1]}
    return meta


def _site_of_folder(path: str) -> tuple[str, int] | None:
    """(kind, layer) of a Gemma Scope 2 (`resid_post/layer_5_...`) or Gemma Scope 1
    (`res/layer_5/...`, `transcoders/layer_5/...`) folder path."""
    match = re.search(r"(resid_post|mlp_out|attn_out|transcoder)\w*?/layer_(\d+)", path)
    if match:
        kinds = {v: k for k, v in GEMMA_SCOPE_2_FOLDERS.items()}
        return kinds[match.group(1)], int(match.group(2))
    match = re.search(r"[/_-](res|mlp|att|transcoders)\b.*?/layer_(\d+)", "/" + path)
    if match:
        return {"transcoders": "mlp_in"}.get(match.group(1), match.group(1)), int(match.group(2))
    return None
