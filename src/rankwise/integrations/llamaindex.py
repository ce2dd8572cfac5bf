"""LlamaIndex: :class:`RankwiseRerank`, a ``BaseNodePostprocessor`` that reranks with a rankwise reranker.

Why it exists: LlamaIndex query engines rerank retrieved nodes through ``node_postprocessors``; this one
puts a rankwise cross-encoder there — in-process, or served by ``rankwise serve`` — with the same scores
and order as rankwise's own pipeline and ``/v1/rerank``.
"""

from __future__ import annotations

from typing import Any

from rankwise.integrations.scorer import FIRST_STAGE_SCORE, Scorer, missing_extra

try:
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
    from pydantic import Field, PrivateAttr, SecretStr
except ImportError as _err:
    raise missing_extra("LlamaIndex", "llama-index-core") from _err

__all__ = ["RankwiseRerank"]


class RankwiseRerank(BaseNodePostprocessor):
    """Rerank LlamaIndex nodes and keep the best ``top_n`` (all when ``None``).

    Pass ``reranker`` (a :class:`~rankwise.rerank.base.Reranker`, a model directory or a registry name such
    as ``production``; ``load_options`` such as ``{"backend": "torch"}`` go to ``load_reranker``) *or* ``url``
    (a rankwise server, with ``api_key`` when it runs with ``--keys``). Each node is scored on
    ``node.get_content(metadata_mode)``: its text alone by default (``MetadataMode.EMBED`` adds the metadata
    the embedding saw).

    Both scores are kept: ``NodeWithScore.score`` becomes the calibrated 0..1 relevance score, and the copied
    node's metadata gains ``relevance_score``, ``raw_score`` (the model's logit), ``first_stage_score`` (the
    score the node arrived with, e.g. the retriever's similarity) and ``first_stage_rank`` (its 1-based
    input position). Those keys are excluded from the LLM's and the embedder's view of the node. The input
    nodes are not modified.
    """

    reranker: Any = None
    url: str | None = None
    api_key: SecretStr | None = None
    top_n: int | None = Field(default=None, ge=1)
    metadata_mode: MetadataMode = MetadataMode.NONE
    timeout_s: float = 60.0
    load_options: dict[str, Any] = Field(default_factory=dict)
    _scorer: Scorer = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._scorer = Scorer(self.reranker, url=self.url, timeout_s=self.timeout_s,
                              api_key=self.api_key.get_secret_value() if self.api_key else None, **self.load_options)

    @classmethod
    def class_name(cls) -> str:
        return "RankwiseRerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("RankwiseRerank needs the query: call postprocess_nodes(nodes, query_str=...)")
        with self.callback_manager.event(CBEventType.RERANKING, payload={
                EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self._scorer.model,
                EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: self.top_n}) as event:
            scored = self._scorer.rank(query_bundle.query_str,
                                       [n.node.get_content(metadata_mode=self.metadata_mode) for n in nodes], self.top_n)
            ranked = []
            for s in scored:
                node = nodes[s.index].node
                added = {**s.metadata(), FIRST_STAGE_SCORE: nodes[s.index].score}
                hidden = list(added)
                copy = node.model_copy(update={
                    "metadata": {**node.metadata, **added},
                    "excluded_embed_metadata_keys": list(dict.fromkeys([*node.excluded_embed_metadata_keys, *hidden])),
                    "excluded_llm_metadata_keys": list(dict.fromkeys([*node.excluded_llm_metadata_keys, *hidden]))})
                ranked.append(NodeWithScore(node=copy, score=s.relevance_score))
            event.on_end(payload={EventPayload.NODES: ranked})
        return ranked
