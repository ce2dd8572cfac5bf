"""Index storage: SQLite docstore, BM25 (bm25s), dense vectors (FAISS) and the manifest."""

from rankwise.index.index import Index
from rankwise.index.update import UpdateSummary, rollback_index, update_index

__all__ = ["Index", "UpdateSummary", "rollback_index", "update_index"]
