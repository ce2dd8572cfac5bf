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
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
from rankwise.errors import RankwiseError
from rankwise.pipeline import validate_query
from rankwise.serving.audit import AuditRecord
from rankwise.serving.auth import ApiKey, key_rate_limit
from rankwise.serving.guard import RequestGuard, bearer_token
from rankwise.serving.schemas import (
    PATTERN_MESSAGES,
    ErrorBody,
    Health,
    Readiness,
    RerankResponse,
    SearchReply,
    request_models,
)
from rankwise.serving.service import BudgetExceeded
from rankwise.serving.state import ServingState

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
           413: "Request body larger than the server's limit", 422: "Invalid request (the message names the field)",
           429: "Rate limit exceeded (see Retry-After)",
           503: "Overloaded (see Retry-After), or the key store is unreadable"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries, so clients (and schemathesis) know every status an endpoint can give."""
    return {c: {"model": ErrorBody, "description": _ERRORS[c]} for c in codes}


def require(role: str, state: ServingState) -> Callable[..., Awaitable[ApiKey | None]]:
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
    key: ApiKey | None = getattr(request.state, "api_key", None)  # set by the guard on every /v1/ route
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
    """A keyed hash of the query (HMAC with the audit log's secret): joinable, but not guessable from the log."""
    return state.audit.query_digest(query) if state.audit is not None else None


def create_app(state: ServingState) -> FastAPI:
    """The ASGI app for a loaded :class:`ServingState` (run it with uvicorn; one process, one batcher)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.batcher is not None:
            state.batcher.start()
        warm = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warm.cancel()
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
    RerankRequest, RerankV2Request, SearchRequest = request_models(state.config.limits)

    async def rerank(body: Any, request: Request, api_version: str) -> JSONResponse:
        if state.rerank is None:
            raise ApiError(404, "this server has no reranker; start it with --reranker NAME|PATH")
        reranker = state.rerank.reranker
        if body.model is not None and body.model not in state.model_names and not state.config.accept_any_model_name:
            asked = body.model if len(body.model) <= 80 else body.model[:80] + "…"
            served = sorted(n for n in state.model_names if len(n) <= 60 and "/" not in n)[:6]
            raise ApiError(404, f"model '{asked}' is not served here; pass one of {', '.join(served)} (or omit "
                           "`model` on /v1), or start the server with --served-model-name NAME or "
                           "--accept-any-model-name")
        query = validate_query(body.query)
        texts = [d if isinstance(d, str) else d.text for d in body.documents]
        request.state.audit.update(reranker=reranker.name, reranker_sha256=reranker.weights_sha256,
                                   query_sha256=_query_sha(state, query))
        top_n = min(body.top_n or len(texts), len(texts))
        warnings: list[str] = []
        try:
            scored = await state.rerank.score(query, texts, deadline=_deadline(state, request, body.timeout_ms),
                                              max_tokens_per_doc=body.max_tokens_per_doc)
        except BudgetExceeded:
            order, scores, raw, degraded = list(range(top_n)), None, None, True
            cache_hits, num_split, timings = 0, 0, {}
            warnings.append("the latency budget ran out before reranking finished: results are in input order, unscored")
        else:
            order = sorted(range(len(texts)), key=lambda i: (-float(scored.raw[i]), i))[:top_n]
            scores, raw, degraded = scored.calibrated, scored.raw, False
            cache_hits, num_split, timings = scored.cache_hits, sum(scored.split), scored.timings_ms
        timings["total"] = (time.perf_counter() - request.state.started) * 1000
        results: list[dict[str, Any]] = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": None if scores is None else float(scores[i])}
            if body.raw_scores:
                item["raw_score"] = None if raw is None else float(raw[i])
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        _finish(state, request, "rerank", degraded, timings, cache_hits,
                [{"index": r["index"], "score": r["relevance_score"]} for r in results])
        meta = {"api_version": {"version": api_version}, "billed_units": {"search_units": 1}, "model": reranker.name,
                "model_sha256": reranker.weights_sha256, "degraded": degraded, "warnings": warnings,
                "cache_hits": cache_hits, "num_split": num_split,
                "timings_ms": {k: round(v, 3) for k, v in timings.items()}}
        return JSONResponse({"id": request.state.request_id, "results": results, "meta": meta},
                            headers={"X-Rankwise-Degraded": "true"} if degraded else None)

    @app.post("/v1/rerank", response_model=RerankResponse, responses=_errors(400, 401, 403, 404, 413, 422, 429, 503),
              dependencies=[Depends(require("rerank", state))],
              summary="Rerank documents for a query (Cohere v1 / infinity compatible)")
    async def rerank_v1(body: RerankRequest, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        """Scores every document against the query with the served cross-encoder and returns them best first.
        `relevance_score` is the calibrated score (sigmoid of the logit), comparable across requests."""
        return await rerank(body, request, "1")

    @app.post("/v2/rerank", response_model=RerankResponse, responses=_errors(400, 401, 403, 404, 413, 422, 429, 503),
              dependencies=[Depends(require("rerank", state))],
              summary="Rerank documents for a query (Cohere v2: `model` required)")
    async def rerank_v2(body: RerankV2Request, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        """Cohere's v2 rerank (what `cohere.ClientV2.rerank` calls): the same scoring as `/v1/rerank`."""
        return await rerank(body, request, "2")

    @app.post("/v1/search", response_model=SearchReply, responses=_errors(400, 401, 403, 404, 413, 422, 429, 503),
              dependencies=[Depends(require("search", state))],
              summary="Search the index: first stage, then rerank (same result objects as `rankwise search --json`)")
    async def search(body: SearchRequest, request: Request) -> JSONResponse:  # type: ignore[valid-type]
        """First stage (bm25 | dense | hybrid) over the index, then the reranker over the top candidates;
        each result carries both scores, its rank movement and provenance."""
        if state.search is None or state.index is None:
            raise ApiError(404, "this server has no index; start it with --index DIR")
        query = validate_query(body.query)
        request.state.audit.update(index_fingerprint=state.index.fingerprint, query_sha256=_query_sha(state, query))
        if state.reranker is not None:
            request.state.audit.update(reranker=state.reranker.name, reranker_sha256=state.reranker.weights_sha256)
        outcome = await run_in_threadpool(
            state.search.search, query, k=body.k, first_stage=body.first_stage, retrieve_k=body.retrieve_k,
            rerank_k=body.rerank_k, rerank_fusion=body.rerank_fusion, filters=body.filters, deadline=_deadline(state, request, body.timeout_ms),
            loop=asyncio.get_running_loop())
        payload = outcome.response.to_dict()
        warnings = ["the latency budget ran out before reranking finished: results are in first-stage order"
                    ] if outcome.degraded else []
        _finish(state, request, "search", outcome.degraded, outcome.response.timings_ms, outcome.cache_hits,
                [{"doc_id": r.doc_id, "passage_id": r.passage_id, "score": r.score} for r in outcome.response.results])
        return JSONResponse({"id": request.state.request_id, "degraded": outcome.degraded, "warnings": warnings,
                             **payload}, headers={"X-Rankwise-Degraded": "true"} if outcome.degraded else None)

    @app.get("/healthz", response_model=Health, summary="Liveness: the process is up")
    async def healthz() -> Health:
        return Health()

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "Not ready"}},
             summary="Readiness: models loaded and warmed (model details for admin keys only, when keys are on)")
    async def readyz(request: Request) -> JSONResponse:
        detail = _is_admin(state, request)
        body = Readiness(ready=state.ready, reason=None if state.ready else state.not_ready_reason,
                         reranker=state.reranker.name if state.reranker and detail else None,
                         reranker_sha256=state.reranker.weights_sha256 if state.reranker and detail else None,
                         index_fingerprint=state.index.fingerprint if state.index and detail else None)
        return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=_errors(401),
             summary="Prometheus metrics (an admin key when keys are on, unless started with --open-metrics)")
    async def metrics(request: Request) -> Response:
        if not state.config.open_metrics and not _is_admin(state, request):
            raise ApiError(401, "metrics need an admin key on this server: send 'Authorization: Bearer rk_...' "
                           "(or start it with --open-metrics)", {"WWW-Authenticate": "Bearer"})
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


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


