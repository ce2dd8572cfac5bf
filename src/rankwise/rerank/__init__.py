"""Second stage: the Reranker contracts and their implementations (cross-encoder, domain-tuned bi-encoder,
residual correction of the dense first stage)."""

from rankwise.rerank.base import EncodedPairs, Reranker, RerankScores, WindowedReranker
from rankwise.rerank.bi_encoder import BiEncoderReranker
from rankwise.rerank.cross_encoder import CrossEncoderReranker
from rankwise.rerank.residual import ResidualReranker

__all__ = ["BiEncoderReranker", "CrossEncoderReranker", "EncodedPairs", "RerankScores", "Reranker", "ResidualReranker",
           "WindowedReranker"]
