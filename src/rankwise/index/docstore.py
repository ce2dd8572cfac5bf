"""SQLite document store: documents, passages (one row per indexed vector), metadata, content hashes.

Passage ``row`` numbers are dense 0..N-1 and are the ids used by the BM25 and vector indexes, so a hit
from either index maps straight back to its passage, document and character offsets.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.errors import IndexNotFoundError, QueryError
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


class DocStore:
    """Read/write access to ``docstore.sqlite``; thread-safe for the read paths a server uses."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        if not create and not path.is_file():
            raise IndexNotFoundError(f"index is incomplete: '{path}' is missing; rebuild the index")
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False)
        if create:
            self._conn.executescript(_SCHEMA)
        self._titles: dict[str, str] = {}

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
            except sqlite3.DatabaseError as err:
                raise IndexNotFoundError(f"document store '{self.path}' is corrupt ({err}); rebuild the index") from err

    def counts(self) -> tuple[int, int]:
        (docs,), = self._query("SELECT COUNT(*) FROM documents")
        (passages,), = self._query("SELECT COUNT(*) FROM passages")
        return int(docs), int(passages)

    def passage_hashes(self) -> list[str]:
        return [h for (h,) in self._query("SELECT content_hash FROM passages ORDER BY row")]

    def passage_doc_ids(self) -> list[str]:
        return [d for (d,) in self._query("SELECT doc_id FROM passages ORDER BY row")]

    def passages(self, rows: Sequence[int]) -> list[Passage]:
        """Passages for the given rows, in the same order."""
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        found = {
            r[0]: r for r in self._query(
                "SELECT p.row, p.passage_id, p.doc_id, p.idx, d.title, p.text, p.start, p.end, p.content_hash "
                f"FROM passages p JOIN documents d USING(doc_id) WHERE p.row IN ({marks})", rows)
        }
        return [Passage(*found[int(r)][1:]) for r in rows]

    def document(self, doc_id: str) -> Document | None:
        rows = self._query("SELECT doc_id, text, title, metadata FROM documents WHERE doc_id = ?", (doc_id,))
        if not rows:
            return None
        doc_id, text, title, metadata = rows[0]
        return Document(id=doc_id, text=text, title=title, metadata=json.loads(metadata))

    def metadata(self, doc_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not doc_ids:
            return {}
        marks = ",".join("?" * len(doc_ids))
        return {d: json.loads(m) for d, m in self._query(
            f"SELECT doc_id, metadata FROM documents WHERE doc_id IN ({marks})", doc_ids)}

    def rows_matching(self, filters: dict[str, Any]) -> np.ndarray:
        """Passage rows whose document metadata equals every ``key: value`` in ``filters``.

        A list value means "any of these". Keys are metadata field names (``category``, ``team`` ...).
        """
        clauses: list[str] = []
        params: list[Any] = []
        for key, value in filters.items():
            if not key.replace("_", "").replace("-", "").replace(".", "").isalnum():
                raise QueryError(f"invalid metadata filter key '{key}'")
            values = value if isinstance(value, list) else [value]
            clauses.append(f"json_extract(d.metadata, ?) IN ({','.join('?' * len(values))})")
            params.append(f'$."{key}"')
            params.extend(values)
        sql = "SELECT p.row FROM passages p JOIN documents d USING(doc_id)"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return np.array([r for (r,) in self._query(sql, params)], dtype=np.int64)
