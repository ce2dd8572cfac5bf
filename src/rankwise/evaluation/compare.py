"""Run several pipelines over one gold set and compare them side by side: :func:`evaluate`.

The systems are the first stages asked for (``bm25``, ``dense``, ``hybrid``) and, with a reranker, each of
them followed by it (``bm25+reranker`` ...). A first stage and its reranked variant are evaluated from
**one** :meth:`Pipeline.search <rankwise.pipeline.Pipeline.search>` call per query: the reranking
pipeline returns every candidate with its first-stage rank, so the first stage's own ranking is read back
from the same candidates. Both systems therefore see exactly the same candidates, and the first stage is
not run twice. The first stage's latency is that call's ``first_stage`` time (reranking is the only step
it does not do).

The result is an :class:`EvaluationReport`; ``EvaluationReport.to_dict()`` is the stable JSON document
below (``schema: "rankwise.evaluation/1"``; fields may be added in a minor version, never renamed or
removed; NaN is written as ``null``)::

    {
      "schema": "rankwise.evaluation/1",
      "created_at": "2025-01-01T12:00:00+00:00",
      "dataset": {"name": "scifact/test", "counts": {"judgements": 339, "queries": 300,
                  "evaluated_queries": 300, "excluded_no_text": 0, "excluded_no_relevant": 0,
                  "unknown_documents": 0, "unknown_relevant": 0, "tied_pairs": 0, "annotators": 0},
                  "warnings": ["..."]},
      "config": {"index": "...", "index_fingerprint": "...", "num_documents": 5183,
                 "embedding_model": "...", "reranker": "..." | null, "reranker_sha256": "..." | null,
                 "first_stages": ["bm25", "dense", "hybrid"], "retrieve_k": 100, "rerank_k": 100,
                 "seed": 0, "n_resamples": 10000, "confidence": 0.95, "holm_family": "...",
                 "latency_note": "...", "versions": {"rankwise": "...", "ir_measures": "...", "python": "..."}},
      "systems": ["bm25", "bm25+reranker", "dense", ...],
      "metrics": ["nDCG@5", "P@5", "R@20", "nDCG@10"],   # ir_measures names; the first is the primary one
      "baseline": "dense", "candidate": "hybrid+reranker" | null,
      "scores": {"<system>": {"<metric>": mean over queries}},
      "scores_ci95": {"<system>": {"<metric>": [low, high]}},          # bootstrap CI of the mean
      "per_query": {"<system>": {"<metric>": {"<query_id>": value}}},
      "comparisons": [{"system": "bm25", "baseline": "dense",
                       "metrics": {"<metric>": {"baseline_mean", "system_mean", "delta", "relative_gain",
                                               "ci95": [low, high],      # of the mean paired difference
                                               "p_ttest", "p_randomization",
                                               "p_ttest_holm", "p_randomization_holm",
                                               "wins", "losses", "ties"}},
                       "degraded": [{"query_id", "query", "metric", "baseline_value", "system_value",
                                     "delta", "relevant": [doc ids], "system_top": [doc ids]}]}],
      "latency_ms": {"<system>": {"<stage>": {"p50", "p95", "p99", "mean", "n"}}},  # stages: first_stage,
      "latency_samples_ms": {"<system>": {"<stage>": [ms per query]}},             # rerank, total
      "queries": {"<query_id>": {"query": "...", "judgements": {"<doc id>": label},  # labels ≤ 0 included
                  "top": {"<system>": [{"rank", "doc_id", "title", "label" (null = unjudged),
                                        "first_stage_rank", "first_stage_score",
                                        "reranker_score" | null, "reranker_logit" | null}]}}},
      "gates": null | {"candidate", "baseline", "passed", "rules": [{"rule", "passed", "observed",
                                                                     "required", "message"}]}
    }
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.clock import utc_now
from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.goldset import PreparedGoldSet
from rankwise.evaluation.metrics import DEFAULT_METRICS, mean, parse_metrics, per_query, required_depth
from rankwise.evaluation.query_runs import QueryRunner, run_here
from rankwise.evaluation.runs import run_from_rankings, write_trec_qrels, write_trec_run
from rankwise.evaluation.significance import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    bootstrap_ci,
    holm,
    paired_t_test,
    randomization_test,
)
from rankwise.index import Index
from rankwise.options import (
    DEFAULT_PIPELINE,
    FIRST_STAGE_METHODS,
    FirstStageMethod,
    PipelineSettings,
    choose_many,
)
from rankwise.pipeline import MAX_QUERY_CHARS, latency_percentiles
from rankwise.rerank.base import PassageCaching, Reranker, declared_fusion
from rankwise.storage import atomic_write_text
from rankwise.types import SearchResult

SCHEMA = "rankwise.evaluation/1"
RERANKED_SUFFIX = "+reranker"
DEFAULT_BASELINE = "dense"
#: per-query differences smaller than this count as ties (metric values are exact ratios of small ints)
TIE_TOLERANCE = 1e-9
#: ``progress(system, done, total)``
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class TopResult:
    """One of a system's top results for a query, with both signals and the gold label."""

    rank: int
    doc_id: str
    title: str
    label: int | None
    first_stage_rank: int
    first_stage_score: float
    reranker_score: float | None
    reranker_logit: float | None


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of one system against the baseline, over the same queries."""

    baseline_mean: float
    system_mean: float
    delta: float
    relative_gain: float | None
    ci95: tuple[float, float]
    p_ttest: float
    p_randomization: float
    p_ttest_holm: float
    p_randomization_holm: float
    wins: int
    losses: int
    ties: int


@dataclass(frozen=True, slots=True)
class DegradedQuery:
    """A query on which the system is worse than the baseline (primary metric): tomorrow's training data."""

    query_id: str
    query: str
    metric: str
    baseline_value: float
    system_value: float
    delta: float
    relevant: list[str]
    system_top: list[str]


