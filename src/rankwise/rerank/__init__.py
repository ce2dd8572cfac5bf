"""Second stage: the Reranker contracts and the cross-encoder implementation."""

from rankwise.rerank.base import EncodedPairs, Reranker, RerankScores, WindowedReranker
from rankwise.rerank.cross_encoder import CrossEncoderReranker

__all__ = ["CrossEncoderReranker", "EncodedPairs", "RerankScores", "Reranker", "WindowedReranker"]
