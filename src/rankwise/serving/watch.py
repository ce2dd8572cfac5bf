"""What the server watches about itself: label-free drift of its traffic, and (``--monitor-every``) the
same gold-set evaluation ``rankwise monitor run`` does, on a schedule, with its alarm state as metrics.

Every answered search yields a few label-free signals (query length, out-of-vocabulary rate against the
index, first-stage top-1 score, reranker top-1 score and margin, rank changes; see
:mod:`rankwise.monitoring.drift`). They are logged with the request (so ``rankwise monitor drift`` can
compare any two windows of the query log later) and, when the server has a saved reference window
(``--drift-reference``), the most recent ``--drift-window`` requests are compared with it whenever
``/metrics`` is scraped (a few milliseconds on a worker thread) and exported as gauges: ``rankwise_drift_psi{signal}``,
``rankwise_drift_ks_pvalue{signal}`` and ``rankwise_drift_alarm{signal}`` (1 drift, 0 ok, −1 not enough
data — never a 0 that looks like "no drift" when there is no evidence either way).

The scheduled evaluation runs on its own thread with its own copy of the reranker (the batcher's copy is
only ever touched by the batcher's thread), resolves ``--reranker`` through the registry at each run (so
it measures the version production serves then), appends the record to the monitoring history and checks
it against the previous run with the same rule as ``rankwise monitor check``. It competes with traffic for
CPU while it runs: on a small machine, start the server so that the interval falls in quiet hours, or
schedule ``rankwise monitor run`` outside (cron, a systemd timer) instead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from rankwise.index import Index
from rankwise.monitoring.drift import DriftReference, QueryVocabulary, RollingWindow, query_signals
from rankwise.options import PipelineSettings
from rankwise.rerank.loading import LoadOptions
from rankwise.serving.config import MonitorSettings
from rankwise.serving.metrics import ServingMetrics
from rankwise.types import SearchResponse

if TYPE_CHECKING:
    from rankwise.evaluation.goldset import PreparedGoldSet

log = logging.getLogger("rankwise.serving")

_ALARM = {"drift": 1.0, "ok": 0.0, "not enough data": -1.0}


class DriftWatch:
    """Signals per answered search, a rolling window of them, and its comparison with a reference."""

    def __init__(self, index: Index, metrics: ServingMetrics, settings: MonitorSettings) -> None:
        self.vocabulary = QueryVocabulary.from_index(index)
        self.metrics = metrics
        reference = settings.drift_reference
        self.reference = DriftReference.load(reference) if reference is not None else None
        self.window = RollingWindow(settings.drift_window)

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
            if signal.pvalue is not None:
                self.metrics.drift_pvalue.labels(signal.name, signal.test).set(signal.pvalue)
        if report.alarm:
            log.warning("traffic drift: %s", report.summary())


_STATUS = {"alarm": 1.0, "ok": 0.0, "inconclusive": -1.0}
MONITOR_NAME = "serve"


class ScheduledMonitor:
    """Every ``settings.every_s``: evaluate the serving configuration on the gold set, record, check, export.

    The serving configuration is what production answers searches with: the ``reranker`` spec (re-resolved
    at each run), loaded as the server loads it (``load``), over the server's ``pipeline`` settings (all set,
    as :class:`~rankwise.serving.config.ServeConfig` fills them in).
    """

    def __init__(self, settings: MonitorSettings, index: Index, metrics: ServingMetrics, *, reranker: str | None,
                 load: LoadOptions, pipeline: PipelineSettings) -> None:
        from rankwise.evaluation.goldset import GoldSet
        from rankwise.monitoring.histories import open_history

        assert settings.every_s is not None and settings.goldset is not None and settings.history is not None
        self.every_s = settings.every_s
        self.history = settings.history
        self.reranker = reranker
        self.load = load
        self.pipeline = pipeline
        self.metrics = metrics
        self.goldset = GoldSet.load(settings.goldset)
        #: the index evaluated and the gold set prepared on it, replaced together when the index changes
        self.target = self.prepared_for(index)
        open_history(self.history).close()  # a bad path or store stops the server now, not in a day
        metrics.monitor_alarm.set(_STATUS["inconclusive"])  # until a run says otherwise
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rankwise-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def prepared_for(self, index: Index) -> tuple[Index, PreparedGoldSet]:
        """A new index version and the gold set judged on the documents it has: assigned to :attr:`target`
        as one value, so a run reads both of the same version."""
        return index, self.goldset.prepare(known_documents=set(index.passage_doc_ids))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)  # a run in progress is abandoned: it appends nothing until it completes

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.run_once()

    def run_once(self) -> None:
        """One evaluation → record → check, with its outcome in the metrics (failures included)."""
        from rankwise.monitoring.check import check
        from rankwise.monitoring.histories import open_history
        from rankwise.monitoring.run import monitor_run, resolve_reranker

        try:
            reranker = resolve_reranker(self.reranker or "none", self.load)
            index, gold = self.target
            record = monitor_run(index, gold, name=MONITOR_NAME, settings=self.pipeline, reranker=reranker)
            with open_history(self.history) as history:
                history.append(record)
                result = check(history, name=MONITOR_NAME)
        except Exception:  # counted and logged; the next interval tries again
            log.exception("scheduled evaluation failed")
            self.metrics.monitor_runs.labels("failed").inc()
            return
        for metric, value in record.metrics.items():
            self.metrics.monitor_metric.labels(metric).set(value)
        self.metrics.monitor_alarm.set(_STATUS[result.status])
        self.metrics.monitor_last_run.set(time.time())
        self.metrics.monitor_runs.labels(result.status).inc()
        (log.warning if result.status == "alarm" else log.info)("scheduled evaluation: %s", result.summary())
