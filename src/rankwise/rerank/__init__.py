"""Second stage: the Reranker interface and the cross-encoder implementation."""

from rankwise.rerank.base import Reranker, RerankScores
from rankwise.rerank.cross_encoder import CrossEncoderReranker

__all__ = ["CrossEncoderReranker", "RerankScores", "Reranker"]
