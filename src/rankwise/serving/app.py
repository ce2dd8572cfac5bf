"""The FastAPI application: routes, authentication, error bodies, audit and metrics hooks.

Handlers stay thin: they call :mod:`rankwise.serving.service` and shape the JSON. Model work happens on
the batcher's thread and searches on worker threads, so the event loop only parses, awaits and
serialises. (No ``from __future__ import annotations``: FastAPI reads the handlers' annotations, and the
request models are classes built per server, see :func:`~rankwise.serving.schemas.request_models`.)
"""

import asyncio
import contextlib
import logging
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from rankwise import __version__
from rankwise.errors import IndexNotFoundError, QueryError, RankwiseError
from rankwise.experiments import team_draft
from rankwise.feedback.events import FeedbackEvent, LoggedRequest, LoggedResult
from rankwise.feedback.store import FeedbackConflict
from rankwise.options import PipelineSettings
from rankwise.pipeline import validate_query
from rankwise.rerank.base import rank_order
from rankwise.serving.audit import AuditRecord
from rankwise.serving.auth import ApiKey, key_rate_limit
from rankwise.serving.guard import RequestGuard, bearer_token
from rankwise.serving.models import Route, ServedModel
from rankwise.serving.routes import BY_PATH, ROUTES, Role, audited, metrics_label
from rankwise.serving.schemas import (
    PATTERN_MESSAGES,
    ErrorBody,
    FeedbackReceipt,
    FeedbackRequest,
    Health,
    Readiness,
    RerankResponse,
    SearchReply,
    request_models,
)
from rankwise.serving.service import BudgetExceeded, RerankService, SearchOutcome
from rankwise.serving.shadow import ShadowJob
from rankwise.serving.state import ServingState
from rankwise.types import SearchResponse

log = logging.getLogger("rankwise.serving")

_bearer = HTTPBearer(auto_error=False, description="An API key from `rankwise keys add` (only when the server "
                     "was started with --keys).")


class ApiError(Exception):
    """An HTTP error with a one-line message (the body is ``{"message": ...}``, as Cohere's API)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_ERRORS = {400: "Malformed request body", 401: "Missing or invalid API key",
           403: "The key's roles do not allow this endpoint",
           404: "Not available on this server (no index, no reranker, or another model)",
           409: "event_id reused for a different event",
           413: "Request body larger than the server's limit", 422: "Invalid request (the message names the field)",
           429: "Rate limit exceeded (see Retry-After)",
           503: "Overloaded (see Retry-After), or the key store is unreadable"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries, so clients (and schemathesis) know every status an endpoint can give."""
    return {c: {"model": ErrorBody, "description": _ERRORS[c]} for c in codes}


def require(role: Role, state: ServingState) -> Callable[..., Awaitable[ApiKey | None]]:
    """Dependency: authenticate, check the role, take a rate-limit token.

    Without --keys (loopback only, see ServeConfig) there is nothing to check, and the OpenAPI document
    must not claim a bearer token is needed: the dependency then has no security parameter.
    """
    if state.keys is None:
        async def open_access() -> None:
            return None

        return open_access

    async def dependency(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None,
                                                                 Depends(_bearer)]) -> ApiKey | None:
        return _authorize(state, request, role, credentials)

    return dependency


