"""The audit log in PostgreSQL, one log for every replica that names the same ``--store``.

The rows, the hash chain and the append-only rule are those of the SQLite log
(:mod:`rankwise.serving.audit`): triggers refuse UPDATE, DELETE and TRUNCATE, and ``rankwise audit verify
--store URL`` recomputes the chain. Each replica's writer thread commits a batch under a transaction-scoped
advisory lock and reads the chain's head inside it, so the rows of all replicas form one chain in commit
(``seq``) order. The query-hash secret is kept in the database, so every replica hashes a query alike
(whoever can read the log's table can read it, as with the key file beside a SQLite log).

When the connection is lost (PostgreSQL restarting, a failover) the writer reconnects and retries the batch
for up to :data:`RETRY_S`; a batch whose commit was cut off is not written twice (its request ids are
unique: a retry that finds them there was already committed). Rows that still cannot be written are
logged as lost; requests keep being answered meanwhile.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from typing import Any

from rankwise.postgres import PostgresStore, StoreError, advisory_key, connect, one_line, open_tables
from rankwise.serving.audit import (
    GENESIS,
    STORED_COLUMNS,
    AuditError,
    AuditRecord,
    ChainReport,
    QueuedAuditLog,
    chained_rows,
    check_chain,
    decoded,
    row_filter,
)

log = logging.getLogger("rankwise.serving")

#: how long a batch is retried while PostgreSQL cannot be reached
RETRY_S = 30.0
_CHAIN_LOCK = advisory_key("audit-chain")
_ROW_COLUMNS = STORED_COLUMNS[:-2]

#: PostgreSQL types of the stored columns (the SQLite log's, with exact floats and no NULL links)
_TYPES = {"request_id": "TEXT NOT NULL UNIQUE", "time": "TEXT NOT NULL", "endpoint": "TEXT NOT NULL",
          "status": "INTEGER NOT NULL", "degraded": "INTEGER NOT NULL", "cache_hits": "INTEGER",
          "latency_ms": "DOUBLE PRECISION NOT NULL", "results": "TEXT NOT NULL", "prev_hash": "TEXT NOT NULL",
          "row_hash": "TEXT NOT NULL"}
#: version 1's columns: every column stored today. A column added later gets a migration step of its own,
#: and this step keeps creating exactly these (freeze the list here when that happens)
_COLUMN_DEFINITIONS = ",\n    ".join(f"{name} {_TYPES.get(name, 'TEXT')}" for name in STORED_COLUMNS)

_MIGRATIONS = (f"""
CREATE TABLE audit_requests (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    {_COLUMN_DEFINITIONS}
);
CREATE INDEX audit_requests_time ON audit_requests(time);
CREATE INDEX audit_requests_key ON audit_requests(key_id, time);
CREATE TABLE audit_secret (id INTEGER PRIMARY KEY CHECK (id = 1), secret TEXT NOT NULL);
CREATE FUNCTION rankwise_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only: rows cannot be changed (%)', TG_OP; END $$;
CREATE TRIGGER audit_requests_append_only BEFORE UPDATE OR DELETE ON audit_requests
    FOR EACH ROW EXECUTE FUNCTION rankwise_audit_append_only();
CREATE TRIGGER audit_requests_no_truncate BEFORE TRUNCATE ON audit_requests
    FOR EACH STATEMENT EXECUTE FUNCTION rankwise_audit_append_only();
CREATE TRIGGER audit_secret_append_only BEFORE UPDATE OR DELETE ON audit_secret
    FOR EACH ROW EXECUTE FUNCTION rankwise_audit_append_only();
""",)


class PostgresAuditLog(QueuedAuditLog):
    """:class:`~rankwise.serving.audit.AuditLog` in PostgreSQL; ``record()`` never waits for the database."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._conn: Any = _open(store)
        try:
            secret = _secret(self._conn)
        except Exception:
            self._conn.close()
            raise
        super().__init__(secret, self._write, str(store), "check that PostgreSQL is reachable")

    def close(self) -> None:
        self._stop_writer()
        if self._conn is not None:
            self._conn.close()

    def _write(self, batch: Sequence[AuditRecord]) -> None:
        """Chain and commit one batch after every replica's earlier ones (on the writer thread)."""
        import psycopg

        deadline, retried = time.monotonic() + RETRY_S, False
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.store.url)
                self._commit(batch)
                if retried:
                    log.warning("audit log in %s reachable again; %d rows written", self.store, len(batch))
                return
            except psycopg.errors.UniqueViolation:
                if retried:  # the cut-off commit went through: these rows are in the log already
                    return
                log.exception("audit rows with request ids already in %s were not written again", self.store)
                return
            except (psycopg.OperationalError, StoreError) as err:
                if self._conn is not None:
                    self._conn.close()
                if not retried:
                    log.warning("audit log in %s unreachable (%s); retrying %d rows for up to %g s", self.store,
                                one_line(err), len(batch), RETRY_S)
                self._conn, retried = None, True
                if time.monotonic() > deadline:
                    log.error("could not write %d audit rows to %s (%s); they are lost", len(batch), self.store,
                              one_line(err))
                    return
                time.sleep(0.5)
            except psycopg.Error:
                log.exception("could not write %d audit rows to %s", len(batch), self.store)
                return

    def _commit(self, batch: Sequence[AuditRecord]) -> None:
        conn = self._conn
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK,))
            last = conn.execute("SELECT row_hash FROM audit_requests ORDER BY seq DESC LIMIT 1").fetchone()
            rows, _ = chained_rows(batch, last[0] if last else GENESIS)
            with conn.cursor() as cursor:
                cursor.executemany(f"INSERT INTO audit_requests ({', '.join(STORED_COLUMNS)}) VALUES "
                                   f"({', '.join(['%s'] * len(STORED_COLUMNS))})", rows)


def verify_chain_postgres(store: PostgresStore) -> ChainReport:
    """:func:`~rankwise.serving.audit.verify_chain` for a log in PostgreSQL."""
    with _open(store, create=False) as conn, conn.transaction(), conn.cursor(name="rankwise_audit_verify") as cursor:
        cursor.execute(f"SELECT seq, {', '.join(STORED_COLUMNS)} FROM audit_requests ORDER BY seq")  # streamed
        return check_chain(cursor)


def read_audit_postgres(store: PostgresStore, *, since: str | None = None, key_id: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
    """:func:`~rankwise.serving.audit.read_audit` for a log in PostgreSQL: newest rows first."""
    where, params = row_filter(since, key_id, limit, mark="%s")
    with _open(store, create=False) as conn:
        rows = conn.execute(f"SELECT {', '.join(_ROW_COLUMNS)} FROM audit_requests{where} ORDER BY seq DESC LIMIT %s",
                            params).fetchall()
    return [decoded(row) for row in rows]


def _open(store: PostgresStore, *, create: bool = True) -> Any:
    """A connection with the audit tables at the current schema (created when ``create``)."""
    return open_tables(store, "audit", _MIGRATIONS, create=create, table="audit_requests", absent=AuditError(
        f"{store} holds no audit log yet; pass the --store the server was started with"))


def _secret(conn: Any) -> bytes:
    """The log's HMAC key: created by the first replica, read by every other."""
    with conn.transaction():
        conn.execute("INSERT INTO audit_secret (id, secret) VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                     (secrets.token_hex(32),))
        (secret,) = conn.execute("SELECT secret FROM audit_secret WHERE id = 1").fetchone()
    return bytes.fromhex(secret)
