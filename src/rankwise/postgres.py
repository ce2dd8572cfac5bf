"""PostgreSQL as the store several replicas share: one way to connect, and versioned migrations.

rankwise's embedded stores are SQLite files, one per process's disk; a deployment with several replicas
behind a load balancer points them at one PostgreSQL database instead (``--store postgresql://...``), so
their audit rows land in one hash-chained log. ``psycopg`` is an optional dependency
(``pip install 'rankwise[postgres]'``); nothing imports it until a PostgreSQL URL is given.

Each component (``audit``...) owns its tables and keeps its schema version in ``rankwise_schema``;
:func:`migrate` runs the missing steps in order, each in its own transaction, under an advisory lock, so
replicas starting together do not race. A database whose version is newer than this rankwise knows is
refused rather than written with an older schema's assumptions.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from rankwise.errors import RankwiseError

if TYPE_CHECKING:
    import psycopg

SCHEMES = ("postgresql://", "postgres://")
T = TypeVar("T")


class StoreError(RankwiseError):
    """The PostgreSQL store cannot be reached, or holds a schema this rankwise cannot use."""


def is_postgres_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


def redacted(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` parameter), for messages and logs."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
        query = urlencode([(k, "***" if k.lower() == "password" else v)
                           for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="/*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "the PostgreSQL URL given (unparsable)"


#: bounds on a session, so a replica cut off mid-transaction cannot hold the audit chain's lock for hours,
#: and no statement waits without end; keepalives notice a dead peer
_SESSION = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
            "options": "-c lock_timeout=30s -c idle_in_transaction_session_timeout=60s -c statement_timeout=300s"}


def connect(url: str, *, timeout_s: float = 10.0) -> psycopg.Connection:
    """A connection to ``url`` (autocommit: work that must be atomic runs in ``with conn.transaction()``), or a
    one-line :class:`StoreError` saying what failed."""
    try:
        import psycopg
    except ImportError:
        raise StoreError("a postgresql:// store needs psycopg: pip install 'rankwise[postgres]'") from None
    try:
        return psycopg.connect(url, connect_timeout=max(1, round(timeout_s)), autocommit=True, **_SESSION)
    except psycopg.Error as err:
        raise StoreError(f"cannot connect to {redacted(url)} ({_scrubbed(one_line(err), url)})") from None


def _scrubbed(message: str, url: str) -> str:
    """``message`` with the URL's password taken out (libpq quotes a malformed one back)."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in {password, unquote(password)} if password else ():
        message = message.replace(secret, "***")
    return message


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def advisory_key(name: str) -> int:
    """A stable 32-bit key for ``pg_advisory_xact_lock`` from a name."""
    return zlib.crc32(f"rankwise:{name}".encode()) - 2**31


def migrate(conn: psycopg.Connection, component: str, steps: Sequence[str]) -> None:
    """Bring ``component``'s tables to version ``len(steps)``: step ``i`` takes version ``i`` to ``i + 1``."""
    with conn.transaction():  # two replicas creating it at once would collide in the catalog: one at a time
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key("migrate"),))
        conn.execute("CREATE TABLE IF NOT EXISTS rankwise_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(f"migrate:{component}"),))
            row = conn.execute("SELECT version FROM rankwise_schema WHERE component = %s", (component,)).fetchone()
            version = row[0] if row else 0
            if version > len(steps):
                raise StoreError(f"the {component} tables are at schema version {version}, newer than this rankwise "
                                 f"knows ({len(steps)}); upgrade rankwise")
            if version == len(steps):
                return
            conn.execute(steps[version])
            conn.execute("INSERT INTO rankwise_schema (component, version) VALUES (%s, %s) "
                         "ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version", (component, version + 1))


def open_tables(store: PostgresStore, component: str, steps: Sequence[str], *, create: bool, table: str,
                absent: RankwiseError) -> psycopg.Connection:
    """A connection to ``store`` with ``component``'s tables at the current schema: created or migrated
    when ``create``; otherwise ``absent`` is raised when ``table`` was never created, so a reader never takes
    a wrong ``--store`` for an empty one."""
    conn = connect(store.url)
    try:
        if create:
            migrate(conn, component, steps)
        elif conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
            raise absent
    except BaseException:
        conn.close()
        raise
    return conn


class SharedConnection:
    """One connection, used by one thread at a time (a transaction must not interleave with another thread's
    statements), opened on first use and once more when it was lost (a restarted PostgreSQL); any database
    error comes out as ``failure(one-line reason)``."""

    def __init__(self, open_connection: Callable[[], psycopg.Connection],
                 failure: Callable[[str], RankwiseError], conn: psycopg.Connection | None = None) -> None:
        self._open, self._failure, self._conn = open_connection, failure, conn
        self._lock = threading.Lock()

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = self._open()
                try:
                    return work(self._conn)
                except psycopg.OperationalError as err:
                    self._conn.close()
                    if attempt == 2:
                        raise self._failure(one_line(err)) from None
                except psycopg.Error as err:
                    raise self._failure(one_line(err)) from None
        raise AssertionError("unreachable")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """``sql``'s rows (none for a statement that returns none)."""
        def work(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

        return self.run(work)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


@dataclass(frozen=True, slots=True)
class PostgresStore:
    """Where a store lives when it is in PostgreSQL (``--store postgresql://...``) rather than a SQLite file."""

    url: str = field(repr=False)  # may hold a password

    def __post_init__(self) -> None:
        if not is_postgres_url(self.url):
            scheme = self.url.split("://", 1)[0] + "://" if "://" in self.url else "no scheme"
            raise StoreError(f"--store takes a postgresql://user@host/database URL (got {scheme})")

    def __str__(self) -> str:
        return redacted(self.url)