def _authorize(state: ServingState, request: Request, role: str,
               credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    """Role and rate limit of the key :class:`~rankwise.serving.guard.RequestGuard` already authenticated."""
    key: ApiKey | None = getattr(request.state, "api_key", None)  # set by the guard on every API route
    if key is None:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer rk_...'", {"WWW-Authenticate": "Bearer"})
    if not key.allows(role):
        state.metrics.rejected.labels("forbidden").inc()
        raise ApiError(403, f"key {key.id} has role(s) {', '.join(key.roles)}; {request.url.path} needs "
                       f"'{role}' or 'admin'")
    wait = state.limiter.acquire(key.id, key_rate_limit(key, state.config.rate_limit))
    if wait > 0:
        state.metrics.rejected.labels("rate_limited").inc()
        raise ApiError(429, f"rate limit for key {key.id} exceeded; retry in {wait:.2f} s",
                       {"Retry-After": str(max(1, math.ceil(wait)))})
    return key


def _deadline(state: ServingState, request: Request, timeout_ms: int | None) -> float:
    """Budgets count from when the request arrived, not from when its handler started."""
    budget = timeout_ms if timeout_ms is not None else state.config.timeout_ms
    return float(request.state.started) + budget / 1000.0


def _query_sha(state: ServingState, query: str) -> str | None:
    """A keyed hash of the query (HMAC with the audit log's secret): joinable, but not guessable from the log.

    None with ``--log-queries none`` (nothing about the query is kept) and without an audit log (no secret,
    and an unkeyed hash of a short query can be reversed by hashing guesses).
    """
    if state.config.log_queries == "none" or state.audit is None:
        return None
    return state.audit.query_digest(query)


def create_app(state: ServingState) -> FastAPI:
    """The ASGI app for a loaded :class:`ServingState` (run it with uvicorn; one process, one batcher)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.router is not None:
            state.router.start()
        if state.shadow is not None:
            state.shadow.start()
        if state.monitor is not None:
            state.monitor.start()
        retention = asyncio.create_task(_purge_expired(state))
        warm = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warm.cancel()
            retention.cancel()
            await asyncio.to_thread(state.close)
            await state.cache.close()

    # FastAPIOffline serves the /docs assets from the installed package: this server may have no internet
    app = FastAPIOffline(title="rankwise", version=__version__, lifespan=lifespan,
                  description="Reranking (Cohere-compatible `/v1/rerank`) and search (`/v1/search`) with "
                              "cross-request micro-batching, a score cache, latency budgets, API keys and an audit log.")
    # outermost last: envelope (ids, metrics, audit) → guard (admission, auth) → body limit → routes
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=state.config.limits.max_body_bytes)
    app.add_middleware(RequestGuard, state=state)
    _install_handlers(app, state)
    known = None if state.index is None or state.config.allow_unknown_filters else state.index.docstore.metadata_keys
    RerankRequest, RerankV2Request, SearchRequest = request_models(state.config.limits, known)

    async def rerank(body: Any, request: Request, api_version: str) -> JSONResponse:
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
            request.state.audit.update(reranker=model.name, reranker_sha256=model.sha256,
                                       query_sha256=_query_sha(state, query))
            first = await _score_texts(model.service, query, texts, deadline, body.max_tokens_per_doc)
            order = first.order[:top_n]
            teams: list[str] | None = None
            costs = [first.cost]
            by_arm = {route.arms[0]: first, route.arms[1]: first} if route.arms else {}
            if route.other is not None and route.arms is not None and not first.degraded:
                second = await _score_texts(route.other.service, query, texts, deadline, body.max_tokens_per_doc)
                by_arm[route.arms[1]] = second
                costs.append(second.cost)
                if not second.degraded:
                    picked = team_draft([str(i) for i in first.order], [str(i) for i in second.order], top_n,
                                        random.Random(request.state.request_id))
                    order = [int(d) for d, _ in picked]
                    teams = [route.arms[0] if t == "a" else route.arms[1] for _, t in picked]
            state.metrics.served_by.labels(model.key, route.arm or "-").inc()
        cost = _total_cost(*costs)
        state.metrics.request_cpu.labels("rerank", model.key).observe(cost["cpu_ms"] / 1000.0)
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
        warnings = ["the latency budget ran out before reranking finished: results are in input order, unscored"
                    ] if first.degraded else []
        _finish(state, request, "rerank", first.degraded, timings, first.cache_hits,
                [{"index": r["index"], "score": r["relevance_score"]} for r in results])
        experiment = _experiment_info(route, teams)
        _log_served(state, request, "/v1/rerank", query, None, model.name, model.sha256, route,
                    [LoggedResult(str(r["index"]), rank + 1, r["relevance_score"], teams[rank] if teams else None)
                     for rank, r in enumerate(results)], first.degraded, {})
        if state.shadow is not None and not first.degraded:
            state.shadow.offer(ShadowJob(request.state.request_id, query, [str(i) for i in first.order],
                                         [texts[i] for i in first.order], model.name, time.perf_counter()))
        meta = {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}, "model": model.name,
                "model_sha256": model.sha256, "degraded": first.degraded, "warnings": warnings,
                "cache_hits": first.cache_hits, "num_split": first.num_split, "experiment": experiment, "cost": cost,
                "timings_ms": {k: round(v, 3) for k, v in timings.items()}}
        return JSONResponse({"id": request.state.request_id, "request_id": request.state.request_id,
                             "results": results, "meta": meta},
                            headers={"X-Rankwise-Degraded": "true"} if first.degraded else None)

    async def rerank_v1(body: RerankRequest, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        """Scores every document against the query with the served cross-encoder and returns them best first.
        `relevance_score` is the calibrated score (sigmoid of the logit), comparable across requests."""
        return await rerank(body, request, "1")

    async def rerank_v2(body: RerankV2Request, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        """Cohere's v2 rerank (what `cohere.ClientV2.rerank` calls): the same scoring as `/v1/rerank`."""
        return await rerank(body, request, "2")

    async def search(body: SearchRequest, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        """First stage (bm25 | dense | hybrid) over the index, then the reranker over the top candidates;
        each result carries both scores, its rank movement and provenance."""
        if state.search is None or state.index is None:
            raise ApiError(404, "this server has no index; start it with --index DIR")
        query = validate_query(body.query)
        request.state.audit.update(index_fingerprint=state.index.fingerprint, query_sha256=_query_sha(state, query))
        deadline = _deadline(state, request, body.timeout_ms)
        loop = asyncio.get_running_loop()
        router = state.router
        with router.lease(_unit(request, body.user_id)) if router else contextlib.nullcontext(Route(None)) as route:
            model = route.model
            if model is not None:
                request.state.audit.update(reranker=model.name, reranker_sha256=model.sha256)

            asked = PipelineSettings(body.first_stage, body.retrieve_k, body.rerank_k, body.rerank_fusion)

            def run(served: ServedModel | None, arm: PipelineSettings) -> SearchOutcome:
                return state.search.search(query, served.service if served else None, k=body.k, filters=body.filters,
                                           settings=asked.over(arm), deadline=deadline, loop=loop)

            outcome = await run_in_threadpool(run, model, route.settings)
            response, teams, costs = outcome.response, None, [outcome.cost]
            if route.arms is not None and not outcome.degraded:
                other = await run_in_threadpool(run, route.other, route.other_settings)
                costs.append(other.cost)
                if not other.degraded:
                    response, teams = _interleave(outcome.response, other.response, route.arms, body.k,
                                                  random.Random(request.state.request_id))
            cost = _total_cost(*costs)
            if model is not None:
                state.metrics.served_by.labels(model.key, route.arm or "-").inc()
                state.metrics.request_cpu.labels("search", model.key).observe(cost["cpu_ms"] / 1000.0)
        payload = response.to_dict()
        warnings = ["the latency budget ran out before reranking finished: results are in first-stage order"
                    ] if outcome.degraded else []
        _finish(state, request, "search", outcome.degraded, response.timings_ms, outcome.cache_hits,
                [{"doc_id": r.doc_id, "passage_id": r.passage_id, "score": r.score} for r in response.results])
        signals = state.drift.observe(query, response) if state.drift is not None and not outcome.degraded else {}
        _log_served(state, request, "/v1/search", query, body.user_id, model.name if model else None,
                    model.sha256 if model else None, route,
                    [LoggedResult(r.doc_id, r.rank, r.score, teams[i] if teams else None)
                     for i, r in enumerate(response.results)], outcome.degraded, signals)
        if state.shadow is not None and model is not None and outcome.reranked:
            ids, texts = zip(*outcome.reranked, strict=True)
            state.shadow.offer(ShadowJob(request.state.request_id, query, list(ids), list(texts), model.name,
                                         time.perf_counter()))
        return JSONResponse({"id": request.state.request_id, "request_id": request.state.request_id,
                             "degraded": outcome.degraded, "warnings": warnings,
                             "experiment": _experiment_info(route, teams), "cost": cost, **payload},
                            headers={"X-Rankwise-Degraded": "true"} if outcome.degraded else None)

    async def feedback(body: FeedbackRequest, request: Request) -> JSONResponse:
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
            state.metrics.feedback.labels(signal, "unavailable").inc()
            log.error("feedback store unavailable: %s", error)
            raise ApiError(503, "the feedback store is unavailable; retry later (the event was not stored)",
                           {"Retry-After": "5"}) from None
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
        event = FeedbackEvent(event_id=body.event_id, request_id=body.request_id, signal=signal,
                              doc_id=result.doc_id, rank=result.rank, value=body.value,
                              user_id=body.user_id, key_id=request.state.key_id)
        try:
            outcome = await run_in_threadpool(store.add_event, event)
        except FeedbackConflict as error:
            state.metrics.feedback.labels(signal, "rejected").inc()
            raise ApiError(409, str(error)) from None
        except RankwiseError as error:
            state.metrics.feedback.labels(signal, "unavailable").inc()
            log.error("feedback store unavailable: %s", error)
            raise ApiError(503, "the feedback store is unavailable; retry later (the event was not stored)",
                           {"Retry-After": "5"}) from None
        state.metrics.feedback.labels(signal, outcome).inc()
        request.state.audit.update(results=[{"doc_id": result.doc_id, "rank": result.rank, "signal": signal,
                                             "event_id": body.event_id[:128], "outcome": outcome}])
        receipt = FeedbackReceipt(status=outcome, event_id=body.event_id, request_id=body.request_id,
                                  doc_id=result.doc_id, rank=result.rank)
        return JSONResponse(receipt.model_dump(), status_code=201 if outcome == "stored" else 200)

    async def healthz() -> Health:
        return Health()

    async def readyz(request: Request) -> JSONResponse:
        detail = _is_admin(state, request)
        production = state.router.production if state.router else None
        models = {role: m.name for role, m in state.router.models().items()} if state.router else {}
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
                         reranker=production.name if production and detail else None,
                         reranker_sha256=production.sha256 if production and detail else None,
                         index_fingerprint=state.index.fingerprint if state.index and detail else None,
                         models=models or None if detail else None, problems=problems or None if detail else None)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    async def metrics(request: Request) -> Response:
        if not state.config.open_metrics and not _is_admin(state, request):
            raise ApiError(401, "metrics need an admin key on this server: send 'Authorization: Bearer rk_...' "
                           "(or start it with --open-metrics)", {"WWW-Authenticate": "Bearer"})
        if state.drift is not None:  # compared at scrape time: always as fresh as the scraper asks
            await asyncio.to_thread(state.drift.update_gauges)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    _register(app, state, {
        "/v1/rerank": Endpoint(rerank_v1, RerankResponse), "/v2/rerank": Endpoint(rerank_v2, RerankResponse),
        "/v1/search": Endpoint(search, SearchReply),
        "/v1/feedback": Endpoint(feedback, FeedbackReceipt, {200: {"model": FeedbackReceipt,
                                                                   "description": "Already stored (same event_id)"}}),
        "/healthz": Endpoint(healthz, Health),
        "/readyz": Endpoint(readyz, Readiness, {503: {"model": Readiness, "description": "Not ready"}}),
        "/metrics": Endpoint(metrics, None, response_class=PlainTextResponse),
    })
    return app


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route's handler and response shapes; everything else about the route comes from the route table."""

    handler: Callable[..., Awaitable[Any]]
    response_model: Any
    #: responses documented differently from the table's error bodies
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)
    response_class: type[Response] = JSONResponse


