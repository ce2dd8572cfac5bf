"""The route handlers: plain async functions of the :class:`ServingState` and the request.

Handlers stay thin: they call :mod:`rankwise.serving.service` and shape the JSON. Model work happens on
the batcher's thread and searches on worker threads, so the event loop only parses, awaits and
serialises. They live at module level, not inside :func:`~rankwise.serving.app.create_app`, so each can
be called and tested without a server; ``create_app`` binds them to its state and gives ``body`` the
request model built for that server (limits and the index's filter keys are in its JSON schema, see
:func:`~rankwise.serving.schemas.request_models`). No ``from __future__ import annotations``: FastAPI
reads the bound handlers' annotations, and their docstrings are the endpoints' OpenAPI descriptions.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from rankwise.errors import IndexNotFoundError, RankwiseError
from rankwise.experiments import team_draft
from rankwise.feedback.events import FeedbackEvent, LoggedRequest, LoggedResult
from rankwise.feedback.store import FeedbackConflict
from rankwise.options import PipelineSettings
from rankwise.pipeline import validate_query
from rankwise.rerank.base import rank_order
from rankwise.serving.answer import Answered, after_answer, query_sha
from rankwise.serving.auth import ApiKey
from rankwise.serving.errors import ApiError
from rankwise.serving.guard import bearer_token
from rankwise.serving.models import Route, ServedModel
from rankwise.serving.schemas import FeedbackReceipt, FeedbackRequest, Health, Readiness
from rankwise.serving.service import BudgetExceeded, RerankService, Retrieved, SearchOutcome
from rankwise.serving.state import ServingState
from rankwise.types import SearchResponse

log = logging.getLogger("rankwise.serving")


async def rerank_v1(state: ServingState, body: Any, request: Request) -> JSONResponse:
    """Scores every document against the query with the served cross-encoder and returns them best first.
    `relevance_score` is the calibrated score (sigmoid of the logit), comparable across requests."""
    return await _rerank(state, body, request, "1")


async def rerank_v2(state: ServingState, body: Any, request: Request) -> JSONResponse:
    """Cohere's v2 rerank (what `cohere.ClientV2.rerank` calls): the same scoring as `/v1/rerank`."""
    return await _rerank(state, body, request, "2")


async def _rerank(state: ServingState, body: Any, request: Request, api_version: str) -> JSONResponse:
    """Both API versions: they differ only in the version the answer reports and in v2's required `model`
    (which its request model enforces)."""
    if state.router is None:
        raise ApiError(404, "this server has no reranker; start it with --reranker NAME|PATH")
    _check_model_name(state, body.model)
    query = validate_query(body.query)
    texts = [d if isinstance(d, str) else d.text for d in body.documents]
    top_n = min(body.top_n or len(texts), len(texts))
    deadline = _deadline(state, request, body.timeout_ms)
    with state.router.lease(_unit(request, None)) as route:
        if route.model is None:
            raise ApiError(404, f"experiment arm '{route.arm}' serves no reranker; /v1/rerank needs one")
        model = route.model
        digest = query_sha(state, query)
        request.state.audit.update(reranker=route.label, reranker_sha256=model.sha256, query_sha256=digest)
        scoring = [_score_texts(model.service, query, texts, deadline, body.max_tokens_per_doc)]
        if route.other is not None and route.arms is not None:  # interleaved: both arms at once, one budget
            scoring.append(_score_texts(route.other.service, query, texts, deadline, body.max_tokens_per_doc))
        first, *others = await asyncio.gather(*scoring)
        order = first.order[:top_n]
        teams: list[str] | None = None
        costs = [first.cost, *(other.cost for other in others)]
        by_arm = {route.arms[0]: first, route.arms[1]: first} if route.arms else {}
        if others and route.arms is not None and not first.degraded:
            second = others[0]
            by_arm[route.arms[1]] = second
            if not second.degraded:
                ids, teams = interleave([str(i) for i in first.order], [str(i) for i in second.order], route.arms,
                                        top_n, request.state.request_id)
                order = [int(d) for d in ids]
    cost = _total_cost(*costs)
    timings = first.timings
    timings["total"] = (time.perf_counter() - request.state.started) * 1000
    results: list[dict[str, Any]] = []
    for rank, i in enumerate(order):
        own = by_arm[teams[rank]] if teams else first
        item: dict[str, Any] = {"index": i, "relevance_score": None if own.calibrated is None else float(own.calibrated[i])}
        if body.raw_scores:
            item["raw_score"] = None if own.raw is None else float(own.raw[i])
        if body.return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    after_answer(state, request, Answered(
        endpoint="rerank", query=query, query_sha256=digest, route=route, model=model, degraded=first.degraded,
        timings=timings,
        cache_hits=first.cache_hits, cost=cost,
        audited=[{"index": r["index"], "score": r["relevance_score"]} for r in results],
        logged=[LoggedResult(str(r["index"]), rank + 1, r["relevance_score"], teams[rank] if teams else None)
                for rank, r in enumerate(results)],
        scored=None if first.degraded else [(str(i), texts[i]) for i in first.order]))
    warnings = ["the latency budget ran out before reranking finished: results are in input order, unscored"
                ] if first.degraded else []
    meta = {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}, "model": route.label,
            "model_sha256": model.sha256, "degraded": first.degraded, "warnings": warnings,
            "cache_hits": first.cache_hits, "num_split": first.num_split, "experiment": _experiment_info(route, teams),
            "cost": cost, "timings_ms": {k: round(v, 3) for k, v in timings.items()}}
    return JSONResponse({"id": request.state.request_id, "request_id": request.state.request_id,
                         "results": results, "meta": meta},
                        headers={"X-Rankwise-Degraded": "true"} if first.degraded else None)


