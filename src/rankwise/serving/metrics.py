"""Prometheus metrics of the service, on a registry of their own (so two apps in one process never clash).

Names follow Prometheus conventions: ``_seconds`` histograms, ``_total`` counters. The cache hit ratio is
also exported pre-computed (lifetime) because that is what operators look at first; use the counters for
windowed ratios in PromQL.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._hits = self._misses = 0
        r = self.registry
        self.stage_seconds = Histogram(
            "rankwise_stage_seconds", "Latency per stage (first_stage, cache, queue, inference, rerank, total)",
            ["endpoint", "stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.requests = Counter("rankwise_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.batch_requests = Histogram("rankwise_batch_requests", "Requests scored together in one batching round",
                                        buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128), registry=r)
        self.batch_pairs = Histogram("rankwise_batch_pairs", "(query, passage) pairs scored in one batching round",
                                     buckets=(1, 5, 10, 25, 50, 100, 200, 400, 800, 1600, 3200, 6400), registry=r)
        self.forward_passes = Counter("rankwise_forward_passes", "Model forward passes run by the batcher",
                                      registry=r)
        self.queue_depth = Gauge("rankwise_queue_depth", "Requests waiting for the batching worker", registry=r)
        self.cache_lookups = Counter("rankwise_cache_lookups", "Score cache lookups per passage", ["result"],
                                     registry=r)
        self.cache_errors = Counter("rankwise_cache_errors", "Cache backend failures (served as misses)", registry=r)
        self.cache_hit_ratio = Gauge("rankwise_cache_hit_ratio", "Lifetime share of passage lookups served from cache",
                                     registry=r)
        self.cache_hit_ratio.set_function(self._hit_ratio)
        self.degraded = Counter("rankwise_degraded", "Responses returned in first-stage order because the latency "
                                "budget ran out", ["endpoint"], registry=r)
        self.expired = Counter("rankwise_expired", "Scoring jobs dropped because their deadline passed, by where "
                               "they were (queued: never run; scoring: the rest of their forward passes skipped)",
                               ["stage"], registry=r)
        self.rejected = Counter("rankwise_rejected", "Requests refused before any work",
                                ["reason"], registry=r)
        self.model = Info("rankwise_model", "Versions being served", registry=r)
        self.ready = Gauge("rankwise_ready", "1 once the model is loaded and warmed", registry=r)
        self.model_swaps = Counter("rankwise_model_swaps", "Registry alias changes followed without a restart",
                                   ["role", "outcome"], registry=r)
        self.index_swaps = Counter("rankwise_index_swaps", "New index versions (rebuilt, updated, rolled back) "
                                   "followed without a restart, by outcome", ["outcome"], registry=r)
        self.index = Info("rankwise_index", "The index version being served", registry=r)
        self.same_version = Gauge("rankwise_same_version", "1 when the canary serves production's version, or an "
                                  "experiment arm another arm's (the comparison compares a model with itself)",
                                  ["role"], registry=r)
        self.served_by = Counter("rankwise_served", "Responses by the model version and experiment arm that "
                                 "produced them", ["model", "arm"], registry=r)
        self.shadow = Counter("rankwise_shadow", "Shadow-model work: requests offered, scored, dropped (queue "
                              "full or stale) and failed", ["outcome"], registry=r)
        self.feedback = Counter("rankwise_feedback", "Feedback events by signal and outcome (stored, duplicate, "
                                "rejected, unavailable)", ["signal", "outcome"], registry=r)
        self.pairs_scored = Counter("rankwise_pairs_scored", "(query, passage) pairs scored by each model (cache "
                                    "misses only)", ["model"], registry=r)
        self.tokens_scored = Counter("rankwise_tokens_scored", "Tokens run through each model", ["model"], registry=r)
        self.cpu_seconds = Counter("rankwise_cpu_seconds", "CPU (process) time spent in each model's batching rounds",
                                   ["model"], registry=r)
        self.request_cpu = Histogram("rankwise_request_cpu_seconds", "CPU time per request, its share of the rounds "
                                     "that scored it", ["endpoint", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.drift_psi = Gauge("rankwise_drift_psi", "Population stability index of a traffic signal: recent "
                               "window vs the reference window", ["signal"], registry=r)
        self.drift_ks_pvalue = Gauge("rankwise_drift_ks_pvalue", "Two-sample Kolmogorov-Smirnov p-value of a traffic "
                                     "signal: recent window vs the reference window", ["signal"], registry=r)
        self.drift_pvalue = Gauge("rankwise_drift_pvalue", "p-value of the test that decides whether a traffic signal "
                                  "drifted: chi-square for discrete signals, Kolmogorov-Smirnov for continuous ones",
                                  ["signal", "test"], registry=r)
        self.drift_alarm = Gauge("rankwise_drift_alarm", "1 when a traffic signal drifted (PSI and the two-sample "
                                 "test both past their thresholds), 0 when not, -1 when a window is too small to "
                                 "tell", ["signal"], registry=r)
        self.monitor_metric = Gauge("rankwise_monitor_metric", "The latest scheduled gold-set evaluation, per metric",
                                    ["metric"], registry=r)
        self.monitor_alarm = Gauge("rankwise_monitor_alarm", "Scheduled evaluation vs the previous run: 1 alarm, "
                                   "0 ok, -1 inconclusive (too few queries or no previous run)", registry=r)
        self.monitor_last_run = Gauge("rankwise_monitor_last_run_timestamp_seconds", "When the latest scheduled "
                                      "evaluation finished (Unix time)", registry=r)
        self.monitor_runs = Counter("rankwise_monitor_runs", "Scheduled evaluations by outcome", ["outcome"],
                                    registry=r)
        self.query_log_errors = Counter("rankwise_query_log_errors", "Answered requests the query log could "
                                        "not record", registry=r)

    def count_cache(self, hits: int, misses: int) -> None:
        self.cache_lookups.labels("hit").inc(hits)
        self.cache_lookups.labels("miss").inc(misses)
        self._hits += hits
        self._misses += misses

    def count_cost(self, model: str, pairs: int, tokens: int, cpu_ms: float) -> None:
        self.pairs_scored.labels(model).inc(pairs)
        self.tokens_scored.labels(model).inc(tokens)
        self.cpu_seconds.labels(model).inc(cpu_ms / 1000.0)

    def _hit_ratio(self) -> float:
        total = self._hits + self._misses
        return self._hits / total if total else 0.0

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def observe_stages(self, endpoint: str, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage_seconds.labels(endpoint, stage).observe(ms / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
