"""Opening a monitoring history wherever it lives: a SQLite file, or the shared PostgreSQL store
(``--store``), whose module — and psycopg — is imported only when one is named."""

from __future__ import annotations

from pathlib import Path

from rankwise.monitoring.history import HistoryQueries, SQLiteMonitorHistory
from rankwise.postgres import PostgresStore


def open_history(where: Path | PostgresStore, *, create: bool = True) -> HistoryQueries:
    """The history at ``where`` (a context manager: ``with open_history(...) as history``); ``create=False``
    refuses one that does not exist yet instead of reading it as empty."""
    if isinstance(where, PostgresStore):
        from rankwise.monitoring.history_postgres import PostgresMonitorHistory

        return PostgresMonitorHistory(where, create=create)
    return SQLiteMonitorHistory(where, create=create)
