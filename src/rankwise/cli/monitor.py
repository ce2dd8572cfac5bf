"""``rankwise monitor run | check | pin | list | drift``: scheduled evaluation with drift alarms, for cron,
and label-free drift of the traffic between evaluations.

A monthly crontab entry is typically two lines — record a run, then check it::

    rankwise monitor run --index idx --goldset gold.jsonl --reranker production --first-stage hybrid
    rankwise monitor check --reference 30d --metric nDCG@5 --max-drop 10% --html /var/www/monitor.html

Exit codes of ``check``: 0 ok or inconclusive, 1 alarm, 2 a user error (one ``error:`` line) — so cron's
mail, or any wrapper that pages on a non-zero exit, fires on an alarm and on a broken setup alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.markup import escape

from rankwise.cli.common import (
    DEFAULT_STORE,
    MONITOR_DB,
    AllowDownload,
    BackendOpt,
    DatasetOpt,
    DeviceOpt,
    FeedbackDbOpt,
    FirstStageOpt,
    GoldsetOpt,
    IndexOpt,
    LimitQueries,
    MaxLength,
    RayOpt,
    RegistryOpt,
    RerankerOpt,
    RerankFusionOpt,
    RerankK,
    RetrieveK,
    StoreOpt,
    StrictOpt,
    WorkersOpt,
    err,
    evaluation_progress,
    friendly_errors,
    load_goldset,
    open_feedback_store,
    out,
    prelude,
    prepare_goldset,
    store_location,
    warn,
    warn_leakage,
)
from rankwise.postgres import PostgresStore

app = typer.Typer()
monitor_app = typer.Typer(help="Scheduled evaluation on a gold set, with drift alarms.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")

HistoryOpt = Annotated[str, typer.Option(
    "--history", help="Monitoring history (SQLite): a path or 'default' (the user data directory).")]
NameOpt = Annotated[str, typer.Option(help="Monitor name: one history holds several configurations apart.")]


def _history_at(value: str, shared: str | None) -> Path | PostgresStore:
    from rankwise.monitoring.history import MonitorError

    where = store_location(value, shared, "--history", MONITOR_DB)
    if where is None:
        raise MonitorError("--history none keeps no history, so there is nothing to record or check; pass a "
                           "path or 'default'")
    return where


@monitor_app.command("run")
@friendly_errors
def run(
    index_dir: IndexOpt,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split.")] = "test",
    goldset: GoldsetOpt = None,
    queries: Annotated[Path | None, typer.Option(help="Query texts for a TREC qrels --goldset.")] = None,
    reranker: RerankerOpt = "none",
    registry: RegistryOpt = None,
    first_stage: FirstStageOpt = "hybrid",
    backend: BackendOpt = "auto",
    device: DeviceOpt = "cpu",
    max_length: MaxLength = None,
    retrieve_k: RetrieveK = 100,
    rerank_k: RerankK = 100,
    rerank_fusion: RerankFusionOpt = None,
    metrics: Annotated[str, typer.Option(help="ir_measures names, comma-separated (MRR@10 is RR@10).")]
    = "nDCG@5,nDCG@10,R@20,RR@10",
    history: HistoryOpt = DEFAULT_STORE,
    shared: StoreOpt = None,
    name: NameOpt = "default",
    slice_by: Annotated[list[str] | None, typer.Option(
        "--slice-by", help="Also slice by this document metadata key of each query's relevant documents "
                           "(repeatable), e.g. category.")] = None,
    limit_queries: LimitQueries = None,
    strict: StrictOpt = False,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    allow_download: AllowDownload = False,
) -> None:
    """Evaluate the serving configuration on the gold set and append the run to the history."""
    prelude(allow_download)
    from rankwise.evaluation.metrics import parse_metrics
    from rankwise.index import open_index
    from rankwise.monitoring.histories import open_history
    from rankwise.monitoring.run import monitor_run, resolve_reranker
    from rankwise.monitoring.slices import check_slice_keys, read_query_tags
    from rankwise.options import PipelineSettings
    from rankwise.rerank.loading import LoadOptions

    # everything the user typed is checked, and the history opened, before models load and minutes of
    # evaluation start
    metric_names = parse_metrics(metrics)
    settings = PipelineSettings(first_stage, retrieve_k, rerank_k, rerank_fusion)  # type: ignore[arg-type]
    load = LoadOptions(backend=backend, device=device, max_length=max_length, registry=registry)  # type: ignore[arg-type]
    path = _history_at(history, shared)
    with open_history(path) as store:
        gold = load_goldset(dataset, split, goldset, queries)
        tags = None
        if goldset is not None and goldset.suffix.lower() == ".jsonl":  # a gold-set JSONL may tag its queries
            tags = read_query_tags(goldset)
        index = open_index(index_dir)
        check_slice_keys(index, slice_by or [])
        prepared = prepare_goldset(gold, index, limit_queries)
        warn(prepared.warnings)
        warn_leakage(reranker, registry, prepared.queries, strict)
        resolved = resolve_reranker(reranker, load)
        run_queries = None
        if ray is not None:
            from rankwise.evaluation.query_runs import WorkerLoad, run_on_ray, worker_location

            ranker = resolved.reranker if resolved is not None else None
            run_queries = run_on_ray(ray, WorkerLoad(worker_location(index_dir),
                                                     None if resolved is None else resolved.version, load,
                                                     reranker_sha256=None if ranker is None else ranker.weights_sha256,
                                                     index_fingerprint=index.fingerprint), workers=workers)
        with evaluation_progress() as progress:
            record = monitor_run(index, prepared, name=name, settings=settings, reranker=resolved,
                                 metrics=metric_names, slice_by=slice_by or [], tags=tags, progress=progress,
                                 run_queries=run_queries)
        store.append(record)
    scores = " · ".join(f"{m} {v:.3f}" for m, v in record.metrics.items())
    out.print(f"recorded run {record.id} of '{record.name}': {scores} ({record.num_queries} queries, "
              f"{record.system}, p95 {record.latency['p95']:.1f} ms) in {path}", highlight=False,
              soft_wrap=True)


@monitor_app.command("check")
@friendly_errors
def check_cmd(
    history: HistoryOpt = DEFAULT_STORE,
    shared: StoreOpt = None,
    name: NameOpt = "default",
    reference: Annotated[str, typer.Option(
        help="Compare the latest run with: previous | 30d (the run closest to 30 days earlier) | baseline "
             "(the pinned run).")] = "previous",
    metric: Annotated[str, typer.Option(help="Metric the alarm watches (ir_measures name).")] = "nDCG@5",
    max_drop: Annotated[str, typer.Option(help="Alarm on a relative drop larger than this (and significant): "
                                               "10% or 0.1.")] = "10%",
    alpha: Annotated[float, typer.Option(help="Significance level of the paired randomization test.")] = 0.05,
    min_queries: Annotated[int, typer.Option(help="Fewer paired queries than this is inconclusive, never an "
                                                  "alarm.")] = 10,
    slices: Annotated[bool, typer.Option(
        "--slices/--no-slices", help="Apply the rule inside every recorded slice too (Holm-corrected).")
    ] = True,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the result as JSON on stdout (the summary line goes to stderr).")] = False,
    html_path: Annotated[Path | None, typer.Option(
        "--html", help="Write a self-contained HTML report.")] = None,
) -> None:
    """Compare the latest run with its reference; exit 1 on an alarm."""
    from rankwise.monitoring.check import check
    from rankwise.monitoring.histories import open_history
    from rankwise.options import parse_share

    share = parse_share(max_drop, "--max-drop")
    with open_history(_history_at(history, shared), create=False) as store:
        result = check(store, name=name, reference=reference, metric=metric, max_drop=share, alpha=alpha,
                       min_queries=min_queries, slices=slices)
        records = store.records(name) if html_path else []
    warn(list(result.warnings))
    if html_path:
        from rankwise.monitoring.html import to_html
        from rankwise.storage import atomic_write_text

        atomic_write_text(html_path, to_html(result, records))
    color = {"ok": "green", "alarm": "bold red", "inconclusive": "yellow"}[result.status]
    line = f"[{color}]{escape(result.summary())}[/]"
    if as_json:
        err.print(line, highlight=False, soft_wrap=True)
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False, allow_nan=False, indent=2))
    else:
        out.print(line, highlight=False, soft_wrap=True)
    if html_path:
        err.print(f"[dim]wrote {escape(str(html_path))}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(result.exit_code)


@monitor_app.command("pin")
@friendly_errors
def pin(
    record_id: Annotated[str, typer.Argument(
        help="Run id (or its first characters) to compare later runs with.")],
    history: HistoryOpt = DEFAULT_STORE,
    shared: StoreOpt = None,
) -> None:
    """Pin a run as its monitor's baseline (`check --reference baseline`); the latest pin wins."""
    from rankwise.monitoring.histories import open_history

    with open_history(_history_at(history, shared), create=False) as store:
        record = store.pin_baseline(record_id)
    out.print(f"pinned run {record.id} ({record.time}) as the baseline of '{record.name}'", highlight=False,
              soft_wrap=True)


