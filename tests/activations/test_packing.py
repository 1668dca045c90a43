"""Token packing, with a tiny BPE tokenizer trained offline in the test."""

from __future__ import annotations

import pytest
import torch
from corpus_helpers import one_line_error
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from saescope.activations.documents import Document
from saescope.activations.packing import PackedBatch, encode_documents, pack_documents
from saescope.errors import SaescopeError

PAD, BOS, EOS = 0, 1, 2


def _backend(texts: list[str]) -> Tokenizer:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"])
    backend.train_from_iterator(texts, trainer)
    return backend


@pytest.fixture(scope="module")
def backend(wiki: list[Document]) -> Tokenizer:
    return _backend([doc.text for doc in wiki[:300]])


@pytest.fixture(scope="module")
def tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (PAD, BOS, EOS)
    return tok


def reference_tokens(doc: Document, tok: PreTrainedTokenizerFast, bos: int | None = BOS) -> list[int]:
    """The document's tokens computed one at a time, independently of the batched code path."""
    ids = tok(doc.text, add_special_tokens=False)["input_ids"]
    return ([] if bos is None else [bos]) + ids


def rows_of(batches: list[PackedBatch]) -> list[tuple[list[int], list[int], list[int], list[bool]]]:
    rows = []
    for batch in batches:
        for b in range(batch.input_ids.shape[0]):
            rows.append(
                (
                    batch.input_ids[b].tolist(),
                    batch.doc_ids[b].tolist(),
                    batch.positions[b].tolist(),
                    batch.train_mask[b].tolist(),
                )
            )
    return rows


def test_encode_documents_matches_single_calls(wiki: list[Document], tokenizer: PreTrainedTokenizerFast) -> None:
    docs = wiki[:20]
    assert encode_documents([d.text for d in docs], tokenizer) == [reference_tokens(d, tokenizer) for d in docs]


