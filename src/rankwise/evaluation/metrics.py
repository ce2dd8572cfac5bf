"""Retrieval metrics, computed by ir-measures (MacAvaney et al., ECIR 2022) — never hand-rolled.

Metric names are ir-measures' own: ``nDCG@10``, ``P@5``, ``R@20``, ``RR@10``, ``AP`` (``MAP`` is accepted
and reported as ``AP``: the per-query value is AP, its mean over queries is MAP). ir-measures delegates to
pytrec_eval (trec_eval's C code), so values match trec_eval on the same run and qrels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import ir_measures
import numpy as np
from ir_measures import Measure

from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.runs import Qrels, Run

#: nDCG@5, P@5 and R@20 for a RAG context of a few passages, plus nDCG@10, the BEIR standard.
DEFAULT_METRICS: tuple[str, ...] = ("nDCG@5", "P@5", "R@20", "nDCG@10")
_EXAMPLES = "nDCG@10, P@5, R@20, RR@10, AP (MAP)"

#: ``{metric name: {query_id: value}}``
PerQuery = dict[str, dict[str, float]]


def parse_metric(spec: str) -> Measure:
    """One ir-measures measure from its name, with a one-line error for unknown or malformed names."""
    text = spec.strip()
    if not text:
        raise EvaluationError(f"empty metric name; use ir_measures names such as {_EXAMPLES}")
    try:
        return ir_measures.parse_measure(text)
    except (NameError, ValueError, TypeError, SyntaxError):
        raise EvaluationError(f"unknown metric '{text}'; use ir_measures names such as {_EXAMPLES}") from None


def parse_metrics(specs: str | Iterable[str]) -> list[str]:
    """Canonical metric names from ``"nDCG@10,P@5"`` or a list; duplicates removed, order kept."""
    items = specs.split(",") if isinstance(specs, str) else [p for s in specs for p in s.split(",")]
    names = list(dict.fromkeys(str(parse_metric(item)) for item in items if item.strip()))
    if not names:
        raise EvaluationError(f"no metrics given; use ir_measures names such as {_EXAMPLES}")
    return names


def required_depth(metrics: Sequence[str]) -> int | None:
    """The deepest rank cutoff among ``metrics`` (``None`` when none has a cutoff, e.g. ``AP``)."""
    cutoffs = [int(c) for m in metrics if (c := parse_metric(m).params.get("cutoff")) is not None]
    return max(cutoffs) if cutoffs else None


def per_query(metrics: Sequence[str], qrels: Qrels, run: Run) -> PerQuery:
    """Each metric's value on every query of ``qrels``.

    A query with no retrieved document scores 0 and stays in the mean (which is what ir-measures 0.4
    does too; the explicit zero keeps it true whichever provider computes the values). Queries of the run
    that are not in ``qrels`` are ignored.
    """
    measures = [parse_metric(m) for m in metrics]
    values: PerQuery = {m: dict.fromkeys(qrels, 0.0) for m in metrics}
    names = {str(measure): name for measure, name in zip(measures, metrics, strict=True)}
    for row in ir_measures.iter_calc(measures, qrels, {q: docs for q, docs in run.items() if q in qrels}):
        values[names[str(row.measure)]][row.query_id] = float(row.value)
    return values


def mean(values: Mapping[str, float]) -> float:
    """The aggregate over queries (every metric here is averaged over queries, as trec_eval does)."""
    return float(np.mean(list(values.values()))) if values else float("nan")