@monitor_app.command("list")
@friendly_errors
def list_cmd(
    history: HistoryOpt = DEFAULT_STORE,
    shared: StoreOpt = None,
    name: Annotated[str | None, typer.Option(help="Only this monitor's runs (default: all of them).")] = None,
) -> None:
    """The recorded runs, oldest first, one a line: id (for `pin`), time, setup, metrics."""
    from rankwise.monitoring.histories import open_history

    with open_history(_history_at(history, shared), create=False) as store:
        records = store.records(name)
        pinned = {b.id for n in store.names() if (b := store.baseline(n)) is not None}
    for r in records:
        scores = " ".join(f"{m} {v:.3f}" for m, v in r.metrics.items())
        gold = f"{r.goldset_fingerprint[:8]} ({r.num_queries} q)"
        setup = f"{r.system}  index {r.index_fingerprint[:8]}  gold {gold}"
        out.print(f"{r.id[:12]}  {r.time[:16].replace('T', ' ')}  {r.name}  {setup}  {scores}  "
                  f"p95 {r.latency['p95']:.1f} ms" + ("  (baseline)" if r.id in pinned else ""),
                  highlight=False, soft_wrap=True, markup=False)


#: how the drift table names the test that decided a signal
_TEST_NAMES = {"ks": "KS", "chi2": "χ²"}


