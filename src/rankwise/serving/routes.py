"""The server's route table: every endpoint, once, with what the server does around it.

Why one table: which routes pass the admission guard (in-flight cap, body limit, authentication), which
role a key needs, which are written to the audit log, how each is labelled in the metrics and what the
OpenAPI document says about it used to be separate lists in separate modules, and they drifted (one
endpoint went unaudited). Here a route is declared once; the guard, the envelope middleware and
:func:`~rankwise.serving.app.create_app` all read this table, and ``create_app`` refuses to start when a
handler and the table disagree, so an endpoint cannot be added without deciding all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["search", "rerank", "feedback", "admin"]
Method = Literal["GET", "POST"]
#: admission pools: each has its own in-flight cap, so a slow store can never take the model routes' slots
Pool = Literal["model", "feedback"]

#: what any API route can answer besides 200, for the OpenAPI document (and schemathesis)
API_ERRORS: tuple[int, ...] = (400, 401, 403, 404, 413, 422, 429, 503)


@dataclass(frozen=True, slots=True)
class ApiRoute:
    path: str
    method: Method
    summary: str
    #: the key role it needs when the server has keys (``admin`` keys may do everything); None: no key
    role: Role | None = None
    #: the admission pool of an API route (model or store work: in-flight cap, body limit, authentication,
    #: audit); None for health, readiness and metrics, which are never shed
    pool: Pool | None = None
    #: statuses besides 200 it documents
    errors: tuple[int, ...] = ()
    status_code: int = 200

    @property
    def api(self) -> bool:
        return self.pool is not None

    @property
    def audited(self) -> bool:
        """Every API request is written to the audit log, answered or refused."""
        return self.api


ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("/v1/rerank", "POST", "Rerank documents for a query (Cohere v1 / infinity compatible)",
             role="rerank", pool="model", errors=API_ERRORS),
    ApiRoute("/v2/rerank", "POST", "Rerank documents for a query (Cohere v2: `model` required)",
             role="rerank", pool="model", errors=API_ERRORS),
    ApiRoute("/v1/search", "POST", "Search the index: first stage, then rerank (same result objects as "
             "`rankwise search --json`)", role="search", pool="model", errors=API_ERRORS),
    ApiRoute("/v1/feedback", "POST", "Report a user's reaction (click, thumbs, dwell, copy) to one result of an "
             "answered request", role="feedback", pool="feedback", errors=(*API_ERRORS, 409), status_code=201),
    ApiRoute("/healthz", "GET", "Liveness: the process is up"),
    ApiRoute("/readyz", "GET", "Readiness: models loaded and warmed (model details for admin keys only, when "
             "keys are on)", errors=(503,)),
    ApiRoute("/metrics", "GET", "Prometheus metrics (an admin key when keys are on, unless started with "
             "--open-metrics)", errors=(401,)),
)

BY_PATH: dict[str, ApiRoute] = {route.path: route for route in ROUTES}
#: paths the admission guard handles (everything else passes straight through), with their pool
API_POOLS: dict[str, Pool] = {route.path: route.pool for route in ROUTES if route.pool is not None}
API_PATHS: frozenset[str] = frozenset(API_POOLS)
#: the documentation pages FastAPI adds itself: labelled by path in the metrics, never audited
DOC_PATHS: frozenset[str] = frozenset({"/docs", "/openapi.json"})


def metrics_label(path: str) -> str:
    """The ``route`` label of a request: its path when it is a route, else ``other`` (bounded cardinality)."""
    return path if path in BY_PATH or path in DOC_PATHS else "other"


def audited(path: str) -> bool:
    route = BY_PATH.get(path)
    return route is not None and route.audited
