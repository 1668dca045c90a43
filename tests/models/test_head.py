"""The LM head evaluation applies by blocks of the vocabulary gives the model's own logits."""

from __future__ import annotations

import pytest
import torch
from tinymodels import FAMILIES, VOCAB, tiny_model

from saescope.models.head import LMHead, final_hidden


@pytest.mark.parametrize("family", FAMILIES)
def test_the_head_by_blocks_of_the_vocabulary_gives_the_models_logits(family):
    """Every family, Gemma 2's soft-capped logits included; the head is whole again afterwards."""
    model = tiny_model(family)
    if family == "gemma2":
        model.config.final_logit_softcapping = 0.3  # small enough to bend this model's logits (up to ~0.6)
    ids = torch.randint(4, VOCAB, (2, 9))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with final_hidden(model) as hidden:
            skipped = model(input_ids=ids).logits
        head = LMHead.of(model)
        blocks = torch.cat([head.logits(hidden[0], lo, lo + 128) for lo in range(0, VOCAB, 128)], -1)
        again = model(input_ids=ids).logits
    assert skipped.shape == (2, 9, 0) and len(hidden) == 1
    assert (head.softcap is not None) == (family == "gemma2")
    if family == "gemma2":
        uncapped = LMHead(head.weight, head.bias, None).logits(hidden[0])
        assert want.abs().max() < 0.3 and (uncapped - want).abs().max() > 0.1
    assert torch.allclose(blocks, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(again, want)
