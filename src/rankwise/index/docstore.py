"""SQLite document store: documents, passages (one row per indexed vector), metadata, content hashes.

Passage ``row`` numbers are dense 0..N-1 and are the ids used by the BM25 and vector indexes, so a hit
from either index maps straight back to its passage, document and character offsets.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.corpus.chunking import content_hash
from rankwise.errors import QueryError
from rankwise.index.integrity import corrupt
from rankwise.sqlite_files import connect
from rankwise.types import Document, Passage

_SCHEMA = """
CREATE TABLE documents (
    doc_id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL
);
CREATE TABLE passages (
    row INTEGER PRIMARY KEY, passage_id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    idx INTEGER NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, text TEXT NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX passages_doc ON passages(doc_id);
"""


#: the metadata field that is a document's access list: a group name or a list of them. A document without
#: it (or with ``null``) is public; one with an empty list is seen only by callers without restrictions.
ACCESS_FIELD = "groups"
#: how much memory the visible rows of recent group sets may hold (the index never changes once built; a
#: caller chooses its group set, so the cache is bounded by bytes, not by entries)
_VISIBLE_CACHE_BYTES = 64 * 2**20


class VisibleRows:
    """The passage rows each recent group set may see (an index version never changes once built; a caller
    chooses its group set, so the cache is bounded by bytes, not by entries)."""

    def __init__(self, max_bytes: int = _VISIBLE_CACHE_BYTES) -> None:
        self._rows: dict[frozenset[str], np.ndarray] = {}
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, groups: frozenset[str], compute: Callable[[frozenset[str]], np.ndarray]) -> np.ndarray:
        cached = self._rows.get(groups)
        if cached is not None:
            return cached
        rows = compute(groups)
        with self._lock:
            self._rows[groups] = rows
            while sum(v.nbytes for v in self._rows.values()) > self._max_bytes and len(self._rows) > 1:
                self._rows.pop(next(iter(self._rows)))  # the oldest first
        return rows


def forbidden(row: int) -> QueryError:
    return QueryError(f"passage row {row} is not visible to the caller's groups; refusing to return it")


def checked_passages(found: dict[int, Sequence[Any]], rows: Sequence[int], where: object) -> list[Passage]:
    """``found``'s records (``row, passage_id, doc_id, idx, title, text, start, end, content_hash``) in the
    order of ``rows``, each refused unless its text matches its content hash."""
    passages: list[Passage] = []
    for row in rows:
        record = found.get(int(row))
        if record is None:
            raise corrupt(where, f"passage row {int(row)} is missing")
        passage = Passage(*record[1:])
        if not (isinstance(passage.title, str) and isinstance(passage.text, str)
                and content_hash(passage.title, passage.text) == passage.content_hash):
            raise corrupt(where, f"the text of passage '{passage.id}' does not match its content hash")
        passages.append(passage)
    return passages


def why_nothing_matches(filters: dict[str, Any], present: Callable[[str, list[Any]], set[Any]],
                        some: Callable[[str, int], list[Any]], examples: int = 5) -> str:
    """One line on why ``filters`` match no document: the values no document has (with a few that
    exist: filter values are compared exactly, so ``security`` does not match ``Security``), or, when
    each value exists on its own, that no document has them all at once. ``present(key, values)``: which
    of ``values`` some document has; ``some(key, n)``: up to ``n`` values documents have, sorted."""
    missing = []
    for key, value in filters.items():
        wanted = value if isinstance(value, list) else [value]
        found = present(key, wanted)
        absent = [v for v in wanted if v not in found]
        if absent:
            known = some(key, examples + 1)
            shown = ", ".join(json.dumps(v, ensure_ascii=False) for v in known[:examples])
            more = ", …" if len(known) > examples else ""
            missing.append(f"no document has {key} = {' or '.join(json.dumps(v, ensure_ascii=False) for v in absent)}"
                           f" (values are matched exactly; {key} has {shown}{more})")
    if missing:
        return "; ".join(missing)
    return f"no document has all of {json.dumps(filters, ensure_ascii=False)} at once"


def metadata_filter_keys(filters: dict[str, Any]) -> None:
    """Refuse a filter key that is not a plain field name (it is put into a JSON path)."""
    for key in filters:
        if not key.replace("_", "").replace("-", "").replace(".", "").isalnum():
            raise QueryError(f"invalid metadata filter key '{key}'")


class DocStore:
    """Read/write access to ``docstore.sqlite``; thread-safe for the read paths a server uses.

    An existing store is opened read-only (SQLite ``mode=ro``): reading an index must never modify it,
    or its recorded sha256 would no longer match. It is not one of :func:`~rankwise.sqlite_files.open_database`'s
    marked stores: it is a build artifact whose whole content the index manifest verifies, written once in
    rollback-journal mode (WAL would make every reader of a read-only index directory need write access
    for its shared-memory file).
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.is_file():
            raise corrupt(path, "the file is missing")
        self.path = path
        self._lock = threading.Lock()
        self._visible = VisibleRows()
        try:
            self._conn = connect(path, check_same_thread=False, read_only=not create)
            if create:
                self._conn.executescript(_SCHEMA)
        except sqlite3.Error as err:
            raise corrupt(path, err) from None

    def close(self) -> None:
        self._conn.close()

    def add(self, document: Document, passages: Sequence[Passage], first_row: int) -> None:
        self._conn.execute(
            "INSERT INTO documents VALUES (?, ?, ?, ?)",
            (document.id, document.title, document.text, json.dumps(document.metadata, ensure_ascii=False)),
        )
        self._conn.executemany(
            "INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(first_row + i, p.id, p.doc_id, p.index, p.start, p.end, p.text, p.content_hash)
             for i, p in enumerate(passages)],
        )

    def commit(self) -> None:
        self._conn.commit()

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as err:
                raise corrupt(self.path, err) from None

    def counts(self) -> tuple[int, int]:
        (docs,), = self._query("SELECT COUNT(*) FROM documents")
        (passages,), = self._query("SELECT COUNT(*) FROM passages")
        return int(docs), int(passages)

    def check_counts(self, documents: int, passages: int) -> None:
        """Refuse a store whose rows disagree with the manifest or are not numbered ``0..passages-1``.

        The BM25 and vector indexes address passages by row number, so a missing or extra row would
        attach scores to the wrong passage.
        """
        (docs,), = self._query("SELECT COUNT(*) FROM documents")
        (count, first, last), = self._query("SELECT COUNT(*), MIN(row), MAX(row) FROM passages")
        if (docs, count) != (documents, passages):
            raise corrupt(self.path, f"{docs} documents and {count} passages, the manifest records "
                                     f"{documents} and {passages}")
        if count and (first, last) != (0, count - 1):
            raise corrupt(self.path, f"passage rows run {first}..{last}, expected 0..{count - 1}")

    def passage_hashes(self) -> list[str]:
        return [h for (h,) in self._query("SELECT content_hash FROM passages ORDER BY row")]

    def passage_doc_ids(self) -> list[str]:
        return [d for (d,) in self._query("SELECT doc_id FROM passages ORDER BY row")]

    def passages(self, rows: Sequence[int], groups: frozenset[str] | None = None) -> list[Passage]:
        """Passages for the given rows, in the same order, each checked against its stored content hash.

        The check costs one sha256 of a passage per result and means an edited or damaged passage text
        is refused instead of being shown (or reranked) as if it were what the index scored. ``groups``:
        the caller's, when restricted; a row outside them is refused (retrieval filtered it already: this
        is the second line, where text leaves the store).
        """
        if not rows:
            return []
        if groups is not None:
            hidden = np.setdiff1d(np.asarray(rows, dtype=np.int64), self.rows_visible_to(groups))
            if hidden.size:
                raise forbidden(int(hidden[0]))
        marks = ",".join("?" * len(rows))
        found = {
            r[0]: r for r in self._query(
                "SELECT p.row, p.passage_id, p.doc_id, p.idx, d.title, p.text, p.start, p.end, p.content_hash "
                f"FROM passages p JOIN documents d USING(doc_id) WHERE p.row IN ({marks})", [int(r) for r in rows])
        }
        return checked_passages(found, rows, self.path)

    def document(self, doc_id: str) -> Document | None:
        rows = self._query("SELECT doc_id, text, title, metadata FROM documents WHERE doc_id = ?", (doc_id,))
        if not rows:
            return None
        doc_id, text, title, metadata = rows[0]
        return Document(id=doc_id, text=text, title=title, metadata=self._metadata_object(doc_id, metadata))

    def documents(self, page: int = 1000) -> Iterator[Document]:
        """Every document, in the order it was indexed, read a page at a time (an update re-reads them all)."""
        last = 0
        while True:
            rows = self._query("SELECT rowid, doc_id, text, title, metadata FROM documents WHERE rowid > ? "
                               "ORDER BY rowid LIMIT ?", (last, page))
            for last, doc_id, text, title, metadata in rows:
                yield Document(id=doc_id, text=text, title=title, metadata=self._metadata_object(doc_id, metadata))
            if len(rows) < page:
                return

    def metadata(self, doc_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not doc_ids:
            return {}
        marks = ",".join("?" * len(doc_ids))
        return {d: self._metadata_object(d, m) for d, m in self._query(
            f"SELECT doc_id, metadata FROM documents WHERE doc_id IN ({marks})", doc_ids)}

    def _metadata_object(self, doc_id: str, text: Any) -> dict[str, Any]:
        try:
            metadata = json.loads(text)
        except (TypeError, ValueError):
            metadata = None
        if not isinstance(metadata, dict):
            raise corrupt(self.path, f"the metadata of document '{doc_id}' is not a JSON object")
        return metadata

    @cached_property
    def metadata_keys(self) -> frozenset[str]:
        """Every metadata key some document has (the index is immutable once built, so computed once)."""
        return frozenset(key for (key,) in self._query(
            "SELECT DISTINCT j.key FROM documents d, json_each(d.metadata) j"))

    def why_nothing_matches(self, filters: dict[str, Any], examples: int = 5) -> str:
        """One line on why ``filters`` match no document (see :func:`why_nothing_matches`)."""
        def present(key: str, wanted: list[Any]) -> set[Any]:
            path = f'$."{key}"'
            return {v for (v,) in self._query(
                f"SELECT DISTINCT json_extract(metadata, ?) FROM documents WHERE json_extract(metadata, ?) IN "
                f"({','.join('?' * len(wanted))})", [path, path, *wanted])}

        def some(key: str, limit: int) -> list[Any]:
            return [v for (v,) in self._query(
                "SELECT DISTINCT json_extract(metadata, ?) AS v FROM documents WHERE v IS NOT NULL ORDER BY v "
                f"LIMIT {limit}", [f'$."{key}"'])]

        return why_nothing_matches(filters, present, some, examples)

    def rows_visible_to(self, groups: frozenset[str]) -> np.ndarray:
        """Passage rows a caller in ``groups`` may see: public documents, and those whose access list
        (:data:`ACCESS_FIELD`) names one of the groups. Sorted, and cached per group set."""
        return self._visible.get(groups, self._rows_visible_to)

    def _rows_visible_to(self, groups: frozenset[str]) -> np.ndarray:
        path = f'$."{ACCESS_FIELD}"'
        names = sorted(groups)
        sql = ("SELECT p.row FROM passages p JOIN documents d USING(doc_id) "
               "WHERE coalesce(json_type(d.metadata, ?), 'null') = 'null'"
               + (f" OR EXISTS (SELECT 1 FROM json_each(d.metadata, ?) g WHERE g.value IN ({','.join('?' * len(names))}))"
                  if names else "") + " ORDER BY p.row")
        params = [path, path, *names] if names else [path]
        return np.array([r for (r,) in self._query(sql, params)], dtype=np.int64)

    def rows_matching(self, filters: dict[str, Any]) -> np.ndarray:
        """Passage rows whose document metadata equals every ``key: value`` in ``filters``.

        A list value means "any of these". Keys are metadata field names (``category``, ``team`` ...).
        """
        clauses: list[str] = []
        params: list[Any] = []
        metadata_filter_keys(filters)
        for key, value in filters.items():
            values = value if isinstance(value, list) else [value]
            clauses.append(f"json_extract(d.metadata, ?) IN ({','.join('?' * len(values))})")
            params.append(f'$."{key}"')
            params.extend(values)
        sql = "SELECT p.row FROM passages p JOIN documents d USING(doc_id)"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return np.array([r for (r,) in self._query(sql, params)], dtype=np.int64)