def _register(app: FastAPI, state: ServingState, endpoints: dict[str, Endpoint]) -> None:
    """Add each route of :data:`~rankwise.serving.routes.ROUTES` with its handler, role and documented
    errors; a handler the table does not declare, or a declared route without a handler, stops the server."""
    if set(endpoints) != set(BY_PATH):
        raise RuntimeError(f"route table and handlers disagree: {sorted(set(endpoints) ^ set(BY_PATH))}")
    for route in ROUTES:
        endpoint = endpoints[route.path]
        app.add_api_route(
            route.path, endpoint.handler, methods=[route.method], summary=route.summary,
            status_code=route.status_code, response_model=endpoint.response_model,
            response_class=endpoint.response_class,
            responses={**_errors(*route.errors), **endpoint.responses},
            dependencies=[Depends(require(route.role, state))] if route.role is not None else None)


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


def _interleave(a: SearchResponse, b: SearchResponse, arms: tuple[str, str], k: int,
                rng: random.Random) -> tuple[SearchResponse, list[str]]:
    """Team-draft interleaving of two arms' result lists; each result keeps the scores of the arm that
    contributed it, and ``teams`` says which arm that was."""
    own = {"a": {r.doc_id: r for r in a.results}, "b": {r.doc_id: r for r in b.results}}
    picked = team_draft([r.doc_id for r in a.results], [r.doc_id for r in b.results], k, rng)
    results = [replace(own[team][doc], rank=rank + 1) for rank, (doc, team) in enumerate(picked)]
    teams = [arms[0] if team == "a" else arms[1] for _, team in picked]
    timings = {**a.timings_ms, **{f"{arms[1]}_{k_}": v for k_, v in b.timings_ms.items()}}
    return replace(a, results=results, timings_ms=timings), teams


