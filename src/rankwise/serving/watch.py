"""What the server watches about itself between evaluations: label-free drift of its traffic.

Every answered search yields a few label-free signals (query length, out-of-vocabulary rate against the
index, first-stage top-1 score, reranker top-1 score and margin, rank changes; see
:mod:`rankwise.monitoring.drift`). They are logged with the request (so ``rankwise monitor drift`` can
compare any two windows of the query log later) and, when the server has a saved reference window
(``--drift-reference``), the most recent ``--drift-window`` requests are compared with it whenever
``/metrics`` is scraped (a few milliseconds on a worker thread) and exported as gauges: ``rankwise_drift_psi{signal}``,
``rankwise_drift_ks_pvalue{signal}`` and ``rankwise_drift_alarm{signal}`` (1 drift, 0 ok, −1 not enough
data — never a 0 that looks like "no drift" when there is no evidence either way).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rankwise.index import Index
from rankwise.monitoring.drift import DriftReference, QueryVocabulary, RollingWindow, query_signals
from rankwise.serving.metrics import ServingMetrics
from rankwise.types import SearchResponse

log = logging.getLogger("rankwise.serving")

_ALARM = {"drift": 1.0, "ok": 0.0, "not enough data": -1.0}


class DriftWatch:
    """Signals per answered search, a rolling window of them, and its comparison with a reference."""

    def __init__(self, index: Index, metrics: ServingMetrics, reference: Path | None, window: int) -> None:
        self.vocabulary = QueryVocabulary.from_index(index)
        self.metrics = metrics
        self.reference = DriftReference.load(reference) if reference is not None else None
        self.window = RollingWindow(window)

    def observe(self, query: str, response: SearchResponse) -> dict[str, float]:
        """The request's signals (logged with it), added to the rolling window."""
        signals = query_signals(query, response, self.vocabulary)
        if self.reference is not None:
            self.window.append(signals)
        return signals

    def update_gauges(self) -> None:
        """Compare the rolling window with the reference and set the gauges (run off the event loop)."""
        if self.reference is None:
            return
        report = self.reference.compare(self.window.snapshot())
        for signal in report.signals:
            self.metrics.drift_alarm.labels(signal.name).set(_ALARM[signal.status])
            if signal.psi is not None and signal.ks_pvalue is not None:
                self.metrics.drift_psi.labels(signal.name).set(signal.psi)
                self.metrics.drift_ks_pvalue.labels(signal.name).set(signal.ks_pvalue)
        if report.alarm:
            log.warning("traffic drift: %s", report.summary())
