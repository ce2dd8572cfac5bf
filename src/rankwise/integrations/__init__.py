"""Rerank inside RAG frameworks with a rankwise reranker, local or served by ``rankwise serve``.

One adapter per framework, each in its own module so that ``import rankwise`` (and this package) never
imports a framework; install them with ``pip install 'rankwise[integrations]'``:

* :mod:`rankwise.integrations.langchain` — :class:`RankwiseRerank`, a LangChain ``BaseDocumentCompressor``;
* :mod:`rankwise.integrations.llamaindex` — :class:`RankwiseRerank`, a LlamaIndex ``BaseNodePostprocessor``;
* :mod:`rankwise.integrations.haystack` — :class:`RankwiseRanker`, a Haystack ``@component``.

All three score through :class:`Scorer` (a local :class:`~rankwise.rerank.base.Reranker` or a server URL)
and keep *both* scores on each result: the calibrated 0..1 ``relevance_score`` (comparable across queries,
so it can be thresholded) and the model's ``raw_score`` logit, plus the item's ``first_stage_rank``.
"""

from rankwise.integrations.scorer import (
    EXTRA_HINT,
    FIRST_STAGE_RANK,
    FIRST_STAGE_SCORE,
    RAW_SCORE,
    RELEVANCE_SCORE,
    MissingExtraError,
    RerankServiceError,
    ScoredText,
    Scorer,
)

__all__ = ["EXTRA_HINT", "FIRST_STAGE_RANK", "FIRST_STAGE_SCORE", "RAW_SCORE", "RELEVANCE_SCORE", "MissingExtraError",
           "RerankServiceError", "ScoredText", "Scorer"]
