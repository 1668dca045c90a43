"""The loss sensitivity the harvest stores: the gradient it averages, and when it is written."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tinymodels import tiny_model

from saescope.activations.documents import iter_documents
from saescope.activations.harvest import HarvestConfig, harvest
from saescope.activations.packing import pack_documents
from saescope.activations.sensitivity import (
    SENSITIVITY_FILE,
    SENSITIVITY_TOKENS,
    cross_entropy_gradient,
    loss_sensitivity,
    measure_sensitivity,
    norm_power,
    read_norm_power,
    read_sensitivity,
    reference_cross_entropy_gradient,
    site_gradients,
)
from saescope.errors import SaescopeError
from saescope.evaluate.heldout import chunk_rows
from saescope.models.sites import Site, site_module


def leaf_gradient_squares(model, batch, site: Site) -> torch.Tensor:
    """The same quantity for one site by a second route: the site's output made a leaf tensor."""
    grabbed = {}

    def hook(_m, _a, out):
        x = out[0] if isinstance(out, tuple) else out
        leaf = x.detach().requires_grad_(True)
        grabbed["x"] = leaf
        return (leaf, *out[1:]) if isinstance(out, tuple) else leaf

    module, where = site_module(model, site)
    assert where == "output"
    handle = module.register_forward_hook(hook)
    try:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        scored = batch.train_mask[:, :-1] & batch.attention_mask[:, 1:].bool()
        F.cross_entropy(logits[scored], batch.input_ids[:, 1:][scored], reduction="sum").backward()
    finally:
        handle.remove()
    g = grabbed["x"].grad[batch.train_mask]
    return g.double().pow(2).mean(0).float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_chunked_cross_entropy_gradient_is_autograds(dtype):
    """Several sequences, unscored positions (padding, BOS) and more positions than one chunk holds."""
    torch.manual_seed(0)
    logits = (4 * torch.randn(3, 40, 50_000)).to(dtype)
    ids = torch.randint(0, 50_000, (3, 40))
    scored = torch.rand(3, 39) > 0.25
    assert chunk_rows(50_000, logits.device) < scored.sum()
    grad = cross_entropy_gradient(logits, ids, scored)
    expected = reference_cross_entropy_gradient(logits, ids, scored)
    assert grad.dtype == dtype and grad.shape == logits.shape
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    assert not grad[:, :-1][~scored].any() and not grad[:, -1].any()  # unscored positions get no gradient


def test_sensitivity_is_the_mean_squared_loss_gradient_at_each_site(tiny_tokenizer):
    model = tiny_model("gemma3_text")
    batch = next(iter(pack_documents(iter_documents("wiki"), tiny_tokenizer, 64, 2, max_tokens=128)))
    sites = [Site(0, "res"), Site(1, "res"), Site(1, "mlp")]
    together = loss_sensitivity(model, [batch], sites)
    for site in sites:  # measured together, each site equals its own gradient measured alone
        expected = leaf_gradient_squares(model, batch, site)
        torch.testing.assert_close(together[site.name], expected, rtol=1e-4, atol=1e-12)
        assert float(expected.max()) > 0