def _experiment_info(route: Route, teams: list[str] | None) -> dict[str, Any] | None:
    if route.arm is None:
        return None
    return {"name": route.experiment, "arm": route.arm, "teams": teams}


def _log_served(state: ServingState, request: Request, endpoint: str, query: str, user_id: str | None,
                model: str | None, sha: str | None, route: Route, results: list[LoggedResult],
                degraded: bool, signals: dict[str, float]) -> None:
    """Add the answered request to the query log (what the user saw), keeping as much of the query as allowed."""
    if state.feedback is None:
        return
    mode = state.config.log_queries
    entry = LoggedRequest(
        request_id=request.state.request_id, endpoint=endpoint, results=tuple(results), model=model,
        model_sha256=sha, key_id=request.state.key_id, user_id=user_id or request.state.user_id,
        query=query if mode == "text" else None, query_sha256=_query_sha(state, query),
        experiment=route.experiment, arm=route.arm, degraded=degraded, signals=signals,
        latency_ms=(time.perf_counter() - request.state.started) * 1000)
    try:
        state.feedback.log_request(entry)
    except Exception:  # the answer is ready: a query-log failure must not fail it
        state.metrics.query_log_errors.inc()
        log.exception("could not log request %s", request.state.request_id)


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
    retention = state.config.retention_s
    if retention is None:
        return False
    return datetime.fromisoformat(logged_at) < datetime.now(UTC) - timedelta(seconds=retention)


