"""The query log and feedback store in PostgreSQL: one store for every replica that names the same
``--store``, so feedback on a request answered by one replica is accepted by another, and exports, shadow
and experiment reports see all traffic.

It keeps :class:`~rankwise.feedback.store.FeedbackStore`'s contract exactly as the SQLite store does
(:mod:`rankwise.feedback.store` says why each write path is shaped as it is): requests and shadow rows
are queued for a writer thread and committed in batches, recent requests are found in memory before they
are committed (so feedback sent to the replica that answered never waits for the database), events are
stored synchronously and idempotently on ``event_id``. Append-only is enforced by triggers: no row is ever
updated, and a row is deleted only by :meth:`PostgresFeedbackStore.purge`, which sets its cutoff for its own
transaction (``SET LOCAL rankwise.purge_before``) — no other session can delete anything newer.

A lost connection (PostgreSQL restarting) is reopened: queued rows are retried for up to :data:`RETRY_S`
and counted as lost after that; a synchronous call (feedback intake, a report) fails with one line while the
database is away and succeeds again once it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Self

from rankwise.batched_writer import BatchedWriter
from rankwise.errors import RankwiseError
from rankwise.feedback.events import FeedbackEvent, LoggedRequest, ShadowRecord
from rankwise.feedback.store import (
    EVENT_COLUMNS,
    RECENT_REQUESTS,
    REQUEST_COLUMNS,
    SHADOW_COLUMNS,
    AddOutcome,
    FeedbackStoreError,
    RecentRequests,
    StoreCommon,
    event_row,
    request_row,
    same_event,
    shadow_of,
    shadow_row,
    since_timestamp,
    window,
)
from rankwise.postgres import PostgresStore, connect, one_line, open_tables

log = logging.getLogger("rankwise.feedback")

#: how long queued rows are retried while PostgreSQL cannot be reached
RETRY_S = 30.0
#: longest a synchronous call waits for the other callers of this store (as the SQLite store's timeout)
_WAIT_S = 10.0
_PAGE = 1_000

_APPEND_ONLY = """
CREATE FUNCTION rankwise_feedback_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the feedback store is append-only: rows cannot be updated'; END $$;
CREATE FUNCTION rankwise_feedback_retention_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE cutoff TEXT := coalesce(current_setting('rankwise.purge_before', true), '');
BEGIN
    IF OLD.time < cutoff THEN RETURN OLD; END IF;
    IF TG_TABLE_NAME <> 'feedback_requests' AND EXISTS (
        SELECT 1 FROM feedback_requests r WHERE r.request_id = OLD.request_id AND r.time < cutoff) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'feedback rows are deleted only by the retention purge';