@dataclass(frozen=True, slots=True)
class Comparison:
    system: str
    baseline: str
    metrics: dict[str, MetricComparison]
    degraded: list[DegradedQuery]


@dataclass
class EvaluationReport:
    """Everything an evaluation measured; :meth:`to_dict` is the stable JSON schema (module docstring)."""

    dataset: dict[str, Any]
    config: dict[str, Any]
    systems: list[str]
    metrics: list[str]
    baseline: str
    candidate: str | None
    scores: dict[str, dict[str, float]]
    scores_ci95: dict[str, dict[str, tuple[float, float]]]
    per_query: dict[str, dict[str, dict[str, float]]]
    comparisons: list[Comparison]
    latency_ms: dict[str, dict[str, dict[str, float]]]
    latency_samples_ms: dict[str, dict[str, list[float]]]
    queries: dict[str, dict[str, Any]]
    gates: dict[str, Any] | None = None
    #: model work per query: ``{system: {"cpu_ms_per_query": ..., "pairs_per_query": ...}}`` (process time:
    #: every thread's CPU, so it is what a query costs on this machine, whatever its thread count)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)
    schema: str = SCHEMA
    #: full rankings (``{system: {query_id: [doc ids]}}``) — not in the JSON; see :meth:`write_runs`
    rankings: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def comparison(self, system: str) -> Comparison:
        for c in self.comparisons:
            if c.system == system:
                return c
        raise EvaluationError(f"'{system}' is not compared with the baseline; systems: {', '.join(self.systems)}")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "schema": self.schema, "created_at": self.created_at, "dataset": self.dataset, "config": self.config,
            "systems": self.systems, "metrics": self.metrics, "baseline": self.baseline,
            "candidate": self.candidate, "scores": self.scores, "scores_ci95": self.scores_ci95,
            "per_query": self.per_query, "comparisons": [asdict(c) for c in self.comparisons],
            "latency_ms": self.latency_ms, "latency_samples_ms": self.latency_samples_ms,
            "queries": self.queries, "gates": self.gates, "cost": self.cost,
        }
        return _json_safe(data)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    def save_json(self, path: str | Path) -> Path:
        return _write_text(path, self.to_json())

    def write_runs(self, directory: str | Path) -> list[Path]:
        """One TREC run file per system (``<system>.run``, tag = system) plus ``qrels.txt``."""
        directory = Path(directory)
        paths = [write_trec_run(rankings, directory / f"{system}.run", tag=system)
                 for system, rankings in self.rankings.items()]
        qrels = {qid: q["judgements"] for qid, q in self.queries.items()}
        return [*paths, write_trec_qrels(qrels, directory / "qrels.txt")]