def _finish(state: ServingState, request: Request, endpoint: str, degraded: bool, timings: dict[str, float],
            cache_hits: int | None, results: list[dict[str, Any]]) -> None:
    if degraded:
        state.metrics.degraded.labels(endpoint).inc()
    state.metrics.observe_stages(endpoint, timings)
    request.state.audit.update(degraded=degraded, cache_hits=cache_hits, results=results)


async def _purge_expired(state: ServingState) -> None:
    """Delete query-log rows older than --retention at start and then hourly (off the event loop)."""
    if state.feedback is None or state.config.retention_s is None:
        return
    while True:
        cutoff = (datetime.now(UTC) - timedelta(seconds=state.config.retention_s)).isoformat(timespec="milliseconds")
        try:
            removed = await asyncio.to_thread(state.feedback.purge, cutoff)
            if removed:
                log.warning("retention: removed %d query-log rows older than %s", removed, cutoff)
        except Exception:  # try again at the next round
            log.exception("retention purge failed")
        await asyncio.sleep(3600)


async def _warm_up(state: ServingState) -> None:
    """Run one search and one scoring round so the first real request does not pay for lazy loading."""
    try:
        if state.search is not None:
            await asyncio.to_thread(state.search.warm)
        if state.router is not None:
            await asyncio.to_thread(state.router.warm)
    except Exception as error:  # warm-up failure is reported by /readyz
        state.not_ready_reason = f"warm-up failed: {type(error).__name__}: {error}"
        log.exception("warm-up failed")
        return
    state.ready = True
    state.metrics.ready.set(1)


