"""Read documents from the formats users actually have.

* a BEIR directory (``corpus.jsonl`` or ``corpus.jsonl.gz``, plus ``queries.jsonl`` and ``qrels/*.tsv``),
* a JSONL or CSV file with ``id``/``_id``, ``title``, ``text`` and any other columns (kept as metadata),
* a directory of ``.txt``/``.md``/``.html`` files (the relative path is the document id).

Loaders are generators so a large corpus is never held twice; they validate as they go and raise
:class:`~rankwise.errors.CorpusError` naming the file and line of the first bad record — including bytes
that are not UTF-8, binary files, truncated ``.gz`` files and fields of the wrong JSON type. Files are
read as UTF-8 with an optional byte-order mark (spreadsheet exports add one).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rankwise.errors import CorpusError
from rankwise.jsonl import parse_json_object, read_lines
from rankwise.types import Document

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm")
_ID_KEYS = ("_id", "id", "doc_id", "docid")
#: the csv module's default field limit is 128 KiB; a long document in one cell is legitimate
_CSV_FIELD_LIMIT = 2**31 - 1


def _json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "true/false" if isinstance(value, bool) else "null"
    return {str: "a string", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__)


def _record_to_document(record: dict[str, Any], where: str) -> Document:
    doc_id = next((record[k] for k in _ID_KEYS if record.get(k) not in (None, "")), None)
    if doc_id is None:
        raise CorpusError(f"{where}: record has no id (expected one of {', '.join(_ID_KEYS)})")
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int | float):
        raise CorpusError(f"{where}: the id must be a string or a number, found {_json_type(doc_id)}")
    title = record.get("title") or ""
    text = record.get("text")
    if text is None:
        text = record.get("contents") or record.get("body") or ""
    if not isinstance(text, str) or not isinstance(title, str):
        raise CorpusError(f"{where}: 'title' and 'text' must be strings")
    metadata = record.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise CorpusError(f"{where}: 'metadata' must be a JSON object such as {{\"team\": \"sre\"}}, "
                          f"found {_json_type(metadata)}")
    metadata = dict(metadata)
    reserved = set(_ID_KEYS) | {"title", "text", "contents", "body", "metadata"}
    metadata.update({k: v for k, v in record.items() if k not in reserved and v not in (None, "")})
    return Document(id=str(doc_id), title=title.strip(), text=text.strip(), metadata=metadata)


def load_jsonl(path: str | Path) -> Iterator[Document]:
    """Documents from a JSONL(.gz) file, one JSON object per line."""
    path = Path(path)
    for lineno, line in read_lines(path, CorpusError):
        if not line.strip():
            continue
        record = parse_json_object(line, f"{path}:{lineno}", CorpusError)
        yield _record_to_document(record, f"{path}:{lineno}")


def load_csv(path: str | Path) -> Iterator[Document]:
    """Documents from a CSV file with a header row (``id``, ``title``, ``text``, extra columns → metadata).

    A ``metadata`` column, if present, holds a JSON object per row. Error line numbers are the file's
    physical lines (a quoted field may span several).
    """
    path = Path(path)
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.DictReader(line for _, line in read_lines(path, CorpusError))
    try:
        if not reader.fieldnames or not {"text", "contents", "body"} & set(reader.fieldnames):
            raise CorpusError(f"{path}: CSV needs a header row with an id column and a 'text' column")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise CorpusError(f"{where}: more fields than header columns; quote fields containing commas")
            record: dict[str, Any] = dict(row)
            if "metadata" in record:
                cell = record["metadata"]
                record["metadata"] = parse_json_object(cell, f"{where}: column 'metadata'", CorpusError) if cell else None
            yield _record_to_document(record, where)
    except csv.Error as err:
        raise CorpusError(f"{path}:{reader.line_num}: unreadable CSV ({err}); check the quoting") from None


_TAG_HEADING = re.compile(r"^\s{0,3}#\s+(.+)$", re.MULTILINE)


def _read_text_file(path: Path, root: Path) -> Document:
    """One document from a text file; stray invalid bytes become U+FFFD, but a binary file is refused."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read '{path}' ({err.strerror or err})") from None
    if b"\0" in data:
        raise CorpusError(f"{path}: binary data (a NUL byte) in a text file; remove it or save it as UTF-8 text")
    raw = data.decode("utf-8-sig", errors="replace")
    doc_id = path.relative_to(root).as_posix()
    if path.suffix in (".html", ".htm"):
        from bs4 import BeautifulSoup

        soup = BeautifulSoup(raw, "html.parser")
        for tag in soup(["script", "style", "noscript"]):
            tag.decompose()
        title = soup.title.get_text(" ", strip=True) if soup.title else ""
        text = soup.body.get_text("\n", strip=True) if soup.body else soup.get_text("\n", strip=True)
    else:
        heading = _TAG_HEADING.search(raw) if path.suffix in (".md", ".markdown") else None
        title = heading.group(1).strip() if heading else ""
        text = raw.strip()
    return Document(id=doc_id, title=title or path.stem, text=text, metadata={"path": doc_id})


def load_directory(path: str | Path) -> Iterator[Document]:
    """Every ``.txt``/``.md``/``.html`` file below ``path`` (sorted, so ids and order are stable)."""
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        yield _read_text_file(file, root)


def beir_corpus_file(path: Path) -> Path | None:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (path / name).is_file():
            return path / name
    return None


def documents_of(source: str | Path | Iterable[Document]) -> tuple[str, Iterator[Document]]:
    """A source's name for messages and manifests, and its documents: a path is loaded
    (:func:`load_documents`), documents already in memory are taken as they are (``<documents>``)."""
    if isinstance(source, (str, Path)):
        return str(source), load_documents(source)
    return "<documents>", iter(source)


def load_documents(source: str | Path) -> Iterator[Document]:
    """Pick the loader from the shape of ``source``; see the module docstring for the formats."""
    path = Path(source).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus source '{source}' does not exist")
    if path.is_dir():
        corpus = beir_corpus_file(path)
        return load_jsonl(corpus) if corpus else load_directory(path)
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return load_jsonl(path)
    if suffixes.endswith((".csv", ".csv.gz")):
        return load_csv(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        return (_read_text_file(path, path.parent) for _ in (0,))
    raise CorpusError(
        f"don't know how to read '{source}': use a BEIR directory, a .jsonl/.csv file or a directory of .txt/.md/.html"
    )


def validated(documents: Iterable[Document], source: str | Path) -> Iterator[Document]:
    """Reject duplicate ids and an empty corpus; skip documents with no text at all."""
    seen: set[str] = set()
    for doc in documents:
        if doc.id in seen:
            raise CorpusError(f"{source}: duplicate document id '{doc.id}'; ids must be unique")
        seen.add(doc.id)
        if doc.text or doc.title:
            yield doc
    if not seen:
        raise CorpusError(f"{source}: the corpus is empty (no documents found)")
