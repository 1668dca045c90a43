"""Documents become fixed-size token batches: the second half of turning text into harvested activations.

`pack_documents` tokenises `Document`s (from `saescope/activations/documents.py`), each prefixed
with BOS, into `PackedBatch`es of `[batch_size, context_len]` tokens. Every token carries its
`doc_id` and its position inside its document, so an activation can always be traced back to the
text that produced it, and a `train_mask` that is False on BOS, EOS and padding, which the recipe
never trains or scores on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

import torch

from saescope.activations.documents import Document
from saescope.errors import SaescopeError

TOKENIZE_CHUNK_DOCS = 128


@dataclass
class PackedBatch:
    """A batch of token rows plus what is needed to trace every token back to its document.

    `doc_ids` and `positions` are -1 on padding; `positions` counts the document's BOS as 0 and
    keeps counting when a packed document continues on the next row.
    """

    input_ids: torch.Tensor  # long [B, T]
    attention_mask: torch.Tensor  # long [B, T], 1 on real tokens including BOS
    doc_ids: torch.Tensor  # long [B, T]
    positions: torch.Tensor  # long [B, T]
    train_mask: torch.Tensor  # bool [B, T], False on BOS, EOS and padding

    @property
    def num_train_tokens(self) -> int:
        """Tokens that count towards training and metrics (the unit of max_tokens/skip_tokens)."""
        return int(self.train_mask.sum())


def bos_token_id(tokenizer: Any) -> int | None:
    """The id that starts every document: BOS, or EOS for GPT-2 style tokenizers without BOS."""
    for token_id in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if token_id is not None:
            return int(token_id)
    return None


def encode_documents(texts: list[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each text exactly as `pack_documents` sees them: BOS (if any) + text tokens.

    One batched tokenizer call (fast tokenizers parallelise it); no other special tokens are
    added, so a tokenizer that prepends BOS by itself does not produce a double BOS. Tools that
    map a (doc_id, position) back to text call this on the document's text.
    """
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    bos = bos_token_id(tokenizer)
    prefix = [] if bos is None else [bos]
    return [prefix + list(ids) for ids in encoded]


def pack_documents(
    docs: Iterable[Document],
    tokenizer: Any,
    context_len: int = 1024,
    batch_size: int = 8,
    mode: Literal["pack", "truncate"] = "pack",
    max_tokens: int | None = None,
    skip_tokens: int = 0,
    then_skip_tokens: int = 0,
) -> Iterator[PackedBatch]:
    """Turn documents into `[batch_size, context_len]` token batches, deterministically.

    mode "pack": documents (each starting with its BOS) are concatenated into rows of exactly
    `context_len` tokens; a document that does not fit continues on the next row after a fresh
    BOS, its positions counting on. Only the very last row of the corpus is right-padded.
    mode "truncate": one document per row, cut to `context_len` and right-padded.

    Token budgets count train tokens (train_mask True) and work on whole rows, which makes them
    independent of `batch_size`:
    * `skip_tokens`: rows are dropped from the start until at least `skip_tokens` train tokens
      have been dropped.
    * `then_skip_tokens`: after those, rows are dropped until at least this many more have been.
    * `max_tokens`: rows are emitted until at least `max_tokens` train tokens have been emitted;
      the batch holding that row is yielded (possibly with fewer rows) and iteration stops.
    Hence a harvest with `max_tokens=N` and a held-out evaluation with `skip_tokens=N` (same
    corpus, tokenizer, context_len and mode) see disjoint rows with nothing in between.

    Documents whose text yields no tokens are skipped. The last batch may have fewer rows.
    """
    if context_len < 2:
        raise SaescopeError(f"context_len must be at least 2 (BOS plus one token), got {context_len}")
    if batch_size < 1:
        raise SaescopeError(f"batch_size must be at least 1, got {batch_size}")
    if mode not in ("pack", "truncate"):
        raise SaescopeError(f"unknown packing mode {mode!r}; use 'pack' or 'truncate'")
    if max_tokens is not None and max_tokens < 1:
        raise SaescopeError(f"max_tokens must be positive, got {max_tokens}")
    for name, value in (("skip_tokens", skip_tokens), ("then_skip_tokens", then_skip_tokens)):
        if value < 0:
            raise SaescopeError(f"{name} must be zero or positive, got {value}")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    maybe_special = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    special = [int(token_id) for token_id in maybe_special if token_id is not None]
    special_ids = torch.tensor(sorted(set(special)), dtype=torch.long)
    tokenized = _tokenized(docs, tokenizer)
    if mode == "pack":
        rows = _packed_rows(tokenized, context_len, bos_token_id(tokenizer))
    else:
        rows = _truncated_rows(tokenized, context_len)

    skipped = then_skipped = emitted = 0
    pending: list[_Row] = []
    for row in rows:
        ids, doc_ids, positions = _row_tensors(row, context_len, pad_id)
        real = doc_ids >= 0
        train = real & ~torch.isin(ids, special_ids)
        count = int(train.sum())
        if skipped < skip_tokens:
            skipped += count
            continue
        if then_skipped < then_skip_tokens:
            then_skipped += count
            continue
        pending.append((ids, real, doc_ids, positions, train))
        emitted += count
        done = max_tokens is not None and emitted >= max_tokens
        if len(pending) == batch_size or done:
            yield _stack(pending)
            pending = []
        if done:
            return
    if pending:
        yield _stack(pending)


