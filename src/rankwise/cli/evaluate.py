"""``rankwise eval``, ``rankwise label`` and ``rankwise label-import``: gold sets, metrics and gates.

Exit codes: 0 success, 1 a gate failed, 2 a user error (one ``error:`` line).
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rankwise.cli.common import (
    AllowDownload,
    BackendOpt,
    DatasetOpt,
    DeviceOpt,
    ExactVectors,
    FirstStageOpt,
    FirstStagesOpt,
    GoldsetOpt,
    GroupsOpt,
    IndexOpt,
    LimitQueries,
    MaxLength,
    MaxPOpt,
    MinQueriesOpt,
    RayOpt,
    RegistryOpt,
    RerankerOpt,
    RerankFusionOpt,
    RerankK,
    RetrieveK,
    StrictOpt,
    WorkersOpt,
    evaluation_progress,
    friendly_errors,
    load_goldset,
    load_reranker_option,
    out,
    prelude,
    prepare_goldset,
    progress_bars,
    warn,
    warn_leakage,
)
from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.gates import DEFAULT_MAX_P, DEFAULT_MIN_QUERIES
from rankwise.options import PipelineSettings

app = typer.Typer()


@app.command("eval")
@friendly_errors
def eval_(
    index_dir: IndexOpt,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split.")] = "test",
    goldset: GoldsetOpt = None,
    queries: Annotated[Path | None, typer.Option(help="Query texts for a TREC qrels --goldset.")] = None,
    first_stages: FirstStagesOpt = "bm25,dense,hybrid",
    reranker: RerankerOpt = "none",
    baseline: Annotated[str, typer.Option(help="System every other one is compared with.")] = "dense",
    candidate: Annotated[str | None, typer.Option(help="System judged by the gates (default: the last "
                                                      "one evaluated, e.g. hybrid+reranker).")] = None,
    metrics: Annotated[str, typer.Option(help="ir_measures names, comma-separated; the first is primary.")]
    = "nDCG@5,P@5,R@20,nDCG@10",
    scale: Annotated[str | None, typer.Option(help="Allowed labels, e.g. 0-3, 0,1 or binary.")] = None,
    retrieve_k: RetrieveK = 100,
    rerank_k: RerankK = 100,
    rerank_fusion: RerankFusionOpt = None,
    max_length: MaxLength = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
    limit_queries: LimitQueries = None,
    strict: StrictOpt = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON.")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the report as Markdown.")] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Write TREC run files + qrels here.")] = None,
    gate: Annotated[list[str] | None, typer.Option(help="Rule for the candidate: 'nDCG@5:+15%' or "
                                                        "'nDCG@10:+0.02' (repeatable).")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="Fail if the candidate's end-to-end p95 "
                                                              "latency exceeds this.")] = None,
    min_queries: MinQueriesOpt = DEFAULT_MIN_QUERIES,
    max_p: MaxPOpt = DEFAULT_MAX_P,
    seed: Annotated[int, typer.Option(help="Seed of the randomization test and bootstrap.")] = 0,
    exact_vectors: ExactVectors = False,
    group: GroupsOpt = None,
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    allow_download: AllowDownload = False,
) -> None:
    """Compare first stages (and each + a reranker) on a gold set: metrics, significance, latency, gates."""
    prelude(allow_download)
    from rankwise.evaluation.compare import evaluate, parse_first_stages
    from rankwise.evaluation.gates import GateEvidence, check_latency_limit, evaluate_gates, parse_gates
    from rankwise.evaluation.goldset import LabelScale
    from rankwise.evaluation.metrics import parse_metrics
    from rankwise.evaluation.report import print_report, to_html, to_markdown
    from rankwise.index import open_index

    # Everything the user typed is checked before minutes of retrieval start.
    gates = parse_gates(gate or [])
    check_latency_limit(max_latency_ms)
    evidence = GateEvidence(min_queries, max_p)
    metric_names = parse_metrics([metrics, *(g.metric for g in gates)])
    stages = parse_first_stages(first_stages)
    label_scale = LabelScale.parse(scale) if scale else None
    gold = load_goldset(dataset, split, goldset, queries)
    index = open_index(index_dir, exact=exact_vectors)
    prepared = prepare_goldset(gold, index, limit_queries, label_scale, group)
    if gates:
        evidence.check_queries(len(prepared.queries))
    warn(prepared.warnings)
    warn_leakage(reranker, registry, prepared.queries, strict)
    ranker = load_reranker_option(reranker, registry=registry, backend=backend, device=device, max_length=max_length)
    settings = PipelineSettings(retrieve_k=retrieve_k, rerank_k=rerank_k, rerank_fusion=rerank_fusion)
    run_queries = None
    if ray is not None:
        from rankwise.evaluation.query_runs import WorkerLoad, run_on_ray, worker_location
        from rankwise.rerank.loading import LoadOptions

        load = WorkerLoad(worker_location(index_dir), None if ranker is None else reranker, LoadOptions(
            backend=backend, device=device, max_length=max_length, registry=registry),  # type: ignore[arg-type]
            exact=exact_vectors, reranker_sha256=None if ranker is None else ranker.weights_sha256,
            index_fingerprint=index.fingerprint)
        run_queries = run_on_ray(ray, load, workers=workers, groups=group)
    with evaluation_progress() as progress:
        report = evaluate(index, prepared, first_stages=stages, reranker=ranker, metrics=metric_names,
                          baseline=baseline, candidate=candidate, seed=seed, progress=progress,
                          settings=settings, run_queries=run_queries, groups=group)
    result = evaluate_gates(report, gates, max_latency_ms, evidence) if gates or max_latency_ms is not None else None
    if result is not None:
        report.gates = result.to_dict()
    print_report(report, out)
    from rankwise.storage import atomic_write_text

    written = []
    if json_path:
        written.append(report.save_json(json_path))
    if markdown:
        atomic_write_text(markdown, to_markdown(report))
        written.append(markdown)
    if html_path:
        atomic_write_text(html_path, to_html(report))
        written.append(html_path)
    if run_dir:
        written.extend(report.write_runs(run_dir))
    if written:
        out.print("[dim]wrote " + ", ".join(str(p) for p in written) + "[/]", highlight=False, soft_wrap=True)
    if result is not None:
        for outcome in result.outcomes:
            out.print(f"[{'green' if outcome.passed else 'red'}]{escape(outcome.message)}[/]", highlight=False,
                      soft_wrap=True)
        if not result.passed:
            raise typer.Exit(result.exit_code)

@app.command("label")
@friendly_errors
def label(
    queries_file: Annotated[Path, typer.Argument(help="Queries: .txt (one a line), .jsonl, .csv or .tsv.")],
    index_dir: IndexOpt,
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory for labels.csv and labels.jsonl.")],
    first_stage: FirstStageOpt = "hybrid",
    reranker: RerankerOpt = "none",
    k: Annotated[int, typer.Option("--k", "-k", help="Documents per query to label.")] = 20,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
    group: GroupsOpt = None,
    allow_download: AllowDownload = False,
) -> None:
    """Write a labelling sheet (CSV + JSONL) of each query's current top-k documents."""
    prelude(allow_download)
    from rankwise.evaluation.labeling import build_sheet, write_sheet
    from rankwise.evaluation.queries import read_queries
    from rankwise.index import open_index
    from rankwise.pipeline import Pipeline

    texts = read_queries(queries_file)
    ranker = load_reranker_option(reranker, registry=registry, backend=backend, device=device)
    pipeline = Pipeline(open_index(index_dir), ranker, first_stage=first_stage)
    with progress_bars() as bars:
        task = bars.add_task("retrieving", total=len(texts))
        rows = build_sheet(pipeline, texts, k=k, progress=lambda done, _: bars.update(task, completed=done),
                           groups=group)
    csv_path, jsonl_path = write_sheet(rows, out_dir)
    out.print(f"[green]wrote[/] {len(rows)} rows for {len(texts)} queries to {csv_path} and {jsonl_path}\n"
              "Give each annotator a copy; they fill in 'label' (e.g. 0 = not relevant … 3 = perfect) and their "
              "name in 'annotator', then: rankwise label-import SHEET... --out goldset.jsonl", highlight=False)