def _scoped_event_id(request: Request, event_id: str) -> str:
    """The id an event is stored under: the client's, within its tenant (or key). Event ids make retries
    idempotent for one application; across applications they must neither collide nor tell one caller that
    another used an id."""
    key: ApiKey | None = getattr(request.state, "api_key", None)
    if key is None:
        return event_id  # an open server (loopback, no keys) has one caller
    return f"tenant:{key.tenant}:{event_id}" if key.tenant is not None else f"key:{key.id}:{event_id}"


def _search_groups(request: Request, asked: list[str] | None) -> frozenset[str] | None:
    """The groups a search runs as: those the request names (a gateway passing its user's), which must be
    among the key's own, or else the key's; None (every document) for a key without groups or an open server."""
    key: ApiKey | None = getattr(request.state, "api_key", None)  # set by the guard on every API route
    allowed = key.groups if key is not None else None
    if asked is None:
        return frozenset(allowed) if allowed is not None else None
    outside = sorted(set(asked) - set(allowed)) if allowed is not None else []
    if outside:
        raise ApiError(403, f"this key may not search as group(s) {', '.join(outside)}; its groups are "
                       f"{', '.join(allowed) or 'none (public documents only)'}")  # type: ignore[arg-type]
    return frozenset(asked)


async def search(state: ServingState, body: Any, request: Request) -> JSONResponse:
    """First stage (bm25 | dense | hybrid) over the index, then the reranker over the top candidates;
    each result carries both scores, its rank movement and provenance."""
    service = state.search  # read once: this request answers from this index version, whatever swaps in meanwhile
    if service is None:
        raise ApiError(404, "this server has no index; start it with --index DIR")
    query = validate_query(body.query)
    digest = query_sha(state, query)
    groups = _search_groups(request, body.groups)
    request.state.audit.update(index_fingerprint=service.index.fingerprint, query_sha256=digest,
                               groups=sorted(groups) if groups is not None else None)
    deadline = _deadline(state, request, body.timeout_ms)
    loop = asyncio.get_running_loop()
    router = state.router
    with router.lease(_unit(request, body.user_id)) if router else contextlib.nullcontext(Route(None)) as route:
        model = route.model
        if model is not None:
            request.state.audit.update(reranker=route.label, reranker_sha256=model.sha256)

        asked = PipelineSettings(body.first_stage, body.retrieve_k, body.rerank_k, body.rerank_fusion)

        shared: Retrieved | None = None
        if route.arms is not None and service.retrieves_alike(asked.over(route.settings),
                                                               asked.over(route.other_settings)):
            # interleaved arms that retrieve alike share one first stage; only their rerankers differ
            shared = await run_in_threadpool(service.retrieve, query, asked.over(route.settings), body.filters, groups)

        def run(served: ServedModel | None, arm: PipelineSettings) -> SearchOutcome:
            return service.search(query, served.service if served else None, k=body.k, filters=body.filters, groups=groups,
                                  settings=asked.over(arm), deadline=deadline, loop=loop, retrieved=shared)

        searches = [run_in_threadpool(run, model, route.settings)]
        if route.arms is not None:  # interleaved: both arms at once (worker threads, one batcher each), one budget
            searches.append(run_in_threadpool(run, route.other, route.other_settings))
        outcome, *others = await asyncio.gather(*searches)
        response, teams, costs = outcome.response, None, [outcome.cost, *(other.cost for other in others)]
        if others and route.arms is not None and not outcome.degraded:
            other = others[0]
            if not other.degraded:
                response, teams = _interleaved(outcome.response, other.response, route.arms, body.k,
                                               request.state.request_id)
        cost = _total_cost(*costs)
    payload = response.to_dict()
    after_answer(state, request, Answered(
        endpoint="search", query=query, query_sha256=digest, route=route, model=model, degraded=outcome.degraded,
        timings=response.timings_ms, cache_hits=outcome.cache_hits, cost=cost,
        audited=[{"doc_id": r.doc_id, "passage_id": r.passage_id, "score": r.score} for r in response.results],
        logged=[LoggedResult(r.doc_id, r.rank, r.score, teams[i] if teams else None)
                for i, r in enumerate(response.results)],
        user_id=body.user_id, observed=None if outcome.degraded else response,
        scored=outcome.reranked or None))
    warnings = ["the latency budget ran out before reranking finished: results are in first-stage order"
                ] if outcome.degraded else []
    warnings += payload.pop("warnings")
    return JSONResponse({"id": request.state.request_id, "request_id": request.state.request_id,
                         "degraded": outcome.degraded, "warnings": warnings,
                         "experiment": _experiment_info(route, teams), "cost": cost, **payload},
                        headers={"X-Rankwise-Degraded": "true"} if outcome.degraded else None)


