"""Banded attention gives the stock sdpa results (float32, to rounding) on every family, and the
real Gemma 3 270M gets it from `load_model` on CPU."""

from __future__ import annotations

import pytest
import torch
from tinymodels import VOCAB, tiny_config
from transformers import AutoModelForCausalLM, MistralConfig

from saescope.models import attention
from saescope.models.attention import NAME, use_banded_attention


def sdpa_model(family: str):
    torch.manual_seed(0)
    config = (
        MistralConfig(
            vocab_size=VOCAB,
            num_hidden_layers=2,
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=20,
        )
        if family == "mistral"
        else tiny_config(family)
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval().requires_grad_(False)


@pytest.mark.parametrize("family", ["gemma3_text", "llama", "qwen2", "mistral", "gpt2"])
def test_banded_equals_stock_sdpa_with_windows_and_padding(family, monkeypatch):
    monkeypatch.setattr(attention, "BLOCK", 8)  # 64 tokens -> 8 query blocks, windows of 16 and 20 bind
    key_lengths, real_sdpa = [], attention.F.scaled_dot_product_attention
    monkeypatch.setattr(
        attention.F,
        "scaled_dot_product_attention",
        lambda q, k, *a, **kw: key_lengths.append(k.shape[2]) or real_sdpa(q, k, *a, **kw),
    )
    model = sdpa_model(family)
    ids = torch.randint(3, VOCAB, (3, 64))
    mask = torch.ones_like(ids)
    mask[1, 50:] = 0  # a right-padded row, as the packer's last batch has
    with torch.inference_mode():
        stock = model(input_ids=ids, attention_mask=mask).logits
        assert use_banded_attention(model) and model.config._attn_implementation == NAME
        key_lengths.clear()
        banded = model(input_ids=ids, attention_mask=mask).logits
        banded_keys = list(key_lengths)
        unmasked = model(input_ids=ids).logits  # no mask at all: transformers may pass None to the kernel
        model.set_attn_implementation("sdpa")
        stock_unmasked = model(input_ids=ids).logits
    keep = mask.bool()
    torch.testing.assert_close(banded[keep], stock[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unmasked, stock_unmasked, rtol=1e-5, atol=1e-5)
    assert min(banded_keys) == 8  # the first query block sees only its own 8 keys: the queries were cut
    if family in ("gemma3_text", "mistral"):  # and with a window, no block sees all 64 keys
        assert max(banded_keys) < 64


def test_not_installed_off_cpu_or_for_other_kernels():
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="eager")
    assert not use_banded_attention(model) and model.config._attn_implementation == "eager"


def test_real_gemma_uses_banded_attention_and_matches_stock(gemma):
    """Context 700 > the 512-token sliding window, so the band really cuts keys away."""
    model, tokenizer = gemma
    assert model.config._attn_implementation == NAME
    text = " ".join(["The river flows past the old mill, and the village gathers on its banks each spring."] * 40)
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :700]
    assert ids.shape[1] == 700
    try:
        with torch.inference_mode():
            banded = model.model(input_ids=ids).last_hidden_state
            model.set_attn_implementation("sdpa")
            stock = model.model(input_ids=ids).last_hidden_state
    finally:
        model.set_attn_implementation(NAME)
    assert ((banded - stock).norm() / stock.norm()).item() < 1e-5
