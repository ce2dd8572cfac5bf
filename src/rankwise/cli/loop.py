"""``rankwise feedback export`` and the ``shadow``, ``experiment`` and ``canary`` reports: the production
loop's commands, reading the query log and feedback store a server writes (``--feedback-db``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box

from rankwise.cli.common import (
    DEFAULT_STORE,
    FeedbackDbOpt,
    GroupsOpt,
    RetentionOpt,
    StoreOpt,
    err,
    friendly_errors,
    open_feedback_store,
    out,
)

if TYPE_CHECKING:
    from rankwise.experiments.report import ExperimentReport
    from rankwise.feedback.store import FeedbackStore

app = typer.Typer()
feedback_app = typer.Typer(help="Turn users' feedback into gold sets and training data.", no_args_is_help=True)
shadow_app = typer.Typer(help="Compare a shadow reranker with production.", no_args_is_help=True)
experiment_app = typer.Typer(help="Results of an A/B or interleaving experiment.", no_args_is_help=True)
canary_app = typer.Typer(help="Compare the canary (serve --canary) with production.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.add_typer(shadow_app, name="shadow")
app.add_typer(experiment_app, name="experiment")
app.add_typer(canary_app, name="canary")

SinceOpt = Annotated[str | None, typer.Option(help="Only traffic newer than this: 30m, 2h, 7d or an ISO time.")]
#: the same flag on every command that reads the query log
KOpt = Annotated[int, typer.Option("--k", help="Rank cut-off of the metrics (CTR@k, nDCG@k).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@feedback_app.command("export")
@friendly_errors
def feedback_export(
    out_file: Annotated[Path, typer.Option("--out", help="Gold-set JSONL to write (for `eval`/`train --goldset`).")],
    feedback_db: FeedbackDbOpt = DEFAULT_STORE, shared: StoreOpt = None,
    since: SinceOpt = None,
    misranked: Annotated[Path | None, typer.Option(help="Also write the misranked report (JSONL): documents "
                                                        "users chose that the reranker placed low, and the reverse.")] = None,
    misranked_limit: Annotated[int, typer.Option(min=1, help="Misranked pairs written: the most frequent "
                                                              "first.")] = 1_000,
    eta: Annotated[float, typer.Option(help="Position-bias strength of the click model: rank r is examined "
                                            "with probability (1/r)^eta.")] = 1.0,
    retention: RetentionOpt = None,
    group: GroupsOpt = None,
    index_dir: Annotated[str | None, typer.Option("--index", "-i", help="With --group: the index that says "
                                                                        "which documents the groups may see.")] = None,
) -> None:
    """Write a gold set from feedback: thumbs as labels, clicks corrected for position bias.

    Rows past the retention are deleted first — ``--retention``, else the one the last server recorded in
    the database — so a server that stopped before its hourly purge never has its expired rows exported.
    """
    from rankwise.errors import QueryError
    from rankwise.feedback import ClickModel, export_goldset

    visible = None
    if group is not None:
        if index_dir is None:
            raise QueryError("--group needs --index: the index says which documents the groups may see")
        from rankwise.index import open_index

        visible = open_index(index_dir).documents_visible_to(group)
    store = open_feedback_store(feedback_db, shared)
    try:
        _purge(store, retention)
        summary = export_goldset(store, since=since, out=out_file, click_model=ClickModel(eta=eta),
                                 misranked_out=misranked, misranked_limit=misranked_limit, visible=visible)
    finally:
        store.close()
    for line in summary.lines():
        out.print(line, highlight=False, soft_wrap=True)


@feedback_app.command("purge")
@friendly_errors
def feedback_purge(retention: RetentionOpt = None, feedback_db: FeedbackDbOpt = DEFAULT_STORE,
                   shared: StoreOpt = None) -> None:
    """Delete query-log rows older than --retention (default: the one the last server recorded), with
    their feedback and shadow rows (append-only otherwise: the database refuses any other delete)."""
    from rankwise.errors import QueryError

    store = open_feedback_store(feedback_db, shared)
    try:
        if not _purge(store, retention):
            raise QueryError("no retention to apply: give --retention, e.g. --retention 30d (no server with "
                             "--retention has used this database)")
    finally:
        store.close()


def _purge(store: FeedbackStore, retention: str | None) -> bool:
    """Apply ``retention``, else the server's recorded one; False when there is neither."""
    from rankwise.options import format_duration

    source = ""
    if retention is None:
        recorded = store.retention()
        if recorded is None:
            return False
        retention, source = format_duration(recorded), " (recorded by the server)"
    removed = store.purge(retention)
    err.print(f"retention {retention}{source}: removed {removed} query-log, feedback and shadow rows older than "
              "that", highlight=False, soft_wrap=True)
    return True


