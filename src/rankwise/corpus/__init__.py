"""Corpus ingestion: loaders for BEIR/JSONL/CSV/directories and token-aware passage splitting."""

from rankwise.corpus.chunking import ChunkingSettings, PassageSplitter, content_hash
from rankwise.corpus.loaders import load_documents, validated

__all__ = ["ChunkingSettings", "PassageSplitter", "content_hash", "load_documents", "validated"]
