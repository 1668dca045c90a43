"""Held-out text run through the model: the clean pass, kept, and the same text with one site's
activation replaced, as CE and KL to the clean model per position (`saescope/evaluate/metrics.py`
turns them into delta LM loss, KL and CE recovered).

BOS, EOS and padding positions are never counted and keep their original activation (no SAE is
trained on them).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from saescope.activations.documents import Document, iter_documents
from saescope.activations.packing import pack_documents
from saescope.errors import SaescopeError
from saescope.evaluate.position import Groupings, Tally
from saescope.models.head import LMHead, final_hidden
from saescope.models.sites import Site, blocks, replace

if TYPE_CHECKING:
    from saescope.evaluate.metrics import EvalConfig

# The clean distributions are kept while they take at most this share of the device's memory (CPU: RAM;
# 9.6 GiB of a 24 GiB machine, enough for 32 sequences of 256 of a 262k vocabulary, 8.9 GB), else 8 GiB
# where it is unknown; beyond, the clean model runs again per SAE, 2.0x the time per SAE
# (benchmarks/clean_cache.py); with 32 sequences on Gemma 3 270M the whole process peaked at 21.5 GB of
# RAM while every spliced pass also held its whole logits and their log-softmax, ~1 GB each per batch of
# 4 sequences (`head_ce_kl` now holds one block of the vocabulary at a time).
CLEAN_CACHE_SHARE = 0.4


def clean_cache_bytes(device: torch.device) -> int:
    """How many bytes of clean distributions an evaluation on `device` keeps in memory."""
    if device.type == "cuda":
        return int(CLEAN_CACHE_SHARE * torch.cuda.get_device_properties(device).total_memory)
    try:
        if device.type == "cpu":
            return int(CLEAN_CACHE_SHARE * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
        pass
    return 8 << 30


# Per-position reductions over the vocabulary run on this many bytes of float32 logits at a time. On a CPU
# they stay in cache: whole rows of 4 positions for the plain reference `_token_ce_kl`, and for `head_ce_kl`
# a block of ~1k vocabulary entries for all of a batch's positions, so the head's product with CE and KL ran 1.18x
# faster than one product over the whole vocabulary followed by `_token_ce_kl` (benchmarks/logit_chunks.py, a
# 2-core AVX2 EPYC). A GPU wants few large kernels instead.
CHUNK_BYTES = {"cpu": 4 << 20}
GPU_CHUNK_BYTES = 256 << 20


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Positions per pass over the vocabulary-wide logits (`CHUNK_BYTES`)."""
    return max(1, CHUNK_BYTES.get(device.type, GPU_CHUNK_BYTES) // (4 * vocab))


def _token_ce_kl(logits: torch.Tensor, clean: CleanOutputs, targets: torch.Tensor, chunk: int = 0):
    """Per-position CE and KL(clean || this) [rows, T-1], a few rows of the vocabulary-wide logits
    at a time: KL = sum p_c log p_c - p_c . logits + logsumexp(logits), so per forward only one
    float pass over the logits is needed, never a full log-softmax tensor. The plain reference of
    `head_ce_kl`, which never holds the whole logits."""
    flat, targets = logits.flatten(0, 1), targets.flatten()
    chunk = chunk or chunk_rows(flat.shape[-1], flat.device)
    ce, kl = torch.empty(len(flat), device=flat.device), torch.empty(len(flat), device=flat.device)
    for i in range(0, len(flat), chunk):
        z = flat[i : i + chunk].float()
        lse = torch.logsumexp(z, -1)
        ce[i : i + chunk] = lse - z.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
        kl[i : i + chunk] = clean.neg_entropy[i : i + chunk] - torch.linalg.vecdot(clean.probs[i : i + chunk], z) + lse
    return ce.view(logits.shape[:2]), kl.view(logits.shape[:2])


def vocab_blocks(vocab: int, positions: int, device: torch.device) -> range:
    """Starts of the vocabulary blocks whose logits for `positions` positions fill `CHUNK_BYTES` (the
    transposed question of `chunk_rows`: how many entries per pass for that many positions)."""
    return range(0, vocab, chunk_rows(positions, device))


def head_ce_kl(hidden: torch.Tensor, head: LMHead, clean: CleanOutputs, targets: torch.Tensor):
    """`_token_ce_kl` of the logits head(hidden) [rows, T-1], one block of the vocabulary at a time:
    each block's logsumexp, its p_c . logits and the targets' logits in it are taken while the block is
    in cache, and the blocks' logsumexps combined at the end."""
    h, t = hidden.flatten(0, 1), targets.flatten()
    starts = vocab_blocks(head.vocab, len(h), h.device)
    lses = torch.empty(len(h), len(starts), device=h.device)
    p_dot_z, z_target = torch.zeros(len(h), device=h.device), torch.empty(len(h), device=h.device)
    for j, lo in enumerate(starts):
        z = head.logits(h, lo, lo + starts.step)
        lses[:, j] = torch.logsumexp(z, -1)
        p_dot_z += torch.linalg.vecdot(clean.probs[:, lo : lo + starts.step], z)
        inside = ((t >= lo) & (t < lo + starts.step)).nonzero().squeeze(1)
        z_target[inside] = z[inside, t[inside] - lo]
    lse = torch.logsumexp(lses, -1)
    return (lse - z_target).view(hidden.shape[:2]), (clean.neg_entropy - p_dot_z + lse).view(hidden.shape[:2])


def clean_distribution(
    logits: torch.Tensor, targets: torch.Tensor, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """The clean model's next-token probabilities (flattened positions), sum p log p, and CE [rows, T-1];
    the probabilities go to `out` when given (it may be `logits` itself, when float32).

    log p = z - logsumexp(z), as the spliced passes compute their CE, not F.log_softmax: on CPU its
    float32 result for Gemma 3's logits summed to up to 1.00006 after exp, and `_token_ce_kl` takes the
    clean mass as 1, so KL came out low by logsumexp x 6e-5 per position, ~0.0004 of an att.6 SAE's 0.018."""
    flat, targets = logits.flatten(0, 1), targets.flatten()
    probs = torch.empty(flat.shape, device=flat.device) if out is None else out.view(flat.shape)
    neg_entropy, ce = torch.empty(len(flat), device=flat.device), torch.empty(len(flat), device=flat.device)
    chunk = chunk_rows(flat.shape[-1], flat.device)
    for i in range(0, len(flat), chunk):
        z = flat[i : i + chunk].float()
        logp = z - torch.logsumexp(z, -1, keepdim=True)  # before `out`, which may be z's memory, is written
        neg_entropy[i : i + chunk] = torch.linalg.vecdot(torch.exp(logp, out=probs[i : i + chunk]), logp)
        ce[i : i + chunk] = -logp.gather(-1, targets[i : i + chunk, None]).squeeze(-1)
    return probs, neg_entropy, ce.view(logits.shape[:2])


@dataclass
class CleanOutputs:
    """The clean model's next-token distribution on one batch (flattened positions), its CE per
    position [rows, T-1], and the outputs of every block, so a spliced forward can start at the
    spliced layer."""

    probs: torch.Tensor
    neg_entropy: torch.Tensor
    ce: torch.Tensor
    block_outputs: list


class HeldOutText:
    """Held-out sequences (after the text the harvest used) and the clean model's outputs on them."""

    def __init__(self, model, tokenizer, dataset: str, text_field: str, skip_tokens: int, cfg: EvalConfig):
        topic_of: dict[int, str] = {}

        def noting_topics(docs: Iterator[Document]) -> Iterator[Document]:
            for doc in docs:
                if doc.topic:
                    topic_of[doc.doc_id] = doc.topic
                yield doc

        batches = list(
            pack_documents(
                noting_topics(iter_documents(dataset, text_field)),
                tokenizer,
                cfg.eval_context_len,
                cfg.eval_batch_size,
                max_tokens=cfg.eval_sequences * cfg.eval_context_len,
                skip_tokens=skip_tokens,
                then_skip_tokens=cfg.eval_offset * cfg.eval_context_len,
            )
        )
        if not batches and cfg.eval_offset:
            raise SaescopeError(
                f"no text is left after --eval-offset {cfg.eval_offset} sequences: lower it or use a larger dataset"
            )
        if not batches and skip_tokens:
            raise SaescopeError(
                "no held-out text is left after the harvested tokens: harvest fewer tokens or use a larger dataset"
            )
        if not batches:
            raise SaescopeError(f"{dataset} holds no text to evaluate on (no document has a token after BOS)")
        self.model, self.device = model, next(model.parameters()).device
        self.where = [(b.doc_ids, b.positions) for b in batches]  # traces every evaluated token to its text
        self.groups = Groupings.of(self.where, topic_of)  # position buckets and topics (evaluate/position.py)
        self.batch = 0  # the batch loss_with is running, for splices that tally per token
        self.batches = []
        for b in batches:
            # predict token t+1 at position t; count t only if t is a real token and t+1 exists
            count = (b.train_mask[:, :-1] & b.attention_mask[:, 1:].bool()).to(self.device).float()
            self.batches.append(
                (b.input_ids.to(self.device), b.attention_mask.to(self.device), ~b.train_mask.to(self.device), count)
            )
        self.tokens = int(sum(c.sum().item() for *_, c in self.batches))
        # the clean distributions take 4 bytes x vocabulary per position: kept while they fit
        # (CPU-sized evaluations), recomputed per batch beyond (Gemma Scope scale)
        self.head = LMHead.of(model)
        keep = sum(ids.numel() for ids, *_ in self.batches) * self.head.vocab * 4 <= clean_cache_bytes(self.device)
        self._clean = [self._clean_outputs(i) for i in range(len(self.batches))] if keep else None

    @torch.inference_mode()
    def _clean_outputs(self, i: int) -> CleanOutputs:
        ids, am, _keep, _count = self.batches[i]
        outputs: list = []
        hooks = [block.register_forward_hook(lambda _m, _a, out: outputs.append(out)) for block in blocks(self.model)]
        try:
            with final_hidden(self.model) as hidden:
                self.model(input_ids=ids, attention_mask=am)
        finally:
            for h in hooks:
                h.remove()
        h = hidden[0][:, :-1]
        logits = torch.empty(*h.shape[:2], self.head.vocab, device=self.device)
        starts = vocab_blocks(self.head.vocab, h.shape[0] * h.shape[1], self.device)
        for lo in starts:
            logits[..., lo : lo + starts.step] = self.head.logits(h, lo, lo + starts.step)
        return CleanOutputs(*clean_distribution(logits, ids[:, 1:], out=logits), outputs)

    def clean(self, i: int) -> CleanOutputs:
        return self._clean[i] if self._clean is not None else self._clean_outputs(i)

    @torch.inference_mode()
    def loss_with(self, site: Site | None, fn, tally: Tally | None = None) -> tuple[float, float]:
        """Mean CE and KL-to-clean with the site's activation replaced by fn(x) (None = clean); the
        per-token losses also go to `tally`, for the breakdowns by position and topic.

        Blocks before the site's layer return their clean outputs without running: their input
        does not depend on the replacement, so the result is the same as a full forward."""
        ce_sum = kl_sum = 0.0
        for i, (ids, am, keep, count) in enumerate(self.batches):
            self.batch = i
            clean = self.clean(i)
            if site is None:  # the clean pass the cache holds: its KL to itself is 0
                ce, kl = clean.ce, torch.zeros_like(clean.ce)
            else:
                ce, kl = self._spliced(ids, am, keep, clean, site, fn)
            ce_sum += (ce.double() * count).sum().item()
            kl_sum += (kl.double() * count).sum().item()
            if tally is not None:
                tally.add_losses(i, ce, kl, count)
        return ce_sum / self.tokens, kl_sum / self.tokens

    def _spliced(self, ids, am, keep, clean: CleanOutputs, site: Site, fn) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch's CE and KL per position with the site replaced, from the site's layer on."""
        skip = blocks(self.model)[: site.layer]
        for block, out in zip(skip, clean.block_outputs):
            block.forward = lambda *_a, _out=out, **_k: _out
        try:
            with replace(self.model, site, fn, keep=keep), final_hidden(self.model) as hidden:
                self.model(input_ids=ids, attention_mask=am)
        finally:
            for block in skip:
                del block.forward
        return head_ce_kl(hidden[0][:, :-1], self.head, clean, ids[:, 1:])