@shadow_app.command("report")
@friendly_errors
def shadow_report_cmd(feedback_db: FeedbackDbOpt = DEFAULT_STORE, shared: StoreOpt = None, since: SinceOpt = None, k: KOpt = 5,
                      as_json: JsonOpt = False) -> None:
    """Rank agreement of shadow and production, both models' nDCG@k on the requests users judged, and the
    share of production's traffic the comparison covers."""
    from rich.table import Table

    from rankwise.experiments.report import shadow_report

    store = open_feedback_store(feedback_db, shared)
    try:
        summaries = shadow_report(store, since=since, k=k)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps([{**asdict(s), "coverage": s.coverage} for s in summaries], default=str))
        return
    for s in summaries:
        out.print(f"[bold]shadow {s.shadow_model}[/] vs production {s.production_model}", highlight=False)
        unscored = ", ".join(f"{n} {_UNSCORED[outcome]}" for outcome, n in sorted(s.unscored.items()))
        out.print(f"  covers {s.coverage:.0%} of production's traffic: {s.requests} scored of {s.eligible} "
                  f"answered requests; {s.offered} offered" + (f", {unscored}" if unscored else ""),
                  highlight=False, soft_wrap=True)
        if s.unscored.get("dropped_queue_full") or s.unscored.get("dropped_stale"):
            err.print("  requests were dropped: the shadow could not keep up (lower --shadow-share, or give it "
                      "a faster backend); the comparison covers only what it scored", highlight=False)
        table = Table(box=box.SIMPLE, show_header=False)
        table.add_column("measure", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_row("Kendall's tau", s.kendall_tau.summary() if s.kendall_tau else "—")
        table.add_row("top-5 overlap", s.top5_overlap.summary() if s.top5_overlap else "—")
        table.add_row("shadow time p50", f"{s.shadow_ms_p50:.0f} ms" if s.shadow_ms_p50 is not None else "—")
        table.add_row(f"nDCG@{k}", s.ndcg.summary(("shadow", "production")) if s.ndcg else
                      f"{s.judged_requests} scored requests with feedback")
        for doc, request_id, before, after in s.largest_moves:
            table.add_row("largest move", f"{doc}: rank {before} → {after} (request {request_id[:8]})")
        out.print(table)
        out.print(f"[bold]recommendation:[/] {s.recommendation.summary()}", highlight=False, soft_wrap=True)


#: how the report names what became of an offered request that was not scored
_UNSCORED = {"dropped_queue_full": "dropped (queue full)", "dropped_stale": "dropped (stale)", "failed": "failed"}


@experiment_app.command("report")
@friendly_errors
def experiment_report_cmd(
    experiment: Annotated[Path, typer.Option(help="The experiment file the server was started with.")],
    feedback_db: FeedbackDbOpt = DEFAULT_STORE, shared: StoreOpt = None, since: SinceOpt = None, k: KOpt = 5, as_json: JsonOpt = False,
) -> None:
    """Per-arm CTR@k, thumbs ratio, abandonment and latency, with significance and a recommendation."""
    from rankwise.experiments import load_experiment
    from rankwise.experiments.report import experiment_report

    definition = load_experiment(experiment)
    store = open_feedback_store(feedback_db, shared)
    try:
        report = experiment_report(store, definition, since=since, k=k)
    finally:
        store.close()
    _print_split_report(report, as_json)


@canary_app.command("report")
@friendly_errors
def canary_report_cmd(feedback_db: FeedbackDbOpt = DEFAULT_STORE, shared: StoreOpt = None, since: SinceOpt = None, k: KOpt = 5,
                      as_json: JsonOpt = False) -> None:
    """Production against the canary (``serve --canary``): the same measures, tests and rule as an A/B test."""
    from rankwise.experiments.report import canary_report

    store = open_feedback_store(feedback_db, shared)
    try:
        report = canary_report(store, since=since, k=k)
    finally:
        store.close()
    _print_split_report(report, as_json)


def _print_split_report(report: ExperimentReport, as_json: bool) -> None:
    from rich.table import Table

    if as_json:
        typer.echo(json.dumps(asdict(report), default=str))
        return
    k = report.k
    kind = {"ab": "A/B", "interleave": "interleaving", "canary": "canary"}[report.mode]
    out.print(f"[bold]{kind} {report.experiment}[/]: {report.events} feedback events", highlight=False)
    for arm in report.arms:  # names first: they can be long, and a table at 80 columns would cut them
        degraded = f" ({arm.degraded} degraded answers left out)" if arm.degraded else ""
        out.print(f"  {arm.arm}: {', '.join(arm.models)}{degraded}", highlight=False, soft_wrap=True)
    table = Table(box=box.SIMPLE)
    for column in ("arm", "requests", f"CTR@{k}", "thumbs up", "abandoned", "p50 ms", "p99 ms"):
        table.add_column(column, no_wrap=True, overflow="ellipsis" if column == "arm" else "fold")
    for arm in report.arms:
        ratio = f"{arm.thumbs_ratio:.0%} of {arm.thumbs_up + arm.thumbs_down}" if arm.thumbs_ratio is not None else "—"
        requests = f"{arm.requests}" + (f" ({arm.share:.0%})" if report.mode != "interleave" else "")
        table.add_row(arm.arm, requests, f"{arm.ctr_at_k:.1%}", ratio, f"{arm.abandonment:.1%}",
                      f"{arm.latency_p50_ms:.0f}" if arm.latency_p50_ms else "—",
                      f"{arm.latency_p99_ms:.0f}" if arm.latency_p99_ms else "—")
    out.print(table)
    for c in report.comparisons:
        if (line := c.ctr_line(k)) is not None:
            out.print(line, highlight=False, soft_wrap=True)
        if (line := c.latency_line()) is not None:
            out.print(f"  {line}", highlight=False, soft_wrap=True)
        out.print(f"  [bold]recommendation:[/] {c.recommendation.summary()}", highlight=False, soft_wrap=True)
    if report.interleaving is not None:
        names = (report.arms[0].arm, report.arms[1].arm)
        out.print(f"interleaving: {report.interleaving.summary(names)}", highlight=False, soft_wrap=True)
    if report.recommendation is not None and not report.comparisons:
        out.print(f"[bold]recommendation:[/] {report.recommendation.summary()}", highlight=False, soft_wrap=True)
    if report.events == 0:
        err.print("no feedback yet: send it to /v1/feedback (clicks, thumbs) to measure the arms", highlight=False)