async def feedback(state: ServingState, body: FeedbackRequest, request: Request) -> JSONResponse:
    """Checked against the logged request (unknown or expired request, or a document that was not
    returned → 404/422), stored once per `event_id`, and turned into training data by
    `rankwise feedback export`."""
    store = state.feedback
    if store is None:
        raise ApiError(404, "this server keeps no query log, so it takes no feedback; start it with "
                       "--feedback-db PATH")
    signal = body.signal
    try:
        logged = await run_in_threadpool(store.get_request, body.request_id)
    except RankwiseError as error:
        raise _store_unavailable(state, signal, error) from None
    if logged is None or _expired(state, logged.time) or not _asked_by(state, logged, request, body.user_id):
        # another caller's request is answered exactly like an unknown one: nothing of it is revealed
        state.metrics.feedback.labels(signal, "rejected").inc()
        raise ApiError(404, f"no answered request '{body.request_id}' in the query log for this caller "
                       "(unknown, another key's or user's, or older than the server's --retention)")
    result = logged.result_for(body.doc_id, body.rank)
    if result is None or (body.doc_id is not None and body.rank is not None and result.rank != body.rank):
        state.metrics.feedback.labels(signal, "rejected").inc()
        what = f"doc_id '{body.doc_id}'" if body.doc_id is not None else f"rank {body.rank}"
        raise ApiError(422, f"{what} was not among the {len(logged.results)} results returned for request "
                       f"{body.request_id}" + (f" (it is at rank {result.rank})" if result else ""))
    event = FeedbackEvent(event_id=_scoped_event_id(request, body.event_id), request_id=body.request_id, signal=signal,
                          doc_id=result.doc_id, rank=result.rank, value=body.value,
                          user_id=body.user_id, key_id=request.state.key_id)
    try:
        outcome = await run_in_threadpool(store.add_event, event)
    except FeedbackConflict as error:
        state.metrics.feedback.labels(signal, "rejected").inc()
        raise ApiError(409, str(error)) from None
    except RankwiseError as error:
        raise _store_unavailable(state, signal, error) from None
    state.metrics.feedback.labels(signal, outcome).inc()
    request.state.audit.update(results=[{"doc_id": result.doc_id, "rank": result.rank, "signal": signal,
                                         "event_id": body.event_id[:128], "outcome": outcome}])
    receipt = FeedbackReceipt(status=outcome, event_id=body.event_id, request_id=body.request_id,
                              doc_id=result.doc_id, rank=result.rank)
    return JSONResponse(receipt.model_dump(), status_code=201 if outcome == "stored" else 200)


