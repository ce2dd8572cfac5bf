"""What the endpoints do, without HTTP: cached + batched scoring within a latency budget, and search.

:class:`RerankService` is shared by ``/v1/rerank`` and ``/v1/search``: look the pairs up in the score
cache, send only the misses to the micro-batcher, wait at most until the request's deadline, store the
new scores. :class:`SearchService` runs the public steps of :class:`~rankwise.pipeline.Pipeline` on a
worker thread and scores through :class:`RerankService`, so a search result is built by exactly the code
the CLI uses. When the budget runs out either endpoint answers in first-stage order and says so
(``degraded``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankwise.index import Index
from rankwise.options import PipelineSettings
from rankwise.pipeline import Pipeline
from rankwise.rerank.base import Reranker, RerankScores, rank_order, scoring_key
from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings
from rankwise.serving.batcher import Expired, MicroBatcher
from rankwise.serving.cache import CacheUnavailable, Entry, ScoreCache, score_keys
from rankwise.serving.metrics import ServingMetrics
from rankwise.types import Candidate, SearchResponse

log = logging.getLogger("rankwise.serving")


class BudgetExceeded(Exception):
    """The request's latency budget ran out before its reranking finished (answered as degraded)."""


@dataclass(frozen=True, slots=True)
class ScoredTexts:
    raw: np.ndarray
    calibrated: np.ndarray
    split: list[bool]
    cache_hits: int
    timings_ms: dict[str, float]
    #: what scoring this request cost: pairs and tokens sent to the model (cache misses), CPU milliseconds
    cost: dict[str, float]


