"""The FastAPI application, assembled: middleware, exception handlers, authentication, and the routes.

What each endpoint does is in :mod:`rankwise.serving.handlers`; which endpoints exist, and what the server
does around each (role, admission pool, audit, documented errors), is in :mod:`rankwise.serving.routes`.
:func:`create_app` only puts those together for one loaded :class:`ServingState`. (No ``from __future__
import annotations``: FastAPI reads the annotations of the endpoints and dependencies made here.)
"""

import asyncio
import contextlib
import inspect
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from rankwise import __version__
from rankwise.errors import QueryError, RankwiseError
from rankwise.serving import handlers
from rankwise.serving.audit import AuditRecord
from rankwise.serving.auth import ApiKey, key_rate_limit
from rankwise.serving.errors import ApiError
from rankwise.serving.guard import RequestGuard
from rankwise.serving.routes import BY_PATH, ROUTES, Role, audited, metrics_label
from rankwise.serving.schemas import (
    PATTERN_MESSAGES,
    ErrorBody,
    FeedbackReceipt,
    Health,
    Readiness,
    RerankResponse,
    SearchReply,
    request_models,
)
from rankwise.serving.state import ServingState

__all__ = ["ApiError", "create_app"]

log = logging.getLogger("rankwise.serving")

_bearer = HTTPBearer(auto_error=False, description="An API key from `rankwise keys add` (only when the server "
                     "was started with --keys).")

_ERRORS = {400: "Malformed request body", 401: "Missing or invalid API key",
           403: "The key's roles do not allow this endpoint",
           404: "Not available on this server (no index, no reranker, or another model)",
           409: "event_id reused for a different event",
           413: "Request body larger than the server's limit", 422: "Invalid request (the message names the field)",
           429: "Rate limit exceeded (see Retry-After)",
           503: "Overloaded (see Retry-After), or the key store is unreadable"}


#: what a failure on the server's own data is called in a 503 (its detail, with paths, is the operator's)
_DATA_KINDS = {"IndexNotFoundError": "the index is damaged or missing", "ModelError": "the model cannot score",
               "CorpusError": "the index's documents cannot be read"}


def create_app(state: ServingState) -> FastAPI:
    """The ASGI app for a loaded :class:`ServingState` (run it with uvicorn; one process, one batcher)."""
    # FastAPIOffline serves the /docs assets from the installed package: this server may have no internet
    app = FastAPIOffline(title="rankwise", version=__version__, lifespan=_lifespan(state),
                  description="Reranking (Cohere-compatible `/v1/rerank`) and search (`/v1/search`) with "
                              "cross-request micro-batching, a score cache, latency budgets, API keys and an audit log.")
    # outermost last: envelope (ids, metrics, audit) → guard (admission, auth) → body limit → routes
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=state.config.limits.max_body_bytes)
    app.add_middleware(RequestGuard, state=state)
    _install_handlers(app, state)
    RerankRequest, RerankV2Request, SearchRequest = request_models(state.config.limits, _filter_keys(state))
    _register(app, state, {
        "/v1/rerank": Endpoint(handlers.rerank_v1, RerankResponse, body=RerankRequest),
        "/v2/rerank": Endpoint(handlers.rerank_v2, RerankResponse, body=RerankV2Request),
        "/v1/search": Endpoint(handlers.search, SearchReply, body=SearchRequest),
        "/v1/feedback": Endpoint(handlers.feedback, FeedbackReceipt,
                                 {200: {"model": FeedbackReceipt, "description": "Already stored (same event_id)"}}),
        "/healthz": Endpoint(handlers.healthz, Health),
        "/readyz": Endpoint(handlers.readyz, Readiness, {503: {"model": Readiness, "description": "Not ready"}}),
        "/metrics": Endpoint(handlers.metrics, None, response_class=PlainTextResponse),
    })
    if state.config.ui:
        from rankwise.serving.console import mount_console  # templates load only for a server with pages

        mount_console(app, state)
    return app