def _install_handlers(app: FastAPI, state: ServingState) -> None:
    @app.middleware("http")
    async def envelope(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.request_id = uuid.uuid4().hex
        request.state.started = time.perf_counter()
        request.state.key_id = None
        request.state.user_id = None
        request.state.audit = {}
        try:
            response: Response = await call_next(request)
        except Exception:  # a bug: answer 500 with the request id (to find the traceback) and audit it
            log.exception("request %s failed", request.state.request_id)
            request.state.audit["error"] = "internal error"
            response = _error_response(500, f"internal error; quote request id {request.state.request_id}")
        response.headers["X-Request-Id"] = request.state.request_id
        route = metrics_label(request.url.path)
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        if audited(route) and state.audit is not None:
            state.audit.record(AuditRecord(
                request_id=request.state.request_id, endpoint=route, status=response.status_code,
                latency_ms=(time.perf_counter() - request.state.started) * 1000, key_id=request.state.key_id,
                **request.state.audit))
        return response

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        request.state.audit["error"] = exc.message
        return _error_response(exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(RankwiseError)
    async def user_error(request: Request, exc: RankwiseError) -> JSONResponse:
        if isinstance(exc, QueryError):  # the request's own fault: say what to change
            request.state.audit["error"] = str(exc)
            return _error_response(422, str(exc))
        # the server's own data (a damaged index, a model that stopped scoring): not the client's fault, and
        # its paths are the operator's business — logged in full, shown in /readyz, answered 503
        kind = type(exc).__name__
        log.error("request %s failed on the server's data: %s", request.state.request_id, exc)
        state.data_problems[kind] = str(exc)
        request.state.audit["error"] = f"server data unavailable ({kind})"
        return _error_response(503, f"the server cannot answer right now ({kind}); retry later or tell its "
                               f"operator, quoting request id {request.state.request_id}", headers={"Retry-After": "5"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": _message(e), "type": e.get("type", "")}
                   for e in exc.errors()]
        message = "invalid request: " + "; ".join(
            f"{'.'.join(str(p) for p in d['loc'] if p != 'body') or 'body'}: {d['msg']}" for d in details[:5])
        if len(details) > 5:
            message += f" (and {len(details) - 5} more)"
        request.state.audit["error"] = message
        return _error_response(422, message, detail=details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 413:  # Starlette's streaming body limit
            state.metrics.rejected.labels("too_large").inc()
            message = f"the request body is larger than this server's limit of {state.config.limits.max_body_bytes} bytes"
        request.state.audit["error"] = message
        return _error_response(exc.status_code, message, headers=exc.headers)


def _message(error: dict[str, Any]) -> str:
    pattern = (error.get("ctx") or {}).get("pattern")
    return PATTERN_MESSAGES.get(pattern, error.get("msg", "")) if pattern else str(error.get("msg", ""))


def _error_response(status: int, message: str, *, detail: list[dict[str, Any]] | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)