def _finish(state: ServingState, request: Request, endpoint: str, degraded: bool, timings: dict[str, float],
            cache_hits: int | None, results: list[dict[str, Any]]) -> None:
    if degraded:
        state.metrics.degraded.labels(endpoint).inc()
    state.metrics.observe_stages(endpoint, timings)
    request.state.audit.update(degraded=degraded, cache_hits=cache_hits, results=results)


async def _warm_up(state: ServingState) -> None:
    """Run one search and one scoring round so the first real request does not pay for lazy loading."""
    try:
        if state.search is not None:
            await asyncio.to_thread(state.search.warm)
        if state.batcher is not None:
            await asyncio.wrap_future(state.batcher.submit("warm up", ["the model is warmed up before traffic"]))
    except Exception as error:
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
        request.state.audit = {}
        try:
            response: Response = await call_next(request)
        except Exception:  # a bug: answer 500 with the request id (to find the traceback) and audit it
            log.exception("request %s failed", request.state.request_id)
            request.state.audit["error"] = "internal error"
            response = _error_response(500, f"internal error; quote request id {request.state.request_id}")
        response.headers["X-Request-Id"] = request.state.request_id
        route = request.url.path if request.url.path in _ROUTES else "other"
        state.metrics.requests.labels(route, str(response.status_code)).inc()
        if route.startswith("/v1/") and state.audit is not None:
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
        request.state.audit["error"] = str(exc)
        return _error_response(422, str(exc))

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


_ROUTES = frozenset({"/v1/rerank", "/v2/rerank", "/v1/search", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"})


def _error_response(status: int, message: str, *, detail: list[dict[str, Any]] | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)
