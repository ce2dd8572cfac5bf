"""An index in PostgreSQL with pgvector: documents, passages and vectors that every replica shares.

Named ``postgresql://user@host/database#NAME`` wherever an index directory is accepted (``--index``), so
one string says where an index is, in a server's settings, an evaluation record or the audit log.

- **Versions.** Each build or update writes a new version — two tables of its own
  (``rankwise_index_<id>_documents`` and ``..._passages``, the vectors in a ``vector(dim)`` column with an
  HNSW index) and a row in ``rankwise_index_versions`` — then points the name's head at it, all in one
  transaction: PostgreSQL's DDL is transactional, so readers see the old version or the new one, and a
  build cut off midway leaves nothing. The head keeps the version it replaced as ``previous`` (rollback
  swaps the two); older versions are dropped. Builds and updates of one name are serialised by an
  advisory lock.
- **BM25 stays bm25s.** Its files travel in the version row (a tar), are checked against the digests the
  manifest recorded and loaded into memory by each replica; the manifest's fingerprint is the version a
  replica follows (:mod:`rankwise.serving.index_follow`).
- **Vectors.** HNSW over cosine distance, with pgvector's iterative scan so a metadata or permission
  filter cannot starve the result, or exact (a sequential scan: what evaluation compares against).
- **Permissions.** Each row carries its document's access list (``groups TEXT[]``, NULL when public).
  Retrieval filters by it before ranking, as with the embedded index; row-level security (forced, so the
  tables' owner is held to it too) is the second line: a session sees public rows only unless it sets
  ``rankwise.groups`` to ``*`` (every row) or to a JSON list of groups, and passage text for a restricted
  caller is read under that caller's groups. It backs rankwise's own filtering (a query that forgot the
  groups returns nothing restricted); it is not a boundary between database roles — any session may set
  ``rankwise.groups`` — so a role that must not read restricted documents gets no access to these tables.
  A superuser or ``BYPASSRLS`` role skips row-level security altogether, which opening the index warns about.

Passage rows are numbered 0..N-1 as in the embedded index, so BM25 hits, vector hits and passages map
onto each other the same way and both kinds of index answer identically (tested on exact search).
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from rankwise.corpus.loaders import documents_of
from rankwise.errors import IndexNotFoundError
from rankwise.index.dense import Embedder
from rankwise.index.docstore import (
    ACCESS_FIELD,
    VisibleRows,
    checked_passages,
    forbidden,
    metadata_filter_keys,
    why_nothing_matches,
)
from rankwise.index.index import BM25_DIR, Index, no_progress, reusable_vectors
from rankwise.index.integrity import verify_files
from rankwise.index.lexical import BM25Index, BM25Settings
from rankwise.index.manifest import Manifest
from rankwise.postgres import (
    PostgresStore,
    SharedConnection,
    StoreError,
    advisory_key,
    connect,
    migrate,
    one_line,
    redacted,
)
from rankwise.types import Document, Passage

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")

_STEPS = [
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE rankwise_index_versions (
        id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, fingerprint TEXT NOT NULL, manifest JSONB NOT NULL,
        bm25 BYTEA NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE rankwise_index_heads (
        name TEXT PRIMARY KEY, current BIGINT NOT NULL REFERENCES rankwise_index_versions(id),
        previous BIGINT REFERENCES rankwise_index_versions(id), updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
    "ALTER TABLE rankwise_index_versions ADD COLUMN retired_at TIMESTAMPTZ",
]

#: a session sees only public rows unless it names its groups (a JSON list) or ``*`` for all of them
_POLICY = """(groups IS NULL OR current_setting('rankwise.groups', true) = '*'
    OR groups && ARRAY(SELECT jsonb_array_elements_text(CASE WHEN current_setting('rankwise.groups', true) LIKE '[%%'
                                                          THEN current_setting('rankwise.groups', true)::jsonb
                                                          ELSE '[]'::jsonb END)))"""


@dataclass(frozen=True, slots=True)
class PostgresIndexLocation:
    """``postgresql://user@host/database#NAME``: an index named ``NAME`` in that database."""

    url: str = field(repr=False)  # may hold a password
    name: str

    @classmethod
    def parse(cls, value: str) -> PostgresIndexLocation:
        url, _, name = value.partition("#")
        if not _NAME.fullmatch(name):
            raise IndexNotFoundError(f"an index in PostgreSQL is given as postgresql://user@host/database#NAME (NAME: "
                                     f"up to 63 letters, digits, '_', '-' or '.'); got {redacted(url)}#{name}")
        PostgresStore(url)
        return cls(url, name)

    def __str__(self) -> str:
        return f"{redacted(self.url)}#{self.name}"


