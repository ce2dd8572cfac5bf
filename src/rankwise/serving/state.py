"""Assemble a server from its config: open the index, load the reranker, connect the cache, keys and audit.

Everything that can fail because of a user mistake (missing index, unknown model, unreachable Redis,
broken keys file, unwritable audit path) fails here, before the server listens, as one
:class:`~rankwise.errors.RankwiseError` line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rankwise.index import Index
from rankwise.registry import Registry
from rankwise.rerank.base import Reranker, backend_label
from rankwise.rerank.loading import load_reranker
from rankwise.serving.audit import AuditLog
from rankwise.serving.auth import KeyStore, RateLimiter
from rankwise.serving.batcher import MicroBatcher
from rankwise.serving.cache import ScoreCache, open_score_cache
from rankwise.serving.config import ServeConfig
from rankwise.serving.metrics import ServingMetrics
from rankwise.serving.scoring import scorer_for
from rankwise.serving.service import RerankService, SearchService


@dataclass
class ServingState:
    config: ServeConfig
    metrics: ServingMetrics
    cache: ScoreCache
    limiter: RateLimiter
    reranker: Reranker | None = None
    index: Index | None = None
    batcher: MicroBatcher | None = None
    rerank: RerankService | None = None
    search: SearchService | None = None
    keys: KeyStore | None = None
    audit: AuditLog | None = None
    ready: bool = False
    not_ready_reason: str = "warming up"
    model_names: set[str] = field(default_factory=set)

    def close(self) -> None:
        """Stop the worker threads (the cache is async and closed by the app's lifespan)."""
        if self.batcher is not None:
            self.batcher.close()
        if self.audit is not None:
            self.audit.close()
        if self.index is not None:
            self.index.close()


def load_state(config: ServeConfig) -> ServingState:
    metrics = ServingMetrics()
    keys = KeyStore(config.keys) if config.keys is not None else None
    if keys is not None:
        keys.check()
    state = ServingState(config=config, metrics=metrics, keys=keys, limiter=RateLimiter(config.rate_limit),
                         cache=open_score_cache(config.cache, size=config.cache_size, ttl_s=config.cache_ttl_s))
    if config.index is not None:
        state.index = Index(config.index)
    state.reranker = load_reranker(config.reranker, registry=Registry(config.registry) if config.registry else None,
                                   max_length=config.max_length, backend=config.backend, device=config.device)
    if state.reranker is not None:
        state.batcher = MicroBatcher(scorer_for(state.reranker), config.batching, metrics)
        state.rerank = RerankService(state.reranker, state.batcher, state.cache, metrics)
        sha = state.reranker.weights_sha256
        state.model_names = {state.reranker.name, str(config.reranker), sha, sha[:12], *config.served_model_names}
    if state.index is not None:
        state.search = SearchService(state.index, state.rerank, config)
    if config.audit is not None:
        state.audit = AuditLog(config.audit)
    metrics.model.info({
        "reranker": state.reranker.name if state.reranker else "none",
        "reranker_sha256": state.reranker.weights_sha256 if state.reranker else "none",
        "reranker_backend": backend_label(state.reranker),
        "index_fingerprint": state.index.fingerprint if state.index else "none",
        "embedding_model": str((state.index.manifest.embedding or {}).get("model", "none")) if state.index else "none",
        "cache": state.cache.backend,
        "batching": "on" if config.batching.enabled else "off",
    })
    return state
