"""Server settings: one frozen value object built by ``rankwise serve`` (or by hand in Python).

Every limit the server enforces lives here so it can be read, logged and tested in one place. The settings
are grouped by the component that uses them (:class:`ServeConfig` holds one frozen part per component), so
each component is handed only its part, and each part checks its own values when it is made; what involves
several parts (a canary needs a reranker, drift needs an index) is checked by :class:`ServeConfig`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from rankwise.errors import RankwiseError
from rankwise.feedback.events import QUERY_LOGGING, QueryLogging
from rankwise.options import DEFAULT_PIPELINE, PipelineSettings, choose
from rankwise.pipeline import MAX_QUERY_CHARS
from rankwise.postgres import PostgresStore
from rankwise.rerank.loading import LoadOptions


class ServeConfigError(RankwiseError):
    """A server option is invalid or inconsistent (bad limit, unreachable cache, unsafe binding)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Request size limits; exceeding one is answered with HTTP 413 and a message naming the limit."""

    max_documents: int = 1000
    max_document_chars: int = 20_000
    max_query_chars: int = MAX_QUERY_CHARS
    max_body_bytes: int = 16 * 1024 * 1024
    #: API requests inside the server at once; one more is answered 503 + Retry-After at once (load shedding).
    #: 16 kept the client-side p99 under twice a 200 ms budget at 64 connections on 2 cores, where 32 did not
    #: quite (benchmarks/serve_overload.sh); raise it with the cores
    max_in_flight: int = 16
    #: feedback requests inside the server at once, apart from the model routes' slots: a feedback store that
    #: is slow or locked then answers 503 + Retry-After to feedback while search and rerank go on
    max_feedback_in_flight: int = 4
    #: tokens one request may send through the model once windowed (1000 documents of 512 tokens): characters
    #: alone do not bound the work, and a request past it is refused (422) before any forward pass
    max_request_tokens: int = 524_288

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_document_chars", "max_query_chars", "max_body_bytes", "max_in_flight",
                     "max_feedback_in_flight", "max_request_tokens"):
            if getattr(self, name) <= 0:
                raise ServeConfigError(f"--{name.replace('_', '-')} must be positive")
        if self.max_query_chars > MAX_QUERY_CHARS:
            raise ServeConfigError(f"--max-query-chars can be at most {MAX_QUERY_CHARS} (the pipeline's own limit)")


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    """Cross-request micro-batching.

    The worker starts a round with the oldest queued request, then keeps taking queued requests for at
    most ``max_wait_ms`` or until the round holds ``max_tokens`` tokens / ``max_requests`` requests, and
    scores the whole round in shared forward passes. ``enabled=False`` makes every round one request
    (still on the worker thread), which is the "off" arm of the benchmark.
    """

    enabled: bool = True
    max_wait_ms: float = 2.0
    max_tokens: int = 65_536
    max_requests: int = 64

    def __post_init__(self) -> None:
        if self.max_wait_ms < 0 or self.max_tokens <= 0 or self.max_requests <= 0:
            raise ServeConfigError("batching: --batch-wait-ms must be >= 0, --batch-tokens and "
                                   "--batch-requests positive")

    @property
    def requests_per_round(self) -> int:
        return self.max_requests if self.enabled else 1


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token bucket: ``per_second`` sustained requests, bursts of up to ``burst``."""

    per_second: float = 20.0
    burst: int = 40

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ServeConfigError("rate limit: requests per second must be > 0 and burst >= 1")


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The score cache: in-process (``memory``) or shared between servers (a ``redis://`` URL)."""

    url: str = "memory"
    #: in-process entries (0 disables the in-process cache)
    size: int = 100_000
    #: Redis entry lifetime
    ttl_s: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        if self.size < 0 or self.ttl_s <= 0:
            raise ServeConfigError("--cache-size must be >= 0 (0 disables the in-process cache) and --cache-ttl positive")
        if not (self.url == "memory" or self.url.startswith(("redis://", "rediss://", "unix://"))):
            raise ServeConfigError(f"--cache must be 'memory' or a redis:// URL (got '{self.url}')")


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """The feedback loop's server side: the query log and feedback store, and what it keeps for how long."""

    #: the query log and feedback store (a SQLite file or the shared PostgreSQL store); None keeps no query
    #: log and refuses feedback (404)
    feedback: Path | PostgresStore | None = None
    #: how much of each query the query log keeps: nothing, a keyed hash (the default), or the text
    log_queries: QueryLogging = "hash"
    #: delete query-log rows (and their feedback and shadow rows) older than this many seconds
    retention_s: float | None = None

    def __post_init__(self) -> None:
        choose(self.log_queries, QUERY_LOGGING, "query logging")
        if self.retention_s is not None and self.retention_s <= 0:
            raise ServeConfigError("--retention must be a positive duration such as 30d")


@dataclass(frozen=True, slots=True)
class ShadowSettings:
    """A second reranker that scores sampled requests off the critical path."""

    #: registry name or path
    model: str
    #: share of requests offered to the shadow
    share: float = 1.0
    #: documents the shadow scores between checks for production work: a production request that arrives
    #: mid-chunk waits for at most one chunk, so this bounds what the shadow can add to production latency
    chunk: int = 2

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ServeConfigError("--shadow-chunk must be at least 1 document")
        if not 0 < self.share <= 1:
            raise ServeConfigError(f"--shadow-share must be in (0, 1] (got {self.share})")


@dataclass(frozen=True, slots=True)
class RolloutSettings:
    """Which reranker answers whom besides production (a canary or an experiment's arms), and how promptly
    the server follows a registry alias that moves or an index that is rebuilt, updated or rolled back."""

    #: serve this share of callers (sticky by user/key) with ``canary`` instead of production
    canary: str = "candidate"
    canary_share: float = 0.0
    #: an experiment definition (A/B arms or interleaving), see :mod:`rankwise.experiments`
    experiment: Path | None = None
    #: how often registry aliases and the index's manifest are re-read (seconds); 0 pins the versions loaded at start
    follow_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.canary_share < 1:
            raise ServeConfigError(f"--canary must be a share below 100% such as 10% (got {self.canary_share:.0%})")
        if self.follow_interval_s < 0:
            raise ServeConfigError("--follow-interval must be >= 0 seconds (0 pins the loaded versions)")
        if self.experiment is not None and self.canary_share:
            raise ServeConfigError("--canary and --experiment both split traffic: use one (a canary is an "
                                   "experiment with two arms)")


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """What the server watches about itself: drift of its traffic, and a scheduled gold-set evaluation."""

    #: a saved reference window of traffic signals (``rankwise monitor drift --save-reference``)
    drift_reference: Path | None = None
    #: how many recent searches are compared with the reference
    drift_window: int = 500
    #: evaluate the serving configuration on ``goldset`` this often, recording runs in ``history``
    every_s: float | None = None
    goldset: Path | None = None
    history: Path | PostgresStore | None = None

    def __post_init__(self) -> None:
        if self.drift_window < 50:
            raise ServeConfigError("--drift-window must be at least 50 requests (fewer cannot show a drift)")
        if (self.every_s is None) != (self.goldset is None):
            raise ServeConfigError("--monitor-every and --monitor-goldset go together: how often, and on what")
        if self.every_s is not None and self.every_s < 60:
            raise ServeConfigError("--monitor-every must be at least 1m (an evaluation takes a while)")


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``rankwise serve`` needs: the server's own settings, and one part per component.

    ``keys=None`` disables authentication, which is only allowed on a loopback address: a server
    reachable from other machines must know who is calling it. ``pipeline`` settings left unset are
    :data:`~rankwise.options.DEFAULT_PIPELINE`'s (``rerank_fusion`` unset: each model's declared
    ordering).
    """

    index: str | Path | None = None  # a directory or postgresql://...#NAME
    reranker: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    keys: str | Path | None = None  # a keys file or postgresql://...
    #: a SQLite file, the shared PostgreSQL store (``--store``), or None for no audit log
    audit: Path | PostgresStore | None = None
    timeout_ms: int = 30_000
    #: serve /metrics without a key even when keys are on (for scrapers that cannot send a bearer token)
    open_metrics: bool = False
    #: the web console at /ui (pages over this server's API, signed in with a key)
    ui: bool = False
    #: labelling sheets (``rankwise label --out-dir``) the console's annotators work through
    label_dir: Path | None = None
    #: extra names the reranker answers to in a request's ``model`` (e.g. what a Cohere client sends)
    served_model_names: tuple[str, ...] = ()
    #: answer any ``model`` name with the served reranker instead of refusing unknown names with a 404
    accept_any_model_name: bool = False
    #: let /v1/search filters on metadata keys no document has match nothing (default: 422 naming the known keys)
    allow_unknown_filters: bool = False
    pipeline: PipelineSettings = DEFAULT_PIPELINE
    load: LoadOptions = field(default_factory=LoadOptions)
    cache: CacheSettings = CacheSettings()
    loop: LoopSettings = LoopSettings()
    #: None: no shadow
    shadow: ShadowSettings | None = None
    rollout: RolloutSettings = RolloutSettings()
    monitor: MonitorSettings = MonitorSettings()
    batching: BatchingSettings = BatchingSettings()
    limits: Limits = Limits()
    rate_limit: RateLimit = RateLimit()

    def __post_init__(self) -> None:
        if self.index is None and self.reranker is None:
            raise ServeConfigError("nothing to serve: pass --index DIR (for /v1/search) and/or --reranker (for /v1/rerank)")
        pipeline = self.pipeline.over(DEFAULT_PIPELINE)
        object.__setattr__(self, "pipeline", pipeline)  # frozen: filled in once, before anyone reads it
        if self.timeout_ms <= 0:
            raise ServeConfigError("--timeout-ms must be positive")
        if self.monitor.drift_reference is not None and self.index is None:
            raise ServeConfigError("--drift-reference watches /v1/search traffic: pass --index too")
        if self.monitor.every_s is not None and (self.index is None or self.monitor.history is None):
            raise ServeConfigError("scheduled evaluation needs --index (what is evaluated) and a --monitor-history")
        if self.reranker is None and (self.rollout.canary_share or self.rollout.experiment):
            raise ServeConfigError("--canary and --experiment split traffic between rerankers: pass --reranker too")
        if self.reranker is None and self.shadow is not None and self.index is None:
            raise ServeConfigError("a shadow without --reranker compares with the first stage: pass --index too")
        if self.label_dir is not None and not self.ui:
            raise ServeConfigError("--label-dir is for the web console's labelling pages: add --ui")
        if self.label_dir is not None and not self.label_dir.is_dir():
            raise ServeConfigError(f"--label-dir '{self.label_dir}' is not a directory (make sheets with "
                                   "`rankwise label ... --out-dir DIR/NAME`)")
        if self.keys is None and not is_loopback(self.host):
            raise ServeConfigError(f"refusing to serve on {self.host} without authentication: pass --keys FILE "
                                   "(create keys with `rankwise keys add`) or bind to 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
