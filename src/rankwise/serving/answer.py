"""What the server records about an answer once it is ready, the same way for /v1/rerank and /v1/search.

Once a response is built, several parts of the server learn about it: the metrics (which model and arm
served it, its CPU cost, its stage timings, whether the budget ran out), the audit row, the drift watch,
the query log that feedback is later checked against, and the shadow model. A handler describes its answer
once, as an :class:`Answered`, and :func:`after_answer` does all of it, so both endpoints record the same
things in the same order and a new consumer of answers is added in one place.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request

from rankwise.feedback.events import FIRST_STAGE_MODEL, LoggedRequest, LoggedResult
from rankwise.serving.models import Route, ServedModel
from rankwise.serving.shadow import ShadowJob
from rankwise.serving.state import ServingState
from rankwise.types import SearchResponse

log = logging.getLogger("rankwise.serving")

#: the path an answer is logged under: both rerank versions share the v1 path, so feedback and reports
#: see one endpoint whichever API version the client used
_LOGGED_AS = {"rerank": "/v1/rerank", "search": "/v1/search"}


@dataclass(frozen=True, slots=True)
class Answered:
    """A ready answer, as the after-answer step needs it (the response body itself is the handler's)."""

    #: the metrics' ``endpoint`` label
    endpoint: Literal["rerank", "search"]
    query: str
    #: the query's keyed hash (:func:`query_sha`), as the audit row already holds it
    query_sha256: str | None
    route: Route
    #: the model whose ranking was served; None for a search answered by the first stage alone
    model: ServedModel | None
    degraded: bool
    timings: dict[str, float]
    cache_hits: int | None
    cost: dict[str, float]
    #: the results as the audit row records them
    audited: list[dict[str, Any]]
    #: the results as the query log records them (what the user saw, with the arm that contributed each)
    logged: list[LoggedResult]
    user_id: str | None = None
    #: a search response the drift watch should see (None: nothing comparable, e.g. a degraded answer)
    observed: SearchResponse | None = None
    #: ``(id, text)`` of what the served model ranked, best first, for the shadow model to score (None:
    #: nothing to offer, e.g. a degraded answer)
    scored: list[tuple[str, str]] | None = None


def after_answer(state: ServingState, request: Request, answered: Answered) -> None:
    """Metrics, audit fields, drift signals, the query log and the shadow offer of one answered request.

    Runs before the response is sent: the query-log entry then exists by the time the client can report
    feedback on the answer, and the audit fields are in place when the envelope middleware writes the row.
    """
    model = answered.model
    if model is not None:
        state.metrics.served_by.labels(model.key, answered.route.arm or "-").inc()
        state.metrics.request_cpu.labels(answered.endpoint, model.key).observe(answered.cost["cpu_ms"] / 1000.0)
    if answered.degraded:
        state.metrics.degraded.labels(answered.endpoint).inc()
    state.metrics.observe_stages(answered.endpoint, answered.timings)
    request.state.audit.update(degraded=answered.degraded, cache_hits=answered.cache_hits, results=answered.audited)
    signals = (state.drift.observe(answered.query, answered.observed)
               if state.drift is not None and answered.observed is not None else {})
    _log_served(state, request, answered, signals)
    if state.shadow is not None and answered.scored is not None:
        ids, texts = [doc for doc, _ in answered.scored], [text for _, text in answered.scored]
        served_as = answered.route.label or (model.name if model is not None else FIRST_STAGE_MODEL)
        state.shadow.offer(ShadowJob(request.state.request_id, answered.query, ids, texts, served_as, time.perf_counter()))


def query_sha(state: ServingState, query: str) -> str | None:
    """A keyed hash of the query (HMAC with the audit log's secret): joinable, but not guessable from the log.

    None with ``--log-queries none`` (nothing about the query is kept) and without an audit log (no secret,
    and an unkeyed hash of a short query can be reversed by hashing guesses).
    """
    if state.config.loop.log_queries == "none" or state.audit is None:
        return None
    return state.audit.query_digest(query)


def _log_served(state: ServingState, request: Request, answered: Answered, signals: dict[str, float]) -> None:
    """Add the answered request to the query log (what the user saw), keeping as much of the query as allowed."""
    if state.feedback is None:
        return
    mode = state.config.loop.log_queries
    model, query = answered.model, answered.query
    entry = LoggedRequest(
        request_id=request.state.request_id, endpoint=_LOGGED_AS[answered.endpoint], results=tuple(answered.logged),
        model=(answered.route.label or model.name) if model else None, model_sha256=model.sha256 if model else None,
        key_id=request.state.key_id, user_id=answered.user_id or request.state.user_id,
        query=query if mode == "text" else None, query_sha256=answered.query_sha256,
        experiment=answered.route.experiment, arm=answered.route.arm, degraded=answered.degraded, signals=signals,
        other_model=answered.route.other_label if answered.route.other is not None else None,
        latency_ms=(time.perf_counter() - request.state.started) * 1000)
    try:
        state.feedback.log_request(entry)
    except Exception:  # the answer is ready: a query-log failure must not fail it
        state.metrics.query_log_errors.inc()
        log.exception("could not log request %s", request.state.request_id)
