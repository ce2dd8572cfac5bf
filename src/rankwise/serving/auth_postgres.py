"""API keys in the shared PostgreSQL store (``--keys postgresql://...``): every replica checks one table.

Naming the store with ``--keys`` is the opt-in: a server given ``--store`` alone keeps its keys file, so
moving the audit log never changes who may call the server. Revoking sets ``revoked_at`` and keeps the
row (audit rows name key ids, which should keep a name). A server looks for changes at most once a second
(two counters: keys added, keys revoked) and re-reads the active keys when they moved, so a revocation
reaches every replica within about a second. With every key revoked, every request is refused — the
server never falls open. While PostgreSQL cannot be reached, the keys read last keep working (one log
line per outage): refusing all traffic because the database blinked would turn a blip into an outage;
a revocation made meanwhile applies as soon as it is back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from rankwise.postgres import PostgresStore, SharedConnection, StoreError, open_tables
from rankwise.serving.auth import ApiKey, KeyFileError, Keys, key_from_record

log = logging.getLogger(__name__)

_STEPS = ["""
    CREATE TABLE rankwise_keys (id TEXT PRIMARY KEY, key JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
                                revoked_at TIMESTAMPTZ);
    CREATE FUNCTION rankwise_keys_kept() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'rankwise_keys rows are revoked, never deleted'; END $$;
    CREATE TRIGGER rankwise_keys_kept BEFORE DELETE OR TRUNCATE ON rankwise_keys
        FOR EACH STATEMENT EXECUTE FUNCTION rankwise_keys_kept();
"""]


class PostgresKeyStore(Keys):
    """The keys of ``store``'s ``rankwise_keys`` table (created on first use)."""

    def __init__(self, store: PostgresStore, *, create: bool = False, recheck_s: float = 1.0) -> None:
        super().__init__()
        self.store = store
        self.create = create
        self.recheck_s = recheck_s
        self.connection = SharedConnection(self._open, lambda reason: StoreError(f"cannot use the keys in {store} ({reason})"))
        self._checked_at = -float("inf")
        self._seen: object = None
        self._outage = False
        self._refreshing = threading.Lock()

    def __str__(self) -> str:
        return str(self.store)

    def close(self) -> None:
        self.connection.close()

    def _open(self) -> Any:
        return open_tables(self.store, "keys", _STEPS, create=self.create, table="rankwise_keys",
                           absent=KeyFileError(f"{self.store} holds no keys; add one with: rankwise keys add "
                                               f"--keys {self.store} --role search"))

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.connection.execute(sql, params)

    def _current(self) -> dict[str, ApiKey]:
        """The keys read last; read now the first time (a server's start), else refreshed on a thread of its
        own at most every ``recheck_s``, so no request ever waits on the database."""
        if self._seen is None:
            with self._refreshing:
                if self._seen is None:
                    self._refresh(first=True)
        elif time.monotonic() - self._checked_at >= self.recheck_s and self._refreshing.acquire(blocking=False):
            threading.Thread(target=self._refresh_in_background, daemon=True, name="rankwise-keys").start()
        return self._keys

    def _refresh_in_background(self) -> None:
        try:
            self._refresh(first=False)
        finally:
            self._refreshing.release()

    def _refresh(self, *, first: bool) -> None:
        try:
            stamp = self._changed()
            keys = self._read() if stamp != self._seen else self._keys
        except KeyFileError as err:
            if first:
                raise
            if not self._outage:
                log.error("%s; the keys read last keep working until it is back", err)
            self._outage = True
            return
        finally:
            self._checked_at = time.monotonic()
        if self._outage:
            log.warning("the keys in %s are reachable again", self.store)
        with self._lock:
            self._keys, self._seen, self._outage = keys, stamp, False

    def _changed(self) -> object:
        try:
            (added, revoked), = self._query("SELECT count(*), count(revoked_at) FROM rankwise_keys")
        except StoreError as err:
            raise KeyFileError(str(err)) from None
        return added, revoked

    def _read(self) -> dict[str, ApiKey]:
        try:
            rows = self._query("SELECT key FROM rankwise_keys WHERE revoked_at IS NULL")
        except StoreError as err:
            raise KeyFileError(str(err)) from None
        return {key.id: key for key in (key_from_record(record) for (record,) in rows)}

    def _insert(self, key: ApiKey) -> None:
        from dataclasses import asdict

        from psycopg.types.json import Jsonb

        try:
            self._query("INSERT INTO rankwise_keys (id, key) VALUES (%s, %s)", (key.id, Jsonb(asdict(key))))
        except StoreError as err:
            raise KeyFileError(str(err)) from None

    def _remove(self, key_id: str) -> ApiKey | None:
        try:
            rows = self._query("UPDATE rankwise_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL "
                               "RETURNING key", (key_id,))
        except StoreError as err:
            raise KeyFileError(str(err)) from None
        return key_from_record(rows[0][0]) if rows else None
