"""Two pipelines on one query, side by side: which documents moved, which only one found, and how much
the two orders agree."""

from __future__ import annotations

import math
from typing import Any

from scipy.stats import kendalltau

from rankwise.errors import QueryError

#: what the compare page offers: a first stage alone, or followed by the served reranker
PIPELINES = ("hybrid+reranker", "bm25+reranker", "dense+reranker", "hybrid", "bm25", "dense")


def pipeline_request(spec: str, query: str, k: int, *, with_reranker: bool) -> dict[str, Any]:
    """The /v1/search body of pipeline ``spec`` (``hybrid`` or ``hybrid+reranker``)."""
    stage, _, rest = spec.partition("+")
    if spec not in PIPELINES:
        raise QueryError(f"unknown pipeline '{spec}'; choose one of {', '.join(PIPELINES)}")
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
