"""Opening the keys a server checks: a JSON file, or the shared PostgreSQL store (``--keys postgresql://...``)."""

from __future__ import annotations

from pathlib import Path

from rankwise.postgres import PostgresStore, is_postgres_url
from rankwise.serving.auth import Keys, KeyStore


def open_keys(location: str | Path, *, create: bool = False) -> Keys:
    """The keys at ``location``: a JSON file, or ``postgresql://...`` (the shared store's ``rankwise_keys``, made
    by the first ``keys add`` — ``create`` — and never by a server, so a mistyped database is not taken for one
    without keys)."""
    if is_postgres_url(str(location)):
        from rankwise.serving.auth_postgres import PostgresKeyStore  # psycopg only where a store is named

        return PostgresKeyStore(PostgresStore(str(location)), create=create)
    return KeyStore(Path(location))
