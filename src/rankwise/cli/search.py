"""``rankwise index``, ``rankwise search`` and ``rankwise info``: build an index, query it, inspect it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rankwise.cli.common import (
    AllowDownload,
    AllowUnknownFilters,
    BackendOpt,
    DeviceOpt,
    ExactVectors,
    FirstStageOpt,
    GroupsOpt,
    IndexOpt,
    MaxLength,
    RayOpt,
    RegistryOpt,
    RerankerOpt,
    RerankFusionOpt,
    RerankK,
    RetrieveK,
    WorkersOpt,
    err,
    friendly_errors,
    load_reranker_option,
    out,
    prelude,
)
from rankwise.errors import CorpusError, QueryError
from rankwise.types import SearchResponse

app = typer.Typer()


@app.command()
@friendly_errors
def index(
    index_dir: IndexOpt,
    source: Annotated[str | None, typer.Argument(
        help="BEIR dir, .jsonl/.csv file, or a directory of .txt/.md/.html (with --update: the documents to "
             "add or replace).")] = None,
    update: Annotated[bool, typer.Option(
        "--update", help="Add or replace SOURCE's documents by id, keeping the rest (the index's own settings).")] = False,
    delete: Annotated[list[str] | None, typer.Option(
        "--delete", help="Remove this document id (repeatable); implies --update.")] = None,
    deletions: Annotated[Path | None, typer.Option(
        help="Remove the document ids in this file (one per line); implies --update.")] = None,
    rollback: Annotated[bool, typer.Option(
        "--rollback", help="Make the version the last build or update replaced live again.")] = False,
    embedding_model: Annotated[str, typer.Option(help="Bi-encoder: local dir or hub id.")] = "minilm",
    no_dense: Annotated[bool, typer.Option("--no-dense", help="Lexical-only index (no vectors).")] = False,
    passage_tokens: Annotated[int, typer.Option(help="Max tokens per passage.")] = 256,
    overlap: Annotated[int, typer.Option(help="Tokens shared by consecutive passages.")] = 48,
    embedding_backend: Annotated[str, typer.Option(
        help="Bi-encoder inference; auto: fastest for this CPU; torch: exact fp32 (torch-bf16 is reranker-only).")] = "auto",
    ray: RayOpt = None,
    workers: WorkersOpt = None,
    allow_download: AllowDownload = False,
) -> None:
    """Build, update or roll back an index (atomic; unchanged passages keep their vectors; the replaced
    version is kept as INDEX.previous)."""
    prelude(allow_download)
    from rankwise.corpus.chunking import ChunkingSettings
    from rankwise.index import rollback_index, update_index
    from rankwise.index.dense import Embedder
    from rankwise.index.location import build_index, in_postgres, shown
    from rankwise.index.update import read_deletions

    removed = [*(delete or []), *(read_deletions(deletions) if deletions is not None else [])]
    if rollback:
        if source is not None or update or removed:
            raise CorpusError("--rollback takes only --index: it swaps in the version kept beside the index")
        back = rollback_index(index_dir)
        out.print(f"[green]rolled back[/] {shown(index_dir)} to {back.manifest.num_documents} documents, fingerprint "
                  f"{back.fingerprint} (built {back.manifest.created_at}); the version rolled back from is now "
                  + ("the previous one" if in_postgres(index_dir) else f"{index_dir}.previous"))
        return
    if source is None and not removed:
        raise CorpusError("nothing to do: give a SOURCE to index, --delete/--deletions to remove documents, or --rollback")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bars:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total)
            bars.update(tasks[stage], completed=done, total=total)

        embed = None
        if ray is not None:
            from rankwise.index.ray_embedding import embed_with_ray

            embed = embed_with_ray(ray, workers=workers)
        if update or removed:
            built, summary = update_index(index_dir, source, delete=removed, progress=progress, embed=embed)
        else:
            chunking = ChunkingSettings(max_tokens=passage_tokens, overlap=overlap)
            embedder = None if no_dense else Embedder(embedding_model, backend=embedding_backend)  # type: ignore[arg-type]
            built = build_index(source, index_dir, embedding_model=None if no_dense else embedding_model,  # type: ignore[arg-type]
                                chunking=chunking, progress=progress, embedder=embedder, embed=embed)
            summary = None
    m = built.manifest
    stats = m.stats
    if summary is not None:
        missing = (f"; not in the index: {', '.join(summary.not_found[:5])}"
                   + (" …" if len(summary.not_found) > 5 else "")) if summary.not_found else ""
        changes = (f"{summary.added} added, {summary.changed} changed, {summary.unchanged} unchanged, "
                   f"{summary.deleted} deleted{missing}")
        if not summary.changes_anything:
            out.print(f"[yellow]unchanged[/] {shown(index_dir)}: {changes}; fingerprint {m.fingerprint}")
            return
        out.print(f"[green]updated[/] {shown(index_dir)}: {changes}")
    out.print(f"[green]indexed[/] {m.num_documents} documents → {m.num_passages} passages in {shown(index_dir)} "
              f"({stats.get('build_seconds')} s; embedded {stats.get('embedded')}, reused {stats.get('reused')}"
              + (f", {stats['passages_per_second']} passages/s" if stats.get("passages_per_second") else "")
              + f"); fingerprint {m.fingerprint}")


def _parse_filters(filters: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in filters:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise QueryError(f"filter '{item}' must look like key=value")
        parsed.setdefault(key, []).append(value)
    return {k: v[0] if len(v) == 1 else v for k, v in parsed.items()}


@app.command()
@friendly_errors
def search(
    query: Annotated[str, typer.Argument(help="The query text.")],
    index_dir: IndexOpt,
    first_stage: FirstStageOpt = "hybrid",
    reranker: RerankerOpt = "none",
    k: Annotated[int, typer.Option("--k", "-k", help="Results to show.")] = 10,
    retrieve_k: RetrieveK = 100,
    rerank_k: RerankK = 100,
    rerank_fusion: RerankFusionOpt = None,
    fusion: Annotated[str, typer.Option(help="Hybrid fusion: rrf | convex.")] = "rrf",
    alpha: Annotated[float, typer.Option(help="Dense weight for convex fusion.")] = 0.5,
    granularity: Annotated[str, typer.Option(help="document (MaxP) | passage.")] = "document",
    max_length: MaxLength = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "cpu",
    registry: RegistryOpt = None,
    filter_: Annotated[list[str], typer.Option("--filter", help="Metadata filter key=value (repeatable).")] = [],  # noqa: B006
    allow_unknown_filters: AllowUnknownFilters = False,
    group: GroupsOpt = None,
    exact_vectors: ExactVectors = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    allow_download: AllowDownload = False,
) -> None:
    """Search an index; with --reranker, show first-stage and reranker scores side by side."""
    prelude(allow_download)
    from rankwise.index import open_index
    from rankwise.pipeline import Pipeline, validate_query

    validate_query(query)
    idx = open_index(index_dir, exact=exact_vectors)
    ranker = load_reranker_option(reranker, registry=registry, backend=backend, device=device, max_length=max_length)
    pipeline = Pipeline(idx, ranker, first_stage=first_stage, retrieve_k=retrieve_k, rerank_k=rerank_k,
                        rerank_fusion=rerank_fusion, fusion=fusion, alpha=alpha,  # type: ignore[arg-type]
                        granularity=granularity, allow_unknown_filters=allow_unknown_filters)  # type: ignore[arg-type]
    response = pipeline.search(query, k=k, filters=_parse_filters(filter_), groups=group)
    if as_json:
        typer.echo(response.to_json())
    else:
        print_response(response)
        for warning in response.warnings:
            err.print(f"[yellow]notice:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def print_response(response: SearchResponse) -> None:
    """A table with final rank, both scores and the rank movement, then provenance and timings."""
    table = Table(title=f"“{response.query}”", show_lines=False, expand=True)
    for column, style in (("#", "bold"), ("doc", "cyan"), ("title / passage", ""), ("first stage", "yellow"),
                          ("reranker", "magenta"), ("move", "")):
        table.add_column(column, style=style, overflow="fold")
    for r in response.results:
        fs = f"{r.first_stage.method} #{r.first_stage.rank} {r.first_stage.score:.4g}"
        if r.first_stage.method == "hybrid":  # the evidence behind the fused value, each on its own scale
            fs += "".join(f"\n{name} " + ("—" if sig.rank is None else f"#{sig.rank} {sig.score:.3g}")
                          for name, sig in r.first_stage.signals.items())
        rr = "—" if r.reranker is None else f"#{r.reranker.rank} {r.reranker.score:.3f} (raw {r.reranker.raw_score:+.2f})"
        move = "" if r.reranker is None else (f"[green]↑{r.rank_change}[/]" if r.rank_change > 0 else
                                               f"[red]↓{-r.rank_change}[/]" if r.rank_change < 0 else "=")
        table.add_row(str(r.rank), r.doc_id, f"[bold]{r.title}[/]\n{r.snippet}" if r.title else r.snippet, fs, rr, move)
    out.print(table)
    p = response.provenance
    out.print(f"[dim]index {p.index_fingerprint} · embedding {p.embedding_model} ({p.embedding_sha256[:12]}) · "
              f"reranker {p.reranker} ({p.reranker_sha256[:12]}; {p.reranker_backend}) · {p.num_candidates} candidates, "
              f"{p.num_reranked} reranked, {p.num_split} split · "
              + " · ".join(f"{k} {v:.1f} ms" for k, v in response.timings_ms.items()) + "[/]")


@app.command()
@friendly_errors
def info(index_dir: IndexOpt) -> None:
    """Show an index's manifest (models, fingerprint, settings, counts)."""
    from dataclasses import asdict

    from rankwise.index import read_manifest

    typer.echo(json.dumps(asdict(read_manifest(index_dir)), indent=2))
