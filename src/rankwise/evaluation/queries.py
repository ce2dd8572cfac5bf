"""Read a file of queries (production logs, BEIR ``queries.jsonl``, TREC topics as TSV).

Accepted layouts, chosen by extension:

* ``.jsonl``: one object a line with the text in ``query`` or ``text`` and an optional id in
  ``query_id``, ``_id``, ``id`` or ``qid`` (so a BEIR ``queries.jsonl`` works as is);
* ``.csv`` / ``.tsv`` with a header naming a ``query``/``text`` column (and optionally an id column);
  a ``.tsv`` without such a header is read as ``id<TAB>text`` (the TREC / MS MARCO topics layout);
* anything else: plain text, one query a line.

Queries without an id get a stable one derived from their text (``q-`` + 10 hex digits of its sha1), so
re-exporting a log with lines added or reordered keeps every id, and labelling sheets built at different
times still merge.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path

from rankwise.evaluation.errors import EvaluationError
from rankwise.jsonl import parse_json_object, read_lines

_ID_KEYS = ("query_id", "_id", "id", "qid")
_TEXT_KEYS = ("query", "text")


def stable_query_id(text: str) -> str:
    """``q-`` + the first 10 hex digits of sha1 of the whitespace-normalised text."""
    return "q-" + hashlib.sha1(" ".join(text.split()).encode()).hexdigest()[:10]


def read_queries(path: str | Path) -> dict[str, str]:
    """``{query_id: text}`` in file order; blank lines skipped, repeated identical queries kept once.

    Raises :class:`EvaluationError` when the file is missing, empty, malformed, or gives one id two
    different texts.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"query file '{path}' does not exist")
    queries: dict[str, str] = {}
    for where, query_id, text in _records(path):
        text = text.strip()
        if not text:
            continue
        query_id = query_id.strip() if query_id and query_id.strip() else stable_query_id(text)
        if queries.get(query_id, text) != text:
            raise EvaluationError(f"{where}: query id '{query_id}' appears with two different texts; "
                                  "give each query its own id")
        queries[query_id] = text
    if not queries:
        raise EvaluationError(f"{path}: no queries found (empty file?)")
    return queries


def _records(path: Path) -> Iterator[tuple[str, str | None, str]]:
    """``(location, id or None, text)`` for each record of the file."""
    suffix = path.suffix.lower()
    lines = read_lines(path, EvaluationError)  # bad bytes: one line with file and line number, BOM dropped
    if suffix == ".jsonl":
        for lineno, line in lines:
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            record = parse_json_object(line, where, EvaluationError)
            yield where, _first(record, _ID_KEYS), _required_text(record, where)
    elif suffix in (".csv", ".tsv"):
        rows = csv.reader((line for _, line in lines), delimiter="\t" if suffix == ".tsv" else ",")
        first_row = next(rows, [])
        header = [h.strip().lower() for h in first_row]
        if any(h in _TEXT_KEYS for h in header):
            for lineno, row in enumerate(rows, 2):
                if any(cell.strip() for cell in row):
                    record = dict(zip(header, row, strict=False))
                    yield f"{path}:{lineno}", _first(record, _ID_KEYS), _required_text(record, f"{path}:{lineno}")
        elif suffix == ".tsv":
            for lineno, row in enumerate([first_row, *rows], 1):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < 2:
                    raise EvaluationError(f"{path}:{lineno}: expected 'query_id<TAB>query text'")
                yield f"{path}:{lineno}", row[0], "\t".join(row[1:])
        else:
            raise EvaluationError(f"{path}: the CSV header needs a 'query' (or 'text') column")
    else:
        for lineno, line in lines:
            yield f"{path}:{lineno}", None, line


def _first(record: dict[str, object], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = record.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return None


def _required_text(record: dict[str, object], where: str) -> str:
    text = _first(record, _TEXT_KEYS)
    if text is None:
        raise EvaluationError(f"{where}: no query text (expected a 'query' or 'text' field)")
    return text
