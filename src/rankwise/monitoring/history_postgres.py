"""The monitoring history in PostgreSQL (``--store``): the scheduled evaluations of every replica and of
``rankwise monitor run`` on a cron host land in one history, checked against one another.

The same rows, the same SQL (:class:`~rankwise.monitoring.history.HistoryQueries`) and the same rules as
the SQLite history (:mod:`rankwise.monitoring.history` says why): append-only by triggers (UPDATE, DELETE
and TRUNCATE refused), a record written whole in one transaction or not at all, a baseline chosen by a pin
event rather than an update.
"""

from __future__ import annotations

from typing import Any

from rankwise.monitoring.history import HistoryQueries, MonitorError
from rankwise.postgres import PostgresStore, one_line, open_tables

#: version 1's tables (frozen once released: later columns get steps of their own)
_MIGRATIONS = ("""
CREATE TABLE monitor_runs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    time TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX monitor_runs_name_time ON monitor_runs(name, time);
CREATE TABLE monitor_pins (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    record_id TEXT NOT NULL REFERENCES monitor_runs(id),
    time TEXT NOT NULL
);
CREATE FUNCTION rankwise_monitor_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the monitoring history is append-only: rows cannot be changed (%)', TG_OP; END $$;
""" + "".join(f"""
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION rankwise_monitor_append_only();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION rankwise_monitor_append_only();""" for table in ("monitor_runs", "monitor_pins")),)


class PostgresMonitorHistory(HistoryQueries):
    """:class:`~rankwise.monitoring.history.MonitorHistory` in PostgreSQL.

    ``create=False`` (what checks use) refuses a database that holds no history yet, as the SQLite
    history refuses a missing file: a wrong ``--store`` must not read as "no runs, nothing to alarm about".
    """

    _runs, _pins, _mark = "monitor_runs", "monitor_pins", "%s"

    def __init__(self, store: PostgresStore, *, create: bool = True) -> None:
        self.store = store
        self._where = f"in {store}"
        self._conn: Any = open_tables(store, "monitor", _MIGRATIONS, create=create, table="monitor_runs", absent=MonitorError(
            f"no monitoring history in {store}; record a run first with `rankwise monitor run ... --store URL`, "
            "or pass the right --store"))

    def __repr__(self) -> str:
        return f"PostgresMonitorHistory('{self.store}')"

    def close(self) -> None:
        self._conn.close()

    def _execute(self, sql: str, params: tuple[Any, ...], doing: str) -> list[tuple[Any, ...]]:
        import psycopg

        try:
            return self._conn.execute(sql, params).fetchall()
        except psycopg.Error as err:
            raise MonitorError(f"the monitoring history {self._where} failed while {doing} ({one_line(err)})") from None

    def _write(self, sql: str, params: tuple[Any, ...], doing: str) -> None:
        import psycopg

        try:
            with self._conn.transaction():
                self._conn.execute(sql, params)
        except psycopg.Error as err:
            raise MonitorError(f"the monitoring history {self._where} failed while {doing} ({one_line(err)})") from None
