"""Opening rankwise's SQLite files the same careful way: the stores it writes (the feedback store, the
monitoring history, the audit log) through :func:`open_database`, and every connection through
:func:`connect`.

Each kind of file marks itself with SQLite's ``application_id`` header field, so a path that points at
some other database — the audit log, another program's file — is refused before anything is written to
it, and with ``user_version`` as its schema version, so an older rankwise refuses a newer file instead of
misreading it, and a newer rankwise upgrades an older file in place (columns added, no row touched). A
failure is one actionable line that names the file and the fix, mapped from SQLite's own
error code (locked, not a database, read-only, disk full) rather than its message text.

A kind that existed before files were marked names how to recognise and adopt such an unmarked file
(``adopt``): it is brought to the current schema and marked in place, and read-only opens accept it as is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rankwise.errors import RankwiseError


@dataclass(frozen=True, slots=True)
class DatabaseKind:
    """What a kind of rankwise database is called in messages, how it is recognised, and its schema."""

    name: str  # "feedback database", "monitoring history"
    application_id: int
    schema_version: int
    schema: str  # run once on a new, empty file (it sets application_id and user_version itself)
    error: type[RankwiseError]
    wrong_file_fix: str  # what to do when the file is not this kind of database
    locked_fix: str
    full_fix: str
    empty_fix: str = ""  # what to do when the file must already hold data but is new
    #: ``{n: sql}`` brings a file at schema version ``n`` to ``n + 1`` (run in order, each in a transaction)
    migrations: Mapping[int, str] = field(default_factory=dict)
    #: whether an unmarked file is one of this kind written before files were marked
    recognise: Callable[[sqlite3.Connection], bool] | None = None
    #: brings such an unmarked file to the current schema (the marks are set after it returns)
    adopt: Callable[[sqlite3.Connection], None] | None = None


def connect(path: Path, *, timeout: float = 5.0, check_same_thread: bool = True,
            read_only: bool = False) -> sqlite3.Connection:
    """The one place a connection to a SQLite file is made.

    ``read_only`` uses SQLite's ``mode=ro``: nothing is created, no journal is switched, no schema
    upgraded — what verification, reports and index readers need, since a file they modified would no
    longer match its recorded sha256 or would be upgraded behind its writer's back.
    """
    if read_only:
        return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=timeout,
                               check_same_thread=check_same_thread)
    return sqlite3.connect(path, timeout=timeout, check_same_thread=check_same_thread)


def open_database(path: Path, kind: DatabaseKind, *, timeout: float, create: bool = True,
                  check_same_thread: bool = True, read_only: bool = False) -> sqlite3.Connection:
    """A WAL-mode connection to ``path``, creating the schema in a new file when ``create``.

    ``read_only`` opens an existing file without writing to it (SQLite ``mode=ro``): reports and
    verification must not change what they read, nor upgrade it behind the writer's back.
    """
    try:
        if read_only:
            if not path.is_file():
                raise kind.error(f"no {kind.name} at '{path}'; {kind.empty_fix or kind.wrong_file_fix}")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(path, timeout=timeout, check_same_thread=check_same_thread, read_only=read_only)
    except (OSError, sqlite3.Error) as err:
        raise failure(err, path, kind, timeout, "opening it") from None
    try:
        problem = _check(conn, path, kind) if read_only else _prepare(conn, path, kind, create)
    except sqlite3.Error as err:
        conn.close()
        raise failure(err, path, kind, timeout, "opening it") from None
    if problem is not None:
        conn.close()
        raise kind.error(problem)
    return conn


def _is_legacy(conn: sqlite3.Connection, kind: DatabaseKind) -> bool:
    """An unmarked file of ``kind`` from before files were marked."""
    return kind.recognise is not None and kind.recognise(conn)


def _check(conn: sqlite3.Connection, path: Path, kind: DatabaseKind) -> str | None:
    """What makes an existing file unreadable as ``kind`` (read-only: nothing is created or upgraded)."""
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if app_id == 0 and _is_legacy(conn, kind):
        return None
    if app_id != kind.application_id:
        return f"'{path}' is an SQLite database but not a rankwise {kind.name}; {kind.wrong_file_fix}"
    if version > kind.schema_version:
        return (f"the {kind.name} '{path}' was written by a newer rankwise (schema {version}, this one reads "
                f"{kind.schema_version}); upgrade rankwise")
    return None


def _prepare(conn: sqlite3.Connection, path: Path, kind: DatabaseKind, create: bool) -> str | None:
    """Create the schema in a new file, or check an existing one; what is wrong with the file, or None."""
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if app_id == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None:
        if not create:
            return f"the {kind.name} '{path}' is empty; {kind.empty_fix}"
        conn.execute("PRAGMA journal_mode=WAL")  # switched only on a file that is (now) ours
        conn.executescript(kind.schema)
        return None
    if app_id == 0 and kind.adopt is not None and _is_legacy(conn, kind):
        conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            kind.adopt(conn)
            conn.execute(f"PRAGMA application_id = {kind.application_id}")
            conn.execute(f"PRAGMA user_version = {kind.schema_version}")
        return None
    if problem := _check(conn, path, kind):
        return problem
    conn.execute("PRAGMA journal_mode=WAL")
    while version < kind.schema_version:  # an older file: add what this version needs, keep every row
        if version not in kind.migrations:
            return (f"the {kind.name} '{path}' has schema {version}, which this rankwise cannot upgrade; "
                    f"{kind.wrong_file_fix}")
        with conn:
            conn.executescript(f"BEGIN IMMEDIATE; {kind.migrations[version]}; PRAGMA user_version = {version + 1}; "
                               "COMMIT;")
        version += 1
    return None


def failure(err: OSError | sqlite3.Error, path: Path, kind: DatabaseKind, timeout: float,
            doing: str) -> RankwiseError:
    """One actionable line for a failure of the file or of SQLite (naming the cause, not a traceback)."""
    if isinstance(err, OSError):
        return kind.error(f"cannot create the {kind.name} '{path}' ({err.strerror or err}); pass a path in a "
                          "writable directory")
    # the module raises ProgrammingError and friends itself; these come from SQLite, with its code
    from_sqlite = type(err) in (sqlite3.OperationalError, sqlite3.DatabaseError, sqlite3.IntegrityError)
    code = err.sqlite_errorcode & 0xFF if from_sqlite else None
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return kind.error(f"the {kind.name} '{path}' stayed locked by another process for {timeout:g}s while "
                          f"{doing}; {kind.locked_fix}")
    if code == sqlite3.SQLITE_CORRUPT:
        return kind.error(f"the {kind.name} '{path}' is damaged ({err}); restore it from a backup or pass a new "
                          "path")
    if code == sqlite3.SQLITE_NOTADB:
        return kind.error(f"'{path}' is not a rankwise {kind.name} ({err}); {kind.wrong_file_fix}")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return kind.error(f"cannot write the {kind.name} '{path}' ({err}); pass a path in a writable directory")
    if code == sqlite3.SQLITE_FULL:
        return kind.error(f"the disk holding the {kind.name} '{path}' is full; {kind.full_fix}")
    return kind.error(f"the {kind.name} '{path}' failed while {doing} ({err})")
