"""Measure retrieval: gold sets, metrics (ir-measures), side-by-side comparison with paired significance,
reports (terminal, Markdown, JSON, self-contained HTML), CI gates, and labelling sheets for building gold
sets from production queries.

>>> from rankwise.evaluation import GoldSet, evaluate
>>> gold = GoldSet.from_beir("beir/scifact", "test").prepare(known_documents=set(index.passage_doc_ids))
>>> report = evaluate(index, gold, first_stages=["bm25", "dense", "hybrid"], reranker=reranker)
>>> report.scores["hybrid+reranker"]["nDCG@10"], report.comparison("hybrid+reranker").metrics["nDCG@10"]

Names are imported on first use (PEP 562), so ``rankwise --help`` does not pay for scipy and the
retrieval stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankwise.evaluation.compare import EvaluationReport, evaluate
    from rankwise.evaluation.errors import EvaluationError
    from rankwise.evaluation.gates import MetricGate, evaluate_gates
    from rankwise.evaluation.goldset import GoldSet, Judgement, LabelScale, PreparedGoldSet
    from rankwise.evaluation.metrics import DEFAULT_METRICS, parse_metrics

_EXPORTS = {
    "EvaluationReport": "compare", "evaluate": "compare", "EvaluationError": "errors", "MetricGate": "gates",
    "evaluate_gates": "gates", "GoldSet": "goldset", "Judgement": "goldset", "LabelScale": "goldset",
    "PreparedGoldSet": "goldset", "DEFAULT_METRICS": "metrics", "parse_metrics": "metrics",
}
__all__ = [
    "DEFAULT_METRICS", "EvaluationError", "EvaluationReport", "GoldSet", "Judgement", "LabelScale", "MetricGate",
    "PreparedGoldSet", "evaluate", "evaluate_gates", "parse_metrics",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rankwise.evaluation' has no attribute '{name}'")
    return getattr(importlib.import_module(f"rankwise.evaluation.{_EXPORTS[name]}"), name)