def _store_unavailable(state: ServingState, signal: str, error: RankwiseError) -> ApiError:
    """The 503 for feedback the store could not take (read or write): counted, logged, nothing stored."""
    state.metrics.feedback.labels(signal, "unavailable").inc()
    log.error("feedback store unavailable: %s", error)
    return ApiError(503, "the feedback store is unavailable; retry later (the event was not stored)",
                    {"Retry-After": "5"})


async def healthz(state: ServingState) -> Health:
    return Health()


async def readyz(state: ServingState, request: Request) -> JSONResponse:
    detail = _is_admin(state, request)
    production = state.router.production if state.router else None
    models = state.router.labels() if state.router else {}
    problems = dict(state.router.problems) if state.router else {}
    ready, reason = state.ready, None if state.ready else state.not_ready_reason
    if state.data_problems and state.index is not None:
        # a request failed on the server's data: stay out of the load balancer while the index is damaged
        damage = await asyncio.to_thread(state.index.damage)
        if damage is None:
            state.data_problems.pop(IndexNotFoundError.__name__, None)
        else:
            problems["index"] = damage
            ready, reason = False, "the index failed its integrity check; rebuild it and restart the server"
    problems.update(state.data_problems)
    store_problem = state.feedback.health() if state.feedback is not None else None
    if store_problem is not None:
        problems["feedback_store"] = store_problem
    if state.shadow is not None:
        models["shadow"] = state.shadow.name or "not loaded"
        if state.shadow.problem:
            problems["shadow"] = state.shadow.problem
    body = Readiness(ready=ready, reason=reason,
                     reranker=models.get("production") if production and detail else None,
                     reranker_sha256=production.sha256 if production and detail else None,
                     index_fingerprint=state.index.fingerprint if state.index and detail else None,
                     models=models or None if detail else None, problems=problems or None if detail else None)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def metrics(state: ServingState, request: Request) -> Response:
    if not state.config.open_metrics and not _is_admin(state, request):
        raise ApiError(401, "metrics need an admin key on this server: send 'Authorization: Bearer rk_...' "
                       "(or start it with --open-metrics)", {"WWW-Authenticate": "Bearer"})
    if state.drift is not None:  # compared at scrape time: always as fresh as the scraper asks
        await asyncio.to_thread(state.drift.update_gauges)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def interleave(first: Sequence[str], second: Sequence[str], arms: tuple[str, str], k: int,
               request_id: str) -> tuple[list[str], list[str]]:
    """Team-draft interleaving of two arms' rankings (ids, best first): the ``k`` ids shown and, for each,
    the arm that contributed it.

    The draft's coin flips are seeded with the request id, so one request always interleaves the same
    way (a retried or replayed request shows what was logged) while requests differ from each other.
    """
    picked = team_draft(first, second, k, random.Random(request_id))
    return [doc for doc, _ in picked], [arms[0] if team == "a" else arms[1] for _, team in picked]


def _interleaved(a: SearchResponse, b: SearchResponse, arms: tuple[str, str], k: int,
                 request_id: str) -> tuple[SearchResponse, list[str]]:
    """The interleaving of two arms' search responses; each result keeps the scores of the arm that
    contributed it, and the second arm's stage timings are kept under its name."""
    ids, teams = interleave([r.doc_id for r in a.results], [r.doc_id for r in b.results], arms, k, request_id)
    own = {arms[0]: {r.doc_id: r for r in a.results}, arms[1]: {r.doc_id: r for r in b.results}}
    results = [replace(own[team][doc], rank=rank + 1) for rank, (doc, team) in enumerate(zip(ids, teams, strict=True))]
    timings = {**a.timings_ms, **{f"{arms[1]}_{k_}": v for k_, v in b.timings_ms.items()}}
    return replace(a, results=results, timings_ms=timings), teams


