"""The quality page's data: every monitor's runs as a chart with its alarms, and per-slice means of the
latest run, read from the server's monitoring history (``--monitor-history`` or the shared store)."""

from __future__ import annotations

from typing import Any

from rankwise.errors import RankwiseError
from rankwise.serving.console.svg import Point, line_chart
from rankwise.serving.state import ServingState

#: plotted when the runs have it, else the runs' first metric
PREFERRED_METRIC = "nDCG@10"


def quality_view(state: ServingState, name: str | None, metric: str | None) -> dict[str, Any]:
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
    shown = metric if metric in metrics else (PREFERRED_METRIC if PREFERRED_METRIC in metrics else metrics[0])
    judged = statuses(records, metric=shown)
    points = [Point(r.time[:16].replace("T", " "), r.metrics.get(shown, float("nan")),
                    f"{r.system}, {r.num_queries} queries — {status}", alarm=status == "alarm")
              for r, (_, status) in zip(records, judged, strict=True) if shown in r.metrics]
    latest = records[-1]
    slices = [{"slice": s, "value": v, "n": int(stats.get("n", 0)), "mean": stats.get(shown)}
              for s, values in latest.slices.items() for v, stats in values.items()]
    return {"names": names, "name": chosen, "metrics": metrics, "metric": shown,
            "chart": line_chart(points, title=f"{shown} of every run of '{chosen}' (alarms in red)"),
            "alarms": sum(1 for p in points if p.alarm), "runs": len(records), "latest": latest,
            "latest_status": judged[-1][1], "slices": slices}
