"""The query log and feedback store: served requests, feedback events and shadow rankings, in SQLite.

:class:`FeedbackStore` is the protocol the server, the shadow runner and ``rankwise feedback`` use;
:class:`SQLiteFeedbackStore` implements it on one SQLite file in WAL mode (readers never block the writer).
A server-side database would implement the same small protocol, so the SQL here stays plain.

Why the write paths differ:

* :meth:`~SQLiteFeedbackStore.log_request` and :meth:`~SQLiteFeedbackStore.record_shadow` run on the
  request path and must never wait for the disk. They enqueue the row for a writer thread that commits
  whatever queued up in one transaction (one fsync per batch, as :mod:`rankwise.serving.audit` does). Feedback
  can arrive before that commit — a user clicks within milliseconds of the answer — so the most recent
  requests are also kept in a bounded in-memory LRU that :meth:`~SQLiteFeedbackStore.get_request` reads
  first.
* :meth:`~SQLiteFeedbackStore.add_event` is synchronous: the intake endpoint answers whether the event was
  stored, and a client retry must be told "duplicate" (``event_id`` is the primary key; a reused id with
  different content raises :class:`FeedbackConflict`).

Rows are append-only, enforced by the database: triggers abort every UPDATE, and every DELETE except those
of the retention purge. :meth:`~SQLiteFeedbackStore.purge` writes its cutoff into the ``retention`` table
inside the purge transaction; the delete triggers let a row go only when it is older than that cutoff (or is
feedback on a request older than it), and the cutoff row is removed before the transaction commits, so no
other connection ever sees one. Each write is one SQLite transaction: a crash leaves the rows committed
before it and none of a torn batch.

A feedback database is recognised by SQLite's ``application_id`` header field (``PRAGMA application_id``),
so pointing the store at another SQLite file (the audit log, say) is refused before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, fields, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from rankwise import options
from rankwise.batched_writer import BatchedWriter, WriterTimeout
from rankwise.errors import RankwiseError
from rankwise.feedback.events import FeedbackEvent, LoggedRequest, LoggedResult, ShadowRecord
from rankwise.sqlite_files import DatabaseKind, failure, open_database
from rankwise.storage import storable_text

log = logging.getLogger("rankwise.feedback")

AddOutcome = Literal["stored", "duplicate"]

#: ``PRAGMA application_id`` of a rankwise feedback database ("rkfb")
APPLICATION_ID = 0x726B6662
#: 2: requests.signals (label-free drift signals); 3: the server's retention policy; 4: requests.other_model
#: (interleaving's second arm) and shadow.outcome (dropped and failed offers are kept, for coverage)
SCHEMA_VERSION = 4
#: how many recent requests :meth:`SQLiteFeedbackStore.get_request` finds without the database
RECENT_REQUESTS = 10_000
#: most rows the writer thread commits in one transaction
_BATCH = 1_000
#: busy timeouts the writer waits out before it counts a batch as lost (another process holding the file)
_BUSY_RETRIES = 2
#: a wait for the store's lock shorter than this leaves SQLite's busy timeout as it is
_BUSY_SLACK_MS = 50
#: SQLite's limit on bound parameters is 32766 (999 before 3.32); stay well below either
_CHUNK = 500

#: the serving policy the file is kept under (``retention_s``: seconds), so tools run after the server apply it
_POLICY = "CREATE TABLE IF NOT EXISTS policy (name TEXT PRIMARY KEY, value TEXT NOT NULL)"

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model TEXT,
    model_sha256 TEXT,
    key_id TEXT,
    user_id TEXT,
    query TEXT,
    query_sha256 TEXT,
    experiment TEXT,
    arm TEXT,
    latency_ms REAL,
    degraded INTEGER NOT NULL,
    results TEXT NOT NULL,
    signals TEXT NOT NULL DEFAULT '{{}}',
    other_model TEXT
);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE INDEX IF NOT EXISTS requests_experiment ON requests(experiment, time);
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    signal TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    rank INTEGER NOT NULL,
    value REAL,
    user_id TEXT,
    key_id TEXT,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_request ON events(request_id);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE TABLE IF NOT EXISTS shadow (
    request_id TEXT NOT NULL,
    time TEXT NOT NULL,
    production_model TEXT NOT NULL,
    shadow_model TEXT NOT NULL,
    kendall_tau REAL,
    top5_overlap REAL NOT NULL,
    largest_moves TEXT NOT NULL,
    shadow_ranking TEXT NOT NULL,
    shadow_ms REAL NOT NULL,
    outcome TEXT NOT NULL DEFAULT 'scored'
);
CREATE INDEX IF NOT EXISTS shadow_time ON shadow(time);
CREATE INDEX IF NOT EXISTS shadow_request ON shadow(request_id);
-- holds one row (the purge cutoff) only inside a purge transaction
CREATE TABLE IF NOT EXISTS retention (purge_before TEXT NOT NULL);
{_POLICY};
{"".join(f'''
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'the feedback store is append-only: rows cannot be updated'); END;''' for table in
        ("requests", "events", "shadow"))}
CREATE TRIGGER IF NOT EXISTS requests_retention_only BEFORE DELETE ON requests
WHEN OLD.time >= (SELECT COALESCE(MAX(purge_before), '') FROM retention)
BEGIN SELECT RAISE(ABORT, 'feedback rows are deleted only by the retention purge'); END;
{"".join(f'''
CREATE TRIGGER IF NOT EXISTS {table}_retention_only BEFORE DELETE ON {table}
WHEN OLD.time >= (SELECT COALESCE(MAX(purge_before), '') FROM retention)
 AND OLD.request_id NOT IN (SELECT request_id FROM requests
                            WHERE time < (SELECT COALESCE(MAX(purge_before), '') FROM retention))
BEGIN SELECT RAISE(ABORT, 'feedback rows are deleted only by the retention purge'); END;''' for table in
        ("events", "shadow"))}
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

REQUEST_COLUMNS = tuple(f.name for f in fields(LoggedRequest))
EVENT_COLUMNS = tuple(f.name for f in fields(FeedbackEvent))
SHADOW_COLUMNS = tuple(f.name for f in fields(ShadowRecord))


def _insert(table: str, columns: tuple[str, ...]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


class FeedbackStoreError(RankwiseError):
    """The feedback database cannot be opened, written or queried; the message names the path and the fix."""


class FeedbackConflict(FeedbackStoreError):
    """An ``event_id`` already names a different event (a client reused an id instead of retrying)."""


_KIND = DatabaseKind("feedback database", APPLICATION_ID, SCHEMA_VERSION, _SCHEMA, FeedbackStoreError,
                     wrong_file_fix="pass a new or existing feedback database path",
                     locked_fix="stop the other writer or retry",
                     full_fix="free space or purge old rows with a shorter retention",
                     migrations={1: "ALTER TABLE requests ADD COLUMN signals TEXT NOT NULL DEFAULT '{}'", 2: _POLICY,
                                 3: "ALTER TABLE requests ADD COLUMN other_model TEXT; "
                                    "ALTER TABLE shadow ADD COLUMN outcome TEXT NOT NULL DEFAULT 'scored'"})


class FeedbackStore(Protocol):
    """What the server, the shadow runner and the feedback CLI need from a query log + feedback store.

    ``since`` / ``until`` / ``older_than`` take ``30m``, ``2h``, ``7d`` (ago) or an ISO 8601 time
    (:func:`since_timestamp`); reads see everything logged through the same store before the call.
    """

    def log_request(self, req: LoggedRequest) -> None:
        """Record an answered request without waiting for the disk."""
        ...

    def get_request(self, request_id: str) -> LoggedRequest | None: ...

    def add_event(self, event: FeedbackEvent) -> AddOutcome:
        """Store one event durably; ``"duplicate"`` when the same event was stored before."""
        ...

    def record_shadow(self, rec: ShadowRecord) -> None:
        """Record a shadow comparison without waiting for the disk."""
        ...

    def shadow_records(self, since: str | None = None) -> list[ShadowRecord]: ...

    def requests(self, since: str | None = None, until: str | None = None,
                 experiment: str | None = None) -> Iterator[LoggedRequest]: ...

    def events(self, since: str | None = None,
               request_ids: Collection[str] | None = None) -> list[FeedbackEvent]: ...

    def purge(self, older_than: str) -> int:
        """Delete requests older than the cutoff, their events and shadow rows; how many rows went."""
        ...

    def health(self) -> str | None:
        """What is wrong with the store right now (shown in ``/readyz``), or None."""
        ...

    def set_retention(self, seconds: float | None) -> None:
        """Record the retention the server keeps rows under (None: kept until purged by hand)."""
        ...

    def retention(self) -> float | None:
        """The retention the last server recorded, in seconds, or None."""
        ...

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything logged so far is committed."""
        ...

    def close(self) -> None: ...


