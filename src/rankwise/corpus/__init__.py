"""Corpus ingestion: loaders for BEIR/JSONL/CSV/directories and token-aware passage splitting."""

from pathlib import Path

from rankwise.corpus.chunking import ChunkingSettings, PassageSplitter, content_hash
from rankwise.corpus.loaders import load_documents, validated

#: the enterprise knowledge base the project ships (BEIR layout): the demo's corpus, and the calibration
#: text for statically quantised rerankers
SAMPLE_KB: Path = Path(__file__).resolve().parents[1] / "data" / "sample_kb"
#: the demo's knowledge base: near-miss families where embeddings alone pick the wrong sibling (see its README)
DEMO_KB: Path = Path(__file__).resolve().parents[1] / "data" / "demo_kb"

__all__ = ["DEMO_KB", "SAMPLE_KB", "ChunkingSettings", "PassageSplitter", "content_hash", "load_documents", "validated"]
