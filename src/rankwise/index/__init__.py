"""Index storage: SQLite docstore, BM25 (bm25s), dense vectors (FAISS) and the manifest."""

from rankwise.index.index import Index

__all__ = ["Index"]