def _tables(version: int) -> tuple[str, str]:
    return f"rankwise_index_{version}_documents", f"rankwise_index_{version}_passages"


def _connect(location: PostgresIndexLocation, *, create: bool) -> psycopg.Connection:
    conn = connect(location.url)
    try:
        if create:
            try:
                migrate(conn, "index", _STEPS)
            except StoreError:
                raise
            except Exception as err:  # noqa: BLE001 - e.g. no permission to create the vector extension
                raise StoreError(f"cannot prepare the index tables in {redacted(location.url)} ({one_line(err)}); "
                                 "the database needs the pgvector extension (CREATE EXTENSION vector, once, "
                                 "by a superuser)") from None
        elif conn.execute("SELECT to_regclass('rankwise_index_heads')").fetchone()[0] is None:
            raise _absent(location)
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        if row is None or tuple(int(p) for p in re.findall(r"\d+", row[0])[:2]) < (0, 8):
            raise StoreError(f"{redacted(location.url)} needs pgvector 0.8 or later (found "
                             f"{row[0] if row else 'none'}): its iterative HNSW scan keeps filters from starving results")
        from pgvector.psycopg import register_vector

        register_vector(conn)
        conn.execute("SELECT set_config('rankwise.groups', '*', false)")  # this session reads for everyone
    except BaseException:
        conn.close()
        raise
    return conn


def _reopen(location: PostgresIndexLocation) -> psycopg.Connection:
    try:
        return _connect(location, create=False)
    except StoreError as err:
        raise IndexNotFoundError(str(err)) from None


def _absent(location: PostgresIndexLocation) -> IndexNotFoundError:
    return IndexNotFoundError(f"no index '{location.name}' in {redacted(location.url)}; build one with: "
                              f"rankwise index SOURCE --index '{location}'")


def _head(conn: psycopg.Connection, location: PostgresIndexLocation) -> tuple[int, dict[str, Any]]:
    row = conn.execute("SELECT v.id, v.manifest FROM rankwise_index_heads h JOIN rankwise_index_versions v "
                       "ON v.id = h.current WHERE h.name = %s", (location.name,)).fetchone()
    if row is None:
        raise _absent(location)
    return int(row[0]), row[1]


def _manifest(data: dict[str, Any], location: PostgresIndexLocation) -> Manifest:
    try:
        return Manifest(**data)
    except TypeError as err:
        raise IndexNotFoundError(f"the manifest of index {location} is not one this rankwise reads ({err})") from None


def read_postgres_manifest(location: PostgresIndexLocation) -> Manifest:
    """The manifest of the version ``location``'s head points at now (what a following server polls)."""
    conn = _connect(location, create=False)
    try:
        return _manifest(_head(conn, location)[1], location)
    finally:
        conn.close()


def _access_list(metadata: dict[str, Any]) -> list[str] | None:
    """A document's groups as a text array: None when public; only string names can match a caller's."""
    value = metadata.get(ACCESS_FIELD)
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str)]


def _groups_setting(groups: frozenset[str] | None) -> str:
    return "*" if groups is None else json.dumps(sorted(groups))


