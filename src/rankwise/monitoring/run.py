"""One scheduled evaluation run: the serving configuration on a gold set, as a :class:`MonitorRecord`.

A monitor watches what users get, so it evaluates exactly one system — the first stage, and the
reranker the registry serves under the name given (``production`` is resolved to its version id and
weights digest *before* loading, and that version is what gets loaded, so the record names the model that
was measured even if someone promotes another one mid-run). The evaluation itself is
:func:`rankwise.evaluation.compare.evaluate`, so a monitor's numbers are the same numbers ``rankwise eval``
prints for that system.

:func:`monitor_run` only measures and returns the record; the caller appends it to a history. Nothing is
written while the run is under way, so an interrupted or failed run leaves no trace in the history.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rankwise.clock import utc_now
from rankwise.evaluation.compare import RERANKED_SUFFIX, Progress, evaluate
from rankwise.evaluation.goldset import PreparedGoldSet
from rankwise.evaluation.metrics import parse_metrics
from rankwise.evaluation.query_runs import QueryRunner
from rankwise.index import Index
from rankwise.index.location import in_postgres
from rankwise.monitoring.history import DEFAULT_NAME, MonitorError, MonitorRecord, new_record_id
from rankwise.monitoring.slices import slice_means, slice_members
from rankwise.options import DEFAULT_PIPELINE, PipelineSettings, no_reranker
from rankwise.registry import Registry, names_registry
from rankwise.rerank.base import BackendReporting, Reranker, declared_fusion
from rankwise.rerank.loading import LoadOptions, load_reranker

#: what a RAG context of a few passages needs (nDCG@5), the BEIR standard (nDCG@10), whether the answer is
#: among the candidates at all (R@20) and how early the first relevant passage comes (RR@10, i.e. MRR@10)
DEFAULT_MONITOR_METRICS: tuple[str, ...] = ("nDCG@5", "nDCG@10", "R@20", "RR@10")
#: the record keeps no confidence intervals; keep the bootstrap ``evaluate`` runs anyway cheap
_CI_RESAMPLES = 1000


@dataclass(frozen=True, slots=True)
class ResolvedReranker:
    """A loaded reranker with what it was asked as (``spec``) and what that resolved to (``version``).

    ``version`` is the registry version id for a registry name (``production`` → ``v3``), otherwise the
    model directory or hub id; the reranker's own ``weights_sha256`` identifies the weights either way.
    """

    spec: str
    version: str
    reranker: Reranker


def resolve_reranker(spec: str, options: LoadOptions | None = None) -> ResolvedReranker | None:
    """Load the reranker ``spec`` names (``None`` for ``none``), pinning a registry alias to one version."""
    if no_reranker(spec):
        return None
    text = spec.strip()
    options = options or LoadOptions()
    if names_registry(text):
        store = Registry(options.registry)
        version = store.get(text).version  # verified here; loading by id cannot race a promotion
        label = version if text == version else f"{version} ({text})"
        ranker = load_reranker(version, options, registry=store, name=label)
    else:
        version = str(Path(text).resolve()) if Path(text).is_dir() else text
        ranker = load_reranker(text, options)
    assert ranker is not None  # the spec is not 'none'
    return ResolvedReranker(text, version, ranker)


def goldset_fingerprint(goldset: PreparedGoldSet) -> str:
    """sha256 of the evaluated queries' texts and judgements, in a canonical form (order-independent)."""
    entries = {q: _query_entry(goldset, q) for q in sorted(goldset.queries)}
    return hashlib.sha256(_canonical(entries)).hexdigest()


def query_digests(goldset: PreparedGoldSet) -> dict[str, str]:
    """A short digest of each query's text and judgements: equal digests mean the same yardstick."""
    return {q: hashlib.sha256(_canonical(_query_entry(goldset, q))).hexdigest()[:16] for q in goldset.queries}


def _query_entry(goldset: PreparedGoldSet, qid: str) -> dict[str, object]:
    return {"query": goldset.queries[qid], "qrels": dict(sorted(goldset.qrels[qid].items()))}