class RecentRequests:
    """The most recent logged requests, in memory: feedback can arrive before the writer thread commits the
    request it is about (a user clicks within milliseconds of the answer), so lookups read here first."""

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self._size = size
        self._items: OrderedDict[str, LoggedRequest] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, req: LoggedRequest) -> None:
        with self._lock:
            self._items[req.request_id] = req
            self._items.move_to_end(req.request_id)
            while len(self._items) > self._size:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> LoggedRequest | None:
        with self._lock:
            return self._items.get(request_id)

    def __len__(self) -> int:
        return len(self._items)

    def forget_before(self, cutoff: str) -> None:
        """Drop what a purge deleted from the store."""
        with self._lock:
            for request_id in [k for k, req in self._items.items() if req.time < cutoff]:
                del self._items[request_id]


def same_event(stored: tuple[Any, ...], event: FeedbackEvent) -> AddOutcome:
    """``"duplicate"`` when the stored row with ``event``'s id is the same event (everything but ``time``, the
    arrival time, which differs on a retry, is equal); :class:`FeedbackConflict` otherwise."""
    found = FeedbackEvent(**dict(zip(EVENT_COLUMNS, stored, strict=True)))
    sent = FeedbackEvent(**dict(zip(EVENT_COLUMNS, event_row(event), strict=True)))  # as it would be stored
    if replace(found, time=event.time) != sent:
        # nothing of the stored event is said: it may be another caller's
        raise FeedbackConflict(f"event_id '{event.event_id}' was already used for a different event; send a "
                               "new event_id for a new event")
    return "duplicate"


