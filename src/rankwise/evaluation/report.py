"""Render an :class:`~rankwise.evaluation.compare.EvaluationReport` for people.

* :func:`print_report` — rich tables for the terminal;
* :func:`to_markdown` — the same tables (all metrics) for a pull request or wiki;
* :func:`to_html` — one self-contained file (no network, no scripts): the tables plus plots drawn with
  matplotlib and embedded as SVG data URIs — metric bars with 95% CIs, the per-query delta distribution
  against the baseline, latency distributions per stage, and the most improved / degraded queries with
  the candidate's first-stage and reranker scores side by side.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rankwise.evaluation.compare import EvaluationReport

SIGNIFICANCE_LEVEL = 0.05
#: results shown per query in the HTML tables (at most the report's ``top_results``)
EXAMPLE_RESULTS = 5


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _gain(report: EvaluationReport, system: str, metric: str) -> tuple[float | None, bool]:
    """Relative gain of ``system`` over the baseline, and whether it is significant after Holm."""
    if system == report.baseline:
        return None, False
    m = report.comparison(system).metrics[metric]
    return m.relative_gain, m.p_randomization_holm < SIGNIFICANCE_LEVEL


def _summary(report: EvaluationReport) -> str:
    counts = report.dataset["counts"]
    return (f"{report.dataset['name']}: {counts['evaluated_queries']} queries · baseline {report.baseline} · "
            f"candidate {report.candidate or '—'} · index {report.config['index_fingerprint']} · "
            f"reranker {report.config['reranker'] or 'none'}")


# ---------------------------------------------------------------------------------------------- terminal
def print_report(report: EvaluationReport, console: Console) -> None:
    """Metric table (gain vs baseline, † = significant after Holm), comparison and latency tables."""
    console.print(f"[bold]{escape(_summary(report))}[/]", highlight=False, soft_wrap=True)
    table = Table(title=f"metrics (gain vs {report.baseline}; † p<{SIGNIFICANCE_LEVEL} randomization test, Holm)")
    table.add_column("system", style="cyan", no_wrap=True)
    for metric in report.metrics:
        table.add_column(metric, justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("CPU ms/q", justify="right")
    for system in report.systems:
        cells = []
        for metric in report.metrics:
            gain, significant = _gain(report, system, metric)
            extra = "" if gain is None else f" [{'green' if gain > 0 else 'red' if gain < 0 else 'dim'}]{gain:+.1%}" \
                                            f"{'†' if significant else ''}[/]"
            cells.append(f"{report.scores[system][metric]:.4f}{extra}")
        style = "bold" if system == report.candidate else None
        table.add_row(system, *cells, _fmt(report.latency_ms[system]["total"]["p95"], ".1f"), _cpu(report, system),
                      style=style)
    console.print(table)
    if report.comparisons:
        metric = report.primary_metric
        comp = Table(title=f"{metric} vs {report.baseline}: paired t-test and randomization test, Holm-corrected; "
                           "wins/losses/ties per query")
        for column in ("system", "Δ", "95% CI of Δ", "gain", "p (t)", "p (rand.)", "W/L/T"):
            comp.add_column(column, justify="left" if column == "system" else "right", no_wrap=column == "system")
        for c in report.comparisons:
            m = c.metrics[metric]
            comp.add_row(c.system, f"{m.delta:+.4f}", f"[{m.ci95[0]:+.4f}, {m.ci95[1]:+.4f}]",
                         _fmt(m.relative_gain, "+.1%"), _fmt(m.p_ttest_holm, ".4f"),
                         _fmt(m.p_randomization_holm, ".4f"), f"{m.wins}/{m.losses}/{m.ties}")
        console.print(comp)
    lat = Table(title="latency per query (ms)")
    for column in ("system", "stage", "p50", "p95", "p99", "n"):
        lat.add_column(column, justify="left" if column in ("system", "stage") else "right", no_wrap=column == "system")
    for system in report.systems:
        for stage, p in report.latency_ms[system].items():
            lat.add_row(system, stage, _fmt(p["p50"], ".1f"), _fmt(p["p95"], ".1f"), _fmt(p["p99"], ".1f"),
                        str(p["n"]))
    console.print(lat)


# ---------------------------------------------------------------------------------------------- markdown
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(" ".join(cell.split()).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _metric_rows(report: EvaluationReport, esc: Callable[[str], str] = str) -> list[list[str]]:
    rows = []
    for system in report.systems:
        cells = [esc(system)]
        for metric in report.metrics:
            gain, significant = _gain(report, system, metric)
            lo, hi = report.scores_ci95[system][metric]
            cells.append(f"{report.scores[system][metric]:.4f} [{lo:.3f}, {hi:.3f}]"
                         + ("" if gain is None else f" ({gain:+.1%}{'†' if significant else ''})"))
        rows.append([*cells, _fmt(report.latency_ms[system]["total"]["p95"], ".1f"), _cpu(report, system)])
    return rows


def _cpu(report: EvaluationReport, system: str) -> str:
    """CPU milliseconds per query (process time), and the pairs the reranker scored per query."""
    cost = report.cost.get(system)
    if cost is None:
        return "—"
    pairs = f" · {cost['pairs_per_query']:.0f} pairs" if cost["pairs_per_query"] else ""
    return f"{cost['cpu_ms_per_query']:.0f}{pairs}"



def _comparison_rows(report: EvaluationReport, esc: Callable[[str], str] = str) -> list[list[str]]:
    return [[esc(c.system), metric, f"{m.delta:+.4f}", f"[{m.ci95[0]:+.4f}, {m.ci95[1]:+.4f}]",
             _fmt(m.relative_gain, "+.1%"), f"{_fmt(m.p_ttest, '.4f')} / {_fmt(m.p_ttest_holm, '.4f')}",
             f"{_fmt(m.p_randomization, '.4f')} / {_fmt(m.p_randomization_holm, '.4f')}",
             f"{m.wins}/{m.losses}/{m.ties}"]
            for c in report.comparisons for metric, m in c.metrics.items()]


_COMPARISON_HEADER = ["system", "metric", "Δ", "95% CI of Δ", "gain", "p t-test (raw / Holm)",
                      "p randomization (raw / Holm)", "W/L/T"]


def _latency_rows(report: EvaluationReport, esc: Callable[[str], str] = str) -> list[list[str]]:
    return [[esc(system), stage, _fmt(p["p50"], ".1f"), _fmt(p["p95"], ".1f"), _fmt(p["p99"], ".1f"), str(p["n"])]
            for system in report.systems for stage, p in report.latency_ms[system].items()]


def _gate_lines(report: EvaluationReport) -> list[str]:
    if not report.gates:
        return []
    verdict = "PASSED" if report.gates["passed"] else "FAILED"
    return [f"gates on {report.gates['candidate']} vs {report.gates['baseline']}: {verdict}",
            *(r["message"] for r in report.gates["rules"])]


def to_markdown(report: EvaluationReport) -> str:
    parts = [f"# rankwise evaluation — {report.dataset['name']}", "", _summary(report), ""]
    parts += [f"> warning: {w}" for w in report.dataset["warnings"]]
    parts += ["", (f"## Metrics (mean [95% bootstrap CI] (gain vs {report.baseline}); † p<{SIGNIFICANCE_LEVEL} "
                   "randomization test after Holm)"), "",
              _md_table(["system", *report.metrics, "p95 ms", "CPU ms/q"], _metric_rows(report)), ""]
    if report.comparisons:
        parts += [f"## Paired comparisons with {report.baseline}", "",
                  _md_table(_COMPARISON_HEADER, _comparison_rows(report)), ""]
    parts += ["## Latency per query (ms)", "",
              _md_table(["system", "stage", "p50", "p95", "p99", "n"], _latency_rows(report)), ""]
    if report.candidate:
        c = report.comparison(report.candidate)
        parts += [(f"## Queries where {report.candidate} is worse than {report.baseline} "
                   f"({report.primary_metric}): {len(c.degraded)}"), ""]
        parts.append(_md_table(["query id", "query", report.baseline, report.candidate, "Δ"],
                               [[d.query_id, d.query, f"{d.baseline_value:.3f}", f"{d.system_value:.3f}",
                                 f"{d.delta:+.3f}"] for d in c.degraded[:20]]))
        parts.append("")
    gates = _gate_lines(report)
    if gates:
        parts += ["## Gates", "", *(f"- {line}" for line in gates), ""]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- html
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.queries td:nth-child(2),.queries td:last-child{text-align:left}.pos{color:#17803d}.neg{color:#b42318}.warn{background:#fff7e0;padding:.4rem .7rem;border-left:4px solid #f0b400}
.pass{color:#17803d;font-weight:bold}.fail{color:#b42318;font-weight:bold}.dim{color:#777}
figure{margin:1rem 0}img{max-width:100%;height:auto;border:1px solid #eee}
"""


