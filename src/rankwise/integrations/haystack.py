"""Haystack: :class:`RankwiseRanker`, a ranker ``@component`` that reranks with a rankwise reranker.

Why it exists: Haystack pipelines rerank a retriever's documents with a ranker component between the
retriever and the prompt builder; this one puts a rankwise cross-encoder there — in-process, or served by
``rankwise serve`` — with the same scores and order as rankwise's own pipeline and ``/v1/rerank``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rankwise.integrations.scorer import FIRST_STAGE_SCORE, Scorer, missing_extra
from rankwise.rerank.base import Reranker

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as _err:
    raise missing_extra("Haystack", "haystack-ai") from _err

__all__ = ["RankwiseRanker"]


@component
class RankwiseRanker:
    """Rerank Haystack documents by their ``content`` and keep the best ``top_k`` (all when ``None``).

    Pass ``reranker`` (a :class:`~rankwise.rerank.base.Reranker`, a model directory or a registry name such
    as ``production``, loaded by :meth:`warm_up`; ``load_options`` such as ``{"backend": "torch"}`` go to
    ``load_reranker``) *or* ``url`` (a rankwise server, with ``api_key`` as a Haystack ``Secret`` when it
    runs with ``--keys``). A spec or URL serializes with the pipeline (``to_dict``); a Reranker object does not.

    Both scores are kept: ``Document.score`` becomes the calibrated 0..1 relevance score, and each returned
    copy's ``meta`` gains ``relevance_score``, ``raw_score`` (the model's logit), ``first_stage_score`` (the
    score the document arrived with, e.g. BM25's) and ``first_stage_rank`` (its 1-based input position).
    The input documents are not modified.
    """

    def __init__(self, reranker: Reranker | str | None = None, *, url: str | None = None,
                 api_key: Secret | None = None, top_k: int | None = None, timeout_s: float = 60.0,
                 load_options: dict[str, Any] | None = None) -> None:
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.reranker, self.url, self.api_key, self.top_k = reranker, url, api_key, top_k
        self.timeout_s, self.load_options = timeout_s, dict(load_options or {})
        self._scorer: Scorer | None = None

    def warm_up(self) -> None:
        """Load the model (or open the server connection); ``run`` calls it if the pipeline did not."""
        if self._scorer is None:
            self._scorer = Scorer(self.reranker, url=self.url, timeout_s=self.timeout_s,
                                  api_key=self.api_key.resolve_value() if self.api_key else None, **self.load_options)

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, list[Document]]:
        """``{"documents": the best top_k documents, best first}`` (``top_k`` overrides the one given at init)."""
        self.warm_up()
        assert self._scorer is not None
        scored = self._scorer.rank(query, [d.content or "" for d in documents], top_k or self.top_k)
        return {"documents": [replace(documents[s.index], score=s.relevance_score,
                                      meta={**documents[s.index].meta, **s.metadata(),
                                            FIRST_STAGE_SCORE: documents[s.index].score}) for s in scored]}

    def to_dict(self) -> dict[str, Any]:
        if self.reranker is not None and not isinstance(self.reranker, str):
            raise TypeError("RankwiseRanker serializes only with a model spec (a path or registry name) or a url, "
                            "not with a Reranker object")
        return default_to_dict(self, reranker=self.reranker, url=self.url,
                               api_key=self.api_key.to_dict() if self.api_key else None, top_k=self.top_k,
                               timeout_s=self.timeout_s, load_options=self.load_options)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankwiseRanker:
        deserialize_secrets_inplace(data["init_parameters"], keys=["api_key"])
        return default_from_dict(cls, data)