class PostgresDocStore:
    """The docstore of one index version, with the read paths of :class:`~rankwise.index.docstore.DocStore`.

    Read through a :class:`~rankwise.postgres.SharedConnection`, reopened when a restarted PostgreSQL lost it.
    """

    def __init__(self, conn: psycopg.Connection, location: PostgresIndexLocation, version: int) -> None:
        self.where = str(location)
        self.connection = SharedConnection(lambda: _reopen(location), self._unreadable, conn)
        self._documents, self._passages = _tables(version)
        self._visible = VisibleRows()

    def _unreadable(self, reason: str) -> IndexNotFoundError:
        return IndexNotFoundError(f"cannot read index {self.where} ({reason})")

    def _query(self, sql: str, params: Sequence[Any] = (), *, groups: frozenset[str] | None = None
               ) -> list[tuple[Any, ...]]:
        if groups is None:
            return self.connection.execute(sql, params)

        def work(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
            with conn.transaction():
                conn.execute("SELECT set_config('rankwise.groups', %s, true)", (_groups_setting(groups),))
                return conn.execute(sql, params).fetchall()

        return self.connection.run(work)

    def close(self) -> None:
        self.connection.close()

    def counts(self) -> tuple[int, int]:
        (docs,), = self._query(f"SELECT COUNT(*) FROM {self._documents}")
        (passages,), = self._query(f"SELECT COUNT(*) FROM {self._passages}")
        return int(docs), int(passages)

    def check_counts(self, documents: int, passages: int) -> None:
        found = self.counts()
        if found != (documents, passages):
            raise IndexNotFoundError(f"index {self.where} holds {found[0]} documents and {found[1]} passages, its "
                                     f"manifest records {documents} and {passages}; rebuild the index")

    def passage_hashes(self) -> list[str]:
        return [h for (h,) in self._query(f"SELECT content_hash FROM {self._passages} ORDER BY row")]

    def passage_doc_ids(self) -> list[str]:
        return [d for (d,) in self._query(f"SELECT doc_id FROM {self._passages} ORDER BY row")]

    def passages(self, rows: Sequence[int], groups: frozenset[str] | None = None) -> list[Passage]:
        """Like :meth:`DocStore.passages`; a restricted caller's read runs under row-level security."""
        if not rows:
            return []
        sql = (f"SELECT p.row, p.passage_id, p.doc_id, p.idx, d.title, p.text, p.start_char, p.end_char, "
               f"p.content_hash FROM {self._passages} p JOIN {self._documents} d USING (doc_id) WHERE p.row = ANY(%s)")
        params: list[Any] = [[int(r) for r in rows]]
        if groups is not None:  # in the query (which binds a superuser too) and under row-level security
            sql += " AND (p.groups IS NULL OR p.groups && %s)"
            params.append(sorted(groups))
        found = {r[0]: r for r in self._query(sql, params, groups=groups)}
        if groups is not None:
            hidden = [int(r) for r in rows if int(r) not in found]
            if hidden:
                raise forbidden(hidden[0])
        return checked_passages(found, rows, self.where)

    def document(self, doc_id: str) -> Document | None:
        rows = self._query(f"SELECT doc_id, text, title, metadata FROM {self._documents} WHERE doc_id = %s", (doc_id,))
        return Document(id=rows[0][0], text=rows[0][1], title=rows[0][2], metadata=rows[0][3]) if rows else None

    def documents(self, page: int = 1000) -> Iterator[Document]:
        """Every document, in the order it was indexed, a page at a time."""
        last = -1
        while True:
            rows = self._query(f"SELECT position, doc_id, text, title, metadata FROM {self._documents} "
                               "WHERE position > %s ORDER BY position LIMIT %s", (last, page))
            for last, doc_id, text, title, metadata in rows:
                yield Document(id=doc_id, text=text, title=title, metadata=metadata)
            if len(rows) < page:
                return

    def metadata(self, doc_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not doc_ids:
            return {}
        return dict(self._query(f"SELECT doc_id, metadata FROM {self._documents} WHERE doc_id = ANY(%s)",
                                (list(doc_ids),)))

    @cached_property
    def metadata_keys(self) -> frozenset[str]:
        return frozenset(k for (k,) in self._query(f"SELECT DISTINCT jsonb_object_keys(metadata) FROM {self._documents}"))

    def why_nothing_matches(self, filters: dict[str, Any], examples: int = 5) -> str:
        from psycopg.types.json import Jsonb

        def present(key: str, wanted: list[Any]) -> set[Any]:
            return {v for (v,) in self._query(
                f"SELECT DISTINCT metadata -> %s FROM {self._documents} WHERE metadata -> %s = ANY(%s)",
                (key, key, [Jsonb(v) for v in wanted]))}

        def some(key: str, limit: int) -> list[Any]:
            return [v for (v,) in self._query(
                f"SELECT DISTINCT metadata -> %s AS v FROM {self._documents} WHERE jsonb_typeof(metadata -> %s) "
                "<> 'null' ORDER BY v LIMIT %s", (key, key, limit))]

        return why_nothing_matches(filters, present, some, examples)

    def rows_visible_to(self, groups: frozenset[str]) -> np.ndarray:
        """Passage rows a caller in ``groups`` may see (public ones and those naming one of the groups)."""
        return self._visible.get(groups, lambda g: np.array([r for (r,) in self._query(
            f"SELECT row FROM {self._passages} WHERE groups IS NULL OR groups && %s ORDER BY row", (sorted(g),))],
            dtype=np.int64))

    def rows_matching(self, filters: dict[str, Any]) -> np.ndarray:
        """Passage rows whose document's metadata equals every ``key: value`` (a list: any of them), in SQL."""
        from psycopg.types.json import Jsonb

        metadata_filter_keys(filters)
        clauses, params = [], []
        for key, value in filters.items():
            clauses.append("d.metadata -> %s = ANY(%s)")
            params += [key, [Jsonb(v) for v in (value if isinstance(value, list) else [value])]]
        sql = f"SELECT p.row FROM {self._passages} p JOIN {self._documents} d USING (doc_id)"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return np.array(sorted(r for (r,) in self._query(sql + " ORDER BY p.row", params)), dtype=np.int64)


class PgVectors:
    """Cosine search over one version's passage vectors in pgvector: HNSW, or exact (a sequential scan)."""

    def __init__(self, store: PostgresDocStore, dim: int, *, exact: bool) -> None:
        self._store, self.dim, self.exact = store, dim, exact

    @property
    def vectors(self) -> np.ndarray:
        """Every passage's vector, by row (what a rebuild reuses for unchanged passages)."""
        rows = self._store._query(f"SELECT embedding FROM {self._store._passages} ORDER BY row")
        return np.array([r.to_numpy() for (r,) in rows], dtype=np.float32).reshape(len(rows), self.dim)

    def search(self, query_vector: np.ndarray, k: int, allowed_rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        if k <= 0 or (allowed_rows is not None and allowed_rows.size == 0):
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        vector = np.ascontiguousarray(query_vector, dtype=np.float32)
        where = "WHERE row = ANY(%(allowed)s)" if allowed_rows is not None else ""
        exact = "SET LOCAL enable_indexscan = off"
        hnsw = (f"SET LOCAL hnsw.ef_search = {min(1000, max(100, 2 * k))}; "
                "SET LOCAL hnsw.iterative_scan = strict_order")
        sql = (f"SELECT row, embedding <=> %(q)s FROM {self._store._passages} {where} "
               "ORDER BY embedding <=> %(q)s LIMIT %(k)s")
        params = {"q": vector, "k": int(k), "allowed": None if allowed_rows is None else allowed_rows.tolist()}

        def searched(settings: str) -> list[tuple[Any, ...]]:
            def work(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
                with conn.transaction():
                    conn.execute(settings)
                    return conn.execute(sql, params).fetchall()

            return self._store.connection.run(work)

        found = searched(exact if self.exact else hnsw)
        if not self.exact and allowed_rows is not None and len(found) < min(k, allowed_rows.size):
            # HNSW's scan stops at hnsw.max_scan_tuples: a narrow filter on a large corpus can leave it short,
            # and a filter must never cost results, so those few rows are searched exactly
            found = searched(exact)
        rows = np.array([r for r, _ in found], dtype=np.int64)
        return rows, (1.0 - np.array([d for _, d in found], dtype=np.float64)).astype(np.float32)


class PostgresIndex(Index):
    """The version of a PostgreSQL index its head points at, opened read-only (see the module docstring).

    ``exact``: search vectors exactly instead of through HNSW (evaluation; slower on large corpora).
    """

    def __init__(self, location: str | PostgresIndexLocation, *, embedder: Embedder | None = None,
                 exact: bool = False) -> None:
        self.where = location if isinstance(location, PostgresIndexLocation) else PostgresIndexLocation.parse(location)
        conn = _connect(self.where, create=False)
        try:
            self.version, data = _head(conn, self.where)
            self.manifest = _manifest(data, self.where)
            self._bm25_settings = BM25Settings(**self.manifest.bm25)
            _warn_if_bypassing(conn, self.where)
        except BaseException:
            conn.close()
            raise
        self.docstore = PostgresDocStore(conn, self.where, self.version)  # type: ignore[assignment]
        try:
            self.docstore.check_counts(self.manifest.num_documents, self.manifest.num_passages)
        except BaseException:
            self.docstore.close()
            raise
        self._embedder = embedder
        self.exact = exact

    @property
    def location(self) -> str:
        return str(self.where)

    def __repr__(self) -> str:
        m = self.manifest
        return f"PostgresIndex({self.location!r}, documents={m.num_documents}, passages={m.num_passages})"

    def damage(self) -> str | None:
        try:
            self.docstore.counts()
        except IndexNotFoundError as err:
            return str(err)
        return None

    @cached_property
    def bm25(self) -> BM25Index:
        """bm25s's files from the version row, checked against the manifest's digests, loaded into memory."""
        (blob,), = self.docstore._query("SELECT bm25 FROM rankwise_index_versions WHERE id = %s", (self.version,))
        with tempfile.TemporaryDirectory(prefix="rankwise-bm25-") as tmp:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
                tar.extractall(tmp, filter="data")
            verify_files(Path(tmp), self.manifest.files)
            return BM25Index.load(Path(tmp) / BM25_DIR, self._bm25_settings, self.manifest.num_passages)

    @cached_property
    def vectors(self) -> PgVectors:  # type: ignore[override]
        self._require_dense()
        return PgVectors(self.docstore, int(self.manifest.embedding["dim"]), exact=self.exact)  # type: ignore[index, arg-type]

    @classmethod
    def open_loaded(cls, path: str | Path | PostgresIndexLocation, *, embedder: Embedder | None = None,
                    attempts: int = 3) -> PostgresIndex:
        """Every version's parts are read by its id, so a concurrent update cannot mix two versions."""
        return cls(str(path) if isinstance(path, Path) else path, embedder=embedder).preload()  # type: ignore[return-value]

    @classmethod
    def build(  # type: ignore[override]
        cls,
        source: str | Path | Iterable[Document],
        path: str | PostgresIndexLocation,
        *,
        embedding_model: str | None = "minilm",
        embedder: Embedder | None = None,
        label: str | None = None,
        reuse: dict[str, np.ndarray] | None = None,
        **options: Any,
    ) -> PostgresIndex:
        """Build a new version of the index at ``path`` (``postgresql://...#NAME``) and make it the current one.

        The build itself is :meth:`Index.build` into a temporary directory, with the same ``options``
        (chunking, BM25, progress, embed), so both kinds of index answer alike; its contents are then
        copied in with ``COPY``. Unchanged passages reuse the current version's vectors.
        """
        import psycopg

        location = path if isinstance(path, PostgresIndexLocation) else PostgresIndexLocation.parse(path)
        name, documents = documents_of(source)
        if embedder is None and embedding_model is not None:
            embedder = Embedder(embedding_model)
        if reuse is None:
            reuse = _current_vectors(location, embedder)
        with tempfile.TemporaryDirectory(prefix="rankwise-pg-build-") as tmp:
            local = Index.build(documents, Path(tmp) / "index", embedding_model=embedding_model, embedder=embedder,
                                label=label or name, reuse=reuse, **options)
            try:
                conn = _connect(location, create=True)
                try:
                    progress = options.get("progress", no_progress)
                    progress("storing", 0, 1)
                    _store_version(conn, location, local)
                    progress("storing", 1, 1)
                except psycopg.Error as err:  # e.g. a NUL character, which PostgreSQL text cannot hold
                    raise StoreError(f"cannot store the index in {location} ({one_line(err)}); its previous "
                                     "version, if any, is unchanged") from None
                finally:
                    conn.close()
            finally:
                local.close()
        return cls(location, embedder=embedder)


def _current_vectors(location: PostgresIndexLocation, embedder: Embedder | None) -> dict[str, np.ndarray]:
    if embedder is None:
        return {}
    try:
        current = PostgresIndex(location)
    except (IndexNotFoundError, StoreError):
        return {}
    try:
        return reusable_vectors(current, embedder)
    finally:
        current.close()


def _warn_if_bypassing(conn: psycopg.Connection, location: PostgresIndexLocation) -> None:
    (bypass,), = conn.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchall()
    if bypass:
        log.warning("index %s is read as a superuser or BYPASSRLS role: row-level security (the second line of "
                    "document permissions) does not apply to it; connect as a plain role", location)


def _tar(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=directory.name)
    return buffer.getvalue()


def _store_version(conn: psycopg.Connection, location: PostgresIndexLocation, local: Index) -> int:
    """Copy the built index ``local`` in as a new version and make it current, in one transaction."""
    from psycopg.types.json import Jsonb

    m = local.manifest
    dense = local.has_dense
    manifest = asdict(m) | {"files": {k: v for k, v in m.files.items() if k.startswith(f"{BM25_DIR}/")},
                            "checksum": ""}
    with conn.transaction():
        # copying a corpus and building its HNSW graph take as long as they take, and another build of the
        # same name is waited for: no statement or lock limit here
        conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(f"index:{location.name}"),))
        (version,), = conn.execute(
            "INSERT INTO rankwise_index_versions (name, fingerprint, manifest, bm25) VALUES (%s, %s, %s, %s) "
            "RETURNING id", (location.name, m.fingerprint, Jsonb(manifest), _tar(local.path / BM25_DIR))).fetchall()
        documents, passages = _tables(version)
        embedding = f", embedding vector({int(m.embedding['dim'])}) NOT NULL" if dense else ""  # type: ignore[index]
        conn.execute(f"""
            CREATE TABLE {documents} (position INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
                                      text TEXT NOT NULL, metadata JSONB NOT NULL, groups TEXT[]);
            CREATE TABLE {passages} (row INTEGER PRIMARY KEY, passage_id TEXT NOT NULL UNIQUE,
                                     doc_id TEXT NOT NULL REFERENCES {documents} (doc_id), idx INTEGER NOT NULL,
                                     start_char INTEGER NOT NULL, end_char INTEGER NOT NULL, text TEXT NOT NULL,
                                     content_hash TEXT NOT NULL, groups TEXT[]{embedding});
            CREATE INDEX ON {passages} (doc_id);
        """)
        groups_of: dict[str, list[str] | None] = {}
        with conn.cursor().copy(f"COPY {documents} (position, doc_id, title, text, metadata, groups) FROM STDIN") as copy:
            for position, doc in enumerate(local.docstore.documents()):
                groups_of[doc.id] = _access_list(doc.metadata)
                copy.write_row((position, doc.id, doc.title, doc.text, Jsonb(doc.metadata), groups_of[doc.id]))
        vectors = local.vectors.vectors if dense else None
        columns = "row, passage_id, doc_id, idx, start_char, end_char, text, content_hash, groups" + (
            ", embedding" if dense else "")
        with conn.cursor().copy(f"COPY {passages} ({columns}) FROM STDIN") as copy:
            for start in range(0, m.num_passages, 1000):
                rows = range(start, min(m.num_passages, start + 1000))
                for row, p in zip(rows, local.docstore.passages(list(rows)), strict=True):
                    values = (row, p.id, p.doc_id, p.index, p.start, p.end, p.text, p.content_hash, groups_of[p.doc_id])
                    copy.write_row(values + ((vectors[row],) if vectors is not None else ()))
        if dense:
            conn.execute(f"CREATE INDEX ON {passages} USING hnsw (embedding vector_cosine_ops)")
        conn.execute(f"ANALYZE {documents}; ANALYZE {passages}")
        # after the COPYs: PostgreSQL refuses COPY FROM into a table row-level security applies to
        conn.execute(f"""
            ALTER TABLE {documents} ENABLE ROW LEVEL SECURITY; ALTER TABLE {documents} FORCE ROW LEVEL SECURITY;
            ALTER TABLE {passages} ENABLE ROW LEVEL SECURITY; ALTER TABLE {passages} FORCE ROW LEVEL SECURITY;
            CREATE POLICY visible ON {documents} USING {_POLICY};
            CREATE POLICY visible ON {passages} USING {_POLICY};
        """.replace("%%", "%"))
        _point_head(conn, location.name, version)
    return int(version)


#: how long a version that is neither current nor previous stays readable: a server that has not yet
#: followed two quick updates in a row keeps answering from it meanwhile
RETIRED_KEPT = "10 minutes"


def _point_head(conn: psycopg.Connection, name: str, version: int) -> None:
    """Make ``version`` current and the current one previous; retire the version that was previous and drop
    versions retired longer than :data:`RETIRED_KEPT` ago."""
    head = conn.execute("SELECT current, previous FROM rankwise_index_heads WHERE name = %s FOR UPDATE", (name,)).fetchone()
    conn.execute("INSERT INTO rankwise_index_heads (name, current, previous) VALUES (%s, %s, %s) ON CONFLICT (name) "
                 "DO UPDATE SET current = EXCLUDED.current, previous = EXCLUDED.previous, updated_at = now()",
                 (name, version, head[0] if head else None))
    if head is not None and head[1] is not None and head[1] != version:
        conn.execute("UPDATE rankwise_index_versions SET retired_at = now() WHERE id = %s", (head[1],))
    expired = conn.execute(f"SELECT id FROM rankwise_index_versions WHERE name = %s AND retired_at < now() - interval "
                           f"'{RETIRED_KEPT}' AND id <> ALL(%s)", (name, [version, head[0] if head else version])).fetchall()
    for (old,) in expired:
        _drop_version(conn, int(old))


def _drop_version(conn: psycopg.Connection, version: int) -> None:
    documents, passages = _tables(version)
    conn.execute(f"DROP TABLE IF EXISTS {passages}; DROP TABLE IF EXISTS {documents}")
    conn.execute("DELETE FROM rankwise_index_versions WHERE id = %s", (version,))


def rollback_postgres_index(location: PostgresIndexLocation) -> PostgresIndex:
    """Swap the head's current and previous versions (a second rollback rolls forward again)."""
    conn = _connect(location, create=True)  # a rollback may be the first use after an upgrade: migrate
    try:
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_key(f"index:{location.name}"),))
            head = conn.execute("SELECT current, previous FROM rankwise_index_heads WHERE name = %s FOR UPDATE",
                                (location.name,)).fetchone()
            if head is None:
                raise _absent(location)
            if head[1] is None:
                raise IndexNotFoundError(f"index {location} has no previous version to roll back to (one is kept "
                                         "from the first rebuild or update on)")
            conn.execute("UPDATE rankwise_index_heads SET current = %s, previous = %s, updated_at = now() "
                         "WHERE name = %s", (head[1], head[0], location.name))
            conn.execute("UPDATE rankwise_index_versions SET retired_at = NULL WHERE id = ANY(%s)", (list(head),))
    finally:
        conn.close()
    return PostgresIndex(location)


class IndexLock:
    """Holds ``location``'s advisory lock for a whole update (read current, build, swap), so two updates
    cannot both start from the same version and lose one's changes."""

    def __init__(self, location: PostgresIndexLocation) -> None:
        self._conn = connect(location.url)
        self._key = advisory_key(f"update:{location.name}")

    def __enter__(self) -> Self:
        import psycopg

        try:
            self._conn.execute("SET lock_timeout = 0")  # wait for the update before, as a directory's flock does
            self._conn.execute("SELECT pg_advisory_lock(%s)", (self._key,))
        except psycopg.Error as err:
            self._conn.close()
            raise StoreError(f"cannot lock the index for an update ({one_line(err)})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._conn.execute("SELECT pg_advisory_unlock(%s)", (self._key,))
        finally:
            self._conn.close()