class RerankService:
    def __init__(self, reranker: Reranker, batcher: MicroBatcher, cache: ScoreCache, metrics: ServingMetrics) -> None:
        self.reranker = reranker
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.fingerprint = scoring_key(reranker)

    async def score(self, query: str, texts: Sequence[str], *, deadline: float,
                    max_tokens_per_doc: int | None = None) -> ScoredTexts:
        """Scores for ``texts`` in input order; raises :class:`BudgetExceeded` at ``deadline`` (perf_counter)."""
        t0 = time.perf_counter()
        keys = score_keys(self.fingerprint, query, texts, max_tokens_per_doc=max_tokens_per_doc)
        entries = await self._cache_get(keys)
        missing = [i for i, e in enumerate(entries) if e is None]
        self.metrics.count_cache(len(texts) - len(missing), len(missing))
        timings = {"cache": (time.perf_counter() - t0) * 1000}
        cost = {"pairs": float(len(missing)), "tokens": 0.0, "cpu_ms": 0.0}
        if missing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BudgetExceeded
            future = self.batcher.submit(query, [texts[i] for i in missing], max_tokens_per_doc, deadline=deadline)
            try:
                fresh = await asyncio.wait_for(asyncio.wrap_future(future), remaining)
            except TimeoutError:
                future.cancel()  # not started yet → the worker skips it
                raise BudgetExceeded from None
            except Expired:  # the batcher dropped it at the deadline, a moment before the wait ran out
                raise BudgetExceeded from None
            new = {keys[i]: (float(fresh.scores.raw[j]), float(fresh.scores.calibrated[j]), fresh.split[j])
                   for j, i in enumerate(missing)}
            for i in missing:
                entries[i] = new[keys[i]]
            await self._cache_set(new)
            timings["queue"] = fresh.queue_ms
            timings["inference"] = fresh.inference_ms
            cost.update(tokens=float(fresh.scores.stats.get("tokens", 0.0)), cpu_ms=fresh.cpu_ms)
        done: list[Entry] = [e for e in entries if e is not None]
        raw = np.array([e[0] for e in done], dtype=np.float32)
        calibrated = np.array([e[1] for e in done], dtype=np.float32)
        timings["rerank"] = (time.perf_counter() - t0) * 1000
        return ScoredTexts(raw, calibrated, [e[2] for e in done], len(texts) - len(missing), timings, cost)

    async def _cache_get(self, keys: list[str]) -> list[Entry | None]:
        try:
            return await self.cache.get_many(keys)
        except Exception as error:  # noqa: BLE001 - a broken cache must never fail a request
            self._cache_failed("read", error)
            return [None] * len(keys)

    async def _cache_set(self, entries: dict[str, Entry]) -> None:
        try:
            await self.cache.set_many(entries)
        except Exception as error:  # noqa: BLE001 - see _cache_get
            self._cache_failed("write", error)

    def _cache_failed(self, what: str, error: Exception) -> None:
        self.metrics.cache_errors.inc()
        if isinstance(error, CacheUnavailable):  # the breaker is open: already reported when it opened
            return
        log.warning("score cache %s failed (%s backend: %s %s); serving without it", what, self.cache.backend,
                    type(error).__name__, error)


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    response: SearchResponse
    degraded: bool
    cache_hits: int | None
    #: the reranked candidates, best first by the reranker alone, one passage per document: ``(doc_id, text)``
    reranked: list[tuple[str, str]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Retrieved:
    """A first stage's answer: what both arms of an interleaved request share when they retrieve alike."""

    candidates: list[Candidate]
    started: float  # time.perf_counter() when retrieval began (the request's total counts from there)
    first_stage_ms: float


def _one_per_document(head: Sequence[Candidate], order: Iterable[int]) -> list[tuple[str, str]]:
    """``(doc_id, text)`` of ``head`` in ``order``, each document once (at its best passage)."""
    best: dict[str, str] = {}
    for i in order:
        best.setdefault(head[i].passage.doc_id, head[i].passage.full_text)
    return list(best.items())


class SearchService:
    """``/v1/search``: the pipeline's public steps, with scoring through a :class:`RerankService`.

    A :class:`Pipeline` is made per request (it is cheap: the index's parts are loaded once) and never
    changed: when the budget runs out the same candidates are answered without scores (``degraded``). The
    reranker is a per-call argument because the server may route requests to different model versions.
    ``pipeline`` is the server's settings, every one set: what a request and its experiment arm leave unset.
    """

    def __init__(self, index: Index, pipeline: PipelineSettings, *, allow_unknown_filters: bool = False) -> None:
        self.index = index
        self.pipeline = pipeline
        self.allow_unknown_filters = allow_unknown_filters
        # the query embedder's fast tokenizer must not be used from two threads at once
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the index's lazy parts (BM25, vectors, query encoder) and run one search before traffic arrives."""
        self.index.preload()
        with self._lock:
            FirstStage(self.index, FirstStageSettings(method=self.pipeline.first_stage)).retrieve("warm up", 1)

    def retrieves_alike(self, a: PipelineSettings, b: PipelineSettings) -> bool:
        """Whether two settings (over the server's) ask the first stage for the same candidates."""
        a, b = a.over(self.pipeline), b.over(self.pipeline)
        return (a.first_stage, a.retrieve_k) == (b.first_stage, b.retrieve_k)

    def retrieve(self, query: str, settings: PipelineSettings, filters: dict[str, Any],
                 groups: frozenset[str] | None) -> Retrieved:
        """The first stage alone (on a worker thread), for a caller that scores its candidates twice."""
        return self._retrieve(self._pipeline(None, settings), query, filters, groups)

    def _pipeline(self, rerank: RerankService | None, settings: PipelineSettings) -> Pipeline:
        return Pipeline(self.index, rerank.reranker if rerank is not None else None,
                        settings=settings.over(self.pipeline), allow_unknown_filters=self.allow_unknown_filters)

    def _retrieve(self, pipeline: Pipeline, query: str, filters: dict[str, Any],
                  groups: frozenset[str] | None) -> Retrieved:
        started = time.perf_counter()
        with self._lock:
            candidates = pipeline.retrieve(query, filters, groups)
        return Retrieved(candidates, started, (time.perf_counter() - started) * 1000)

    def search(self, query: str, rerank: RerankService | None, *, k: int, settings: PipelineSettings,
               filters: dict[str, Any], groups: frozenset[str] | None, deadline: float,
               loop: asyncio.AbstractEventLoop, retrieved: Retrieved | None = None) -> SearchOutcome:
        """Run on a worker thread (it blocks on the first stage and on scoring); unset settings are the server's.
        ``groups``: what the caller may see (None: everything). ``retrieved``: candidates already found with
        these settings' first stage and groups (not retrieved again)."""
        pipeline = self._pipeline(rerank, settings)
        if retrieved is None:
            retrieved = self._retrieve(pipeline, query, filters, groups)
        candidates, t0 = retrieved.candidates, retrieved.started
        timings = {"first_stage": retrieved.first_stage_ms}
        head = candidates[: pipeline.rerank_k]
        if rerank is None or not head:
            response = pipeline.respond(query, candidates, None, k=k, timings=timings, started=t0,
                                        warnings=pipeline.warnings(candidates, filters, groups))
            # what a shadow compares with when no reranker serves: the first stage's order of the same head
            return SearchOutcome(response, False, None, _one_per_document(head, range(len(head))))
        coro = rerank.score(query, [c.passage.full_text for c in head], deadline=deadline)
        try:
            scored = asyncio.run_coroutine_threadsafe(coro, loop).result()
        except BudgetExceeded:
            return SearchOutcome(pipeline.respond(query, candidates, None, k=k, timings=timings, started=t0), True, None)
        scores = RerankScores(raw=scored.raw, calibrated=scored.calibrated, truncated=sum(scored.split))
        response = pipeline.respond(query, candidates, scores, k=k, timings=timings | scored.timings_ms, started=t0)
        return SearchOutcome(response, False, scored.cache_hits, _one_per_document(head, rank_order(scored.raw)),
                             scored.cost)