@monitor_app.command("drift")
@friendly_errors
def drift(
    feedback_db: FeedbackDbOpt = DEFAULT_STORE, shared: StoreOpt = None,
    since: Annotated[str | None, typer.Option(help="Current window: traffic newer than this (30m, 2h, 7d or an "
                                                   "ISO time).")] = "1d",
    until: Annotated[str | None, typer.Option(help="Current window: traffic older than this.")] = None,
    reference: Annotated[Path | None, typer.Option(help="A saved reference window (from --save-reference).")] = None,
    reference_since: Annotated[str | None, typer.Option(help="Reference window from the query log: start.")] = None,
    reference_until: Annotated[str | None, typer.Option(help="Reference window from the query log: end.")] = None,
    save_reference: Annotated[Path | None, typer.Option(help="Save the current window as a reference (for "
                                                             "`serve --drift-reference` and later checks).")] = None,
    psi: Annotated[float, typer.Option(help="PSI at or above which a signal may drift.")] = 0.2,
    ks_alpha: Annotated[float, typer.Option(help="p-value (chi-square for discrete signals, KS for continuous "
                                                 "ones) below which a signal may drift.")] = 0.01,
    min_samples: Annotated[int, typer.Option(help="Fewer values in a window: 'not enough data'.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Label-free drift of the traffic: query length, OOV rate, top scores, margin and rank changes of a
    window of the query log against a reference window (PSI and KS). Exit 0 no drift, 1 drift, 2 error."""
    from rich.table import Table

    from rankwise.monitoring.drift import DriftError, DriftReference, DriftThresholds, signals_from_store

    thresholds = DriftThresholds(psi=psi, ks_alpha=ks_alpha, min_samples=min_samples)
    store = open_feedback_store(feedback_db, shared)
    try:
        if save_reference is not None:
            saved = DriftReference.from_store(store, since, until)
            saved.save(save_reference)
            out.print(f"saved a reference window of {saved.requests} searches ({saved.since or 'start'} → "
                      f"{saved.until or 'now'}) to {save_reference}", highlight=False, soft_wrap=True)
            return
        if (reference is None) == (reference_since is None and reference_until is None):
            raise DriftError("give the reference window either as --reference FILE or as --reference-since / "
                             "--reference-until over the query log")
        base = (DriftReference.load(reference) if reference is not None
                else DriftReference.from_store(store, reference_since, reference_until))
        current = signals_from_store(store, since, until)
    finally:
        store.close()
    report = base.compare(current, thresholds)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        table = Table(box=box.SIMPLE_HEAD, title=f"traffic drift: current window ({since or 'start'} → {until or 'now'}) vs reference "
                            f"({base.since or 'start'} → {base.until or 'now'})")
        for column in ("signal", "n ref/now", "median ref→now", "PSI", "p (test)", "status"):
            table.add_column(column, justify="left" if column in ("signal", "status") else "right",
                             no_wrap=column != "status")
        for s in report.signals:
            medians = ("—" if s.reference_median is None or s.current_median is None
                       else f"{s.reference_median:.3g}→{s.current_median:.3g}")
            style = {"drift": "bold red", "ok": "green"}.get(s.status, "yellow")
            table.add_row(s.name, f"{s.n_reference}/{s.n_current}", medians,
                          "—" if s.psi is None else f"{s.psi:.3f}",
                          "—" if s.pvalue is None else f"{s.pvalue:.2g} ({_TEST_NAMES[s.test]})",
                          f"[{style}]{s.status}[/]")
        out.print(table)
    err.print(("[bold red]DRIFT[/] " if report.alarm else "[green]ok[/] ") + escape(report.summary()),
              highlight=False, soft_wrap=True)
    if report.alarm:
        raise typer.Exit(1)
