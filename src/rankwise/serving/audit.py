"""Append-only audit and lineage log in SQLite.

One row per API request (refused ones included): request id, key id, time, endpoint, HTTP status, the
model versions that answered (reranker name + weights sha256, index fingerprint), a sha256 of the query
(the text itself is not stored: queries can be personal data), the returned document ids / input indices
with their scores, whether the answer was degraded, and the latency.

Append-only is enforced by the database, not by convention: triggers abort any UPDATE or DELETE, and the
code has no path that issues one. Anyone with write access to the file can drop the triggers, so each row
also carries ``row_hash = sha256(prev_hash + the row)``: a hash chain that ``rankwise audit verify``
recomputes, so an edited, inserted or deleted row is detected (only cutting rows off the end is not: keep
the head hash ``verify`` prints somewhere else to detect that too). The query hash is keyed (HMAC-SHA256
with a secret kept in ``<audit>.key``, mode 0600), so a short query cannot be recovered by hashing guesses,
and client-supplied text (error messages that echo input) is capped in length. Rows are written by a
dedicated thread so a slow disk never stalls the event loop; :meth:`SQLiteAuditLog.close` drains the queue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from rankwise.batched_writer import BatchedWriter, WriterTimeout
from rankwise.clock import utc_now
from rankwise.errors import RankwiseError
from rankwise.options import since_timestamp
from rankwise.sqlite_files import DatabaseKind, failure, open_database
from rankwise.storage import atomic_write_text, storable_text

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
    error TEXT,
    prev_hash TEXT,
    row_hash TEXT,
    groups TEXT
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
#: columns added after rows were first chained: part of a row's hash only when set, so rows written before
#: they existed verify unchanged (and a value written into such a row later breaks its hash)
_LATER_COLUMNS = ("groups",)


#: longest stored text field: error messages can echo client input (an unknown model name, a bad field)
MAX_TEXT = 500
GENESIS = "0" * 64


class AuditError(RankwiseError):
    """The audit database cannot be opened or queried, or a query option is malformed."""


@dataclass(slots=True)
class AuditRecord:
    request_id: str
    endpoint: str
    status: int
    latency_ms: float
    time: str = field(default_factory=lambda: utc_now("milliseconds"))
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
    #: the groups the request searched as (sorted); None: it was not restricted (or returned no documents)
    groups: list[str] | None = None


def _recognise(conn: sqlite3.Connection) -> bool:
    """An audit log written before files were marked: its ``requests`` table has the audit's columns."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    return {"seq", "status", "endpoint", "latency_ms", "results"} <= columns


def _adopt(conn: sqlite3.Connection) -> None:
    """Bring such a log to the current schema: the hash-chain and later columns (its old rows stay unchained)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    for column in ("prev_hash", "row_hash", *_LATER_COLUMNS):
        if column not in columns:
            conn.execute(f"ALTER TABLE requests ADD COLUMN {column} TEXT")


#: the audit log's file mark in SQLite's application_id ("rkau"): another database passed as --audit is refused
AUDIT_APPLICATION_ID = 0x726B6175
AUDIT_KIND = DatabaseKind(
    "audit database", AUDIT_APPLICATION_ID, 2, _SCHEMA + f"PRAGMA application_id = {AUDIT_APPLICATION_ID};\nPRAGMA user_version = 2;\n",
    AuditError,    wrong_file_fix="choose another --audit path", locked_fix="stop the other process that holds it",
    full_fix="free disk space or pass another --audit path", recognise=_recognise, adopt=_adopt,
    migrations={1: "ALTER TABLE requests ADD COLUMN groups TEXT"})


class AuditLog(Protocol):
    """What the server needs from an audit log: the contract a store behind it keeps.

    Rows are append-only and hash-chained in the order they are committed; ``record`` never blocks the
    caller (the event loop), ``flush`` is how a reader of the log waits for what was recorded before it.
    """

    def record(self, rec: AuditRecord) -> None:
        """Queue one row without waiting for the disk."""
        ...

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every row recorded before the call is committed."""
        ...

    def query_digest(self, query: str) -> str:
        """The keyed hash stored instead of the query (equal queries match, guesses cannot be checked)."""
        ...

    def close(self) -> None:
        """Commit what is queued, then release the store."""
        ...


