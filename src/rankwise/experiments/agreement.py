"""How differently a shadow model ranks the candidates production ranked, and how good a ranking is.

A shadow model reranks the same candidates without showing its list, so the only per-request evidence before
feedback arrives is *disagreement*: a candidate that agrees everywhere cannot change what users see, one
that disagrees in the top 5 can. Three views of it:

* Kendall's tau-b between the two rankings (Kendall, "The treatment of ties in ranking problems",
  Biometrika 33, 1945), computed by scipy: 1 for the same order, −1 for the reverse;
* the overlap of the two top-``k`` sets, which is what a user or an LLM context actually receives;
* the documents that moved most, to read when tau is low.

Once feedback judges some of a request's documents, :func:`ndcg_at_k` scores each model's ranking of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from rankwise.experiments.config import ExperimentError


@dataclass(frozen=True, slots=True)
class Agreement:
    """Rank agreement of two rankings of one candidate set (ranks are 1-based)."""

    kendall_tau: float | None  # tau-b; None with fewer than 2 documents
    top_overlap: float  # |top-k(production) ∩ top-k(shadow)| / min(k, n)
    #: ``(doc_id, production_rank, shadow_rank)``, largest move first; a rank of n + 1 means "not ranked"
    largest_moves: tuple[tuple[str, int, int], ...]

    def summary(self) -> str:
        tau = "n/a" if self.kendall_tau is None else f"{self.kendall_tau:+.3f}"
        moves = ", ".join(f"{doc} {p}→{s}" for doc, p, s in self.largest_moves) or "none"
        return f"Kendall tau {tau} · top overlap {self.top_overlap:.0%} · largest moves: {moves}"


def agreement(production: Sequence[str], shadow: Sequence[str], top: int = 5, moves: int = 5) -> Agreement:
    """Compare two rankings (document ids, best first) of the same candidates.

    Tau-b is computed over the union of both lists; a document missing from one list is placed, tied with
    the other missing ones, just below that list's last document (rank n + 1), so dropping a document
    counts as demoting it rather than being ignored. ``top_overlap`` divides by ``min(top, n)`` with ``n``
    the shorter list's length — the most documents the two top lists could share — and is 1.0 for two empty
    lists (nothing to disagree on). ``largest_moves`` lists at most ``moves`` documents whose rank changed,
    largest change first (ties: better production rank first).
    """
    if top < 1 or moves < 0:
        raise ExperimentError(f"agreement needs top ≥ 1 and moves ≥ 0, got top {top} and moves {moves}")
    prod_rank = _ranks(production, "production")
    shadow_rank = _ranks(shadow, "shadow")
    union = list(dict.fromkeys([*production, *shadow]))
    x = [prod_rank.get(doc, len(production) + 1) for doc in union]
    y = [shadow_rank.get(doc, len(shadow) + 1) for doc in union]
    tau: float | None = None
    if len(union) >= 2:
        value = float(stats.kendalltau(x, y, variant="b").statistic)
        tau = None if math.isnan(value) else value  # NaN when one side has every document tied
    shortest = min(len(production), len(shadow))
    cut = min(top, shortest)
    overlap = len(set(production[:cut]) & set(shadow[:cut])) / cut if cut else 1.0
    changed = sorted(((doc, p, s) for doc, p, s in zip(union, x, y, strict=True) if p != s),
                     key=lambda move: (-abs(move[1] - move[2]), move[1]))
    return Agreement(tau, overlap, tuple(changed[:moves]))


def dcg_at_k(ranking: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    """Discounted cumulative gain of the first ``k`` documents (Järvelin & Kekäläinen, "Cumulated gain-based
    evaluation of IR techniques", ACM TOIS 20(4), 2002): ``Σ gain(d_i) / log2(i + 1)``, unjudged gain 0.

    The linear gain and log2 discount are trec_eval's (and so ir-measures' ``nDCG@k``, which
    :mod:`rankwise.evaluation.metrics` uses for gold sets); it is computed here because gains derived from
    feedback are fractional (e.g. a click-through rate), while trec_eval accepts integer labels only.
    """
    if k < 1:
        raise ExperimentError(f"a DCG cutoff must be at least 1, got {k}")
    _ranks(ranking, "ranking")
    values = np.array([_gain(gains, doc) for doc in ranking[:k]], dtype=np.float64)
    return float((values / np.log2(np.arange(2, values.size + 2))).sum())


def ndcg_at_k(ranking: Sequence[str], gains: Mapping[str, float], k: int) -> float:
    """DCG@k divided by the DCG@k of the ideal ordering of every judged document (trec_eval's normalisation:
    judged documents the ranking missed still count in the ideal). 0.0 when no document has a positive gain.
    """
    actual = dcg_at_k(ranking, gains, k)
    ideal_order = sorted((doc for doc in gains if _gain(gains, doc) > 0), key=lambda doc: -_gain(gains, doc))
    ideal = dcg_at_k(ideal_order, gains, k) if ideal_order else 0.0
    return actual / ideal if ideal > 0 else 0.0


def _gain(gains: Mapping[str, float], doc: str) -> float:
    try:
        gain = float(gains.get(doc, 0.0))
    except (TypeError, ValueError):
        raise ExperimentError(f"the gain of document '{doc}' must be a number, got {gains.get(doc)!r}") \
            from None
    if not gain >= 0.0 or math.isinf(gain):
        raise ExperimentError(f"the gain of document '{doc}' must be a finite number ≥ 0, got {gain}")
    return gain


def _ranks(ranking: Sequence[str], what: str) -> dict[str, int]:
    """``{doc_id: 1-based rank}``; a document listed twice is an error (its rank would be ambiguous)."""
    ranks: dict[str, int] = {}
    for rank, doc in enumerate(ranking, start=1):
        if doc in ranks:
            raise ExperimentError(f"the {what} lists document '{doc}' twice (ranks {ranks[doc]} and {rank})")
        ranks[doc] = rank
    return ranks