def _html_table(header: list[str], rows: list[list[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table class='{css_class}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plot_metrics(report: EvaluationReport) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.6 * len(report.metrics) + 2), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(report.systems)
    for i, system in enumerate(report.systems):
        xs = [j + (i - (len(report.systems) - 1) / 2) * width for j in range(len(report.metrics))]
        means = [report.scores[system][m] for m in report.metrics]
        lows = [max(0.0, mean - report.scores_ci95[system][m][0]) for mean, m in zip(means, report.metrics, strict=True)]
        highs = [max(0.0, report.scores_ci95[system][m][1] - mean) for mean, m in zip(means, report.metrics, strict=True)]
        ax.bar(xs, means, width, yerr=[lows, highs], capsize=2, label=system,
               edgecolor="black" if system == report.candidate else "none")
    ax.set_xticks(range(len(report.metrics)), report.metrics)
    ax.set_ylabel("mean over queries (95% CI)")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=8, ncols=min(6, len(report.systems)), loc="upper center", bbox_to_anchor=(0.5, -0.1),
              frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _plot_deltas(report: EvaluationReport) -> Figure:
    from matplotlib.figure import Figure

    metric = report.primary_metric
    qids = list(report.queries)
    base = report.per_query[report.baseline][metric]
    data = [[report.per_query[c.system][metric][q] - base[q] for q in qids] for c in report.comparisons]
    fig = Figure(figsize=(8, 0.6 * len(data) + 1.6))
    ax = fig.subplots()
    ax.boxplot(data, orientation="horizontal", tick_labels=[c.system for c in report.comparisons], widths=0.5,
               showmeans=True)
    for i, values in enumerate(data, start=1):
        jitter = [i + 0.18 * math.sin(k * 12.9898) for k in range(len(values))]  # deterministic jitter
        ax.scatter(values, jitter, s=6, alpha=0.35, color="tab:blue")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"per-query {metric} − {report.baseline}")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _plot_latency(report: EvaluationReport) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = [(f"{system} · {stage}", values) for system in report.systems
            for stage, values in report.latency_samples_ms[system].items()]
    fig = Figure(figsize=(8, 0.32 * len(rows) + 1.4))
    ax = fig.subplots()
    ax.boxplot([values for _, values in rows], orientation="horizontal", tick_labels=[name for name, _ in rows],
               widths=0.6, whis=(5, 95), showfliers=True, flierprops={"markersize": 2})
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("ms per query (log scale; box p25–p75, whiskers p5–p95)")
    ax.grid(axis="x", alpha=0.3, which="both")
    return fig


def _score_cell(entry: dict[str, Any]) -> str:
    label = entry["label"]
    mark = "·" if label is None else ("✔" if label > 0 else "✘")
    rr = "" if entry["reranker_score"] is None else f" → rr {entry['reranker_score']:.3f}"
    return (f"<span title='label {label}'>{mark}</span> #{entry['rank']} {html.escape(entry['doc_id'])} "
            f"<span class=dim>(fs #{entry['first_stage_rank']} {entry['first_stage_score']:.4g}{rr})</span>")


def _query_rows(report: EvaluationReport, ordered: list[tuple[str, float]]) -> list[list[str]]:
    metric, base, cand = report.primary_metric, report.baseline, report.candidate
    assert cand is not None
    rows = []
    for qid, delta in ordered:
        q = report.queries[qid]
        tops = "<br>".join(_score_cell(e) for e in q["top"][cand][:EXAMPLE_RESULTS])
        rows.append([html.escape(qid), html.escape(q["query"]),
                     f"{report.per_query[base][metric][qid]:.3f}", f"{report.per_query[cand][metric][qid]:.3f}",
                     f"<span class={'pos' if delta > 0 else 'neg'}>{delta:+.3f}</span>",
                     tops])
    return rows


def to_html(report: EvaluationReport, *, examples: int = 10) -> str:
    """A self-contained HTML report (plots embedded as SVG data URIs; no scripts, no external requests)."""
    esc = html.escape
    figures = [("Metric means with 95% bootstrap CIs", _plot_metrics(report))]
    if report.comparisons:
        figures.append((f"Per-query {report.primary_metric} difference to {report.baseline}", _plot_deltas(report)))
    figures.append(("Latency per query and stage", _plot_latency(report)))
    parts = [(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>rankwise evaluation — "
              f"{esc(report.dataset['name'])}</title><style>{_CSS}</style></head><body>"),
             f"<h1>rankwise evaluation — {esc(report.dataset['name'])}</h1><p>{esc(_summary(report))}</p>",
             (f"<p class=dim>created {esc(report.created_at)} · schema {esc(report.schema)} · "
              f"{report.config['retrieve_k']} candidates, {report.config['rerank_k']} reranked · "
              f"{report.config['n_resamples']} resamples, seed {report.config['seed']}</p>")]
    parts += [f"<p class=warn>warning: {esc(w)}</p>" for w in report.dataset["warnings"]]
    gates = _gate_lines(report)
    if gates and report.gates:
        cls = "pass" if report.gates["passed"] else "fail"
        parts.append(f"<h2>Gates</h2><p class={cls}>{esc(gates[0])}</p><ul>"
                     + "".join(f"<li>{esc(line)}</li>" for line in gates[1:]) + "</ul>")
    parts.append(f"<h2>Metrics</h2><p class=dim>mean [95% bootstrap CI] (gain vs {esc(report.baseline)}); "
                 f"† p&lt;{SIGNIFICANCE_LEVEL}, randomization test after Holm</p>")
    parts.append(_html_table(["system", *report.metrics, "p95 ms", "CPU ms/q"], _metric_rows(report, esc)))
    if report.comparisons:
        parts.append(f"<h2>Paired comparisons with {esc(report.baseline)}</h2>")
        parts.append(_html_table(_COMPARISON_HEADER, _comparison_rows(report, esc)))
    parts.append("<h2>Plots</h2>")
    parts += [f"<figure><img class=plot alt='{esc(title)}' src='{_figure_uri(fig)}'><figcaption>{esc(title)}"
              "</figcaption></figure>" for title, fig in figures]
    parts.append("<h2>Latency per query (ms)</h2>")
    parts.append(_html_table(["system", "stage", "p50", "p95", "p99", "n"], _latency_rows(report, esc)))
    if report.candidate:
        metric, cand = report.primary_metric, report.candidate
        deltas = sorted(((q, report.per_query[cand][metric][q] - report.per_query[report.baseline][metric][q])
                         for q in report.queries), key=lambda item: (item[1], item[0]))
        header = ["query id", "query", report.baseline, cand, "Δ",
                  f"{cand} top {EXAMPLE_RESULTS}: ✔ relevant ✘ judged not relevant · unjudged (first stage → reranker)"]
        improved = [d for d in reversed(deltas) if d[1] > 0][:examples]
        degraded = [d for d in deltas if d[1] < 0][:examples]
        parts.append(f"<h2>Most improved queries ({metric}, {esc(cand)} vs {esc(report.baseline)})</h2>")
        parts.append(_html_table(header, _query_rows(report, improved), "queries") if improved else "<p>none</p>")
        parts.append(f"<h2>Most degraded queries ({len(report.comparison(cand).degraded)} in all; full list in the "
                     "JSON)</h2>")
        parts.append(_html_table(header, _query_rows(report, degraded), "queries") if degraded else "<p>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