class QueuedAuditLog:
    """What every store of the log shares: rows queued for a writer thread, and the keyed query hash.

    ``write`` chains and commits a batch on the writer thread; ``where`` names the store in messages, and
    ``wait_fix`` says what to check when queued rows are not taken in time.
    """

    def __init__(self, secret: bytes, write: Callable[[Sequence[AuditRecord]], None], where: str,
                 wait_fix: str) -> None:
        self._secret = secret
        self._where = where
        self._wait_fix = wait_fix
        self._rows: BatchedWriter[AuditRecord] = BatchedWriter(write, name="rankwise-audit")

    def record(self, rec: AuditRecord) -> None:
        """Queue one row; the writer thread chains and commits it with whatever else queued up."""
        self._rows.put(rec)

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every row recorded before the call is committed (readers of the log wait on it)."""
        try:
            self._rows.flush(timeout)
        except WriterTimeout:
            raise AuditError(f"the audit database {self._where} did not take queued rows within {timeout:g}s; "
                             f"{self._wait_fix}") from None

    def query_digest(self, query: str) -> str:
        """HMAC-SHA256 of the query under this log's secret (equal queries match, guesses cannot be checked)."""
        return hmac.new(self._secret, query.encode(), hashlib.sha256).hexdigest()

    def _stop_writer(self) -> bool:
        """Commit what is queued and stop the writer; False (and logged) when it did not stop."""
        if self._rows.close():
            return True
        log.error("the audit writer for %s did not stop; rows still queued are lost", self._where)
        return False


class SQLiteAuditLog(QueuedAuditLog):
    """The audit log in one SQLite file: ``record()`` is non-blocking; a background thread inserts and commits."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn = open_database(self.path, AUDIT_KIND, timeout=10, check_same_thread=False)
        try:
            last = self._conn.execute("SELECT row_hash FROM requests WHERE row_hash IS NOT NULL "
                                      "ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.Error as err:
            self._conn.close()
            raise failure(err, self.path, AUDIT_KIND, 10, "reading its last row") from None
        self._head = last[0] if last else GENESIS
        super().__init__(_load_secret(self.path.with_name(self.path.name + ".key")), self._write, f"'{self.path}'",
                         "check that its disk is responsive")

    def close(self) -> None:
        """Commit what is queued, then close the database."""
        if self._stop_writer():
            self._conn.close()

    def _write(self, batch: Sequence[AuditRecord]) -> None:
        """Chain and commit one batch (on the writer thread): one transaction, one fsync."""
        sql = f"INSERT INTO requests ({', '.join(STORED_COLUMNS)}) VALUES ({', '.join('?' * len(STORED_COLUMNS))})"
        rows, head = chained_rows(batch, self._head)
        try:
            with self._conn:
                self._conn.executemany(sql, rows)
            self._head = head
        except sqlite3.Error:
            log.exception("could not write %d audit rows to %s", len(batch), self.path)


def _row(rec: AuditRecord) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The values of :data:`_COLUMNS` and of :data:`_LATER_COLUMNS`, as stored."""
    data = asdict(rec)
    data["groups"] = json.dumps(rec.groups, ensure_ascii=False) if rec.groups is not None else None
    data["degraded"] = int(rec.degraded)
    data["results"] = json.dumps(rec.results, ensure_ascii=False)
    for name in ("error", "reranker", "key_id"):
        value = data[name]
        if isinstance(value, str) and len(value) > MAX_TEXT:
            data[name] = value[:MAX_TEXT] + f"… ({len(value)} characters)"
    return (tuple(storable_text(data[c]) for c in _COLUMNS),
            tuple(storable_text(data[c]) for c in _LATER_COLUMNS))


def _hashed(row: tuple[Any, ...], later: tuple[Any, ...]) -> tuple[Any, ...]:
    """What a row's link covers: its first columns, and the later ones when any of them is set."""
    return (*row, *later) if any(value is not None for value in later) else row


