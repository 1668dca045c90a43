"""The LM head as evaluation applies it: a forward that stops at the head's input, and the head's
logits for one block of the vocabulary at a time.

A spliced forward of Gemma 3 270M spends most of its time in the 262,144-token unembedding. One
product over the whole vocabulary writes a [positions, vocabulary] tensor (1 GB for 4 x 255
positions in float32) that the loss then reads back; products over ~1k vocabulary rows at a time are
reduced while they are still in cache, 1.18x faster in all on a 2-core AVX2 EPYC
(`saescope/evaluate/heldout.py`, benchmarks/logit_chunks.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from saescope.models.sites import family_of


@dataclass(frozen=True)
class LMHead:
    """The head's weight [vocabulary, d_model] and bias in the model's dtype, and the final logit
    soft-cap of the families that have one (Gemma 2: logits = cap * tanh(logits / cap))."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    softcap: float | None

    @classmethod
    def of(cls, model: nn.Module) -> LMHead:
        head = model.get_submodule(family_of(model).unembed)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        bias = getattr(head, "bias", None)
        softcap = getattr(config, "final_logit_softcapping", None)  # most families' configs lack it
        return cls(head.weight.detach(), None if bias is None else bias.detach(), softcap)

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def logits(self, hidden: torch.Tensor, lo: int = 0, hi: int | None = None) -> torch.Tensor:
        """float32 logits of vocabulary entries lo..hi-1, computed as the model's own head computes
        them (in the model's dtype, soft-capped there) and only then widened."""
        z = F.linear(hidden, self.weight[lo:hi], None if self.bias is None else self.bias[lo:hi])
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z.float()


@contextmanager
def final_hidden(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside, each forward of `model` appends the LM head's input to the yielded list and skips the
    head itself: the forward's logits come out with an empty last dimension."""
    head = model.get_submodule(family_of(model).unembed)
    seen: list[torch.Tensor] = []

    def skip(hidden: torch.Tensor) -> torch.Tensor:
        seen.append(hidden)
        return hidden[..., :0]

    head.forward = skip
    try:
        yield seen
    finally:
        del head.forward
