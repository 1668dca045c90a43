"""Site hooks on tiny random models of every family and on the real Gemma 3 270M."""

from __future__ import annotations

import pytest
import torch
from tinymodels import FAMILIES, tiny_model

from saescope.errors import SaescopeError
from saescope.models.sites import Site, blocks, capture, family_of, parse_sites, replace, run_to_sites, site_width


def attention_branch(model, layer: int, att: torch.Tensor) -> torch.Tensor:
    """What the attention branch adds to the residual, computed from the `att` site through the
    family table's post-attention norm (so the residual identity checks that entry too)."""
    block = model.get_submodule({"gpt2": "transformer.h"}.get(model.config.model_type, "model.layers"))[layer]
    if model.config.model_type == "gpt2":
        return block.attn.c_proj(att)
    out = block.self_attn.o_proj(att)
    post = family_of(model).post_att_norm
    return block.get_submodule(post)(out) if post else out


def mlp_branch(model, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
    block = model.get_submodule({"gpt2": "transformer.h"}.get(model.config.model_type, "model.layers"))[layer]
    out = block.mlp(mlp_in)
    return block.post_feedforward_layernorm(out) if model.config.model_type.startswith("gemma") else out


def collect(model, ids, sites):
    acts = {}
    run_to_sites(model, ids, torch.ones_like(ids), sites, lambda s, x: acts.__setitem__(s, x.clone()))
    return acts


def check_site_identities(model, ids, exact: bool) -> None:
    n = model.config.num_hidden_layers
    sites = parse_sites(model, "res,mlp,att,mlp_in", "all")
    acts = collect(model, ids, sites)
    with torch.inference_mode():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    tol = dict(atol=0, rtol=0) if exact else dict(atol=1e-4, rtol=1e-4)
    for layer in range(n):
        res, att = acts[Site(layer, "res")], acts[Site(layer, "att")]
        assert res.shape[-1] == site_width(model, "res") and att.shape[-1] == site_width(model, "att")
        if layer < n - 1:  # transformers returns the last layer after the final norm
            torch.testing.assert_close(res, hidden[layer + 1], **tol)
        before = hidden[layer]
        with torch.inference_mode():
            attn_out = attention_branch(model, layer, att)
            mlp_out = mlp_branch(model, layer, acts[Site(layer, "mlp_in")])
        torch.testing.assert_close(mlp_out, acts[Site(layer, "mlp")], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(before + attn_out + acts[Site(layer, "mlp")], res, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_of_every_family(family):
    model = tiny_model(family)
    ids = torch.randint(4, 600, (2, 12))
    check_site_identities(model, ids, exact=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_replacement_is_bit_identical_and_zero_is_not(family):
    model = tiny_model(family)
    ids = torch.randint(4, 600, (2, 12))
    with torch.inference_mode():
        clean = model(input_ids=ids).logits
        for kind in ("res", "mlp", "att", "mlp_in"):
            with replace(model, Site(1, kind), lambda x: x):
                assert torch.equal(model(input_ids=ids).logits, clean)
            with replace(model, Site(1, kind), torch.zeros_like):
                assert not torch.allclose(model(input_ids=ids).logits, clean)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[:, 0] = True  # keep the first position: its logits are untouched by a later-position change
        with replace(model, Site(0, "res"), torch.zeros_like, keep=keep):
            patched = model(input_ids=ids).logits
        assert torch.equal(patched[:, 0], clean[:, 0]) and not torch.allclose(patched[:, 1:], clean[:, 1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_norm_scale_is_what_each_norm_multiplies_by(family):
    """The table's `norm_offset` (Gemma's `1 + w`): a norm with random weights gives its unit-gain
    output times `norm_scale`, for the final norm and the post-attention norm where there is one."""
    model = tiny_model(family)
    fam = family_of(model)
    norms = [model.get_submodule(fam.final_norm)]
    norms += [blocks(model)[1].get_submodule(fam.post_att_norm)] if fam.post_att_norm else []
    x = torch.randn(5, site_width(model, "res"))
    for norm in norms:
        bias = norm.bias.clone() if getattr(norm, "bias", None) is not None else torch.zeros(x.shape[1])
        norm.weight.fill_(1.0 - fam.norm_offset)
        unit = norm(x) - bias
        norm.weight.normal_()
        torch.testing.assert_close(norm(x) - bias, unit * fam.norm_scale(norm))


def test_forward_stops_after_last_needed_layer():
    model = tiny_model("llama", layers=4)
    ran = []
    for i, block in enumerate(model.model.layers):
        block.register_forward_hook(lambda *a, i=i: ran.append(i))
    model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head"))
    collect(model, torch.randint(4, 600, (1, 8)), [Site(1, "mlp"), Site(0, "res")])
    assert ran == [0, 1]


def test_unknown_sites_and_layers_are_one_line_errors():
    model = tiny_model("gemma3_text")
    with pytest.raises(SaescopeError, match="unknown site 'resid'.*res, mlp, att, mlp_in"):
        parse_sites(model, "resid")
    with pytest.raises(SaescopeError, match="unknown layer 7: this model has layers 0-2"):
        parse_sites(model, "res", "7")
    with pytest.raises(SaescopeError, match="bad layers"):
        parse_sites(model, "res", "x")
    with pytest.raises(SaescopeError, match="shape"):
        with replace(model, Site(0, "res"), lambda x: x[..., :3]), torch.inference_mode():
            model(input_ids=torch.randint(4, 600, (1, 5)))


def test_capture_removes_its_hooks():
    model = tiny_model("gpt2")
    with capture(model, [Site(0, "att")], lambda s, x: None):
        pass
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.slow
def test_real_gemma3_sites(gemma):
    model, tok = gemma
    ids = tok(["The Eiffel Tower is in Paris, the capital of France."], return_tensors="pt").input_ids
    check_site_identities(model, ids, exact=True)


@pytest.mark.slow
def test_real_gemma3_identity_replacement_bit_identical(gemma):
    model, tok = gemma
    ids = tok(["Water boils at one hundred degrees Celsius."], return_tensors="pt").input_ids
    with torch.inference_mode():
        clean = model(input_ids=ids).logits
        for site in (Site(0, "res"), Site(9, "att"), Site(17, "mlp"), Site(5, "mlp_in")):
            with replace(model, site, lambda x: x):
                assert torch.equal(model(input_ids=ids).logits, clean)
