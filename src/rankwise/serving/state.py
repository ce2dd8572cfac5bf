"""Assemble a server from its config: open the index, load the reranker, connect the cache, keys and audit.

Everything that can fail because of a user mistake (missing index, unknown model, unreachable Redis,
broken keys file, unwritable audit path) fails here, before the server listens, as one
:class:`~rankwise.errors.RankwiseError` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rankwise.experiments import Experiment, load_experiment
from rankwise.feedback.store import FeedbackStore, SQLiteFeedbackStore
from rankwise.index import Index, open_loaded
from rankwise.monitoring.drift import QueryVocabulary
from rankwise.postgres import PostgresStore
from rankwise.rerank.loading import check_reranker_exists
from rankwise.serving.audit import AuditLog, SQLiteAuditLog
from rankwise.serving.auth import Keys, RateLimiter
from rankwise.serving.cache import ScoreCache, open_score_cache
from rankwise.serving.config import LoopSettings, ServeConfig
from rankwise.serving.index_follow import IndexFollower
from rankwise.serving.key_stores import open_keys
from rankwise.serving.metrics import ServingMetrics
from rankwise.serving.models import ModelRouter
from rankwise.serving.service import SearchService
from rankwise.serving.shadow import ShadowRunner
from rankwise.serving.watch import DriftWatch, ScheduledMonitor


@dataclass
class ServingState:
    config: ServeConfig
    metrics: ServingMetrics
    cache: ScoreCache
    limiter: RateLimiter
    router: ModelRouter | None = None
    index: Index | None = None
    search: SearchService | None = None
    keys: Keys | None = None
    audit: AuditLog | None = None
    feedback: FeedbackStore | None = None
    shadow: ShadowRunner | None = None
    experiment: Experiment | None = None
    drift: DriftWatch | None = None
    monitor: ScheduledMonitor | None = None
    follower: IndexFollower | None = None
    ready: bool = False
    not_ready_reason: str = "warming up"
    #: names a request's ``model`` may use for the served reranker, besides each loaded version's own
    model_names: set[str] = field(default_factory=set)
    #: the latest failure of the server's own data by error kind (a damaged index…), shown in /readyz
    data_problems: dict[str, str] = field(default_factory=dict)

    def use_index(self, index: Index) -> None:
        """Serve ``index`` from the next request on, once it is warm.

        A request reads :attr:`search` once and keeps that service (and its index) until it answers, so
        requests in flight finish on the version they started with. The replaced version is not closed here
        for the same reason: it is released when the last request holding it is done.
        """
        search = SearchService(index, self.config.pipeline, allow_unknown_filters=self.config.allow_unknown_filters)
        search.warm()
        vocabulary = QueryVocabulary.from_index(index) if self.drift is not None else None
        monitored = self.monitor.prepared_for(index) if self.monitor is not None else None
        # everything that can fail is done: now the switch, with nothing left to fail halfway
        if self.drift is not None and vocabulary is not None:
            self.drift.vocabulary = vocabulary
        if self.monitor is not None and monitored is not None:
            self.monitor.target = monitored
        self.index, self.search = index, search
        self.metrics.index.info(index_info(index))

    def close(self) -> None:
        """Stop the worker threads (the cache is async and closed by the app's lifespan)."""
        if self.follower is not None:
            self.follower.close()
        if self.monitor is not None:
            self.monitor.close()
        if self.shadow is not None:
            self.shadow.close()
        if self.router is not None:
            self.router.close()
        if self.feedback is not None:
            self.feedback.close()
        if self.audit is not None:
            self.audit.close()
        if self.keys is not None:
            self.keys.close()
        if self.index is not None:
            self.index.close()


def load_state(config: ServeConfig) -> ServingState:
    metrics = ServingMetrics()
    keys = open_keys(config.keys) if config.keys is not None else None
    if keys is not None:
        keys.check()
    state = ServingState(config=config, metrics=metrics, keys=keys, limiter=RateLimiter(config.rate_limit),
                         cache=open_score_cache(config.cache))
    if config.index is not None:
        state.index = open_loaded(config.index)  # one version's parts, whatever an update does meanwhile
    if config.rollout.experiment is not None:
        state.experiment = load_experiment(config.rollout.experiment)
    for spec in _model_specs(config, state.experiment):  # a typo stops the server whatever role it names
        check_reranker_exists(spec, config.load)
    state.feedback = open_feedback_store(config.loop, metrics)
    info = {"index_fingerprint": state.index.fingerprint if state.index else "none",
            "embedding_model": str((state.index.manifest.embedding or {}).get("model", "none")) if state.index else "none",
            "cache": state.cache.backend, "batching": "on" if config.batching.enabled else "off"}
    if config.reranker is not None:
        state.router = ModelRouter(config.reranker, config.load, config.rollout, state.cache, metrics,
                                   batching=config.batching, max_request_tokens=config.limits.max_request_tokens,
                                   experiment=state.experiment, info=info)
        metrics.track_queue(state.router.depth)
        state.model_names = {str(config.reranker), *config.served_model_names}
    else:
        metrics.model.info({**info, "reranker": "none", "reranker_sha256": "none", "reranker_backend": "none"})
    if config.shadow is not None:  # without a reranker, the shadow is compared with the first stage's order
        busy = state.router.busy if state.router is not None else _never_busy
        state.shadow = ShadowRunner(config.shadow, config.load, metrics, state.feedback, busy)
    if state.index is not None:
        state.search = SearchService(state.index, config.pipeline, allow_unknown_filters=config.allow_unknown_filters)
        if state.feedback is not None or config.monitor.drift_reference is not None:
            state.drift = DriftWatch(state.index, metrics, config.monitor)
        if config.monitor.every_s is not None:
            state.monitor = ScheduledMonitor(config.monitor, state.index, metrics, reranker=config.reranker,
                                             load=config.load, pipeline=config.pipeline)
        metrics.index.info(index_info(state.index))
        if config.rollout.follow_interval_s > 0:
            state.follower = IndexFollower(config.index, state.index, config.rollout.follow_interval_s,  # type: ignore[arg-type]
                                           metrics, state.use_index)
    if isinstance(config.audit, PostgresStore):
        from rankwise.serving.audit_postgres import PostgresAuditLog  # psycopg only where a store is named

        state.audit = PostgresAuditLog(config.audit)
    elif config.audit is not None:
        state.audit = SQLiteAuditLog(config.audit)
    return state


def index_info(index: Index) -> dict[str, str]:
    m = index.manifest
    return {"fingerprint": m.fingerprint, "documents": str(m.num_documents), "passages": str(m.num_passages),
            "built_at": m.created_at}


def _never_busy() -> bool:
    """A server without a reranker has no batcher for the shadow to wait for."""
    return False


def _model_specs(config: ServeConfig, experiment: Experiment | None) -> list[str]:
    """Every model the configuration asks the server to load, whatever its role."""
    specs = [config.reranker] if config.reranker is not None else []
    if config.rollout.canary_share > 0:
        specs.append(config.rollout.canary)
    if experiment is not None:
        specs += [arm.reranker for arm in experiment.arms]
    if config.shadow is not None:
        specs.append(config.shadow.model)
    return specs


def open_feedback_store(loop: LoopSettings, metrics: ServingMetrics) -> FeedbackStore | None:
    """The query log and feedback store (``None`` without one), checked whole before serving: a damaged file
    is refused now, not found by failing writes."""
    if loop.feedback is None:
        return None
    store: FeedbackStore
    if isinstance(loop.feedback, PostgresStore):
        from rankwise.feedback.store_postgres import (
            PostgresFeedbackStore,  # psycopg only where a store is named
        )

        store = PostgresFeedbackStore(loop.feedback, on_lost=metrics.query_log_errors.inc)
    else:
        store = SQLiteFeedbackStore(loop.feedback, on_lost=metrics.query_log_errors.inc)
    try:
        if isinstance(store, SQLiteFeedbackStore):  # a file can be damaged on disk: checked whole first
            store.check_integrity()
        store.set_retention(loop.retention_s)  # so `feedback export` after a stop applies it too
    except Exception:
        store.close()
        raise
    return store
