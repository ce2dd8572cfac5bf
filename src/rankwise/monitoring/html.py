"""A check as one self-contained HTML page: what the person paged at 3 a.m. opens first.

It answers, top to bottom: is it real (status, the numbers, the test), since when (the metric over every
run of the monitor, alarmed runs in red, the reference ringed, the alarm threshold drawn), why (what changed
between the two runs, next to each paired query's score in both), where (the slices, each with its own
verdict), on what (the queries that got worse most, with both scores), and the two runs' configurations side
by side with the differences highlighted. Same approach as the evaluation report
(:mod:`rankwise.evaluation.report`): its stylesheet, plots drawn with matplotlib and embedded as SVG data
URIs, no scripts and no external requests.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rankwise.evaluation.report import _CSS, _figure_uri, _html_table
from rankwise.monitoring.check import CheckResult, Status, paired_queries, statuses
from rankwise.monitoring.history import MonitorRecord, parse_time

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLORS: dict[Status, str] = {"ok": "#17803d", "alarm": "#b42318", "inconclusive": "#9a6700"}
_GREY = "#8a8a8a"
_EXTRA_CSS = """
.banner{padding:.8rem 1rem;border-radius:6px;color:#fff;font-size:1.05rem;font-weight:600;margin:1rem 0}
.banner small{display:block;font-weight:400;opacity:.9;margin-top:.2rem}
.ok{background:#17803d}.alarm{background:#b42318}.inconclusive{background:#9a6700}
.status-ok{color:#17803d;font-weight:600}.status-alarm{color:#b42318;font-weight:600}
.status-inconclusive{color:#9a6700}
tr.changed td{background:#fff7e0}.runs td,.slices td:nth-child(2),.worst td:nth-child(2){text-align:left}
.slices th:nth-child(2),.worst th:nth-child(2){text-align:left}
.row{display:flex;flex-wrap:wrap;gap:2rem;align-items:flex-start}.row>div{flex:1 1 320px}
ul.causes li{margin:.3rem 0}
"""
#: rows of the run comparison that differ from run to run without being a change of setup
_VOLATILE = ("run id", "time (UTC)", "latency p50 / p95 / p99 ms", "CPU ms per query", "wall seconds")


def to_html(result: CheckResult, records: Sequence[MonitorRecord]) -> str:
    """The page for ``result``; ``records``: the monitor's runs, oldest first (both compared runs too)."""
    esc = html.escape
    by_id = {r.id: r for r in records}
    latest = by_id[result.latest_id]
    reference = by_id.get(result.reference_id or "")
    title = f"rankwise monitor — {result.name}"
    parts = [(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
             f"<style>{_CSS}{_EXTRA_CSS}</style></head><body><h1>{esc(title)}</h1>"),
             (f"<div class='banner {result.status}'>{esc(result.status.upper())}"
             f"<small>{esc(result.summary())}</small></div>"),
             f"<p class=dim>{esc(_rule(result))}</p>",
             *(f"<p class=warn>warning: {esc(w)}</p>" for w in result.warnings)]
    compared = result.verdict is not None and reference is not None
    if compared:
        parts.append(_numbers(result))
    parts.append("<h2>History</h2>")
    caption = (f"{result.metric} of every run of '{result.name}', each judged by the rule against its own "
               f"{result.reference_kind} run")
    parts.append(_figure(caption, _plot_history(result, records)))
    if compared and reference is not None:
        causes = "".join(f"<li>{esc(c)}</li>" for c in result.likely_causes)
        scatter = _figure(f"per-query {result.metric}: reference run vs latest run",
                          _plot_queries(result, reference, latest))
        parts.append(f"<div class=row><div><h2>Likely causes</h2><p class=dim>what the two runs' records say "
                     f"changed</p><ul class=causes>{causes}</ul></div><div>{scatter}</div></div>")
        parts += [_slices(result), _worst(result), "<h2>The two runs</h2>", _runs(reference, latest)]
    parts.append(f"<p class=dim>{len(records)} runs · latest {esc(latest.id)} · "
                 f"reference {esc(result.reference_id or 'none')}</p></body></html>")
    return "\n".join(parts)


def _rule(result: CheckResult) -> str:
    return (f"Rule: alarm when {result.metric} dropped more than {result.max_drop:.0%} relative to the "
            f"{result.reference_kind} run and a paired randomization test on the queries of both runs gives "
            f"p < {result.alpha:g}; fewer than {result.min_queries} paired queries is inconclusive. Slices "
            "use the same rule with Holm's correction over the slices tested.")


def _figure(caption: str, fig: Figure) -> str:
    esc = html.escape
    return (f"<figure><img class=plot alt='{esc(caption)}' src='{_figure_uri(fig)}'>"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _change(value: float | None) -> str:
    return "—" if value is None else f"<span class={'neg' if value < 0 else 'pos'}>{value:+.1%}</span>"


def _numbers(result: CheckResult) -> str:
    v = result.verdict
    assert v is not None and result.reference_time is not None
    return _html_table(
        ["", "reference run", "latest run", "change", "p (randomization)", "paired queries"],
        [[html.escape(result.metric),
          f"{v.reference_mean:.4f}<br><span class=dim>{result.reference_time}</span>",
          f"{v.latest_mean:.4f}<br><span class=dim>{result.latest_time}</span>",
          _change(v.relative_change), "—" if v.p_value is None else f"{v.p_value:.4f}", str(v.n)]])


def _slices(result: CheckResult) -> str:
    if not result.slices:
        return ""
    rows = [[html.escape(s.slice), html.escape(s.value), str(s.verdict.n), f"{s.verdict.reference_mean:.3f}",
             f"{s.verdict.latest_mean:.3f}", _change(s.verdict.relative_change),
             "—" if s.verdict.p_value is None else f"{s.verdict.p_value:.4f}",
             f"<span class=status-{s.verdict.status}>{s.verdict.status}</span>"] for s in result.slices]
    header = ["slice", "value", "queries", "reference", "latest", "change", "p (Holm)", "status"]
    return (f"<h2>Slices ({len(result.slice_alarms)} alarmed)</h2><p class=dim>{html.escape(result.metric)} "
            "per slice, on the paired queries; membership as in the reference run</p>"
            + _html_table(header, rows, "slices"))


def _worst(result: CheckResult) -> str:
    metric = html.escape(result.metric)
    if not result.worst:
        return f"<h2>Queries that got worse</h2><p>none: no paired query lost {metric}</p>"
    rows = [[html.escape(q.query_id), html.escape(q.query), f"{q.reference_value:.3f}",
             f"{q.latest_value:.3f}", f"<span class=neg>{q.delta:+.3f}</span>"] for q in result.worst]
    return (f"<h2>Queries that got worse most ({metric})</h2>"
            + _html_table(["query id", "query", "reference", "latest", "Δ"], rows, "worst"))


def _runs(reference: MonitorRecord, latest: MonitorRecord) -> str:
    """Both configurations side by side; rows that differ are highlighted (they are the likely causes)."""
    rows = []
    for (label, before), (_, after) in zip(_describe(reference), _describe(latest), strict=True):
        changed = before != after and label not in _VOLATILE
        rows.append(f"<tr class={'changed' if changed else 'same'}><td>{html.escape(label)}</td>"
                    f"<td>{html.escape(before)}</td><td>{html.escape(after)}</td></tr>")
    return ("<table class=runs><thead><tr><th></th><th>reference run</th><th>latest run</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _describe(r: MonitorRecord) -> list[tuple[str, str]]:
    return [
        ("run id", r.id), ("time (UTC)", r.time), ("index", r.index_path),
        ("index fingerprint", r.index_fingerprint), ("documents", str(r.num_documents)),
        ("embedding model", f"{r.embedding_model} ({(r.embedding_sha256 or '')[:12]})" if r.embedding_model
         else "none (BM25 only)"),
        ("first stage", r.first_stage), ("retrieve_k", str(r.retrieve_k)), ("rerank_k", str(r.rerank_k)),
        ("rerank fusion", r.rerank_fusion), ("reranker backend", r.backend),
        ("reranker", f"{r.reranker} → {r.reranker_version}" if r.reranker else "none"),
        ("reranker weights sha256", r.reranker_sha256 or "none"),
        ("gold set", f"{r.goldset_name} ({r.goldset_fingerprint[:12]}, {r.num_queries} queries)"),
        ("latency p50 / p95 / p99 ms", " / ".join(f"{r.latency[p]:.1f}" for p in ("p50", "p95", "p99"))),
        ("pairs scored", f"{r.cost['pairs_scored']:.0f}"),
        ("CPU ms per query", f"{r.cost['cpu_ms_per_query']:.1f}"),
        ("wall seconds", f"{r.cost['wall_seconds']:.1f}"), ("rankwise", r.rankwise_version),
    ]


def _plot_history(result: CheckResult, records: Sequence[MonitorRecord]) -> Figure:
    """The metric of every run, coloured by its status against its own reference under the same rule."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metric = result.metric
    shown = [r for r in records if metric in r.metrics]
    pinned = next((r for r in shown if r.id == result.reference_id), None)
    states = statuses(shown, reference=result.reference_kind, metric=metric,
                      baseline=pinned if result.reference_kind == "baseline" else None,
                      max_drop=result.max_drop, alpha=result.alpha, min_queries=result.min_queries)
    status_of = {r.id: status for r, (_, status) in zip(shown, states, strict=True)}
    status_of[result.latest_id] = result.status  # the check judged the slices too
    points = {r.id: (parse_time(r.time), r.metrics[metric]) for r in shown}
    fig = Figure(figsize=(9, 3.8))
    ax = fig.subplots()
    ax.plot([t for t, _ in points.values()], [v for _, v in points.values()], color=_GREY, linewidth=1.2,
            zorder=1)
    for record_id, (t, value) in points.items():
        status = status_of[record_id]
        fill = "white" if status == "inconclusive" else _COLORS[status]
        ax.scatter([t], [value], s=46, zorder=3, color=fill, edgecolors=_COLORS[status], linewidths=1.5)
    if result.reference_id in points:
        t, value = points[result.reference_id]
        ax.scatter([t], [value], s=220, facecolors="none", edgecolors="#1f4e9e", linewidths=2, zorder=4)
        ax.annotate("reference", (t, value), textcoords="offset points", xytext=(0, 14), ha="center",
                    fontsize=8, color="#1f4e9e")
    if result.latest_id in points:
        ax.annotate("latest", points[result.latest_id], textcoords="offset points", xytext=(0, -18),
                    ha="center", fontsize=8)
    if result.verdict is not None and result.verdict.reference_mean > 0:
        threshold = result.verdict.reference_mean * (1 - result.max_drop)
        ax.axhline(threshold, color=_COLORS["alarm"], linestyle="--", linewidth=0.9, zorder=0)
        ax.annotate(f"alarm below {threshold:.3f} (−{result.max_drop:.0%} of the reference)",
                    (0.005, threshold), xycoords=("axes fraction", "data"), textcoords="offset points",
                    xytext=(2, 3), fontsize=8, color=_COLORS["alarm"])
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    values = [v for _, v in points.values()]
    ax.set_ylim(max(0.0, min(values) - 0.1), min(1.05, max(values) + 0.1))
    ax.set_ylabel(f"{metric} (mean over the run's queries)")
    ax.grid(alpha=0.3)
    legend = [Line2D([], [], marker="o", linestyle="", color=_COLORS[s], label=s,
                     markerfacecolor="white" if s == "inconclusive" else _COLORS[s])
              for s in ("ok", "alarm", "inconclusive")]
    ax.legend(handles=legend, fontsize=8, loc="lower left", frameon=False, ncols=3)
    return fig


def _plot_queries(result: CheckResult, reference: MonitorRecord, latest: MonitorRecord) -> Figure:
    """Each paired query as a point: below the diagonal it got worse, above it got better.

    Metric values take few distinct values on small gold sets, so identical points are drawn once, sized
    by and labelled with their number of queries, instead of hiding behind each other.
    """
    from matplotlib.figure import Figure

    metric = result.metric
    before, after = reference.per_query[metric], latest.per_query[metric]
    qids, _ = paired_queries(reference, latest, metric)
    points = Counter((round(before[q], 4), round(after[q], 4)) for q in qids)
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, zorder=0)
    moved = Counter[str]()
    for (x, y), n in points.items():
        kind = "worse" if y < x else "better" if y > x else "same"
        moved[kind] += n
        color = {"worse": _COLORS["alarm"], "better": _COLORS["ok"], "same": _GREY}[kind]
        ax.scatter([x], [y], s=22 + 14 * (n - 1), color=color, alpha=0.7, zorder=2)
        if n > 1:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(7, 5), fontsize=8, color=color)
    ax.set_xlim(-0.05, 1.08)
    ax.set_ylim(-0.05, 1.08)
    ax.set_xlabel(f"reference run ({reference.time[:10]})")
    ax.set_ylabel(f"latest run ({latest.time[:10]})")
    ax.set_title(f"{moved['worse']} worse · {moved['better']} better · {moved['same']} unchanged", fontsize=9)
    ax.grid(alpha=0.3)
    return fig