def since_timestamp(value: str, now: datetime | None = None) -> str:
    """A ``--since``/``--until`` value as the UTC text rows are compared with (see :func:`rankwise.options.since_timestamp`)."""
    return options.since_timestamp(value, now, error=FeedbackStoreError)


class StoreCommon:
    """What every store does alike: the reads it answers with the same SQL (it names its ``requests`` and
    ``policy`` tables, its parameter placeholder and page size, and supplies ``_select``, ``_check_open`` and
    ``flush``), and how its writer thread reports rows it could not store."""

    _write_problem: str | None
    _on_lost: Callable[[int], None] | None
    _requests_table: str
    _policy_table: str
    _mark: str
    _page: int
    _recent: RecentRequests
    _rows: BatchedWriter[LoggedRequest | ShadowRecord]

    def log_request(self, req: LoggedRequest) -> None:
        """Remember the request for :meth:`get_request` at once and queue it for the writer thread."""
        self._check_open()
        self._recent.add(req)
        self._rows.put(req)

    def record_shadow(self, rec: ShadowRecord) -> None:
        """Queue a shadow comparison for the writer thread."""
        self._check_open()
        self._rows.put(rec)

    def _select(self, sql: str, params: Collection[Any], doing: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _check_open(self) -> None:
        raise NotImplementedError

    #: how a store names itself in messages, how much longer than asked its writer may take (retries), and
    #: what to check when queued rows are not taken in time
    _where: str
    _flush_slack_s: float = 0.0
    _wait_fix: str
    _closed: bool

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every request and shadow record queued before the call is committed."""
        if self._closed:
            return
        wait = timeout + self._flush_slack_s
        try:
            self._rows.flush(wait)
        except WriterTimeout:
            raise FeedbackStoreError(f"the feedback {self._where} did not take queued rows within {wait:g}s; "
                                     f"{self._wait_fix}") from None

    def get_request(self, request_id: str) -> LoggedRequest | None:
        """The logged request (recent ones from memory, even before they are committed), or None."""
        recent = self._recent.get(request_id)
        if recent is not None:
            return recent
        rows = self._select(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM {self._requests_table} "
                            f"WHERE request_id = {self._mark}", (request_id,), "reading a logged request")
        return request_of(rows[0]) if rows else None

    def requests(self, since: str | None = None, until: str | None = None,
                 experiment: str | None = None) -> Iterator[LoggedRequest]:
        """Logged requests in time order, read a page at a time (keyset pagination: no cursor stays open)."""
        self._check_open()
        sql, params = requests_query(self._requests_table, self._mark, since, until, experiment, self._page)
        self.flush()
        return pages(lambda query, values: self._select(query, values, "reading logged requests"), sql, params)

    def retention(self) -> float | None:
        """The retention the last server recorded, in seconds, or None."""
        rows = self._select(f"SELECT value FROM {self._policy_table} WHERE name = 'retention_s'", (),
                            "reading its retention")
        return float(rows[0][0]) if rows else None

    def _lost(self, problem: str, rows: int) -> None:
        """Say a failure once per kind (not once per batch), keep it for ``health``, count the rows lost."""
        if problem != self._write_problem:
            log.error("%s", problem)
        self._write_problem = problem
        if self._on_lost is not None:
            self._on_lost(rows)

    def _writes_again(self, where: str) -> None:
        """A batch was committed: say so once if writes had been failing, and clear the problem."""
        if self._write_problem is not None:
            log.warning("%s takes writes again", where)
        self._write_problem = None


class SQLiteFeedbackStore(StoreCommon):
    """:class:`FeedbackStore` on one SQLite file (created on first use); see the module docstring."""

    _requests_table, _policy_table, _mark, _page = "requests", "policy", "?", _BATCH
    _wait_fix = "check that its disk is responsive"

    def __init__(self, path: str | Path, *, timeout: float = 10.0, recent: int = RECENT_REQUESTS,
                 on_lost: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self._where = f"database '{self.path}'"
        self.timeout = timeout
        self._closed = False
        # synchronous reads, add_event and purge, serialised by _lock; the writer thread has its own connection
        self._conn = open_database(self.path, _KIND, timeout=self.timeout, check_same_thread=False)
        self._writer = open_database(self.path, _KIND, timeout=self.timeout, check_same_thread=False)
        self._inode = self.path.stat().st_ino
        #: called with the number of rows the writer could not store (the server counts them in a metric)
        self._on_lost = on_lost
        self._write_problem: str | None = None
        self._lock = threading.Lock()
        self._recent = RecentRequests(recent)
        self._rows: BatchedWriter[LoggedRequest | ShadowRecord] = BatchedWriter(
            self._write, name="rankwise-feedback", max_batch=_BATCH)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteFeedbackStore('{self.path}')"

    def _error(self, err: OSError | sqlite3.Error, doing: str) -> RankwiseError:
        return failure(err, self.path, _KIND, self.timeout, doing)

    # ------------------------------------------------------------------ the request path (non-blocking)
    def health(self) -> str | None:
        """What is wrong with the store right now, or None: the file deleted or replaced under it (rows
        would go to a file nobody reads), or the writer's last batch failed (e.g. a corrupted file)."""
        return self._file_problem() or self._write_problem

    def _file_problem(self) -> str | None:
        """Whether the path still names the file this store opened: SQLite keeps writing to a deleted or
        replaced file's old inode, and everything written there is lost when the store closes."""
        try:
            if self.path.stat().st_ino != self._inode:
                return f"the feedback database '{self.path}' was replaced while open; restart to use the new file"
        except OSError:
            return f"the feedback database '{self.path}' was deleted while open; restart to create a new one"
        return None

    def set_retention(self, seconds: float | None) -> None:
        with self._lock:
            try:
                with self._conn:
                    self._conn.execute("DELETE FROM policy WHERE name = 'retention_s'")
                    if seconds is not None:
                        self._conn.execute("INSERT INTO policy VALUES ('retention_s', ?)", (repr(float(seconds)),))
            except sqlite3.Error as err:
                raise self._error(err, "recording its retention") from None

    def check_integrity(self) -> None:
        """Refuse a damaged file in one line (``PRAGMA quick_check``): run it before serving on a file."""
        rows = self._select("PRAGMA quick_check", (), "checking it")
        if rows != [("ok",)]:
            findings = [line for row in rows for line in str(row[0]).splitlines() if line.strip()]
            more = f", and {len(findings) - 1} more findings" if len(findings) > 1 else ""
            raise FeedbackStoreError(f"the feedback database '{self.path}' is damaged ({findings[0][:200]}{more}); "
                                     "restore it from a backup or pass a new path")

    def _check_open(self) -> None:
        if self._closed:
            raise FeedbackStoreError(f"the feedback store '{self.path}' is closed; open it again")

    # ------------------------------------------------------------------ synchronous writes
    def add_event(self, event: FeedbackEvent) -> AddOutcome:
        """Store ``event`` (committed before returning); a retry of a stored event is ``"duplicate"``.

        Two events with one ``event_id`` are the same event when everything but ``time`` (the time the
        server received it, which differs on a retry) is equal; otherwise :class:`FeedbackConflict`.
        """
        self._check_open()
        # an acknowledged event must be readable later: refuse it while the path names another file or none
        if problem := self._file_problem():
            raise FeedbackStoreError(problem)
        row = event_row(event)
        sql = _insert("events", EVENT_COLUMNS) + " ON CONFLICT (event_id) DO NOTHING"
        # one budget for the whole call: waiting for the other callers, then for SQLite's lock; otherwise each
        # of N callers queued behind a locked file waits N times the timeout
        deadline = time.monotonic() + self.timeout
        if not self._lock.acquire(timeout=self.timeout):
            raise FeedbackStoreError(f"the feedback database '{self.path}' stayed busy for {self.timeout:g}s "
                                     "while storing a feedback event; retry later")
        # SQLite's own wait gets what is left; the usual uncontended call leaves the connection's timeout alone
        remaining_ms = max(1, int((deadline - time.monotonic()) * 1000))
        shortened = remaining_ms < int(self.timeout * 1000) - _BUSY_SLACK_MS
        try:
            try:
                if shortened:
                    self._conn.execute(f"PRAGMA busy_timeout = {remaining_ms}")
                with self._conn:
                    inserted = self._conn.execute(sql, row).rowcount == 1
                    found = None if inserted else self._conn.execute(
                        f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE event_id = ?",
                        (row[0],)).fetchone()  # the id as stored
            except sqlite3.Error as err:
                raise self._error(err, "storing a feedback event") from None
        finally:
            if shortened:
                with contextlib.suppress(sqlite3.Error):  # the connection's own timeout again, for other calls
                    self._conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            self._lock.release()
        return "stored" if found is None else same_event(found, event)

    def purge(self, older_than: str) -> int:
        """Delete requests logged before ``older_than`` with their events and shadow rows, and older orphans.

        Queued writes are committed first, so a request logged just before the purge is judged by its time
        like any other. Returns the number of rows deleted (all tables).
        """
        self._check_open()
        cutoff = since_timestamp(older_than)
        self.flush()
        old = "SELECT request_id FROM requests WHERE time < :cutoff"
        with self._lock:
            try:
                with self._conn:
                    self._conn.execute("INSERT INTO retention (purge_before) VALUES (?)", (cutoff,))
                    deleted = sum(self._conn.execute(sql, {"cutoff": cutoff}).rowcount for sql in (
                        f"DELETE FROM events WHERE time < :cutoff OR request_id IN ({old})",
                        f"DELETE FROM shadow WHERE time < :cutoff OR request_id IN ({old})",
                        "DELETE FROM requests WHERE time < :cutoff"))
                    self._conn.execute("DELETE FROM retention")
            except sqlite3.Error as err:
                raise self._error(err, f"purging rows older than {older_than}") from None
        self._recent.forget_before(cutoff)
        return deleted

    # ------------------------------------------------------------------ reads
    def events(self, since: str | None = None,
               request_ids: Collection[str] | None = None) -> list[FeedbackEvent]:
        """Feedback events in the order they were received, optionally only those on ``request_ids``."""
        clauses, params = window("time", since, None)
        sql = f"SELECT time, rowid, {', '.join(EVENT_COLUMNS)} FROM events"
        if request_ids is None:
            chunks: list[list[str]] = [[]]
        else:
            ids = list(dict.fromkeys(request_ids))
            chunks = [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
        found: list[tuple[Any, ...]] = []
        for chunk in chunks:
            where = clauses + ([f"request_id IN ({', '.join('?' * len(chunk))})"] if chunk else [])
            found += self._select(sql + (" WHERE " + " AND ".join(where) if where else ""), (*params, *chunk),
                                  "reading feedback events")
        found.sort(key=lambda row: row[:2])  # arrival order, across chunks too
        return [FeedbackEvent(**dict(zip(EVENT_COLUMNS, row[2:], strict=True))) for row in found]

    def shadow_records(self, since: str | None = None) -> list[ShadowRecord]:
        """Shadow comparisons in the order they were recorded."""
        self.flush()
        clauses, params = window("time", since, None)
        rows = self._select(f"SELECT {', '.join(SHADOW_COLUMNS)} FROM shadow"
                            + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY rowid",
                            params, "reading shadow records")
        return [shadow_of(row) for row in rows]

    def _select(self, sql: str, params: Collection[Any], doing: str) -> list[tuple[Any, ...]]:
        self._check_open()
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as err:
                raise self._error(err, doing) from None

    # ------------------------------------------------------------------ the writer thread
    def close(self) -> None:
        """Commit what is queued, stop the writer and close the database (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if not self._rows.close(self.timeout + 30):
            log.error("the feedback writer for %s did not stop; rows still queued are lost", self.path)
            return
        self._writer.close()
        with self._lock:
            self._conn.close()

    def _write(self, rows: Sequence[LoggedRequest | ShadowRecord]) -> None:
        """Commit one batch of the writer thread; a failure is said once per kind and counted as lost."""
        requests = [row for row in rows if isinstance(row, LoggedRequest)]
        shadows = [row for row in rows if isinstance(row, ShadowRecord)]
        if moved := self._file_problem():  # the rows would go to an inode nobody will read again
            self._lost(f"{moved}; logged requests are being lost", len(rows))
            return
        try:
            for attempt in range(_BUSY_RETRIES + 1):
                try:
                    with self._writer:
                        # a request id is generated per answer; a repeat is the same request logged twice
                        self._writer.executemany(_insert("requests", REQUEST_COLUMNS) + " ON CONFLICT DO NOTHING",
                                                 [request_row(req) for req in requests])
                        self._writer.executemany(_insert("shadow", SHADOW_COLUMNS),
                                                 [shadow_row(rec) for rec in shadows])
                    break
                except sqlite3.OperationalError as busy:
                    # another process holding the file (a backup, an export's write) is waited out: the rows
                    # are only queued meanwhile, and the request path never waits for them
                    if busy.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or attempt == _BUSY_RETRIES:
                        raise
        except Exception as error:  # noqa: BLE001 - the thread must survive to commit later rows
            self._lost(f"the feedback database '{self.path}' cannot be written ({type(error).__name__}: "
                       f"{str(error)[:200]}); logged requests are being lost", len(rows))
            return
        self._writes_again(f"the feedback database '{self.path}'")



def window(column: str, since: str | None, until: str | None, mark: str = "?") -> tuple[list[str], list[Any]]:
    """Clauses and parameters for ``since <= column < until``; ``mark`` is the database's placeholder."""
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(f"{column} >= {mark}")
        params.append(since_timestamp(since))
    if until is not None:
        clauses.append(f"{column} < {mark}")
        params.append(since_timestamp(until))
    return clauses, params


def requests_query(table: str, mark: str, since: str | None, until: str | None, experiment: str | None,
                   page: int) -> tuple[str, list[Any]]:
    """One page of logged requests in time order after a ``(time, request_id)`` keyset (its two parameters
    last), and the parameters before them. Built eagerly, so a bad ``since`` fails at the call."""
    clauses, params = window("time", since, until, mark)
    if experiment is not None:
        clauses.append(f"experiment = {mark}")
        params.append(experiment)
    sql = f"SELECT {', '.join(REQUEST_COLUMNS)} FROM {table} WHERE " + " AND ".join(
        [*clauses, f"(time, request_id) > ({mark}, {mark})"]) + f" ORDER BY time, request_id LIMIT {page}"
    return sql, params


def pages(select: Callable[[str, Sequence[Any]], list[tuple[Any, ...]]], sql: str,
          params: list[Any]) -> Iterator[LoggedRequest]:
    """Logged requests a page at a time (keyset pagination: no cursor stays open between pages)."""
    after = ("", "")
    while rows := select(sql, (*params, *after)):
        yield from (request_of(row) for row in rows)
        after = (rows[-1][REQUEST_COLUMNS.index("time")], rows[-1][0])


def event_row(event: FeedbackEvent) -> tuple[Any, ...]:
    return tuple(storable_text(asdict(event)[c]) for c in EVENT_COLUMNS)


def request_row(req: LoggedRequest) -> tuple[Any, ...]:
    data = asdict(req)
    data["degraded"] = int(req.degraded)
    data["results"] = json.dumps([{k: v for k, v in r.items() if v is not None} for r in data["results"]],
                                 ensure_ascii=False, separators=(",", ":"))
    data["signals"] = json.dumps(req.signals, separators=(",", ":"))
    return tuple(storable_text(data[c]) for c in REQUEST_COLUMNS)


def request_of(row: tuple[Any, ...]) -> LoggedRequest:
    data = dict(zip(REQUEST_COLUMNS, row, strict=True))
    data["degraded"] = bool(data["degraded"])
    data["results"] = tuple(LoggedResult(**r) for r in json.loads(data["results"]))
    data["signals"] = {str(k): float(v) for k, v in json.loads(data["signals"]).items()}
    return LoggedRequest(**data)


def shadow_row(rec: ShadowRecord) -> tuple[Any, ...]:
    data = asdict(rec)
    for name in ("largest_moves", "shadow_ranking"):
        data[name] = json.dumps(data[name], ensure_ascii=False, separators=(",", ":"))
    return tuple(storable_text(data[c]) for c in SHADOW_COLUMNS)


def shadow_of(row: tuple[Any, ...]) -> ShadowRecord:
    data = dict(zip(SHADOW_COLUMNS, row, strict=True))
    data["largest_moves"] = tuple((str(d), int(a), int(b)) for d, a, b in json.loads(data["largest_moves"]))
    data["shadow_ranking"] = tuple((str(d), float(s)) for d, s in json.loads(data["shadow_ranking"]))
    return ShadowRecord(**data)
