"""Index storage: SQLite docstore, BM25 (bm25s), dense vectors (FAISS) and the manifest — or the same
in PostgreSQL with pgvector (:mod:`rankwise.index.postgres_index`)."""

from rankwise.index.index import Index
from rankwise.index.location import IndexLocation, build_index, open_index, open_loaded, read_manifest
from rankwise.index.update import UpdateSummary, rollback_index, update_index

__all__ = ["Index", "IndexLocation", "UpdateSummary", "build_index", "open_index", "open_loaded", "read_manifest",
           "rollback_index", "update_index"]
