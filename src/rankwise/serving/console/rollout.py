"""The rollout page's data: what the shadow, the canary and the experiment measured on this server's
traffic — the reports ``rankwise shadow|canary|experiment report`` print, read from the same store."""

from __future__ import annotations

from typing import Any

from rankwise.errors import RankwiseError
from rankwise.serving.state import ServingState

#: the rank depth the reports measure clicks and nDCG at (the CLI's default)
K = 5
_KINDS = {"ab": "A/B test", "interleave": "interleaving", "canary": "canary"}


def rollout_view(state: ServingState) -> dict[str, Any]:
    store = state.feedback
    if store is None:
        return {"problem": "this server keeps no query log (--feedback-db none): shadow, canary and experiment "
                           "reports are computed from it"}
    from rankwise.experiments.report import canary_report, experiment_report, shadow_report

    view: dict[str, Any] = {"k": K, "shadows": [], "splits": []}
    try:
        store.flush()
        for s in shadow_report(store, k=K):
            view["shadows"].append({
                "title": f"shadow {s.shadow_model} vs production {s.production_model}",
                "coverage": f"covers {s.coverage:.0%} of production's traffic: {s.requests} scored of {s.eligible} "
                            f"answered requests",
                "rows": [("Kendall's tau", s.kendall_tau.summary() if s.kendall_tau else "—"),
                         ("top-5 overlap", s.top5_overlap.summary() if s.top5_overlap else "—"),
                         (f"nDCG@{K}", s.ndcg.summary(("shadow", "production")) if s.ndcg else
                          f"{s.judged_requests} scored requests with feedback")]
                        + [("largest move", f"{doc}: rank {before} → {after} (request {rid[:8]})")
                           for doc, rid, before, after in s.largest_moves],
                "recommendation": s.recommendation.summary()})
        reports = []
        if state.config.rollout.canary_share > 0:
            reports.append(canary_report(store, k=K))
        if state.experiment is not None:
            reports.append(experiment_report(store, state.experiment, k=K))
    except RankwiseError as err:
        return {"problem": str(err)}
    for report in reports:
        kind = _KINDS.get(report.mode, report.mode)
        view["splits"].append({
            "title": f"{kind} {report.experiment}", "events": report.events, "mode": report.mode,
            "arms": report.arms,
            "lines": [line for c in report.comparisons for line in (c.ctr_line(K), c.latency_line(),
                                                                    f"recommendation: {c.recommendation.summary()}")
                      if line is not None]
                     + ([f"interleaving: {report.interleaving.summary((report.arms[0].arm, report.arms[1].arm))}"]
                        if report.interleaving is not None else [])
                     + ([f"recommendation: {report.recommendation.summary()}"]
                        if report.recommendation is not None and not report.comparisons else [])})
    return view