def test_the_full_matrix_has_the_diagonal_on_its_diagonal_and_is_a_gram_matrix(tiny_tokenizer):
    model = tiny_model("gemma3_text")
    batch = next(iter(pack_documents(iter_documents("wiki"), tiny_tokenizer, 64, 2, max_tokens=128)))
    site = Site(1, "res")
    diagonal = loss_sensitivity(model, [batch], [site])[site.name]
    full = loss_sensitivity(model, [batch], [site], full=True)[site.name]
    assert full.shape == (len(diagonal), len(diagonal))
    torch.testing.assert_close(torch.diagonal(full), diagonal, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(full, full.T)
    assert float(torch.linalg.eigvalsh(full.double()).min()) > -1e-6 * float(full.abs().max())
    assert float((full - torch.diag(diagonal)).abs().max()) > 0  # not diagonal: the dimensions' gradients correlate


def test_harvest_writes_it_and_a_harvest_run_again_adds_it_to_an_older_store(tmp_path, tiny_tokenizer):
    cfg = HarvestConfig(
        sites="res,mlp",
        layers="0",
        tokens=1024,
        context_len=64,
        forward_batch=4,
        dtype="float32",
        shard_rows=512,
        store=str(tmp_path / "store"),
        device="cpu",
    )
    model = tiny_model("gemma3_text")
    store = harvest(cfg, model, tiny_tokenizer)
    first = {s: read_sensitivity(store, s) for s in ("res.0", "mlp.0")}
    powers = {s: read_norm_power(store, s) for s in first}
    batches = list(pack_documents(iter_documents("wiki"), tiny_tokenizer, 64, 1, max_tokens=SENSITIVITY_TOKENS))
    fisher, measured = measure_sensitivity(model, batches, [Site.parse(s) for s in first])
    for site in first:  # what the harvest stored is what one pass over its first training text measures
        torch.testing.assert_close(fisher[site], first[site])
        assert powers[site] == pytest.approx(measured[site], abs=1e-6)
    shards = {p.name: p.stat().st_mtime_ns for p in store.rglob("*.bin")}
    (store / SENSITIVITY_FILE).unlink()  # a store harvested before sensitivities existed
    harvest(cfg, model, tiny_tokenizer)
    for site, values in first.items():
        assert torch.equal(read_sensitivity(store, site), values)
        assert read_norm_power(store, site) == powers[site]
    assert {p.name: p.stat().st_mtime_ns for p in store.rglob("*.bin")} == shards  # no shard rewritten


def test_the_norm_power_is_the_slope_of_the_loss_sensitivity_against_the_norm_in_log_log():
    g = torch.Generator().manual_seed(0)
    norms = torch.exp(torch.randn(20_000, generator=g) * 0.4) * 7
    noise = torch.distributions.Exponential(1.0).sample((20_000,))  # mean 1, as skewed as real |g|^2
    assert norm_power(norms**-1.5 * noise, norms) == pytest.approx(-1.5, abs=0.1)
    assert norm_power(norms**0.5 * noise, norms) == pytest.approx(0.5, abs=0.1)
    assert norm_power(noise, torch.full((20_000,), 3.0)) == 0.0  # one norm: nothing to fit


def test_the_norm_power_fits_the_per_token_gradients_of_the_real_pass(tiny_tokenizer):
    model = tiny_model("gemma3_text")
    batches = list(pack_documents(iter_documents("wiki"), tiny_tokenizer, 64, 2, max_tokens=512))
    site = Site(1, "res")
    grads = list(site_gradients(model, batches, [site]))
    g2 = torch.cat([b[site.name][0].double().pow(2).sum(1) for b in grads])
    norms = torch.cat([b[site.name][1].double().norm(dim=1) for b in grads])
    assert measure_sensitivity(model, batches, [site])[1][site.name] == pytest.approx(norm_power(g2, norms), rel=1e-6)


def test_a_sensitivity_file_from_before_norm_powers_is_a_one_line_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"res.0": torch.ones(4)}, str(tmp_path / SENSITIVITY_FILE))
    settings = {"layers": "3", "tokens": 500, "sites": "res,mlp,att", "store": "elsewhere", "device": "cpu"}
    (tmp_path / "store.json").write_text(json.dumps({"harvest_config": settings}))
    with pytest.raises(SaescopeError, match="no entry for res.0.norm_power") as e:
        read_norm_power(tmp_path, "res.0")
    # the command that wrote the store, with its settings
    assert str(e.value).endswith(f"run `saescope harvest --out {tmp_path} --layers 3 --tokens 500 --sites res,mlp,att`")
    assert "\n" not in str(e.value)