def system_names(first_stages: Sequence[str], with_reranker: bool) -> list[str]:
    """``bm25, bm25+reranker, dense, ...`` in the order they are evaluated and shown."""
    return [name for fs in first_stages for name in ((fs, fs + RERANKED_SUFFIX) if with_reranker else (fs,))]


def parse_first_stages(spec: str | Sequence[str]) -> list[FirstStageMethod]:
    """``bm25,dense`` → ``["bm25", "dense"]`` (validated, de-duplicated, in order)."""
    return choose_many(spec, FIRST_STAGE_METHODS, "first stage")


def evaluate(
    index: Index,
    goldset: PreparedGoldSet,
    *,
    first_stages: Sequence[str] = FIRST_STAGE_METHODS,
    reranker: Reranker | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    baseline: str = DEFAULT_BASELINE,
    candidate: str | None = None,
    settings: PipelineSettings | None = None,
    top_results: int = 5,
    seed: int = DEFAULT_SEED,
    n_resamples: int = DEFAULT_RESAMPLES,
    progress: Progress | None = None,
    run_queries: QueryRunner | None = None,
    groups: Collection[str] | None = None,
) -> EvaluationReport:
    """Evaluate every system on ``goldset`` and compare each with ``baseline``.

    ``candidate`` (the system gates judge) defaults to the last system evaluated that is not the
    baseline — with the default first stages and a reranker, ``hybrid+reranker``. Holm's correction is
    applied per metric over the comparisons with the baseline. The report keeps each system's top
    ``top_results`` results per query (with first-stage and reranker scores) and its full rankings (for
    TREC run files); rankings are ``retrieve_k`` deep. ``settings`` are every system's
    :class:`~rankwise.options.PipelineSettings` (``retrieve_k``, ``rerank_k``, ``rerank_fusion``; unset:
    :data:`~rankwise.options.DEFAULT_PIPELINE`'s and the model's declared fusion, as it would be served);
    each system's first stage comes from ``first_stages``. ``run_queries``: where the queries run (default:
    here; :func:`~rankwise.evaluation.query_runs.run_on_ray` spreads them over a Ray cluster, whose workers
    load ``index`` and ``reranker`` from the same places). ``groups``: every system searches as a caller in
    these groups (prepare the gold set with the same groups, so that judgements on documents they cannot
    see are not counted as misses); a ``run_queries`` given must search with the same groups.
    """
    settings = settings or PipelineSettings()
    if settings.first_stage is not None:
        raise EvaluationError("the systems' first stages come from first_stages; leave settings.first_stage unset")
    settings = settings.over(replace(DEFAULT_PIPELINE, first_stage=None))
    retrieve_k, rerank_k, rerank_fusion = settings.retrieve_k, settings.rerank_k, settings.rerank_fusion
    assert retrieve_k is not None and rerank_k is not None
    metrics = parse_metrics(metrics)
    first_stages = parse_first_stages(first_stages)
    systems = system_names(first_stages, reranker is not None)
    if baseline not in systems:
        raise EvaluationError(f"baseline '{baseline}' is not among the evaluated systems ({', '.join(systems)}); "
                              "pass --baseline with one of them")
    others = [s for s in systems if s != baseline]
    candidate = candidate or (others[-1] if others else None)
    if candidate is not None and candidate not in others:
        raise EvaluationError(f"candidate '{candidate}' must be one of the evaluated systems other than the "
                              f"baseline ({', '.join(others) or 'none'})")
    depth = required_depth(metrics)
    if depth is not None and depth > retrieve_k:
        raise EvaluationError(f"a metric needs the top {depth} results but --retrieve-k is {retrieve_k}; "
                              f"raise --retrieve-k to at least {depth}")
    if top_results < 1:
        raise EvaluationError("top_results must be at least 1")
    too_long = [qid for qid, text in goldset.queries.items() if len(text) > MAX_QUERY_CHARS]
    if too_long:  # found now rather than after minutes of retrieval
        raise EvaluationError(f"{len(too_long)} queries are longer than {MAX_QUERY_CHARS} characters, the search "
                              f"limit (e.g. {', '.join(too_long[:3])}); shorten them or leave them out")

    run = run_queries or run_here(index, reranker, groups)
    rankings, tops, samples, costs = _run_pipelines(goldset, first_stages, reranker is not None, settings,
                                                    top_results, progress, run)
    values = {s: per_query(metrics, goldset.qrels, run_from_rankings(rankings[s])) for s in systems}
    scores = {s: {m: mean(values[s][m]) for m in metrics} for s in systems}
    cis = {s: {m: bootstrap_ci(list(values[s][m].values()), n_resamples=n_resamples, seed=seed) for m in metrics}
           for s in systems}
    comparisons = _compare(goldset, values, rankings, metrics, baseline, others, n_resamples, seed)
    queries = {qid: {"query": text, "judgements": goldset.qrels[qid],
                     "top": {s: [asdict(t) for t in tops[s][qid]] for s in systems}}
               for qid, text in goldset.queries.items()}
    emb = index.manifest.embedding or {}
    import ir_measures

    import rankwise

    config = {
        "index": index.location, "index_fingerprint": index.fingerprint,
        "num_documents": index.manifest.num_documents, "embedding_model": emb.get("model"),
        "reranker": reranker.name if reranker else None,
        "reranker_sha256": reranker.weights_sha256 if reranker else None,
        "groups": None if groups is None else sorted(groups),
        "first_stages": first_stages, "retrieve_k": retrieve_k, "rerank_k": rerank_k,
        "rerank_fusion": declared_fusion(reranker) if rerank_fusion is None else rerank_fusion,
        "seed": seed, "n_resamples": n_resamples, "confidence": 0.95,
        "holm_family": "per metric: every system compared with the baseline",
        "latency_note": (("a first stage and its '+reranker' variant share one first-stage call per query; "
                          "the first stage's total is that call's first-stage time")
                         + ("; the reranker's passage cache is emptied before each system, so each is timed cold"
                            if isinstance(reranker, PassageCaching) else "")) if reranker else
                        "total is Pipeline.search wall time per query",
        "versions": {"rankwise": rankwise.__version__, "ir_measures": ir_measures.__version__,
                     "python": platform.python_version()},
    }
    return EvaluationReport(
        dataset={"name": goldset.name, "counts": goldset.counts, "warnings": goldset.warnings},
        config=config, systems=systems, metrics=metrics, baseline=baseline, candidate=candidate,
        scores=scores, scores_ci95=cis, per_query=values, comparisons=comparisons,
        latency_ms={s: {stage: {**latency_percentiles(v), "mean": float(np.mean(v)), "n": len(v)}
                        for stage, v in samples[s].items()} for s in systems},
        latency_samples_ms=samples, queries=queries, rankings=rankings,
        cost={s: {"cpu_ms_per_query": float(np.mean(c["cpu_ms"])), "pairs_per_query": float(np.mean(c["pairs"]))}
              for s, c in costs.items()})


