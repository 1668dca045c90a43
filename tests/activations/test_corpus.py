"""Corpus loading and token packing, with a tiny BPE tokenizer trained offline in the test."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from saescope.activations import corpus
from saescope.activations.corpus import (
    Document,
    PackedBatch,
    encode_documents,
    iter_documents,
    load_documents,
    pack_documents,
)
from saescope.errors import SaescopeError

PAD, BOS, EOS = 0, 1, 2


@pytest.fixture(scope="module")
def wiki() -> list[Document]:
    return load_documents("wiki")


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


def one_line_error(excinfo: pytest.ExceptionInfo[SaescopeError], *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    for word in words:
        assert word in message, message
    return message


# ---------------------------------------------------------------- documents


def test_embedded_wiki_corpus(wiki: list[Document]) -> None:
    assert 10_000 <= len(wiki) <= 10_033
    assert [doc.doc_id for doc in wiki] == list(range(len(wiki)))
    titles = [doc.title for doc in wiki]
    assert titles == sorted(titles)
    assert "2001: A Space Odyssey" in titles
    topics = {doc.topic for doc in wiki}
    assert {"People", "Mathematics", "Arts", "Geography"} <= topics
    assert all(doc.text.strip() for doc in wiki)

    streamed = iter_documents("embedded")
    assert [next(streamed) for _ in range(5)] == wiki[:5]
    assert load_documents("wiki", limit=3) == wiki[:3]


def test_txt_blocks(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First line\nsecond line\n\n\n\nSecond block\n   \nThird block\n", encoding="utf-8")
    docs = list(iter_documents(str(path)))
    assert docs == [
        Document(0, "First line\nsecond line"),
        Document(1, "Second block"),
        Document(2, "Third block"),
    ]


def test_jsonl_fields_and_empty_records(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    records = [
        {"body": "alpha text", "title": "A", "topic": "T1", "extra": 1},
        {"body": "   "},
        {"body": None},
        {"body": "beta text"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    docs = list(iter_documents(str(path), text_field="body"))
    assert docs == [Document(0, "alpha text", "A", "T1"), Document(1, "beta text")]


def test_parquet_reads_across_row_batches(tmp_path: Path) -> None:
    n = corpus.PARQUET_BATCH_ROWS * 2 + 5
    table = pa.table(
        {
            "content": [f"row {i} text" for i in range(n)],
            "title": [f"t{i}" for i in range(n)],
            "other": list(range(n)),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=700)
    docs = list(iter_documents(str(path), text_field="content"))
    assert len(docs) == n
    assert docs[-1] == Document(n - 1, f"row {n - 1} text", f"t{n - 1}", "")
    assert [d.text for d in docs[:3]] == ["row 0 text", "row 1 text", "row 2 text"]


def test_directory_in_sorted_order_with_running_ids(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("bee one\n\nbee two\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "ay"}) + "\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    pq.write_table(pa.table({"text": ["sea"]}), tmp_path / "sub" / "c.parquet")
    (tmp_path / "README.md").write_text("not a corpus file", encoding="utf-8")
    docs = list(iter_documents(str(tmp_path)))
    assert [(d.doc_id, d.text) for d in docs] == [(0, "ay"), (1, "bee one"), (2, "bee two"), (3, "sea")]
    assert load_documents(str(tmp_path), limit=2) == docs[:2]


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents(str(tmp_path / "nope.jsonl"))
    one_line_error(excinfo, "nope.jsonl", "does not exist")
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents("./no_such_folder")
    one_line_error(excinfo, "no_such_folder", "does not exist")


def test_empty_files(tmp_path: Path) -> None:
    for name, content in [("empty.txt", ""), ("blank.txt", "\n  \n\n"), ("empty.jsonl", '{"text": ""}\n')]:
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(SaescopeError) as excinfo:
            iter_documents(str(tmp_path / name))
        one_line_error(excinfo, name, "no non-empty documents")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents(str(tmp_path / "empty.parquet"))
    one_line_error(excinfo, "empty.parquet", "no non-empty documents")


def test_empty_file_later_in_a_folder_fails_when_reached(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("", encoding="utf-8")
    docs = iter_documents(str(tmp_path))
    assert next(docs).text == "fine"
    with pytest.raises(SaescopeError, match="b.txt"):
        next(docs)


def test_wrong_text_field_lists_available_fields(tmp_path: Path) -> None:
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"content": "x", "title": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents(str(jsonl))
    one_line_error(excinfo, "'text' not found", "'content'", "'title'")

    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x"], "lang": ["en"]}), parquet)
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents(str(parquet), text_field="content")
    one_line_error(excinfo, "'content' not found", "'body'", "'lang'")


def test_bad_formats(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents(str(csv))
    one_line_error(excinfo, "unknown dataset format", ".csv")

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    docs = iter_documents(str(broken))
    with pytest.raises(SaescopeError) as excinfo:
        list(docs)
    one_line_error(excinfo, "line 2", "not valid JSON")

    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_bytes(b"definitely not parquet")
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents(str(not_parquet))
    one_line_error(excinfo, "fake.parquet", "parquet")

    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents(str(tmp_path / "empty_dir"))
    one_line_error(excinfo, "holds no")


def test_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nlong multi-line report")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(SaescopeError) as excinfo:
        iter_documents("someone/some-corpus")
    one_line_error(excinfo, "someone/some-corpus", "hub could not be reached", "local")


def test_hub_rows_name_config_and_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": "one", "title": "T"}, {"text": ""}, {"text": "two"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    docs = list(iter_documents("owner/corpus:en", split="validation"))
    assert calls == [("owner/corpus", "en", "validation", True)]
    assert docs == [Document(0, "one", "T"), Document(1, "two")]

    with pytest.raises(SaescopeError) as excinfo:
        iter_documents("owner/corpus", text_field="content")
    one_line_error(excinfo, "'content' not found", "'text'", "'title'")


def test_hub_error_while_streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def rows():
        yield {"text": "first"}
        raise TimeoutError("read timed out")

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: rows())
    docs = iter_documents("owner/corpus")
    assert next(docs).text == "first"
    with pytest.raises(SaescopeError) as excinfo:
        next(docs)
    one_line_error(excinfo, "streaming", "TimeoutError")


# ---------------------------------------------------------------- packing


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
    ]:
        with pytest.raises(SaescopeError) as excinfo:
            next(pack_documents(docs, tokenizer, **kwargs))
        one_line_error(excinfo, *words)
