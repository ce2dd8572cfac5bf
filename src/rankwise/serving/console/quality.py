"""The quality page's data: every monitor's runs as a chart with its alarms, and per-slice means of the
latest run, read from the server's monitoring history (``--monitor-history`` or the shared store)."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from rankwise.errors import RankwiseError
from rankwise.serving.console.svg import Point, line_chart
from rankwise.serving.state import ServingState

#: plotted when the runs have it, else the runs' first metric
PREFERRED_METRIC = "nDCG@10"


def quality_view(state: ServingState, name: str | None, metric: str | None,
                 drill: tuple[str, str] | None = None) -> dict[str, Any]:
    """The chosen monitor's runs as a chart; ``drill`` (slice, value): also that slice's mean over the runs."""
    where = state.config.monitor.history
    if where is None:
        return {"problem": "this server records no monitoring history: start it with --monitor-history "
                           "(and --monitor-every with --monitor-goldset for scheduled evaluations)"}
    from rankwise.monitoring.check import statuses
    from rankwise.monitoring.histories import open_history

    try:
        with open_history(where, create=False) as history:
            names = history.names()
            if not names:
                return {"problem": "no evaluation has been recorded yet"}
            chosen = name if name in names else names[0]
            records = history.records(chosen)
    except RankwiseError as err:
        return {"problem": str(err)}
    metrics = sorted({m for r in records for m in r.metrics})
    if not metrics:
        return {"problem": f"the runs of '{chosen}' recorded no metrics"}
    shown = metric if metric in metrics else (PREFERRED_METRIC if PREFERRED_METRIC in metrics else metrics[0])
    judged = statuses(records, metric=shown)
    points = [Point(r.time[:16].replace("T", " "), r.metrics[shown],
                    f"{r.system}, {r.num_queries} queries — {status}", alarm=status == "alarm")
              for r, (_, status) in zip(records, judged, strict=True)
              if shown in r.metrics and np.isfinite(r.metrics[shown])]
    latest = records[-1]
    slices = [{"slice": s, "value": v, "n": int(stats.get("n", 0)), "mean": stats.get(shown)}
              for s, values in latest.slices.items() for v, stats in values.items()]
    slice_chart = None
    if drill is not None:
        part, value = drill
        runs = [(r, r.slices.get(part, {}).get(value, {})) for r in records]
        slice_chart = line_chart([Point(r.time[:16].replace("T", " "), float(stats[shown]),
                                        f"{int(stats.get('n', 0))} queries of this slice")
                                  for r, stats in runs if shown in stats],
                                 title=f"{shown} of slice {part} = {value} in every run of '{chosen}'")
    return {"names": names, "name": chosen, "metrics": metrics, "metric": shown, "drill": drill,
            "slice_chart": slice_chart,
            "chart": line_chart(points, title=f"{shown} of every run of '{chosen}' (alarms in red)"),
            "alarms": sum(1 for p in points if p.alarm), "runs": len(records), "latest": latest,
            "latest_status": judged[-1][1], "slices": slices}


#: the query log's most recent search requests the drift charts cover, and how many windows they make
DRIFT_REQUESTS = 2000
DRIFT_WINDOWS = 20
MIN_WINDOW = 10


def drift_view(state: ServingState) -> dict[str, Any]:
    """Each drift signal's mean over consecutive windows of recent search traffic, with the reference
    window's 10th–90th percentile band when the server has ``--drift-reference``."""
    if state.feedback is None:
        return {"problem": "no query log (--feedback-db none): drift signals are read from it"}
    from rankwise.monitoring.drift import SEARCH_ENDPOINT, SIGNALS

    try:
        state.feedback.flush()
        searches = list(deque((r for r in state.feedback.requests("30d") if r.endpoint == SEARCH_ENDPOINT
                               and not r.degraded and r.signals), maxlen=DRIFT_REQUESTS))
    except RankwiseError as err:
        return {"problem": str(err)}
    if len(searches) < 2 * MIN_WINDOW:
        return {"problem": f"{len(searches)} search requests logged in the last 30 days; the charts need "
                           f"{2 * MIN_WINDOW}"}
    size = max(MIN_WINDOW, -(-len(searches) // DRIFT_WINDOWS))
    windows = [searches[i:i + size] for i in range(0, len(searches), size)]
    reference = state.drift.reference if state.drift is not None else None
    charts = []
    for name in SIGNALS:
        points = []
        for window in windows:
            values = [r.signals[name] for r in window if name in r.signals and np.isfinite(r.signals[name])]
            if values:
                points.append(Point(window[-1].time[:16].replace("T", " "), float(np.mean(values)),
                                    f"mean of {len(values)} requests"))
        band = None
        if reference is not None and reference.values.get(name):
            low, high = np.percentile(reference.values[name], [10, 90])
            band = (float(low), float(high))
        charts.append({"signal": name, "chart": line_chart(points, title=f"{name}: mean per window of {size} "
                                                                       "searches" + (", reference 10th–90th "
                                                                                     "percentile shaded" if band else ""),
                                                           band=band, size=(480, 200))})
    return {"charts": charts, "requests": len(searches), "window": size, "reference": reference is not None}


def quality_report(state: ServingState, name: str | None) -> str | None:
    """The monitor's full check report (what ``rankwise monitor check --html`` writes) for its latest run,
    or None when the server has no history or no such monitor."""
    where = state.config.monitor.history
    if where is None:
        return None
    from rankwise.monitoring.check import check
    from rankwise.monitoring.histories import open_history
    from rankwise.monitoring.html import to_html

    with open_history(where, create=False) as history:
        names = history.names()
        chosen = name if name in names else (names[0] if names else None)
        if chosen is None:
            return None
        return to_html(check(history, name=chosen), history.records(chosen))