def _run_pipelines(goldset: PreparedGoldSet, first_stages: Sequence[FirstStageMethod], with_reranker: bool,
                   settings: PipelineSettings, top_results: int, progress: Progress | None, run: QueryRunner,
                   ) -> tuple[dict[str, dict[str, list[str]]], dict[str, dict[str, list[TopResult]]],
                              dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """Rankings, top results, per-stage latency samples and per-query costs (CPU ms, pairs scored) of every
    system, one search per query and first stage."""
    rankings: dict[str, dict[str, list[str]]] = {}
    tops: dict[str, dict[str, list[TopResult]]] = {}
    samples: dict[str, dict[str, list[float]]] = {}
    costs: dict[str, dict[str, list[float]]] = {}
    items = list(goldset.queries.items())
    for fs in first_stages:
        reranked = fs + RERANKED_SUFFIX
        names = [fs, reranked] if with_reranker else [fs]
        for name in names:
            rankings[name], tops[name], samples[name], costs[name] = {}, {}, {}, {}
        searched = run(replace(settings, first_stage=fs), [text for _, text in items])
        for done, ((qid, _), found) in enumerate(zip(items, searched, strict=True), start=1):
            response = found.response
            _add(costs[fs], "cpu_ms", found.first_stage_cpu_ms)
            _add(costs[fs], "pairs", 0.0)
            if with_reranker:
                _add(costs[reranked], "cpu_ms", found.total_cpu_ms)
                _add(costs[reranked], "pairs", float(found.pairs))
            labels = goldset.qrels[qid]
            first = sorted(response.results, key=lambda r: r.first_stage.rank)
            rankings[fs][qid] = [r.doc_id for r in first]
            tops[fs][qid] = [_top(r, labels, r.first_stage.rank, with_reranker=False) for r in first[:top_results]]
            timings = response.timings_ms
            _add(samples[fs], "first_stage", timings["first_stage"])
            if not with_reranker:
                _add(samples[fs], "total", timings["total"])
            else:
                _add(samples[fs], "total", timings["first_stage"])
                rankings[reranked][qid] = [r.doc_id for r in response.results]
                tops[reranked][qid] = [_top(r, labels, r.rank, with_reranker=True)
                                       for r in response.results[:top_results]]
                for stage, ms in timings.items():
                    _add(samples[reranked], stage, ms)
            if progress is not None:
                progress(names[-1], done, len(items))
    return rankings, tops, samples, costs


def _add(samples: dict[str, list[float]], stage: str, ms: float) -> None:
    samples.setdefault(stage, []).append(float(ms))


def _top(result: SearchResult, labels: dict[str, int], rank: int, *, with_reranker: bool) -> TopResult:
    rr = result.reranker if with_reranker else None
    return TopResult(rank=rank, doc_id=result.doc_id, title=result.title, label=labels.get(result.doc_id),
                     first_stage_rank=result.first_stage.rank, first_stage_score=result.first_stage.score,
                     reranker_score=rr.score if rr else None, reranker_logit=rr.raw_score if rr else None)


def _compare(goldset: PreparedGoldSet, values: dict[str, dict[str, dict[str, float]]],
             rankings: dict[str, dict[str, list[str]]], metrics: list[str], baseline: str, others: list[str],
             n_resamples: int, seed: int) -> list[Comparison]:
    qids = list(goldset.queries)
    tests: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in others}
    for metric in metrics:
        base = np.array([values[baseline][metric][q] for q in qids])
        for system in others:
            sys_values = np.array([values[system][metric][q] for q in qids])
            diff = sys_values - base
            base_mean, sys_mean = float(base.mean()), float(sys_values.mean())
            enough = len(qids) >= 2
            tests[system][metric] = {
                "baseline_mean": base_mean, "system_mean": sys_mean, "delta": sys_mean - base_mean,
                "relative_gain": (sys_mean - base_mean) / base_mean if base_mean > 0 else None,
                "ci95": bootstrap_ci(diff, n_resamples=n_resamples, seed=seed),
                "p_ttest": paired_t_test(sys_values, base) if enough else float("nan"),
                "p_randomization": randomization_test(sys_values, base, n_resamples=n_resamples, seed=seed)
                if enough else float("nan"),
                "wins": int((diff > TIE_TOLERANCE).sum()), "losses": int((diff < -TIE_TOLERANCE).sum()),
                "ties": int((np.abs(diff) <= TIE_TOLERANCE).sum()),
            }
        for kind in ("p_ttest", "p_randomization"):
            raw = [tests[s][metric][kind] for s in others]
            adjusted = holm(raw) if all(not math.isnan(p) for p in raw) else [float("nan")] * len(raw)
            for system, p in zip(others, adjusted, strict=True):
                tests[system][metric][f"{kind}_holm"] = p
    primary = metrics[0]
    comparisons = []
    for system in others:
        degraded = sorted(
            (DegradedQuery(query_id=q, query=goldset.queries[q], metric=primary,
                           baseline_value=values[baseline][primary][q], system_value=values[system][primary][q],
                           delta=values[system][primary][q] - values[baseline][primary][q],
                           relevant=[d for d, lab in goldset.qrels[q].items() if lab > 0],
                           system_top=rankings[system][q][:5])
             for q in qids if values[system][primary][q] - values[baseline][primary][q] < -TIE_TOLERANCE),
            key=lambda d: (d.delta, d.query_id))
        comparisons.append(Comparison(system=system, baseline=baseline,
                                      metrics={m: MetricComparison(**tests[system][m]) for m in metrics},
                                      degraded=degraded))
    return comparisons


def _json_safe(value: Any) -> Any:
    """Tuples → lists and NaN/inf → ``null``, so the output is strict JSON."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    atomic_write_text(path, text)
    return path

