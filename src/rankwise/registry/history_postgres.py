"""The registry's history in the shared PostgreSQL store, so every replica follows the same aliases.

A registry directory whose ``store.json`` names a store (``rankwise models share``) keeps its versions
(immutable model directories: share them read-only, or sync them) where they are and its event log in
``rankwise_registry_events``: append-only (triggers refuse UPDATE, DELETE and TRUNCATE), one row per
event in commit order, several registries told apart by name. Writers hold an advisory lock per registry
while they read and append, as they hold the directory's lock for a file, so two promotions on two
machines cannot interleave.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rankwise.clock import utc_now
from rankwise.errors import ModelError
from rankwise.postgres import (
    PostgresStore,
    SharedConnection,
    StoreError,
    advisory_key,
    connect,
    one_line,
    open_tables,
)
from rankwise.registry.history import History

#: the file in a registry directory that names where its history is
STORE_FILE = "store.json"

_STEPS = ["""
    CREATE TABLE rankwise_registry_events (id BIGSERIAL PRIMARY KEY, registry TEXT NOT NULL, event JSONB NOT NULL);
    CREATE INDEX ON rankwise_registry_events (registry, id);
    CREATE FUNCTION rankwise_registry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'the registry history is append-only'; END $$;
    CREATE TRIGGER rankwise_registry_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON rankwise_registry_events
        FOR EACH STATEMENT EXECUTE FUNCTION rankwise_registry_append_only();
"""]


def read_store_file(root: Path) -> tuple[PostgresStore, str] | None:
    """The store and registry name ``root/store.json`` names, or None when the history is the local file."""
    file = root / STORE_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return PostgresStore(data["history"]), str(data["name"])
    except (OSError, ValueError, KeyError, TypeError, StoreError) as err:
        raise ModelError(f"{file} does not name a history store ({one_line(err)}); it is written by "
                         "`rankwise models share`") from None


class PostgresHistory(History):
    """The events of registry ``name`` in ``store`` (the same contract as the ``history.jsonl`` file)."""

    def __init__(self, store: PostgresStore, name: str) -> None:
        super().__init__(Path(STORE_FILE))
        self.store, self.name = store, name
        self.connection = SharedConnection(self._open, lambda reason: ModelError(
            f"cannot use the registry history in {store} ({reason})"))

    @property
    def label(self) -> str:
        return f"registry history '{self.name}' in {self.store}"

    def _open(self) -> Any:
        try:
            return open_tables(self.store, "registry", _STEPS, create=True, table="rankwise_registry_events",
                               absent=ModelError(f"{self.store} holds no registry history"))
        except StoreError as err:
            raise ModelError(str(err)) from None

    def read(self) -> tuple[list[tuple[int, dict[str, Any]]], int | None]:
        rows = self.connection.execute("SELECT id, event FROM rankwise_registry_events WHERE registry = %s ORDER BY id", (self.name,))
        return [(int(i), e) for i, e in rows], None

    def repair_tail(self) -> None:
        return None  # a row is committed whole or not at all

    def append(self, event: dict[str, Any]) -> None:
        from psycopg.types.json import Jsonb

        self.connection.execute("INSERT INTO rankwise_registry_events (registry, event) VALUES (%s, %s)",
                      (self.name, Jsonb({"at": utc_now(), **event})))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """This registry's advisory lock, on a connection of its own, for one write."""
        conn = connect(self.store.url)
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (advisory_key(f"registry:{self.name}"),))
            yield
        finally:
            conn.close()  # ends the session: releases the lock


def move_history(root: Path, history: History, store: PostgresStore, name: str) -> int:
    """Copy ``history``'s events into ``store`` under ``name`` and point ``root`` at it; returns the events moved.

    ``store.json`` is shared with the directory, so the URL may hold no password (libpq reads it from
    ``~/.pgpass`` or ``PGPASSWORD``). Refused when ``store`` already holds other events for ``name`` (another
    registry's history would be mixed in); holding exactly these (a move cut off before ``store.json`` was
    written) it only finishes the move.
    """
    from urllib.parse import parse_qsl, urlsplit

    from rankwise.storage import atomic_write_text

    parts = urlsplit(store.url)
    if parts.password or any(k.lower() == "password" for k, _ in parse_qsl(parts.query)):
        raise ModelError("the registry's store.json is shared with its directory: give --store without a password "
                         "(libpq reads it from ~/.pgpass or PGPASSWORD)")
    target = PostgresHistory(store, name)
    with target.locked():
        events = history.events()
        there = [{k: v for k, v in e.items() if k != "at"} for e in target.events()]
        if there and there != [{k: v for k, v in e.items() if k != "at"} for e in events]:
            raise ModelError(f"{store} already holds a registry history named '{name}'; choose another --name")
        if not there:
            def insert_all(conn: Any) -> None:
                with conn.transaction():  # all of them or none
                    for event in events:
                        conn.execute("INSERT INTO rankwise_registry_events (registry, event) VALUES (%s, %s)",
                                     (name, _jsonb(event)))

            target.connection.run(insert_all)
        atomic_write_text(root / STORE_FILE, json.dumps({"history": store.url, "name": name}, indent=2) + "\n",
                          private=True)
    if history.path.is_file():  # kept for the record, never read again
        history.path.rename(history.path.with_name(history.path.name + ".moved"))
    return len(events)


def _jsonb(event: dict[str, Any]) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(event)
