"""What the endpoints do, without HTTP: cached + batched scoring within a latency budget, and search.

:class:`RerankService` is shared by ``/v1/rerank`` and ``/v1/search``: look the pairs up in the score
cache, send only the misses to the micro-batcher, wait at most until the request's deadline, store the
new scores. :class:`SearchService` runs the normal :class:`~rankwise.pipeline.Pipeline` on a worker
thread with a :class:`~rankwise.rerank.Reranker` adapter that scores through :class:`RerankService`, so
a search result is built by exactly the code the CLI uses. When the budget runs out either endpoint
answers in first-stage order and says so (``degraded``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankwise.index import Index
from rankwise.pipeline import Pipeline
from rankwise.rerank.base import Reranker, RerankScores, logits_to_scores
from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings
from rankwise.serving.batcher import MicroBatcher
from rankwise.serving.cache import Entry, ScoreCache, score_keys, scoring_fingerprint
from rankwise.serving.config import ServeConfig
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


class RerankService:
    def __init__(self, reranker: Reranker, batcher: MicroBatcher, cache: ScoreCache, metrics: ServingMetrics) -> None:
        self.reranker = reranker
        self.batcher = batcher
        self.cache = cache
        self.metrics = metrics
        self.fingerprint = scoring_fingerprint(reranker)

    async def score(self, query: str, texts: Sequence[str], *, deadline: float,
                    max_tokens_per_doc: int | None = None) -> ScoredTexts:
        """Scores for ``texts`` in input order; raises :class:`BudgetExceeded` at ``deadline`` (perf_counter)."""
        t0 = time.perf_counter()
        keys = score_keys(self.fingerprint, query, texts, max_tokens_per_doc=max_tokens_per_doc)
        entries = await self._cache_get(keys)
        missing = [i for i, e in enumerate(entries) if e is None]
        self.metrics.count_cache(len(texts) - len(missing), len(missing))
        timings = {"cache": (time.perf_counter() - t0) * 1000}
        if missing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BudgetExceeded
            future = self.batcher.submit(query, [texts[i] for i in missing], max_tokens_per_doc)
            try:
                fresh = await asyncio.wait_for(asyncio.wrap_future(future), remaining)
            except TimeoutError:
                future.cancel()  # not started yet → the worker skips it
                raise BudgetExceeded from None
            new = {keys[i]: (float(fresh.scores.raw[j]), fresh.split[j]) for j, i in enumerate(missing)}
            for i in missing:
                entries[i] = new[keys[i]]
            await self._cache_set(new)
            timings["queue"] = fresh.queue_ms
            timings["inference"] = fresh.inference_ms
        done: list[Entry] = [e for e in entries if e is not None]
        raw, calibrated = logits_to_scores(np.array([e[0] for e in done], dtype=np.float32))
        timings["rerank"] = (time.perf_counter() - t0) * 1000
        return ScoredTexts(raw, calibrated, [e[1] for e in done], len(texts) - len(missing), timings)

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
        log.warning("score cache %s failed (%s backend: %s); serving without it", what, self.cache.backend, error)


class _RequestFirstStage(FirstStage):
    """The first stage of one request.

    It runs under a server-wide lock because the query embedder's fast tokenizer must not be used from
    two threads at once, and it keeps its candidates so that a degraded answer reuses them instead of
    retrieving twice (one instance per request, so the memo cannot leak between requests).
    """

    def __init__(self, index: Index, settings: FirstStageSettings, lock: threading.Lock) -> None:
        super().__init__(index, settings)
        self._lock = lock
        self.candidates: list[Candidate] | None = None
        self.elapsed_ms = 0.0

    def retrieve(self, query: str, k: int, filters: dict[str, Any] | None = None) -> list[Candidate]:
        if self.candidates is None:
            t0 = time.perf_counter()
            with self._lock:
                self.candidates = super().retrieve(query, k, filters)
            self.elapsed_ms = (time.perf_counter() - t0) * 1000
        return self.candidates


class _BudgetedReranker:
    """A :class:`Reranker` for one search request that scores through the shared :class:`RerankService`.

    ``score`` is called by :class:`Pipeline` on a worker thread; it hands the coroutine to the event loop
    and blocks that worker thread (never the loop) until the scores or the deadline arrive.
    """

    def __init__(self, service: RerankService, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.name = service.reranker.name
        self.weights_sha256 = service.reranker.weights_sha256
        self._service = service
        self._loop = loop
        self._deadline = deadline
        self.scored: ScoredTexts | None = None

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        coro = self._service.score(query, texts, deadline=self._deadline)
        self.scored = asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        return RerankScores(raw=self.scored.raw, calibrated=self.scored.calibrated, truncated=sum(self.scored.split))


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    response: SearchResponse
    degraded: bool
    cache_hits: int | None


class SearchService:
    def __init__(self, index: Index, rerank: RerankService | None, config: ServeConfig) -> None:
        self.index = index
        self.rerank = rerank
        self.config = config
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Load the first stage's lazy parts (BM25, vectors, query encoder) before traffic arrives."""
        first = _RequestFirstStage(self.index, FirstStageSettings(method=self.config.first_stage), self._lock)
        first.retrieve("warm up", 1)

    def search(self, query: str, *, k: int, first_stage: str | None, retrieve_k: int | None, rerank_k: int | None,
               rerank_fusion: str | None, filters: dict[str, Any], deadline: float, loop: asyncio.AbstractEventLoop) -> SearchOutcome:
        """Run on a worker thread (it blocks on the first stage and on scoring); ``None`` means the server default."""
        t0 = time.perf_counter()
        reranker = _BudgetedReranker(self.rerank, loop, deadline) if self.rerank is not None else None
        pipeline = Pipeline(self.index, reranker, first_stage=first_stage or self.config.first_stage,
                            retrieve_k=retrieve_k or self.config.retrieve_k,
                            rerank_k=self.config.rerank_k if rerank_k is None else rerank_k,
                            rerank_fusion=rerank_fusion or self.config.rerank_fusion)
        first = _RequestFirstStage(self.index, pipeline.first_stage.settings, self._lock)
        pipeline.first_stage = first
        try:
            response = pipeline.search(query, k=k, filters=filters)
        except BudgetExceeded:
            pipeline.reranker = None
            response = pipeline.search(query, k=k, filters=filters)
            timings = {"first_stage": first.elapsed_ms, "total": (time.perf_counter() - t0) * 1000}
            return SearchOutcome(dataclasses.replace(response, timings_ms=timings), True, None)
        scored = reranker.scored if reranker is not None else None
        if scored is not None:
            response = dataclasses.replace(response, timings_ms={**response.timings_ms, **{
                stage: ms for stage, ms in scored.timings_ms.items() if stage != "rerank"}})
        return SearchOutcome(response, False, scored.cache_hits if scored is not None else None)
