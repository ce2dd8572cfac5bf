"""Scheduled evaluation with drift alarms: run the serving configuration on a gold set every month (or
week), keep every run in an append-only history, and alarm when a metric dropped by more than allowed
*and* by more than noise.

>>> from rankwise.monitoring import SQLiteMonitorHistory, monitor_run, resolve_reranker
>>> from rankwise.options import PipelineSettings
>>> from rankwise.monitoring.check import check
>>> record = monitor_run(index, prepared_goldset, settings=PipelineSettings(first_stage="hybrid"),
...                      reranker=resolve_reranker("production"))
>>> with SQLiteMonitorHistory("monitor.sqlite") as history:
...     history.append(record)
...     result = check(history, reference="previous", metric="nDCG@5", max_drop=0.10)
>>> result.status, result.summary(), result.likely_causes

Names are imported on first use (PEP 562), so ``rankwise --help`` does not pay for scipy, matplotlib and
the retrieval stack. :func:`~rankwise.monitoring.check.check` is imported from its module: a lazily exported
``check`` would be replaced by the submodule of the same name the first time that submodule is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rankwise.monitoring.check import (
        AlarmRule,
        CheckResult,
        QueryChange,
        SliceCheck,
        Verdict,
        likely_causes,
    )
    from rankwise.monitoring.history import MonitorError, MonitorHistory, MonitorRecord, SQLiteMonitorHistory
    from rankwise.monitoring.html import to_html
    from rankwise.monitoring.run import (
        DEFAULT_MONITOR_METRICS,
        ResolvedReranker,
        monitor_run,
        resolve_reranker,
    )
    from rankwise.monitoring.slices import read_query_tags

_EXPORTS = {
    "AlarmRule": "check", "CheckResult": "check", "QueryChange": "check", "SliceCheck": "check",
    "Verdict": "check", "likely_causes": "check", "MonitorError": "history", "MonitorHistory": "history",
    "MonitorRecord": "history", "SQLiteMonitorHistory": "history", "to_html": "html",
    "DEFAULT_MONITOR_METRICS": "run", "ResolvedReranker": "run", "monitor_run": "run",
    "resolve_reranker": "run", "read_query_tags": "slices",
}
__all__ = [
    "DEFAULT_MONITOR_METRICS", "AlarmRule", "CheckResult", "MonitorError", "MonitorHistory", "MonitorRecord",
    "QueryChange", "ResolvedReranker", "SQLiteMonitorHistory", "SliceCheck", "Verdict", "likely_causes",
    "monitor_run", "read_query_tags", "resolve_reranker", "to_html",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rankwise.monitoring' has no attribute '{name}'")
    return getattr(importlib.import_module(f"rankwise.monitoring.{_EXPORTS[name]}"), name)
