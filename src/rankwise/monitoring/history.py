"""The monitoring history: one record per scheduled evaluation run, append-only, in SQLite.

A drift alarm is only as trustworthy as the runs it compares, so a record holds everything needed to
judge a change without re-running anything: the per-query values (paired tests need them), the query
texts (to show which queries got worse), the gold set's fingerprint (to notice a changed yardstick) and
the full serving configuration with the reranker's resolved version and weights digest (to say *what*
changed). :class:`MonitorHistory` is the protocol the checks read; :class:`SQLiteMonitorHistory` implements
it on one SQLite file and :class:`~rankwise.monitoring.history_postgres.PostgresMonitorHistory` in the
shared PostgreSQL store, both through the same SQL (:class:`HistoryQueries`).

Why the store is shaped like this:

* **Append-only, enforced by the database.** Triggers abort every UPDATE and DELETE: a history someone can
  quietly edit cannot be the evidence behind a page at 3 a.m. Choosing a baseline is therefore not an
  update either but a *pin event* in its own table; the latest pin of a monitor name wins.
* **A record is complete or absent.** The record is serialised before the transaction starts and written
  by one INSERT in one transaction, so an interrupted run (Ctrl-C, a crash, a failed evaluation) appends
  nothing and the next check never sees half a run.
* **Recognised by its header.** ``PRAGMA application_id`` marks the file as a monitoring history, so
  pointing ``--history`` at the feedback database or the audit log is refused before anything is written.
* **One actionable line per failure.** A missing, locked, corrupt or foreign file is a :class:`MonitorError`
  mapped from SQLite's error code, never a traceback.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from rankwise.clock import utc_now
from rankwise.errors import RankwiseError
from rankwise.sqlite_files import DatabaseKind, failure, open_database

#: ``PRAGMA application_id`` of a rankwise monitoring history ("rkmo")
APPLICATION_ID = 0x726B6D6F
SCHEMA_VERSION = 1
#: the ``schema`` field of a record's JSON; fields may be added in a minor version, never renamed or removed
RECORD_SCHEMA = "rankwise.monitor/1"
DEFAULT_NAME = "default"
#: shortest record-id prefix accepted where an id is typed by hand
MIN_ID_PREFIX = 6

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    time TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_name_time ON runs(name, time);
CREATE TABLE IF NOT EXISTS pins (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    record_id TEXT NOT NULL REFERENCES runs(id),
    time TEXT NOT NULL
);
{"".join(f'''
CREATE TRIGGER IF NOT EXISTS {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, 'the monitoring history is append-only: rows cannot be updated'); END;
CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, 'the monitoring history is append-only: rows cannot be deleted'); END;'''
        for table in ("runs", "pins"))}
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""


class MonitorError(RankwiseError):
    """A monitoring history or check cannot be used as asked; the message names the problem and the fix."""


_KIND = DatabaseKind("monitoring history", APPLICATION_ID, SCHEMA_VERSION, _SCHEMA, MonitorError,
                     wrong_file_fix="restore it from a backup or pass another --history",
                     locked_fix="let the other run finish or retry", full_fix="free space and run again",
                     empty_fix="no run recorded yet; record one with `rankwise monitor run`")


def parse_time(value: str) -> datetime:
    """A record's time as an aware UTC datetime (a time without an offset is taken as UTC)."""
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise MonitorError(f"'{value}' is not an ISO 8601 time like 2026-10-29T12:00:00+00:00") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class MonitorRecord:
    """One evaluation run of one serving configuration on one gold set.

    ``per_query`` is ``{metric: {query_id: value}}``; ``slices`` is ``{slice: {value: {"n": count, metric:
    mean}}}`` and ``slice_members`` ``{slice: {value: [query ids]}}`` (what per-slice paired tests need);
    ``query_digests`` identifies each query's text and judgements, so a changed gold set is compared only
    on the queries judged identically in both runs. ``latency`` holds p50/p95/p99 ms per query (end to
    end); ``cost`` holds ``pairs_scored`` (query–passage pairs the reranker scored, all queries together),
    ``cpu_ms_per_query`` (process CPU time of the whole run, every thread, per query) and ``wall_seconds``.
    """

    id: str
    name: str
    time: str
    goldset_name: str
    goldset_fingerprint: str
    num_queries: int
    index_path: str
    index_fingerprint: str
    num_documents: int
    embedding_model: str | None
    embedding_sha256: str | None
    first_stage: str
    retrieve_k: int
    rerank_k: int
    rerank_fusion: str
    #: the reranker's concrete inference backend (``auto`` resolved), ``none`` without a reranker
    backend: str
    #: as asked (``production``), as resolved (``v3``, or a model path), and its weights' digest
    reranker: str | None
    reranker_version: str | None
    reranker_sha256: str | None
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    query_texts: dict[str, str]
    query_digests: dict[str, str]
    slices: dict[str, dict[str, dict[str, float]]]
    slice_members: dict[str, dict[str, list[str]]]
    latency: dict[str, float]
    cost: dict[str, float]
    rankwise_version: str

    @property
    def system(self) -> str:
        """``hybrid``, or ``hybrid+v3`` with a reranker: how the record is named in reports."""
        return self.first_stage if self.reranker is None else f"{self.first_stage}+{self.reranker_version}"

    def to_dict(self) -> dict[str, Any]:
        """The record as strict JSON data (``schema`` first; NaN becomes ``null``)."""
        return {"schema": RECORD_SCHEMA, **json_safe(asdict(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MonitorRecord:
        """A record from :meth:`to_dict` output; unknown fields (from a newer minor version) are ignored."""
        if data.get("schema") != RECORD_SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, this rankwise reads {RECORD_SCHEMA}")
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields(cls)}
        values["metrics"] = {m: _number(v) for m, v in values["metrics"].items()}
        values["per_query"] = {m: {q: _number(v) for q, v in per.items()}
                               for m, per in values["per_query"].items()}
        return cls(**values)


def new_record_id() -> str:
    return uuid.uuid4().hex


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def json_safe(value: Any) -> Any:
    """Tuples → lists and NaN/inf → ``null``, so the data serialises as strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MonitorHistory(Protocol):
    """What monitoring needs from a history of runs (records oldest → newest within a monitor name)."""

    def append(self, record: MonitorRecord) -> None:
        """Store ``record`` durably, completely or not at all."""
        ...

    def records(self, name: str | None = None) -> list[MonitorRecord]:
        """Every record (of monitor ``name``, or of all names), oldest first."""
        ...

    def latest(self, name: str | None = None) -> MonitorRecord | None: ...

    def get(self, record_id: str) -> MonitorRecord:
        """The record with this id (or unique id prefix); a :class:`MonitorError` when there is none."""
        ...

    def names(self) -> list[str]: ...

    def pin_baseline(self, record_id: str) -> MonitorRecord:
        """Make that record its monitor's baseline (an appended event: the latest pin wins)."""
        ...

    def baseline(self, name: str) -> MonitorRecord | None: ...

    def close(self) -> None: ...


class HistoryQueries:
    """The history's reads and writes in the SQL every store speaks: a store names its ``runs`` and ``pins``
    tables and its parameter placeholder, says where it is (``_where``, for messages), and supplies
    ``_execute`` (a read) and ``_write`` (one statement in one transaction)."""

    _runs: str
    _pins: str
    _mark: str
    _where: str

    def _execute(self, sql: str, params: tuple[Any, ...], doing: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self, sql: str, params: tuple[Any, ...], doing: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def append(self, record: MonitorRecord) -> None:
        """Store ``record`` in one transaction (serialised first, so a bad value writes nothing)."""
        record = replace(record, time=parse_time(record.time).isoformat(timespec="seconds"))
        text = json.dumps(record.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        m = self._mark
        self._write(f"INSERT INTO {self._runs} (id, name, time, record) VALUES ({m}, {m}, {m}, {m})",
                    (record.id, record.name, record.time, text), "recording a run")

    def pin_baseline(self, record_id: str) -> MonitorRecord:
        record = self.get(record_id)
        m = self._mark
        self._write(f"INSERT INTO {self._pins} (name, record_id, time) VALUES ({m}, {m}, {m})",
                    (record.name, record.id, utc_now()), "pinning a baseline")
        return record

    # ------------------------------------------------------------------ reads
    def records(self, name: str | None = None) -> list[MonitorRecord]:
        where, params = self._of(name)
        rows = self._execute(f"SELECT id, record FROM {self._runs} {where} ORDER BY time, seq", params,
                             "reading the runs")
        return [self._record(*row) for row in rows]

    def latest(self, name: str | None = None) -> MonitorRecord | None:
        where, params = self._of(name)
        rows = self._execute(f"SELECT id, record FROM {self._runs} {where} ORDER BY time DESC, seq DESC LIMIT 1",
                             params, "reading the latest run")
        return self._record(*rows[0]) if rows else None

    def get(self, record_id: str) -> MonitorRecord:
        text = record_id.strip().lower()
        if len(text) < MIN_ID_PREFIX or not all(c in "0123456789abcdef" for c in text):
            raise MonitorError(f"'{record_id}' is not a run id; pass the id `rankwise monitor run` printed "
                               f"(its first {MIN_ID_PREFIX} characters at least; `rankwise monitor list` "
                               "shows them)")
        m = self._mark
        rows = self._execute(f"SELECT id, record FROM {self._runs} WHERE id >= {m} AND id < {m} ORDER BY seq LIMIT 2",
                             (text, text + "g"), "reading a run")
        if not rows:
            raise MonitorError(f"no run '{record_id}' in the monitoring history {self._where}; "
                               "`rankwise monitor list` shows the runs")
        exact = [row for row in rows if row[0] == text]
        if len(rows) > 1 and not exact:
            raise MonitorError(f"'{record_id}' is the start of more than one run id; pass more of it")
        return self._record(*(exact or rows)[0])

    def names(self) -> list[str]:
        rows = self._execute(f"SELECT DISTINCT name FROM {self._runs} ORDER BY name", (), "reading monitor names")
        return [name for (name,) in rows]

    def baseline(self, name: str) -> MonitorRecord | None:
        rows = self._execute(f"SELECT r.id, r.record FROM {self._pins} p JOIN {self._runs} r ON r.id = p.record_id "
                             f"WHERE p.name = {self._mark} ORDER BY p.seq DESC LIMIT 1", (name,),
                             "reading the baseline")
        return self._record(*rows[0]) if rows else None

    def _record(self, record_id: str, text: str) -> MonitorRecord:
        try:
            return MonitorRecord.from_dict(json.loads(text))
        except (TypeError, ValueError, AttributeError) as err:
            raise MonitorError(f"run '{record_id}' in the monitoring history {self._where} cannot be read "
                               f"({err}); it was written by another rankwise version or damaged") from None

    def _of(self, name: str | None) -> tuple[str, tuple[str, ...]]:
        """The WHERE clause selecting one monitor's runs (none: every monitor's)."""
        return (f"WHERE name = {self._mark}", (name,)) if name is not None else ("", ())


class SQLiteMonitorHistory(HistoryQueries):
    """:class:`MonitorHistory` on one SQLite file; see the module docstring.

    ``create=False`` (what checks use) refuses a missing file instead of creating an empty history: a
    typo in ``--history`` must not turn into "no runs, nothing to alarm about".
    """

    _runs, _pins, _mark = "runs", "pins", "?"

    def __init__(self, path: str | Path, *, create: bool = True, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._where = f"'{self.path}'"
        if not create and not self.path.is_file():
            raise MonitorError(f"no monitoring history at '{self.path}'; record a run first with `rankwise "
                               f"monitor run ... --history {self.path}`, or pass the right --history")
        self._conn = open_database(self.path, _KIND, timeout=self.timeout, create=create)

    def __repr__(self) -> str:
        return f"SQLiteMonitorHistory('{self.path}')"

    def close(self) -> None:
        self._conn.close()

    def _error(self, err: OSError | sqlite3.Error, doing: str) -> RankwiseError:
        return failure(err, self.path, _KIND, self.timeout, doing)

    def _execute(self, sql: str, params: tuple[Any, ...], doing: str) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise self._error(err, doing) from None

    def _write(self, sql: str, params: tuple[Any, ...], doing: str) -> None:
        """One statement in one transaction: committed whole, or rolled back whole."""
        try:
            with self._conn:
                self._conn.execute(sql, params)
        except sqlite3.Error as err:
            raise self._error(err, doing) from None