END $$;
""" + "".join(f"""
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION rankwise_feedback_no_update();
CREATE TRIGGER {table}_retention_only BEFORE DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION rankwise_feedback_retention_only();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION rankwise_feedback_no_update();""" for table in
        ("feedback_requests", "feedback_events", "feedback_shadow"))

_TYPES = {"degraded": "INTEGER NOT NULL", "latency_ms": "DOUBLE PRECISION", "value": "DOUBLE PRECISION",
          "rank": "INTEGER NOT NULL", "kendall_tau": "DOUBLE PRECISION", "top5_overlap": "DOUBLE PRECISION NOT NULL",
          "shadow_ms": "DOUBLE PRECISION NOT NULL"}
_REQUIRED = {"time", "endpoint", "results", "signals", "signal", "doc_id", "production_model", "shadow_model",
             "largest_moves", "shadow_ranking", "outcome"}


def _columns(names: Sequence[str], key: str | None) -> str:
    return ",\n    ".join(
        f"{name} {_TYPES.get(name, 'TEXT NOT NULL' if name in _REQUIRED or name == 'request_id' else 'TEXT')}"
        + (" PRIMARY KEY" if name == key else "") for name in names)


#: version 1's tables (frozen once released: later columns get steps of their own)
_MIGRATIONS = (f"""
CREATE TABLE feedback_requests (
    {_columns(REQUEST_COLUMNS, "request_id")}
);
CREATE INDEX feedback_requests_time ON feedback_requests(time, request_id);
CREATE INDEX feedback_requests_experiment ON feedback_requests(experiment, time);
CREATE TABLE feedback_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    {_columns(EVENT_COLUMNS, "event_id")}
);
CREATE INDEX feedback_events_request ON feedback_events(request_id);
CREATE INDEX feedback_events_time ON feedback_events(time);
CREATE TABLE feedback_shadow (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    {_columns(SHADOW_COLUMNS, None)}
);
CREATE INDEX feedback_shadow_time ON feedback_shadow(time);
CREATE INDEX feedback_shadow_request ON feedback_shadow(request_id);
CREATE TABLE feedback_policy (name TEXT PRIMARY KEY, value TEXT NOT NULL);
{_APPEND_ONLY}
""",)


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"


class PostgresFeedbackStore(StoreCommon):
    """:class:`~rankwise.feedback.store.FeedbackStore` in PostgreSQL; see the module docstring."""

    _requests_table, _policy_table, _mark, _page = "feedback_requests", "feedback_policy", "%s", _PAGE
    _flush_slack_s, _wait_fix = RETRY_S, "check that PostgreSQL is reachable"

    def __init__(self, store: PostgresStore, *, recent: int = RECENT_REQUESTS,
                 on_lost: Callable[[int], None] | None = None, create: bool = True) -> None:
        self.store = store
        self._where = f"store in {store}"
        self._conn: Any = open_tables(  # synchronous calls, serialised by _lock
            store, "feedback", _MIGRATIONS, create=create, table="feedback_requests", absent=FeedbackStoreError(
                f"{store} holds no query log yet; pass the --store the server was started with"))
        self._writer_conn: Any = None  # the writer thread's own, opened on its first batch
        self._on_lost = on_lost
        self._write_problem: str | None = None
        self._lock = threading.Lock()
        self._recent = RecentRequests(recent)
        self._closed = False
        self._rows: BatchedWriter[LoggedRequest | ShadowRecord] = BatchedWriter(
            self._write, name="rankwise-feedback", max_batch=_PAGE)

    def __repr__(self) -> str:
        return f"PostgresFeedbackStore('{self.store}')"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def health(self) -> str | None:
        return self._write_problem

    # ------------------------------------------------------------------ synchronous calls
    def _run(self, doing: str, work: Callable[[Any], Any]) -> Any:
        """``work(connection)`` in one transaction; a lost connection is reopened once and the work retried."""
        import psycopg

        self._check_open()
        if not self._lock.acquire(timeout=_WAIT_S):
            raise FeedbackStoreError(f"the feedback store in {self.store} stayed busy for {_WAIT_S:g}s while "
                                     f"{doing}; retry later")
        try:
            for attempt in range(2):
                try:
                    if self._conn.closed:
                        self._conn = connect(self.store.url)
                    with self._conn.transaction():
                        return work(self._conn)
                except psycopg.OperationalError as err:
                    self._conn.close()
                    if attempt == 1:
                        raise FeedbackStoreError(f"the feedback store in {self.store} is unreachable while "
                                                 f"{doing} ({one_line(err)}); retry later") from None
                except psycopg.Error as err:
                    raise FeedbackStoreError(f"the feedback store in {self.store} failed while {doing} "
                                             f"({one_line(err)})") from None
                except RankwiseError:
                    raise
        finally:
            self._lock.release()
        raise AssertionError("unreachable")

    def add_event(self, event: FeedbackEvent) -> AddOutcome:
        row = event_row(event)

        def store(conn: Any) -> tuple[Any, ...] | None:
            inserted = conn.execute(_insert("feedback_events", EVENT_COLUMNS) + " ON CONFLICT (event_id) DO NOTHING",
                                    row).rowcount == 1
            return None if inserted else conn.execute(
                f"SELECT {', '.join(EVENT_COLUMNS)} FROM feedback_events WHERE event_id = %s",
                (row[0],)).fetchone()  # the id as stored

        found = self._run("storing a feedback event", store)
        return "stored" if found is None else same_event(found, event)

    def purge(self, older_than: str) -> int:
        cutoff = since_timestamp(older_than)
        self.flush()
        old = "SELECT request_id FROM feedback_requests WHERE time < %(cutoff)s"

        def purge(conn: Any) -> int:
            conn.execute("SELECT set_config('rankwise.purge_before', %s, true)", (cutoff,))
            return sum(conn.execute(sql, {"cutoff": cutoff}).rowcount for sql in (
                f"DELETE FROM feedback_events WHERE time < %(cutoff)s OR request_id IN ({old})",
                f"DELETE FROM feedback_shadow WHERE time < %(cutoff)s OR request_id IN ({old})",
                "DELETE FROM feedback_requests WHERE time < %(cutoff)s"))

        deleted: int = self._run(f"purging rows older than {older_than}", purge)
        self._recent.forget_before(cutoff)
        return deleted

    def set_retention(self, seconds: float | None) -> None:
        def record(conn: Any) -> None:
            conn.execute("DELETE FROM feedback_policy WHERE name = 'retention_s'")
            if seconds is not None:
                conn.execute("INSERT INTO feedback_policy VALUES ('retention_s', %s)", (repr(float(seconds)),))

        self._run("recording its retention", record)

    # ------------------------------------------------------------------ reads
    def events(self, since: str | None = None,
               request_ids: Collection[str] | None = None) -> list[FeedbackEvent]:
        clauses, params = window("time", since, None, mark="%s")
        if request_ids is not None:
            clauses.append("request_id = ANY(%s)")
            params.append(list(dict.fromkeys(request_ids)))
        rows = self._select(f"SELECT {', '.join(EVENT_COLUMNS)} FROM feedback_events"
                            + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY time, seq",
                            params, "reading feedback events")
        return [FeedbackEvent(**dict(zip(EVENT_COLUMNS, row, strict=True))) for row in rows]

    def shadow_records(self, since: str | None = None) -> list[ShadowRecord]:
        self.flush()
        clauses, params = window("time", since, None, mark="%s")
        rows = self._select(f"SELECT {', '.join(SHADOW_COLUMNS)} FROM feedback_shadow"
                            + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY seq",
                            params, "reading shadow records")
        return [shadow_of(row) for row in rows]

    def _select(self, sql: str, params: Collection[Any], doing: str) -> list[tuple[Any, ...]]:
        return self._run(doing, lambda conn: conn.execute(sql, tuple(params)).fetchall())

    # ------------------------------------------------------------------ the writer thread
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._rows.close(RETRY_S + 30):
            log.error("the feedback writer for %s did not stop; rows still queued are lost", self.store)
            return  # its connection is still in use: closing it under the writer would fail its batch
        for conn in (self._writer_conn, self._conn):
            if conn is not None:
                conn.close()

    def _write(self, rows: Sequence[LoggedRequest | ShadowRecord]) -> None:
        """Commit one batch; reconnect and retry while PostgreSQL is away, then count the rows as lost."""
        import psycopg

        requests = [request_row(row) for row in rows if isinstance(row, LoggedRequest)]
        shadows = [shadow_row(row) for row in rows if isinstance(row, ShadowRecord)]
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                if self._writer_conn is None or self._writer_conn.closed:
                    self._writer_conn = connect(self.store.url)
                conn = self._writer_conn
                with conn.transaction(), conn.cursor() as cursor:
                    # a request id is generated per answer; a repeat is the same request logged twice
                    if requests:
                        cursor.executemany(_insert("feedback_requests", REQUEST_COLUMNS)
                                           + " ON CONFLICT (request_id) DO NOTHING", requests)
                    if shadows:
                        cursor.executemany(_insert("feedback_shadow", SHADOW_COLUMNS), shadows)
                break
            except (psycopg.OperationalError, FeedbackStoreError, RankwiseError) as err:
                if self._writer_conn is not None:
                    self._writer_conn.close()
                self._writer_conn = None
                if time.monotonic() > deadline:
                    self._lost(f"the feedback store in {self.store} is unreachable ({one_line(err)}); logged "
                               "requests are being lost", len(rows))
                    return
                if self._write_problem is None:
                    self._write_problem = f"the feedback store in {self.store} is unreachable; retrying"
                    log.warning("%s (%s)", self._write_problem, one_line(err))
                time.sleep(0.5)
            except psycopg.Error as err:
                self._lost(f"the feedback store in {self.store} cannot be written ({one_line(err)}); logged "
                           "requests are being lost", len(rows))
                return
        self._writes_again(f"the feedback store in {self.store}")

    def _check_open(self) -> None:
        if self._closed:
            raise FeedbackStoreError(f"the feedback store in {self.store} is closed; open it again")
