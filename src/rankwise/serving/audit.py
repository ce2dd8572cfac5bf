"""Append-only audit and lineage log in SQLite.

One row per API request (refused ones included): request id, key id, time, endpoint, HTTP status, the
model versions that answered (reranker name + weights sha256, index fingerprint), a sha256 of the query
(the text itself is not stored: queries can be personal data), the returned document ids / input indices
with their scores, whether the answer was degraded, and the latency.

Append-only is enforced by the database, not by convention: triggers abort any UPDATE or DELETE, and the
code has no path that issues one. Rows are written by a dedicated thread so a slow disk never stalls the
event loop; :meth:`AuditLog.close` drains the queue before the server exits.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rankwise.errors import RankwiseError

log = logging.getLogger("rankwise.serving")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    key_id TEXT,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    reranker TEXT,
    reranker_sha256 TEXT,
    index_fingerprint TEXT,
    query_sha256 TEXT,
    degraded INTEGER NOT NULL,
    cache_hits INTEGER,
    latency_ms REAL NOT NULL,
    results TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE INDEX IF NOT EXISTS requests_key ON requests(key_id, time);
CREATE TRIGGER IF NOT EXISTS requests_no_update BEFORE UPDATE ON requests
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be updated'); END;
CREATE TRIGGER IF NOT EXISTS requests_no_delete BEFORE DELETE ON requests
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: rows cannot be deleted'); END;
"""
_COLUMNS = ("request_id", "time", "key_id", "endpoint", "status", "reranker", "reranker_sha256",
            "index_fingerprint", "query_sha256", "degraded", "cache_hits", "latency_ms", "results", "error")


class AuditError(RankwiseError):
    """The audit database cannot be opened or queried, or a query option is malformed."""


@dataclass(slots=True)
class AuditRecord:
    request_id: str
    endpoint: str
    status: int
    latency_ms: float
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds"))
    key_id: str | None = None
    reranker: str | None = None
    reranker_sha256: str | None = None
    index_fingerprint: str | None = None
    query_sha256: str | None = None
    degraded: bool = False
    cache_hits: int | None = None
    #: ``[{"doc_id": ..., "score": ...}]`` for search, ``[{"index": ..., "score": ...}]`` for rerank
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn
    except sqlite3.Error as err:
        raise AuditError(f"cannot open audit database '{path}' ({err}); pass a writable --audit path") from err


class AuditLog:
    """Writer side: ``record()`` is non-blocking; a background thread inserts and commits."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path)
        try:
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise AuditError(f"'{self.path}' is not a rankwise audit database ({err}); choose another --audit path") from err
        self._queue: queue.Queue[AuditRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="rankwise-audit", daemon=True)
        self._thread.start()

    def record(self, rec: AuditRecord) -> None:
        self._queue.put(rec)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)
        self._conn.close()

    def _run(self) -> None:
        sql = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        while (first := self._queue.get()) is not None:
            batch = [first]
            stop = False
            while not self._queue.empty():  # commit whatever queued up together: one fsync per batch
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                with self._conn:
                    self._conn.executemany(sql, [_row(r) for r in batch])
            except sqlite3.Error:
                log.exception("could not write %d audit rows to %s", len(batch), self.path)
            if stop:
                return


def _row(rec: AuditRecord) -> tuple[Any, ...]:
    data = asdict(rec)
    data["degraded"] = int(rec.degraded)
    data["results"] = json.dumps(rec.results, ensure_ascii=False)
    return tuple(data[c] for c in _COLUMNS)


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str, now: datetime | None = None) -> str:
    """``30m``/``2h``/``7d`` (ago) or an ISO 8601 time → the ISO UTC timestamp the log is compared with."""
    value = value.strip()
    match = _RELATIVE.match(value)
    if match:
        moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    else:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as err:
            raise AuditError(f"--since '{value}' is neither a duration like 30m, 2h, 7d nor an ISO time "
                             "like 2025-01-31T12:00") from err
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def read_audit(path: Path, *, since: str | None = None, key_id: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    """Newest rows first, as dicts (``results`` decoded)."""
    if not Path(path).is_file():
        raise AuditError(f"no audit database at '{path}'; pass the --audit path the server was started with")
    if limit <= 0:
        raise AuditError("--limit must be positive")
    clauses: list[str] = []
    params: list[Any] = []
    if since:
        clauses.append("time >= ?")
        params.append(parse_since(since))
    if key_id:
        clauses.append("key_id = ?")
        params.append(key_id)
    sql = f"SELECT {', '.join(_COLUMNS)} FROM requests"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY seq DESC LIMIT ?"
    params.append(limit)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as err:
        raise AuditError(f"'{path}' is not a readable rankwise audit database ({err})") from err
    finally:
        conn.close()
    out = []
    for row in rows:
        item = dict(zip(_COLUMNS, row, strict=True))
        item["degraded"] = bool(item["degraded"])
        item["results"] = json.loads(item["results"])
        out.append(item)
    return out