def _filter_keys(state: ServingState) -> Collection[str] | None:
    """The metadata keys /v1/search filters may name (None: any key, matching nothing when no document has it)."""
    if state.index is None or state.config.allow_unknown_filters:
        return None
    return state.index.docstore.metadata_keys


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A route's handler and response shapes; everything else about the route comes from the route table."""

    #: a function of :mod:`rankwise.serving.handlers`: ``state`` first, then what FastAPI passes
    handler: Callable[..., Awaitable[Any]]
    response_model: Any
    #: responses documented differently from the table's error bodies
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)
    response_class: type[Response] = JSONResponse
    #: this server's model for the handler's ``body`` (None: the handler's own annotation)
    body: type[BaseModel] | None = None


def _register(app: FastAPI, state: ServingState, endpoints: dict[str, Endpoint]) -> None:
    """Add each route of :data:`~rankwise.serving.routes.ROUTES` with its handler, role and documented
    errors; a handler the table does not declare, or a declared route without a handler, stops the server."""
    if set(endpoints) != set(BY_PATH):
        raise RuntimeError(f"route table and handlers disagree: {sorted(set(endpoints) ^ set(BY_PATH))}")
    for route in ROUTES:
        endpoint = endpoints[route.path]
        app.add_api_route(
            route.path, _bind(endpoint.handler, state, endpoint.body), methods=[route.method],
            summary=route.summary, status_code=route.status_code, response_model=endpoint.response_model,
            response_class=endpoint.response_class,
            responses={**_errors(*route.errors), **endpoint.responses},
            dependencies=[Depends(require(route.role, state))] if route.role is not None else None)


def _bind(handler: Callable[..., Awaitable[Any]], state: ServingState,
          body: type[BaseModel] | None = None) -> Callable[..., Awaitable[Any]]:
    """The handler as this server's endpoint: ``state`` filled in and, given ``body``, the ``body`` parameter
    annotated with this server's request model.

    FastAPI validates and documents a request body by its parameter's annotation, and the request models
    are built per server (limits and filter keys are in their schema), so the annotation is set here, on
    the endpoint's ``__signature__`` (the handler's own, less ``state``). The name (the OpenAPI operation
    id) and the docstring (the description) are the handler's, so the document is the same as if FastAPI
    had been given the handler itself.
    """
    signature = inspect.signature(handler, eval_str=True)
    first, *parameters = signature.parameters.values()
    if first.name != "state":
        raise TypeError(f"handler {handler.__name__} must take the server's state as its first parameter")
    if body is not None:
        if "body" not in signature.parameters:
            raise TypeError(f"handler {handler.__name__} has no 'body' parameter to give a request model")
        parameters = [p.replace(annotation=body) if p.name == "body" else p for p in parameters]

    async def endpoint(**kwargs: Any) -> Any:
        return await handler(state, **kwargs)

    endpoint.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    endpoint.__name__, endpoint.__qualname__ = handler.__name__, handler.__qualname__
    endpoint.__doc__, endpoint.__module__ = handler.__doc__, handler.__module__
    return endpoint


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


def _lifespan(state: ServingState) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the state's worker threads and background tasks with the server, and close them with it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if state.router is not None:
            state.router.start()
        if state.shadow is not None:
            state.shadow.start()
        if state.monitor is not None:
            state.monitor.start()
        if state.follower is not None:
            state.follower.start()
        retention = asyncio.create_task(_purge_expired(state))
        warm = asyncio.create_task(_warm_up(state))
        try:
            yield
        finally:
            warm.cancel()
            retention.cancel()
            await asyncio.to_thread(state.close)
            await state.cache.close()

    return lifespan


async def _purge_expired(state: ServingState) -> None:
    """Delete query-log rows older than --retention at start and then hourly (off the event loop)."""
    retention_s = state.config.loop.retention_s
    if state.feedback is None or retention_s is None:
        return
    while True:
        cutoff = (datetime.now(UTC) - timedelta(seconds=retention_s)).isoformat(timespec="milliseconds")
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
        what = _DATA_KINDS.get(kind, "server data unavailable")
        request.state.audit["error"] = f"{what} ({kind})"
        return _error_response(503, f"the server cannot answer right now ({what}); retry later or tell its "
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