def test_pack_rows_trace_back_to_documents(wiki: list[Document], tokenizer: PreTrainedTokenizerFast) -> None:
    docs = wiki[1000:1040]
    refs = {d.doc_id: reference_tokens(d, tokenizer) for d in docs}
    batches = list(pack_documents(docs, tokenizer, context_len=64, batch_size=3))
    rows = rows_of(batches)
    assert all(b.input_ids.shape[1] == 64 for b in batches)
    assert all(b.input_ids.shape[0] == 3 for b in batches[:-1])
    total = sum(len(r) for r in refs.values())
    assert len(rows) >= -(-total // 64)  # plus one BOS per row that opens mid-document

    seen: dict[int, list[int]] = {d.doc_id: [] for d in docs}
    for row_index, (ids, doc_ids, positions, train) in enumerate(rows):
        for token, doc_id, pos, trainable in zip(ids, doc_ids, positions, train):
            if doc_id == -1:
                assert pos == -1 and token == PAD and not trainable
                assert row_index == len(rows) - 1, "only the corpus's last row may be padded"
                continue
            assert refs[doc_id][pos] == token
            if pos == 0 and seen[doc_id]:  # the fresh BOS of a row that continues a document
                assert row_index > 0 and positions[0] == 0 and positions[1] == len(seen[doc_id])
                continue
            assert len(seen[doc_id]) == pos, "each document's tokens appear once, in order"
            seen[doc_id].append(token)
            assert trainable == (pos != 0), "BOS is never trained on; every text token is"
            assert (token == BOS) == (pos == 0)
    assert seen == refs
    # every row starts with BOS, also where a document crosses a row boundary
    assert all(ids[0] == BOS and not train[0] for ids, _, _, train in rows)
    assert any(positions[1] > 1 for _, _, positions, _ in rows)

    for batch in batches:
        assert batch.input_ids.dtype == torch.long and batch.train_mask.dtype == torch.bool
        assert torch.equal(batch.attention_mask, (batch.doc_ids >= 0).long())


def test_truncate_mode_pads_each_document(tokenizer: PreTrainedTokenizerFast) -> None:
    docs = [
        Document(0, "the history of the world is long and has many chapters and many people"),
        Document(1, "short"),
        Document(2, "   "),  # tokenises to nothing: skipped
        Document(3, "a city"),
    ]
    batch = next(pack_documents(docs, tokenizer, context_len=8, batch_size=8, mode="truncate"))
    assert batch.input_ids.shape == (3, 8)
    assert batch.doc_ids[:, 0].tolist() == [0, 1, 3]
    assert batch.input_ids[:, 0].tolist() == [BOS, BOS, BOS]
    long_ref = reference_tokens(docs[0], tokenizer)
    assert len(long_ref) > 8 and batch.input_ids[0].tolist() == long_ref[:8]
    assert batch.attention_mask[0].tolist() == [1] * 8
    short_ref = reference_tokens(docs[1], tokenizer)
    n = len(short_ref)
    assert batch.input_ids[1, :n].tolist() == short_ref
    assert batch.input_ids[1, n:].tolist() == [PAD] * (8 - n)
    assert batch.attention_mask[1].tolist() == [1] * n + [0] * (8 - n)
    assert batch.doc_ids[1, n:].tolist() == [-1] * (8 - n)
    assert batch.positions[1].tolist() == list(range(n)) + [-1] * (8 - n)
    assert batch.train_mask[1].tolist() == [False] + [True] * (n - 1) + [False] * (8 - n)


def test_eos_inside_text_is_masked(tokenizer: PreTrainedTokenizerFast) -> None:
    batch = next(pack_documents([Document(0, "end <eos> again")], tokenizer, context_len=16, mode="truncate"))
    ids = batch.input_ids[0]
    assert (ids == EOS).sum() == 1
    assert not batch.train_mask[0][ids == EOS].any()
    assert batch.num_train_tokens == int(batch.attention_mask.sum()) - 2


def test_budgets_work_on_whole_rows(wiki: list[Document], tokenizer: PreTrainedTokenizerFast) -> None:
    docs = wiki[:60]
    every = rows_of(list(pack_documents(docs, tokenizer, context_len=32, batch_size=1)))
    cumulative, total = [], 0
    for _, _, _, train in every:
        total += sum(train)
        cumulative.append(total)
    budget = cumulative[10] - 3  # reached inside row 10
    cut = 11

    harvest = list(pack_documents(docs, tokenizer, context_len=32, batch_size=4, max_tokens=budget))
    assert [b.input_ids.shape[0] for b in harvest] == [4, 4, 3]
    assert rows_of(harvest) == every[:cut]
    harvested = sum(b.num_train_tokens for b in harvest)
    assert harvested >= budget > harvested - sum(every[cut - 1][3])

    held_out = list(pack_documents(docs, tokenizer, context_len=32, batch_size=4, skip_tokens=budget))
    assert rows_of(held_out) == every[cut:]
    assert rows_of(list(pack_documents(docs, tokenizer, context_len=32, skip_tokens=10**9))) == []

    window = list(pack_documents(docs, tokenizer, context_len=32, batch_size=2, skip_tokens=budget, max_tokens=1))
    assert rows_of(window) == every[cut : cut + 1]

    # a second evaluation passes over the first one's rows (the same budget) and starts on the next row
    first = list(pack_documents(docs, tokenizer, context_len=32, skip_tokens=budget, max_tokens=budget))
    after = list(pack_documents(docs, tokenizer, context_len=32, skip_tokens=budget, then_skip_tokens=budget))
    assert rows_of(first) + rows_of(after) == every[cut:] and rows_of(first) and rows_of(after)


def test_determinism_and_batch_size_independence(wiki: list[Document], tokenizer: PreTrainedTokenizerFast) -> None:
    docs = wiki[200:230]
    first = list(pack_documents(iter(docs), tokenizer, context_len=48, batch_size=5))
    second = list(pack_documents(iter(docs), tokenizer, context_len=48, batch_size=5))
    assert len(first) == len(second)
    for a, b in zip(first, second):
        for field in ("input_ids", "attention_mask", "doc_ids", "positions", "train_mask"):
            assert torch.equal(getattr(a, field), getattr(b, field))
    single = list(pack_documents(docs, tokenizer, context_len=48, batch_size=1))
    assert rows_of(single) == rows_of(first)


def test_gpt2_style_and_bos_less_tokenizers(backend: Tokenizer) -> None:
    doc = Document(7, "the world and the city")
    eos_only = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    assert eos_only.bos_token_id is None
    batch = next(pack_documents([doc], eos_only, context_len=32))
    n = int(batch.attention_mask.sum())
    assert batch.input_ids[0, 0].item() == EOS
    assert batch.input_ids[0, :n].tolist() == reference_tokens(doc, eos_only, bos=EOS)
    assert batch.train_mask[0, :n].tolist() == [False] + [True] * (n - 1)
    assert batch.input_ids[0, n:].eq(0).all(), "no pad token: pad with id 0"

    plain = PreTrainedTokenizerFast(tokenizer_object=backend)
    batch = next(pack_documents([doc], plain, context_len=32))
    n = int(batch.attention_mask.sum())
    assert batch.input_ids[0, :n].tolist() == reference_tokens(doc, plain, bos=None)
    assert batch.positions[0, 0].item() == 0 and batch.train_mask[0, :n].all()


def test_invalid_packing_arguments(tokenizer: PreTrainedTokenizerFast) -> None:
    docs = [Document(0, "text")]
    for kwargs, words in [
        ({"mode": "chunk"}, ("unknown packing mode", "'chunk'")),
        ({"context_len": 1}, ("context_len",)),
        ({"batch_size": 0}, ("batch_size",)),
        ({"max_tokens": 0}, ("max_tokens",)),
        ({"skip_tokens": -1}, ("skip_tokens",)),
        ({"then_skip_tokens": -1}, ("then_skip_tokens",)),
    ]:
        with pytest.raises(SaescopeError) as excinfo:
            next(pack_documents(docs, tokenizer, **kwargs))
        one_line_error(excinfo, *words)