def _canonical(data: object) -> bytes:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def monitor_run(
    index: Index,
    goldset: PreparedGoldSet,
    *,
    name: str = DEFAULT_NAME,
    settings: PipelineSettings | None = None,
    reranker: ResolvedReranker | None = None,
    metrics: Sequence[str] = DEFAULT_MONITOR_METRICS,
    slice_by: Sequence[str] = (),
    tags: Mapping[str, Sequence[str]] | None = None,
    progress: Progress | None = None,
    run_queries: QueryRunner | None = None,
) -> MonitorRecord:
    """Evaluate the serving configuration on ``goldset`` and return the run's record (not yet stored).

    ``settings``: the served :class:`~rankwise.options.PipelineSettings` (unset ones are
    :data:`~rankwise.options.DEFAULT_PIPELINE`'s). ``slice_by``: document metadata keys to slice by (checked before anything runs); ``tags``: each
    query's gold-set tags (:func:`~rankwise.monitoring.slices.read_query_tags`). ``run_queries``: where the
    queries run (see :func:`~rankwise.evaluation.compare.evaluate`).
    """
    if not name.strip():
        raise MonitorError("the monitor name is empty; pass --name with a name such as 'default' or "
                           "'prod-hybrid'")
    chosen = (settings or PipelineSettings()).over(DEFAULT_PIPELINE)
    fs = chosen.first_stage
    assert fs is not None and chosen.retrieve_k is not None and chosen.rerank_k is not None
    ranker = reranker.reranker if reranker is not None else None
    fusion = chosen.rerank_fusion or declared_fusion(ranker)
    metric_names = parse_metrics(metrics)
    # computed first: a bad --slice-by key fails before minutes of evaluation
    members = slice_members(index, goldset, slice_by=slice_by, tags=tags)
    system = fs + RERANKED_SUFFIX if ranker is not None else fs
    started_at = utc_now()
    wall = time.perf_counter()
    report = evaluate(index, goldset, first_stages=[fs], reranker=ranker, metrics=metric_names,
                      baseline=system, settings=replace(chosen, first_stage=None, rerank_fusion=fusion),
                      n_resamples=_CI_RESAMPLES, progress=progress, run_queries=run_queries)
    wall = time.perf_counter() - wall
    per_query = report.per_query[system]
    n = len(goldset.queries)
    cost = report.cost[system]  # the served path's CPU per query, measured by the evaluation itself
    total = report.latency_ms[system]["total"]
    emb = index.manifest.embedding or {}
    return MonitorRecord(
        id=new_record_id(), name=name.strip(), time=started_at,
        goldset_name=goldset.name, goldset_fingerprint=goldset_fingerprint(goldset), num_queries=n,
        index_path=index.location if in_postgres(index.location) else str(Path(index.location).resolve()),
        index_fingerprint=index.fingerprint,
        num_documents=index.manifest.num_documents,
        embedding_model=emb.get("model"), embedding_sha256=emb.get("sha256"),
        first_stage=fs, retrieve_k=chosen.retrieve_k, rerank_k=chosen.rerank_k, rerank_fusion=fusion,
        backend=_backend(ranker),
        reranker=reranker.spec if reranker else None, reranker_version=reranker.version if reranker else None,
        reranker_sha256=ranker.weights_sha256 if ranker else None,
        metrics=dict(report.scores[system]), per_query=per_query,
        query_texts=dict(goldset.queries), query_digests=query_digests(goldset),
        slices=slice_means(per_query, members), slice_members=members,
        latency={p: total[p] for p in ("p50", "p95", "p99")},
        cost={"pairs_scored": round(cost["pairs_per_query"] * n), "cpu_ms_per_query": cost["cpu_ms_per_query"],
              "wall_seconds": wall},
        rankwise_version=str(report.config["versions"]["rankwise"]),
    )


def _backend(ranker: Reranker | None) -> str:
    """The concrete backend the reranker ran on (``auto`` resolved), ``custom`` for a reranker that does not
    declare one, ``none`` without a reranker."""
    if ranker is None:
        return "none"
    return ranker.backend_decision.backend if isinstance(ranker, BackendReporting) else "custom"