@app.command("label-import")
@friendly_errors
def label_import(
    sheets: Annotated[list[Path], typer.Argument(help="Filled-in sheets (.csv or .jsonl), one per annotator.")],
    out_path: Annotated[Path, typer.Option("--out", help="Gold set JSONL to write.")],
    scale: Annotated[str | None, typer.Option(help="Allowed labels, e.g. 0-3, 0,1 or binary.")] = None,
) -> None:
    """Merge annotators' sheets into a gold set (majority vote), report kappa and list disagreements."""
    from rankwise.evaluation.goldset import LabelScale
    from rankwise.evaluation.labeling import merge_sheets, read_sheet, write_disagreements

    merged = merge_sheets([read_sheet(p) for p in sheets], scale=LabelScale.parse(scale) if scale else None,
                          name=out_path.stem)
    if not len(merged.goldset):
        raise EvaluationError("no labels found in the sheets (the 'label' column is empty everywhere)")
    merged.goldset.save(out_path)
    out.print(f"[green]wrote[/] {len(merged.goldset)} judgements for {len(merged.goldset.queries)} queries from "
              f"{len(merged.annotators)} annotators ({', '.join(merged.annotators)}) to {out_path}"
              + (f"; {merged.unlabelled_rows} rows had no label" if merged.unlabelled_rows else ""),
              highlight=False)
    a = merged.agreement
    if a is not None:
        kappa = "undefined (a single label was used)" if a.kappa != a.kappa else f"{a.kappa:.3f}"
        name = "Cohen's kappa" if a.statistic == "cohen_kappa" else "Fleiss' kappa"
        out.print(f"agreement over {a.items} pairs labelled by all: {name} = {kappa}, "
                  f"raw agreement {a.observed:.1%}", highlight=False)
    if merged.disagreements:
        path = write_disagreements(merged.disagreements, merged.annotators,
                                   out_path.with_name(out_path.stem + ".disagreements.csv"))
        table = Table(title=f"{len(merged.disagreements)} disagreements ({len(merged.ties)} ties, left out of the "
                            f"gold set) — all in {path}")
        for column in ("query", "document", *merged.annotators, "majority"):
            table.add_column(column)
        for d in merged.disagreements[:20]:
            table.add_row(escape(f"{d.query_id}: {d.query}"), escape(d.document_id),
                          *(str(d.labels.get(x, "")) for x in merged.annotators),
                          "[red]tie[/]" if d.tie else str(d.majority))
        out.print(table)
