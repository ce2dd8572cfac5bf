"""Reciprocal rank fusion.

Cormack, Clarke & Büttcher, "Reciprocal Rank Fusion outperforms Condorcet and individual Rank Learning
Methods", SIGIR 2009. Each list contributes ``1 / (k + rank)``; ``k = 60`` is the paper's constant. RRF
needs no score calibration between BM25 and cosine similarity, which is why it is the default.
"""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k: int = RRF_K) -> dict[str, float]:
    """Fuse ranked id lists (best first) into ``{id: fused score}``; higher is better."""
    if k < 0:
        raise ValueError("RRF constant k must be >= 0")
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return fused
