"""Two pipelines on one query, side by side: which documents moved, which only one found, and how much
the two orders agree.

A pipeline is a first stage, alone or followed by the served reranker (both answered by the server's
own ``/v1/search``), or followed by a registry version the server does not serve (``hybrid+v3``): that
one is loaded here, on demand, and reranks the same first stage in process — how a candidate would
change the answers, before any gate.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Collection
from typing import Any

from scipy.stats import kendalltau

from rankwise.errors import QueryError
from rankwise.options import FIRST_STAGE_METHODS
from rankwise.rerank.base import Reranker
from rankwise.serving.state import ServingState

#: what the compare page offers: a first stage alone, or followed by the served reranker
PIPELINES = ("hybrid+reranker", "bm25+reranker", "dense+reranker", "hybrid", "bm25", "dense")


def version_of(spec: str) -> tuple[str, str] | None:
    """(first stage, registry version) of a spec such as ``hybrid+v3``; None for the served pipelines."""
    stage, _, rest = spec.partition("+")
    if spec in PIPELINES or stage not in FIRST_STAGE_METHODS or not rest:
        return None
    return stage, rest


def pipeline_request(spec: str, query: str, k: int, *, with_reranker: bool) -> dict[str, Any]:
    """The /v1/search body of a served pipeline ``spec`` (``hybrid`` or ``hybrid+reranker``)."""
    stage, _, rest = spec.partition("+")
    if spec not in PIPELINES:
        raise QueryError(f"unknown pipeline '{spec}'; choose one of {', '.join(PIPELINES)}, or a first stage "
                         "with a registry version (hybrid+v3)")
    if rest and not with_reranker:
        raise QueryError("this server has no reranker: compare first stages (bm25, dense, hybrid)")
    body: dict[str, Any] = {"query": query, "k": k, "first_stage": stage}
    if not rest and with_reranker:
        body["rerank_k"] = 0  # the first stage's own order
    return body


def compare_rankings(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Rows for both result lists, each marked ``moved`` (in both, at another rank, with the change seen
    from A) or ``only`` (not in the other's list), and the lists' agreement: overlap and Kendall's tau
    over the documents both returned."""
    rank_a = {r["doc_id"]: r["rank"] for r in a["results"]}
    rank_b = {r["doc_id"]: r["rank"] for r in b["results"]}

    def rows(results: list[dict[str, Any]], other: dict[str, int]) -> list[dict[str, Any]]:
        out = []
        for r in results:
            there = other.get(r["doc_id"])
            out.append({**r, "other_rank": there, "state": "only" if there is None else
                        ("moved" if there != r["rank"] else "same"), "shift": None if there is None else there - r["rank"]})
        return out

    shared = sorted(set(rank_a) & set(rank_b))
    tau = None
    if len(shared) >= 2:
        value = kendalltau([rank_a[d] for d in shared], [rank_b[d] for d in shared]).statistic
        tau = None if math.isnan(value) else float(value)  # NaN when one side has no order to compare
    return {"a": rows(a["results"], rank_b), "b": rows(b["results"], rank_a), "overlap": len(shared),
            "size": max(len(rank_a), len(rank_b)), "tau": tau,
            "moved": sum(1 for d in shared if rank_a[d] != rank_b[d]),
            "provenance": (a.get("provenance", {}), b.get("provenance", {}))}


class VersionRankings:
    """Rankings of registry versions the server does not serve, loaded on demand as the server loads models
    (at most :attr:`capacity` kept, the least recently used dropped), for the compare page."""

    capacity = 2

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Reranker] = OrderedDict()

    def reranker(self, version: str) -> Reranker:
        from rankwise.rerank.loading import load_reranker

        with self._lock:
            if version not in self._loaded:
                loaded = load_reranker(version, self.state.config.load)
                if loaded is None:
                    raise QueryError(f"'{version}' names no reranker")
                self._loaded[version] = loaded
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(version)
            return self._loaded[version]

    def search(self, spec: str, query: str, k: int, groups: Collection[str] | None) -> dict[str, Any]:
        """The answer of ``spec`` (``hybrid+v3``) as ``/v1/search`` shapes it, over the documents ``groups``
        may see (None: all)."""
        from rankwise.pipeline import Pipeline

        parsed = version_of(spec)
        if parsed is None or self.state.index is None:
            raise QueryError(f"'{spec}' is not a first stage with a registry version, or the server has no index")
        stage, version = parsed
        pipeline = Pipeline(self.state.index, self.reranker(version), first_stage=stage)  # type: ignore[arg-type]
        return pipeline.search(query, k=k, groups=groups).to_dict()