# A finished row: parallel lists of token ids, doc ids and positions (length <= context_len).
_RawRow = tuple[list[int], list[int], list[int]]
_Row = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _tokenized(docs: Iterable[Document], tokenizer: Any) -> Iterator[tuple[int, list[int]]]:
    """(doc_id, token ids) per document, tokenised in chunks so a token budget stops early."""
    min_len = 1 if bos_token_id(tokenizer) is None else 2  # a lone BOS holds no text
    it = iter(docs)
    while chunk := list(islice(it, TOKENIZE_CHUNK_DOCS)):
        for doc, ids in zip(chunk, encode_documents([doc.text for doc in chunk], tokenizer)):
            if len(ids) >= min_len:
                yield doc.doc_id, ids


def _packed_rows(
    tokenized: Iterator[tuple[int, list[int]]], context_len: int, bos: int | None = None
) -> Iterator[_RawRow]:
    """Concatenate documents into full rows; a document spills over into the next row.

    A row that opens mid-document starts with its own BOS (position 0, never a training token):
    a model treats whatever token comes first as an attention sink with an outsized residual
    norm, so a bare continuation token there would be an outlier that no SAE should see, and
    replacing it when measuring delta loss would wreck the whole row.
    """
    ids: list[int] = []
    doc_ids: list[int] = []
    positions: list[int] = []
    for doc_id, tokens in tokenized:
        start = 0
        while start < len(tokens):
            if not ids and start > 0 and bos is not None:
                ids, doc_ids, positions = [bos], [doc_id], [0]
            take = min(context_len - len(ids), len(tokens) - start)
            ids.extend(tokens[start : start + take])
            doc_ids.extend([doc_id] * take)
            positions.extend(range(start, start + take))
            start += take
            if len(ids) == context_len:
                yield ids, doc_ids, positions
                ids, doc_ids, positions = [], [], []
    if ids:
        yield ids, doc_ids, positions


def _truncated_rows(tokenized: Iterator[tuple[int, list[int]]], context_len: int) -> Iterator[_RawRow]:
    """One row per document, cut to the context length."""
    for doc_id, tokens in tokenized:
        kept = tokens[:context_len]
        yield kept, [doc_id] * len(kept), list(range(len(kept)))


def _row_tensors(row: _RawRow, context_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad one row to the context length: pad id for tokens, -1 for doc ids and positions."""
    ids, doc_ids, positions = row
    padding = context_len - len(ids)
    return (
        torch.tensor(ids + [pad_id] * padding, dtype=torch.long),
        torch.tensor(doc_ids + [-1] * padding, dtype=torch.long),
        torch.tensor(positions + [-1] * padding, dtype=torch.long),
    )


def _stack(rows: list[_Row]) -> PackedBatch:
    ids, real, doc_ids, positions, train = (torch.stack(parts) for parts in zip(*rows))
    return PackedBatch(
        input_ids=ids,
        attention_mask=real.long(),
        doc_ids=doc_ids,
        positions=positions,
        train_mask=train,
    )
