"""rankwise — high-precision retrieval for RAG.

A fast first stage (BM25 + bi-encoder, fused) finds candidates, a cross-encoder reranks them, and every
result shows both scores with full provenance. Three concepts:

* :class:`Index` — what you search (build with :meth:`Index.build`),
* :class:`Pipeline` — how you search it (first stage + optional :class:`CrossEncoderReranker`),
* :class:`SearchResponse` / :class:`SearchResult` — what you get back.
"""

from rankwise.errors import RankwiseError
from rankwise.index import Index
from rankwise.pipeline import Pipeline
from rankwise.rerank import CrossEncoderReranker, Reranker, RerankScores, WindowedReranker
from rankwise.types import Document, Passage, Provenance, SearchResponse, SearchResult

__version__ = "0.1.0"
__all__ = [
    "CrossEncoderReranker", "Document", "Index", "Passage", "Pipeline", "Provenance", "RankwiseError",
    "RerankScores", "Reranker", "SearchResponse", "SearchResult", "WindowedReranker",
]
