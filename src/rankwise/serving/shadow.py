"""Shadow mode: a second reranker scores the same candidates production ranked, off the critical path.

Production never waits for the shadow. A sampled request is *offered* to a small bounded queue after its
answer is ready; when the queue is full the offer is dropped (counted), because a shadow that falls behind
must shed its own work rather than grow a backlog. One worker thread scores the queued requests only while
production's batcher is idle, in small chunks, checking between chunks: on a machine with few cores the
shadow still competes for CPU, so the chunk size bounds how long a production round can be kept waiting
(about one chunk's forward pass). A job that waited longer than ``max_age_s`` is dropped as stale.

Each scored request is stored as a :class:`~rankwise.feedback.events.ShadowRecord`: rank agreement with
production (Kendall's tau, top-5 overlap, the largest rank moves) and the shadow's whole ranking, so that
``rankwise shadow report`` can score both models once feedback on those requests arrives. A shadow that
fails to load or crashes is counted in ``/metrics`` and described in ``/readyz``; production is unaffected.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rankwise.experiments import agreement
from rankwise.feedback.events import ShadowOutcome, ShadowRecord
from rankwise.feedback.store import FeedbackStore
from rankwise.rerank.base import Reranker, rank_order
from rankwise.rerank.loading import LoadOptions, load_reranker
from rankwise.serving.config import ShadowSettings
from rankwise.serving.metrics import ServingMetrics

log = logging.getLogger("rankwise.serving")


@dataclass(frozen=True, slots=True)
class ShadowJob:
    request_id: str
    query: str
    #: the candidates production reranked, in production's order, and their texts
    doc_ids: Sequence[str]
    texts: Sequence[str]
    production_model: str
    offered: float


class ShadowRunner:
    """Loads the shadow model (the way production's are loaded: ``load``) and scores offered requests when
    ``production_busy()`` is false."""

    def __init__(self, settings: ShadowSettings, load: LoadOptions, metrics: ServingMetrics,
                 store: FeedbackStore | None, production_busy: Callable[[], bool], *, queue_size: int = 8,
                 max_age_s: float = 30.0) -> None:
        self.spec = settings.model
        self.share = settings.share
        self.metrics = metrics
        self.store = store
        self.production_busy = production_busy
        self.chunk = settings.chunk
        self.max_age_s = max_age_s
        self.problem: str | None = None
        self.reranker: Reranker | None = None
        self._queue: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=queue_size)
        self._random = random.Random()
        try:
            self.reranker = load_reranker(settings.model, load)
        except Exception as error:  # noqa: BLE001 - a broken shadow must not stop production
            self.problem = f"shadow model '{settings.model}' failed to load: {type(error).__name__}: {error}"
            log.error("%s; serving without a shadow", self.problem)
            metrics.shadow.labels("load_failed").inc()
        self._thread = threading.Thread(target=self._run, name="rankwise-shadow", daemon=True)

    @property
    def name(self) -> str | None:
        return self.reranker.name if self.reranker is not None else None

    def start(self) -> None:
        if self.reranker is not None:
            self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            while True:  # make room for the stop signal: queued shadow work is expendable
                try:
                    self._queue.put_nowait(None)
                    break
                except queue.Full:
                    self._drain_one()
            self._thread.join(30)

    def offer(self, job: ShadowJob) -> None:
        """Queue a request for the shadow (sampled by ``share``); never blocks, drops when full."""
        if self.reranker is None or not job.doc_ids or self._random.random() >= self.share:
            return
        self.metrics.shadow.labels("offered").inc()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._record_unscored(job, "dropped_queue_full")

    # ------------------------------------------------------------------ worker thread
    def _drain_one(self) -> None:
        try:
            self._queue.get_nowait()
        except queue.Empty:
            pass

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._score(job)
            except Exception as error:  # a crashing shadow is counted; production goes on
                problem = f"shadow model '{self.spec}' failed on a request: {type(error).__name__}: {error}"
                if problem != self.problem:  # the first of a kind in full, then only the count: a shadow
                    log.exception("shadow scoring failed")  # that cannot score fails on every request
                self.problem = problem
                self._record_unscored(job, "failed")

    def _record_unscored(self, job: ShadowJob, outcome: ShadowOutcome) -> None:
        """Count an offered request the shadow did not score, and keep it in the store: a report's
        comparison covers only the scored ones, and must say how many were not, and why."""
        self.metrics.shadow.labels(outcome).inc()
        if self.store is not None and self.reranker is not None:
            self.store.record_shadow(ShadowRecord(
                request_id=job.request_id, production_model=job.production_model, shadow_model=self.reranker.name,
                kendall_tau=None, top5_overlap=0.0, largest_moves=(), shadow_ranking=(), outcome=outcome))

    def _wait_idle(self, job: ShadowJob) -> bool:
        """Wait until production is idle; False if the job went stale meanwhile."""
        while self.production_busy():
            if time.perf_counter() - job.offered > self.max_age_s:
                return False
            time.sleep(0.002)
        return True

    def _score(self, job: ShadowJob) -> None:
        assert self.reranker is not None
        started = time.perf_counter()
        raw: list[float] = []
        for start in range(0, len(job.texts), self.chunk):
            if not self._wait_idle(job):
                self._record_unscored(job, "dropped_stale")
                return
            raw.extend(float(x) for x in self.reranker.score(job.query, job.texts[start:start + self.chunk]).raw)
        order = rank_order(raw)
        ranking = [job.doc_ids[i] for i in order]
        found = agreement(list(job.doc_ids), ranking)
        record = ShadowRecord(request_id=job.request_id, production_model=job.production_model,
                              shadow_model=self.reranker.name, kendall_tau=found.kendall_tau,
                              top5_overlap=found.top_overlap, largest_moves=tuple(found.largest_moves),
                              shadow_ranking=tuple((job.doc_ids[i], raw[i]) for i in order),
                              shadow_ms=(time.perf_counter() - started) * 1000)
        if self.store is not None:
            self.store.record_shadow(record)
        self.metrics.shadow.labels("scored").inc()
