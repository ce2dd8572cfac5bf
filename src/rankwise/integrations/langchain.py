"""LangChain: :class:`RankwiseRerank`, a ``BaseDocumentCompressor`` that reranks with a rankwise reranker.

Why it exists: LangChain's ``ContextualCompressionRetriever`` (and any chain) takes a document compressor to
rerank retrieved documents; this one puts a rankwise cross-encoder there — in-process, or served by
``rankwise serve`` — with the same scores and order as rankwise's own pipeline and ``/v1/rerank``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankwise.integrations.scorer import Scorer, missing_extra

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, Field, PrivateAttr, SecretStr
except ImportError as _err:
    raise missing_extra("LangChain", "langchain-core") from _err

__all__ = ["RankwiseRerank"]


class RankwiseRerank(BaseDocumentCompressor):
    """Rerank LangChain documents by their ``page_content`` and keep the best ``top_n`` (all when ``None``).

    Pass ``reranker`` (a :class:`~rankwise.rerank.base.Reranker`, a model directory or a registry name such
    as ``production``; ``load_options`` such as ``{"backend": "torch"}`` go to ``load_reranker``) *or* ``url``
    (a rankwise server, with ``api_key`` when it runs with ``--keys``).

    Both scores are kept: each returned document is a copy whose metadata gains ``relevance_score``
    (calibrated 0..1, the key ``langchain-cohere`` uses too), ``raw_score`` (the model's logit) and
    ``first_stage_rank`` (its 1-based position in the input, i.e. the retriever's rank). The inputs are not
    modified.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Any = None
    url: str | None = None
    api_key: SecretStr | None = None
    top_n: int | None = Field(default=None, ge=1)
    timeout_s: float = 60.0
    load_options: dict[str, Any] = Field(default_factory=dict)
    _scorer: Scorer = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._scorer = Scorer(self.reranker, url=self.url, timeout_s=self.timeout_s,
                              api_key=self.api_key.get_secret_value() if self.api_key else None, **self.load_options)

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The best ``top_n`` documents, best first, with the reranker's scores in their metadata."""
        documents = list(documents)
        scored = self._scorer.rank(query, [d.page_content for d in documents], self.top_n)
        return [documents[s.index].model_copy(update={"metadata": {**documents[s.index].metadata, **s.metadata()}})
                for s in scored]
