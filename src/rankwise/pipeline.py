"""The :class:`Pipeline`: first stage → optional reranker, with provenance and per-stage timings.

This is the one object every front end (Python API, CLI, evaluation, HTTP service) uses, so a result
looks the same wherever it comes from.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rankwise.errors import QueryError
from rankwise.index import Index
from rankwise.rerank.base import Reranker
from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings, Granularity
from rankwise.retrieval.rrf import reciprocal_rank_fusion
from rankwise.types import Candidate, FirstStageScore, Provenance, RerankerScore, SearchResponse, SearchResult

SNIPPET_CHARS = 240
MAX_QUERY_CHARS = 2000
RERANK_FUSIONS: tuple[str, ...] = ("none", "rrf")


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
        first_stage: ``bm25``, ``dense`` or ``hybrid``.
        retrieve_k: candidates taken from the first stage (default 100).
        rerank_k: how many of those the reranker scores (default 100; reranking more costs linearly
            and rarely helps — the candidates below it keep their first-stage order).
        fusion: ``rrf`` (k=60) or ``convex`` (min-max normalised, ``alpha`` = dense weight).
        granularity: ``document`` (best passage per document, MaxP) or ``passage``.
        rerank_fusion: ``none`` orders the reranked candidates by the reranker's score alone; ``rrf``
            orders them by reciprocal rank fusion (k=60) of the reranker's rank and the first stage's
            rank. Why: a reranker fine-tuned on a few hundred queries and the first stage make different
            mistakes; on SciFact test a reranker of ours moved BM25's nDCG@10 from 0.681 to 0.704 alone
            and to 0.739 fused (``benchmarks/train_beir.py``). RRF needs no weight to tune, so no
            held-out data. The result's ``score`` is then the fused score; both inputs stay visible.
    """

    def __init__(
        self,
        index: Index,
        reranker: Reranker | None = None,
        *,
        first_stage: str = "hybrid",
        retrieve_k: int = 100,
        rerank_k: int = 100,
        fusion: str = "rrf",
        alpha: float = 0.5,
        granularity: Granularity = "document",
        rerank_fusion: str = "none",
    ) -> None:
        if retrieve_k <= 0 or rerank_k < 0:
            raise QueryError("retrieve_k must be positive and rerank_k non-negative")
        if rerank_fusion not in RERANK_FUSIONS:
            raise QueryError(f"unknown rerank fusion '{rerank_fusion}'; choose {', '.join(RERANK_FUSIONS)}")
        self.rerank_fusion = rerank_fusion
        self.index = index
        self.reranker = reranker
        self.retrieve_k = retrieve_k
        self.rerank_k = rerank_k
        self.first_stage = FirstStage(index, FirstStageSettings(
            method=first_stage, fusion=fusion, alpha=alpha, granularity=granularity))

    @property
    def name(self) -> str:
        """A short label such as ``hybrid`` or ``bm25+reranker`` (used in evaluation tables)."""
        method = self.first_stage.settings.method
        return method if self.reranker is None else f"{method}+{self.reranker.name}"

    def search(self, query: str, k: int = 10, filters: dict[str, Any] | None = None) -> SearchResponse:
        """Retrieve, rerank and return the top ``k`` results with both signals and provenance."""
        query = validate_query(query)
        if k <= 0:
            raise QueryError(f"k must be positive (got {k})")
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        candidates = self.first_stage.retrieve(query, self.retrieve_k, filters)
        timings["first_stage"] = (time.perf_counter() - t0) * 1000
        results, reranked, split = self._rerank(query, candidates, timings)
        timings["total"] = (time.perf_counter() - t0) * 1000
        return SearchResponse(query=query, results=results[:k], provenance=self._provenance(len(candidates), reranked, split),
                              timings_ms=timings)

    def _rerank(self, query: str, candidates: list[Candidate], timings: dict[str, float]
                ) -> tuple[list[SearchResult], int, int]:
        """Final results, how many candidates were reranked, and how many of those were too long for one window."""
        head = candidates[: self.rerank_k] if self.reranker is not None else []
        order: list[tuple[Candidate, RerankerScore | None, float]]
        if head:
            t0 = time.perf_counter()
            scores = self.reranker.score(query, [c.passage.full_text for c in head])  # type: ignore[union-attr]
            timings["rerank"] = (time.perf_counter() - t0) * 1000
            by_score = sorted(range(len(head)), key=lambda i: (-float(scores.raw[i]), head[i].rank))
            reranker_rank = {i: r for r, i in enumerate(by_score, start=1)}
            if self.rerank_fusion == "rrf":  # head is in first-stage order
                fused = reciprocal_rank_fusion([[str(i) for i in by_score], [str(i) for i in range(len(head))]])
                final = {i: fused[str(i)] for i in by_score}
                by_score = sorted(by_score, key=lambda i: (-final[i], reranker_rank[i]))
            else:
                final = {i: float(scores.calibrated[i]) for i in by_score}
            order = [(head[i], RerankerScore(rank=reranker_rank[i], score=float(scores.calibrated[i]),
                                             raw_score=float(scores.raw[i])), final[i]) for i in by_score]
            split = scores.truncated
        else:
            order, split = [], 0
        order += [(c, None, c.score) for c in candidates[len(head):]]
        metadata = self.index.docstore.metadata(list({c.passage.doc_id for c, _, _ in order[:1000]}))
        results = [
            SearchResult(
                rank=rank, doc_id=c.passage.doc_id, passage_id=c.passage.id,
                score=score,
                first_stage=FirstStageScore(method=c.method, rank=c.rank, score=c.score),
                reranker=rr, rank_change=c.rank - rank, title=c.passage.title, snippet=_snippet(c.passage.text),
                start=c.passage.start, end=c.passage.end, metadata=metadata.get(c.passage.doc_id, {}),
            )
            for rank, (c, rr, score) in enumerate(order, start=1)
        ]
        return results, len(head), split

    def _provenance(self, num_candidates: int, num_reranked: int, num_split: int) -> Provenance:
        emb = self.index.manifest.embedding or {}
        return Provenance(
            index_fingerprint=self.index.fingerprint,
            embedding_model=str(emb.get("model", "none")),
            embedding_sha256=str(emb.get("sha256", "none")),
            reranker=self.reranker.name if self.reranker is not None else "none",
            reranker_sha256=self.reranker.weights_sha256 if self.reranker is not None else "none",
            first_stage=self.first_stage.settings.method,
            num_candidates=num_candidates,
            num_reranked=num_reranked,
            num_split=num_split,
            rerank_fusion=self.rerank_fusion if num_reranked else "none",
        )


def latency_percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50/p95/p99 of latency samples (ms); shared by benchmarks, evaluation and serving."""
    if not samples_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 95, 99)}