def chain_hash(prev_hash: str, row: tuple[Any, ...]) -> str:
    """The row's link in the chain: sha256 of the previous link and the row's values (canonical JSON)."""
    payload = json.dumps([prev_hash, *row], ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _load_secret(path: Path) -> bytes:
    """The log's HMAC key: created once (0600, written aside and renamed), then read on every start."""
    if not path.exists():
        atomic_write_text(path, secrets.token_hex(32), private=True)
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as err:
        raise AuditError(f"audit key file '{path}' is unreadable ({err}); restore it from a backup (query hashes "
                         "in the log were made with it)") from err


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What ``rankwise audit verify`` found: rows checked, rows written before the chain, the first break."""

    rows: int
    unchained: int
    head: str
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_chain(path: Path) -> ChainReport:
    """Recompute every row's link; the first row whose stored hashes do not follow is where tampering began."""
    if not Path(path).is_file():
        raise AuditError(f"no audit database at '{path}'; pass the --audit path the server was started with")
    conn = open_database(Path(path), AUDIT_KIND, timeout=10, read_only=True)
    try:
        cursor = conn.execute(f"SELECT seq, {', '.join(_selected(conn))}, prev_hash, row_hash FROM requests "
                              "ORDER BY seq")
        return check_chain(cursor)
    except sqlite3.DatabaseError as err:
        raise AuditError(f"'{path}' is not a readable rankwise audit database ({err})") from err
    finally:
        conn.close()


def check_chain(stored: Iterable[Sequence[Any]]) -> ChainReport:
    """The chain check over ``(seq, *COLUMNS, *LATER_COLUMNS, prev_hash, row_hash)`` rows in ``seq`` order,
    whichever database they come from."""
    head, rows, unchained, started = GENESIS, 0, 0, False
    for seq, *values in stored:
        columns, prev_hash, row_hash = tuple(values[:-2]), values[-2], values[-1]
        row = _hashed(columns[:len(_COLUMNS)], columns[len(_COLUMNS):])
        if row_hash is None and not started:
            unchained += 1
            continue
        started = True
        rows += 1
        if prev_hash != head:
            return ChainReport(rows, unchained, head, seq, "its prev_hash does not match the row before it "
                               "(a row was deleted or inserted)")
        if row_hash != chain_hash(prev_hash, row):
            return ChainReport(rows, unchained, head, seq, "its contents do not match its hash (the row was edited)")
        head = row_hash
    return ChainReport(rows, unchained, head)


def chained_rows(batch: Sequence[AuditRecord], head: str) -> tuple[list[tuple[Any, ...]], str]:
    """``batch`` as stored rows (``*COLUMNS, *LATER_COLUMNS, prev_hash, row_hash``) chained after ``head``,
    and the new head."""
    rows = []
    for rec in batch:
        row, later = _row(rec)
        row_hash = chain_hash(head, _hashed(row, later))
        rows.append((*row, *later, head, row_hash))
        head = row_hash
    return rows, head


#: the stored columns in insert order
STORED_COLUMNS = (*_COLUMNS, *_LATER_COLUMNS, "prev_hash", "row_hash")


def decoded(values: Sequence[Any]) -> dict[str, Any]:
    """One row of ``(*COLUMNS, *LATER_COLUMNS)`` as ``rankwise audit`` shows it (JSON fields decoded)."""
    item = dict(zip((*_COLUMNS, *_LATER_COLUMNS), values, strict=True))
    item["degraded"] = bool(item["degraded"])
    item["results"] = json.loads(item["results"])
    item["groups"] = json.loads(item["groups"]) if item["groups"] is not None else None
    return item


def _selected(conn: sqlite3.Connection) -> list[str]:
    """Every column of a row, NULL for a later one a log opened read-only has not been upgraded to hold."""
    present = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
    return [*_COLUMNS, *(c if c in present else "NULL" for c in _LATER_COLUMNS)]


def parse_since(value: str, now: datetime | None = None) -> str:
    """A ``--since`` value as the UTC text the log's ``time`` column is compared with."""
    return since_timestamp(value, now, error=AuditError)


def row_filter(since: str | None, key_id: str | None, limit: int, *, mark: str) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (or "") and parameters of ``rankwise audit``'s options, the limit last; ``mark`` is
    the database's parameter placeholder."""
    if limit <= 0:
        raise AuditError("--limit must be positive")
    clauses: list[str] = []
    params: list[Any] = []
    if since:
        clauses.append(f"time >= {mark}")
        params.append(parse_since(since))
    if key_id:
        clauses.append(f"key_id = {mark}")
        params.append(key_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), [*params, limit]


def read_audit(path: Path, *, since: str | None = None, key_id: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    """Newest rows first, as dicts (``results`` decoded)."""
    if not Path(path).is_file():
        raise AuditError(f"no audit database at '{path}'; pass the --audit path the server was started with")
    where, params = row_filter(since, key_id, limit, mark="?")
    conn = open_database(Path(path), AUDIT_KIND, timeout=10, read_only=True)
    try:
        sql = f"SELECT {', '.join(_selected(conn))} FROM requests{where} ORDER BY seq DESC LIMIT ?"
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.DatabaseError as err:
        raise AuditError(f"'{path}' is not a readable rankwise audit database ({err})") from err
    finally:
        conn.close()
    return [decoded(row) for row in rows]
