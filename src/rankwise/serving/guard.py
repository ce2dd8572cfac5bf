"""The server's front door, as plain ASGI: admission control and authentication before the body is read.

Why plain ASGI rather than FastAPI dependencies: a dependency runs after FastAPI has read and parsed the
whole body, so an unauthenticated client could make the server buffer hundreds of megabytes (a chunked
body has no ``Content-Length`` to check) before being told 401, and an overloaded server would spend
its event loop parsing requests it cannot answer in time. Here, in order, before one body byte is read:

1. admission: at most ``max_in_flight`` search and rerank requests, and apart from them at most
   ``max_feedback_in_flight`` feedback requests, are inside the server; one more gets a fast 503 with
   ``Retry-After`` (separate pools: feedback blocked on a locked store can never take search's slots) (shedding load keeps the latency of admitted requests within their budget, where an
   unbounded queue lets every client's latency grow without limit);
2. authentication (when the server has keys): a missing or wrong key is a 401, a key store the server
   cannot read a 503 (without its path); roles and rate limits stay with each route, which knows its role.

A declared ``Content-Length`` over the limit is refused here too; otherwise the body limit (Starlette's
``RequestBodyLimitMiddleware``, inside this one) counts the bytes as they stream in — chunked bodies
included — and stops reading at the limit with a 413.

Which routes it guards comes from the route table (:mod:`rankwise.serving.routes`): the API routes, not
health, readiness, metrics or docs. Rejections are ordinary responses, so the app's envelope middleware around this one still counts them in
the metrics and writes their audit rows (with the key id when a valid key was sent).
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from rankwise.serving.auth import KeyFileError
from rankwise.serving.routes import API_POOLS, Pool
from rankwise.serving.state import ServingState

log = logging.getLogger("rankwise.serving")



class RequestGuard:
    def __init__(self, app: ASGIApp, state: ServingState) -> None:
        self.app = app
        self.state = state
        self.in_flight: dict[Pool, int] = {"model": 0, "feedback": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pool = API_POOLS.get(scope["path"]) if scope["type"] == "http" else None
        if pool is None:
            await self.app(scope, receive, send)
            return
        state = self.state
        limits = state.config.limits
        request_state = scope.setdefault("state", {})
        limit = limits.max_in_flight if pool == "model" else limits.max_feedback_in_flight
        if self.in_flight[pool] >= limit:
            state.metrics.rejected.labels("overloaded" if pool == "model" else f"overloaded_{pool}").inc()
            what = "search and rerank" if pool == "model" else pool
            await _reply(scope, receive, send, 503, f"the server is at its limit of {limit} {what} requests in "
                         "flight; retry shortly", {"Retry-After": "1"})
            request_state.setdefault("audit", {})["error"] = "overloaded"
            return
        if state.keys is not None:
            token = bearer_token(Headers(scope=scope).get("authorization"))
            try:
                key = state.keys.authenticate(token) if token else None
            except KeyFileError:
                log.exception("the API key store cannot be read")
                await _reply(scope, receive, send, 503, "the server cannot read its API key store; retry later or tell its operator")
                return
            if key is None:
                state.metrics.rejected.labels("unauthenticated").inc()
                message = ("missing API key: send 'Authorization: Bearer rk_...' (create one with `rankwise keys add`)"
                           if not token else "invalid or revoked API key")
                request_state.setdefault("audit", {})["error"] = message
                await _reply(scope, receive, send, 401, message, {"WWW-Authenticate": "Bearer"})
                return
            request_state["api_key"] = key
            request_state["key_id"] = key.id
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            # declared too large: answer now, in the API's JSON shape (Starlette's limit would answer in text)
            state.metrics.rejected.labels("too_large").inc()
            message = f"the request body is {length} bytes; this server accepts at most {limits.max_body_bytes}"
            request_state.setdefault("audit", {})["error"] = message
            await _reply(scope, receive, send, 413, message, {"Connection": "close"})
            return
        self.in_flight[pool] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight[pool] -= 1


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def _reply(scope: Scope, receive: Receive, send: Send, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
    """Answer in the API's error shape (``{"message": ...}``), before the app has seen the request."""
    await JSONResponse({"message": message}, status_code=status, headers=headers)(scope, receive, send)
