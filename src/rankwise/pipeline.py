"""The :class:`Pipeline`: first stage → optional reranker, with provenance and per-stage timings.

This is the one object every front end (Python API, CLI, evaluation, HTTP service) uses, so a result
looks the same wherever it comes from. Its steps are public — :meth:`Pipeline.retrieve`,
:meth:`Pipeline.rerank`, :meth:`Pipeline.respond` — so a caller with its own scoring path (the server:
cache, micro-batching, a latency budget) composes them instead of changing a shared pipeline; a degraded
answer is ``respond`` without scores, not a pipeline with its reranker removed.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rankwise.errors import QueryError
from rankwise.index import Index
from rankwise.options import (
    DEFAULT_PIPELINE,
    FirstStageMethod,
    Fusion,
    Granularity,
    PipelineSettings,
    RerankFusion,
)
from rankwise.rerank.base import Reranker, RerankScores, backend_label, declared_fusion, rank_order
from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings
from rankwise.retrieval.rrf import reciprocal_rank_fusion
from rankwise.types import Candidate, FirstStageScore, Provenance, RerankerScore, SearchResponse, SearchResult

SNIPPET_CHARS = 240
MAX_QUERY_CHARS = 2000


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"


def validate_query(query: str) -> str:
    query = (query or "").strip()
    if not query:
        raise QueryError("the query is empty; pass some text to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
    return query


class Pipeline:
    """How an index is searched.

    Args:
        index: the :class:`~rankwise.index.Index` to search.
        reranker: any :class:`~rankwise.rerank.Reranker`, or ``None`` for first stage only.
        settings: a :class:`~rankwise.options.PipelineSettings` (what the server, an experiment arm and
            evaluation pass around); the keywords below, where given, override it, and what neither sets is
            :data:`~rankwise.options.DEFAULT_PIPELINE`'s. The resolved settings are :attr:`settings`.
        first_stage: ``bm25``, ``dense`` or ``hybrid`` (default ``hybrid``).
        retrieve_k: candidates taken from the first stage (default 100).
        rerank_k: how many of those the reranker scores (default 100; reranking more costs linearly
            and rarely helps — the candidates below it keep their first-stage order).
        rerank_fusion: ``none`` orders the reranked candidates by the reranker's score alone; ``rrf``
            orders them by reciprocal rank fusion (k=60) of the reranker's rank and the first stage's
            rank; unset, what the model's training chose on its held-out queries (``none`` for a model
            that declares nothing, e.g. any hub reranker). Why: a reranker fine-tuned on a few hundred
            queries and the first stage make different mistakes, and RRF needs no weight to tune, so no
            held-out data (``benchmarks/README.md`` measures both). The result's ``score`` is then the fused
            score; both inputs stay visible.
        fusion: how the hybrid first stage fuses BM25 and dense: ``rrf`` (k=60) or ``convex`` (min-max
            normalised, ``alpha`` = dense weight).
        granularity: ``document`` (best passage per document, MaxP) or ``passage``.
        allow_unknown_filters: a filter on a metadata key no document has is refused by default (a typo
            would silently match nothing); ``True`` lets it match nothing.
    """

    def __init__(
        self,
        index: Index,
        reranker: Reranker | None = None,
        *,
        settings: PipelineSettings | None = None,
        first_stage: FirstStageMethod | None = None,
        retrieve_k: int | None = None,
        rerank_k: int | None = None,
        rerank_fusion: RerankFusion | None = None,
        fusion: Fusion = "rrf",
        alpha: float = 0.5,
        granularity: Granularity = "document",
        allow_unknown_filters: bool = False,
    ) -> None:
        chosen = PipelineSettings(first_stage, retrieve_k, rerank_k, rerank_fusion).over(
            settings or PipelineSettings()).over(DEFAULT_PIPELINE)
        method, fused = chosen.first_stage, chosen.rerank_fusion or declared_fusion(reranker)
        assert method is not None and chosen.retrieve_k is not None and chosen.rerank_k is not None
        self.settings = replace(chosen, rerank_fusion=fused)
        self.index = index
        self.reranker = reranker
        self.first_stage = FirstStage(index, FirstStageSettings(
            method=method, fusion=fusion, alpha=alpha, granularity=granularity,
            allow_unknown_filters=allow_unknown_filters))

    # the resolved settings, read as the plain values they are once resolved (every field is set in __init__)
    @property
    def retrieve_k(self) -> int:
        return self.settings.retrieve_k  # type: ignore[return-value]

    @property
    def rerank_k(self) -> int:
        return self.settings.rerank_k  # type: ignore[return-value]

    @property
    def rerank_fusion(self) -> RerankFusion:
        return self.settings.rerank_fusion  # type: ignore[return-value]

    @property
    def name(self) -> str:
        """A short label such as ``hybrid`` or ``bm25+reranker`` (used in evaluation tables)."""
        method = self.first_stage.settings.method
        return method if self.reranker is None else f"{method}+{self.reranker.name}"

    def search(self, query: str, k: int = 10, filters: dict[str, Any] | None = None,
               groups: Collection[str] | None = None) -> SearchResponse:
        """Retrieve, rerank and return the top ``k`` results with both signals and provenance.

        ``groups``: search as a caller in these groups — only public documents and those whose access list
        names one of them are considered (None: every document; see :meth:`retrieve`).
        """
        t0 = time.perf_counter()
        candidates = self.retrieve(query, filters, groups)
        timings = {"first_stage": (time.perf_counter() - t0) * 1000}
        t1 = time.perf_counter()
        scores = self.rerank(query, candidates)
        if scores is not None:
            timings["rerank"] = (time.perf_counter() - t1) * 1000
        return self.respond(query, candidates, scores, k=k, timings=timings, started=t0,
                            warnings=self.warnings(candidates, filters, groups))

    def retrieve(self, query: str, filters: dict[str, Any] | None = None,
                 groups: Collection[str] | None = None) -> list[Candidate]:
        """The first stage's top ``retrieve_k`` candidates, best first, among the documents ``groups`` may
        see: the reranker only ever scores what the caller is allowed to read."""
        return self.first_stage.retrieve(validate_query(query), self.retrieve_k, filters, groups)

    def warnings(self, candidates: Sequence[Candidate], filters: dict[str, Any] | None,
                 groups: Collection[str] | None = None) -> list[str]:
        """What the caller should be told about an answer: why it is empty when the filters match no
        document (a value in the wrong case, a combination nobody has), rather than an empty list alone.
        A caller restricted to ``groups`` is only told that nothing it may see matches: the explanation
        quotes metadata values, which may be those of documents it may not see."""
        if not filters or candidates:
            return []
        if groups is not None:
            return [f"no document visible to {', '.join(sorted(groups)) or 'public access'} matches these filters"]
        if self.index.docstore.rows_matching(filters).size:
            return []
        return [self.index.docstore.why_nothing_matches(filters)]

    def rerank(self, query: str, candidates: Sequence[Candidate]) -> RerankScores | None:
        """The reranker's scores for the first ``rerank_k`` candidates (``None`` without a reranker)."""
        head = candidates[: self.rerank_k]
        if self.reranker is None or not head:
            return None
        return self.reranker.score(validate_query(query), [c.passage.full_text for c in head])

    def respond(self, query: str, candidates: Sequence[Candidate], scores: RerankScores | None, *, k: int = 10,
                timings: dict[str, float] | None = None, started: float | None = None,
                warnings: Sequence[str] = ()) -> SearchResponse:
        """The response for ``candidates`` ordered by ``scores`` (of the first ``len(scores.raw)`` of them).

        ``scores=None`` answers in first-stage order, with no reranker in the provenance (what the server
        returns when its latency budget runs out). ``started`` (``time.perf_counter()``) adds ``total``.
        """
        query = validate_query(query)
        if k <= 0:
            raise QueryError(f"k must be positive (got {k})")
        order = self._order(candidates, scores)[:k]
        metadata = self.index.docstore.metadata(list({c.passage.doc_id for c, _, _ in order}))
        results = [
            SearchResult(
                rank=rank, doc_id=c.passage.doc_id, passage_id=c.passage.id, score=score,
                first_stage=FirstStageScore(method=c.method, rank=c.rank, score=c.score, signals=c.signals),
                reranker=rr, rank_change=c.rank - rank, title=c.passage.title, snippet=_snippet(c.passage.text),
                start=c.passage.start, end=c.passage.end, metadata=metadata.get(c.passage.doc_id, {}),
            )
            for rank, (c, rr, score) in enumerate(order, start=1)
        ]
        timings = dict(timings or {})
        if started is not None:
            timings["total"] = (time.perf_counter() - started) * 1000
        num_reranked = 0 if scores is None else len(scores.raw)
        provenance = self._provenance(len(candidates), num_reranked, 0 if scores is None else scores.truncated)
        return SearchResponse(query=query, results=results, provenance=provenance, timings_ms=timings,
                              warnings=list(warnings))

    def _order(self, candidates: Sequence[Candidate], scores: RerankScores | None
               ) -> list[tuple[Candidate, RerankerScore | None, float]]:
        """Reranked head (by score, or fused with first-stage ranks), then the rest in first-stage order."""
        if scores is None or not len(scores.raw):
            return [(c, None, c.score) for c in candidates]
        head = candidates[: len(scores.raw)]
        by_score = rank_order(scores.raw)  # head is in first-stage order: ties keep it
        reranker_rank = {i: r for r, i in enumerate(by_score, start=1)}
        if self.rerank_fusion == "rrf":  # head is in first-stage order
            fused = reciprocal_rank_fusion([[str(i) for i in by_score], [str(i) for i in range(len(head))]])
            final = {i: fused[str(i)] for i in by_score}
            by_score = sorted(by_score, key=lambda i: (-final[i], reranker_rank[i]))
        else:
            final = {i: float(scores.calibrated[i]) for i in by_score}
        order: list[tuple[Candidate, RerankerScore | None, float]] = [
            (head[i], RerankerScore(rank=reranker_rank[i], score=float(scores.calibrated[i]),
                                    raw_score=float(scores.raw[i])), final[i]) for i in by_score]
        return order + [(c, None, c.score) for c in candidates[len(head):]]

    def _provenance(self, num_candidates: int, num_reranked: int, num_split: int) -> Provenance:
        emb = self.index.manifest.embedding or {}
        reranked = self.reranker if num_reranked else None
        return Provenance(
            index_fingerprint=self.index.fingerprint,
            embedding_model=str(emb.get("model", "none")),
            embedding_sha256=str(emb.get("sha256", "none")),
            reranker=reranked.name if reranked is not None else "none",
            reranker_sha256=reranked.weights_sha256 if reranked is not None else "none",
            first_stage=self.first_stage.settings.method,
            num_candidates=num_candidates,
            num_reranked=num_reranked,
            num_split=num_split,
            rerank_fusion=self.rerank_fusion if num_reranked else "none",
            embedding_backend=f"{emb['backend']} ({emb.get('backend_reason', 'requested')})" if emb else "none",
            reranker_backend=backend_label(reranked),
        )


def latency_percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p95/p99 of latency samples (ms); shared by benchmarks, evaluation and serving."""
    if not samples_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)}
