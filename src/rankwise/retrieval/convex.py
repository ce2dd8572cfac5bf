"""Convex combination of min-max normalised scores.

Bruch, Gai & Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS 2023: a tuned
convex combination of normalised scores can beat RRF. Each run is min-max normalised to 0..1 *within the
query* before weighting; a document missing from a run gets 0 from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def min_max(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {k: (v - low) / span if span > 0 else 1.0 for k, v in scores.items()}


def convex_combination(runs: Sequence[Mapping[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """``sum_i w_i * minmax(run_i)[doc]``; weights must be non-negative and sum to 1."""
    if len(runs) != len(weights):
        raise ValueError("one weight per run is required")
    if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError("convex weights must be non-negative and sum to 1")
    fused: dict[str, float] = {}
    for run, weight in zip(runs, weights, strict=True):
        for key, value in min_max(run).items():
            fused[key] = fused.get(key, 0.0) + weight * value
    return fused
