"""Cross-request micro-batching on one worker thread.

Handlers ``submit`` a (query, texts) job and get a :class:`concurrent.futures.Future`; the event loop
awaits it with ``asyncio.wrap_future`` and so is never blocked by inference. The single worker thread is
the only code that touches the model and its tokenizer (fast tokenizers are not safe to share between
threads), so no locks are needed around them.

A round starts with the oldest job, then takes more queued jobs until ``max_wait_ms`` has passed since the
round began or the round holds ``max_tokens`` tokens / ``max_requests`` jobs; whatever queued up while the
previous round was computing joins immediately.

A job carries its caller's deadline. Work past it is dropped wherever it is: a queued job is never
tokenized, and a running round stops running the windows of a job whose deadline passed (between forward
passes), so one huge request that ran out of budget cannot keep the model busy for everyone behind it.
Its future then fails with :class:`Expired` (the caller has already answered degraded).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from rankwise.errors import QueryError
from rankwise.rerank.base import TokenBudgetExceeded
from rankwise.serving.config import BatchingSettings
from rankwise.serving.metrics import ServingMetrics
from rankwise.serving.scoring import EncodedRequest, RequestScores, RoundScorer

log = logging.getLogger("rankwise.serving")


class Expired(Exception):
    """The job's deadline passed before its scores were complete; its remaining work was dropped."""


@dataclass(slots=True)
class _Job:
    query: str
    texts: Sequence[str]
    max_tokens_per_doc: int | None
    #: ``time.perf_counter()`` after which nobody waits for the result; None: no deadline
    deadline: float | None = None
    future: Future[RequestScores] = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


class MicroBatcher:
    """One worker thread that scores queued jobs in shared forward passes."""

    def __init__(self, scorer: RoundScorer, settings: BatchingSettings, metrics: ServingMetrics,
                 label: str = "model", *, max_request_tokens: int | None = None) -> None:
        self.scorer = scorer
        self.max_request_tokens = max_request_tokens
        self.label = label
        self.settings = settings
        self.metrics = metrics
        self._queue: queue.Queue[_Job | None] = queue.Queue()  # None stops the worker
        self._thread = threading.Thread(target=self._run, name="rankwise-batcher", daemon=True)
        self._in_round = False

    def start(self) -> None:
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Jobs waiting for the worker."""
        return self._queue.qsize()

    @property
    def busy(self) -> bool:
        """Work queued or a round running: lower-priority work (a shadow model) should wait."""
        return self._in_round or not self._queue.empty()

    def close(self, timeout: float = 30.0) -> None:
        """Finish queued work, then stop the worker."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def submit(self, query: str, texts: Sequence[str], max_tokens_per_doc: int | None = None, *,
               deadline: float | None = None) -> Future[RequestScores]:
        """Queue a job; ``deadline`` (``time.perf_counter()``) is when its caller stops waiting."""
        job = _Job(query, list(texts), max_tokens_per_doc, deadline)
        self._queue.put(job)
        return job.future

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            self._in_round = True
            try:
                round_, stop = self._collect(first)
                if round_:
                    self._score(round_)
            finally:
                self._in_round = False
            if stop:
                return

    def _collect(self, first: _Job) -> tuple[list[tuple[_Job, EncodedRequest]], bool]:
        """The jobs of one round (tokenized), and whether the stop signal was seen."""
        round_: list[tuple[_Job, EncodedRequest]] = []
        tokens = 0
        deadline = time.perf_counter() + self.settings.max_wait_ms / 1000.0
        item: _Job | None = first
        while item is not None:
            encoded = self._encode(item)
            if encoded is not None:
                round_.append((item, encoded))
                tokens += encoded.tokens
            if len(round_) >= self.settings.requests_per_round or tokens >= self.settings.max_tokens:
                return round_, False
            remaining = deadline - time.perf_counter()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return round_, False
        return round_, True

    def _encode(self, job: _Job) -> EncodedRequest | None:
        """Tokenize a job; ``None`` if its caller already gave up or its input was refused."""
        if not job.future.set_running_or_notify_cancel():
            return None
        if job.expired():
            self._drop(job, "queued")
            return None
        try:
            return self.scorer.encode(job.query, job.texts, job.max_tokens_per_doc, max_tokens=self.max_request_tokens)
        except TokenBudgetExceeded as over:
            job.future.set_exception(QueryError(
                f"the documents come to more than {over.budget} tokens once windowed for the model (at least "
                f"{over.tokens}); this server scores at most {over.budget} per request (--max-request-tokens): "
                "send fewer or shorter documents, or set max_tokens_per_doc"))
            return None
        except Exception as error:  # noqa: BLE001 - the error belongs to that request, not to the round
            job.future.set_exception(error)
            return None

    def _score(self, round_: list[tuple[_Job, EncodedRequest]]) -> None:
        started = time.perf_counter()
        cpu_started = time.process_time()
        try:
            results = self.scorer.score_round([enc for _, enc in round_], lambda i: not round_[i][0].expired())
        except Exception as error:
            log.exception("scoring a round of %d requests failed", len(round_))
            for job, _ in round_:
                job.future.set_exception(error)
            return
        done = time.perf_counter()
        # process time counts every thread's CPU (inference runs on the runtime's own thread pool); while a
        # round runs, that is almost all inference, so the round's share is a fair per-request cost
        cpu_ms = (time.process_time() - cpu_started) * 1000.0
        tokens = [max(enc.tokens, 1) for _, enc in round_]
        self.metrics.count_cost(self.label, sum(enc.num_texts for _, enc in round_), sum(tokens), cpu_ms)
        self.metrics.batch_requests.observe(len(round_))
        self.metrics.batch_pairs.observe(sum(enc.num_texts for _, enc in round_))
        scored = [r for r in results if r is not None]
        if scored and "round_batches" in scored[0].scores.stats:
            self.metrics.forward_passes.inc(scored[0].scores.stats["round_batches"])
        for (job, _), result, share in zip(round_, results, tokens, strict=True):
            if result is None:
                self._drop(job, "scoring")
                continue
            result.queue_ms = (started - job.submitted) * 1000.0
            result.inference_ms = (done - started) * 1000.0
            result.cpu_ms = cpu_ms * share / sum(tokens)
            job.future.set_result(result)

    def _drop(self, job: _Job, stage: str) -> None:
        self.metrics.expired.labels(stage).inc()
        job.future.set_exception(Expired(f"deadline passed while {stage}; its remaining work was dropped"))