def _deadline(state: ServingState, request: Request, timeout_ms: int | None) -> float:
    """Budgets count from when the request arrived, not from when its handler started."""
    budget = timeout_ms if timeout_ms is not None else state.config.timeout_ms
    return float(request.state.started) + budget / 1000.0


def _is_admin(state: ServingState, request: Request) -> bool:
    """Open servers (loopback, no keys) show everything; with keys only an admin key sees model details."""
    if state.keys is None:
        return True
    token = bearer_token(request.headers.get("authorization"))
    try:
        key = state.keys.authenticate(token) if token else None
    except RankwiseError:
        return False
    return key is not None and key.allows("admin")


def _check_model_name(state: ServingState, name: str | None) -> None:
    """A request's ``model`` must name what this server serves (unless --accept-any-model-name).

    Names of every version served since start stay valid, so a client that copied a version's name keeps
    working across a promotion (its answer then names the version that produced it).
    """
    if name is None or state.config.accept_any_model_name or state.router is None:
        return
    if name in state.model_names or name in state.router.names():
        return
    asked = name if len(name) <= 80 else name[:80] + "…"
    served = sorted(n for n in state.model_names | state.router.names() if len(n) <= 60 and "/" not in n)[:6]
    raise ApiError(404, f"model '{asked}' is not served here; pass one of {', '.join(served)} (or omit "
                   "`model` on /v1), or start the server with --served-model-name NAME or --accept-any-model-name")


def _unit(request: Request, user_id: str | None) -> str:
    """What experiment and canary assignment stick to: the user, else the API key, else the request."""
    user = user_id or request.headers.get("x-rankwise-user")
    if user:
        request.state.user_id = user[:256]
        return f"user:{user[:256]}"
    if request.state.key_id:
        return f"key:{request.state.key_id}"
    return f"request:{request.state.request_id}"


@dataclass(slots=True)
class _Scored:
    """One model's scores for a /v1/rerank request, or the input order when the budget ran out."""

    order: list[int]
    raw: Any
    calibrated: Any
    degraded: bool
    cache_hits: int
    num_split: int
    timings: dict[str, float]
    cost: dict[str, float]


def _total_cost(*costs: dict[str, float]) -> dict[str, float]:
    """What a response cost in model work: pairs and tokens scored (cache misses) and CPU milliseconds."""
    total = {"pairs": 0.0, "tokens": 0.0, "cpu_ms": 0.0}
    for cost in costs:
        for key in total:
            total[key] += cost.get(key, 0.0)
    return {"pairs": int(total["pairs"]), "tokens": int(total["tokens"]), "cpu_ms": round(total["cpu_ms"], 3)}


async def _score_texts(service: RerankService, query: str, texts: list[str], deadline: float,
                       max_tokens_per_doc: int | None) -> _Scored:
    try:
        scored = await service.score(query, texts, deadline=deadline, max_tokens_per_doc=max_tokens_per_doc)
    except BudgetExceeded:
        return _Scored(list(range(len(texts))), None, None, True, 0, 0, {}, {})
    return _Scored(rank_order(scored.raw), scored.raw, scored.calibrated, False, scored.cache_hits, sum(scored.split),
                   dict(scored.timings_ms), scored.cost)


def _experiment_info(route: Route, teams: list[str] | None) -> dict[str, Any] | None:
    if route.arm is None:
        return None
    return {"name": route.experiment, "arm": route.arm, "teams": teams}


def _asked_by(state: ServingState, logged: LoggedRequest, request: Request, user_id: str | None) -> bool:
    """Feedback belongs to whoever made the request: with keys, the same key or one of the same tenant (see
    ``rankwise keys add --tenant``); when both name a user, the same user. An event without a user stays
    anonymous, never credited to the request's user."""
    if logged.key_id is not None and logged.key_id != request.state.key_id:
        reporter: ApiKey | None = getattr(request.state, "api_key", None)
        asker = state.keys.get(logged.key_id) if state.keys is not None else None
        if reporter is None or not reporter.shares_requests_with(asker):
            return False
    return user_id is None or logged.user_id is None or user_id == logged.user_id


def _expired(state: ServingState, logged_at: str) -> bool:
    retention = state.config.loop.retention_s
    if retention is None:
        return False
    return datetime.fromisoformat(logged_at) < datetime.now(UTC) - timedelta(seconds=retention)
