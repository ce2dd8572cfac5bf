"""``rankwise train`` and ``rankwise models list|show|diff|add|probe|promote|rollback``: fine-tuning and the
registry."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from rankwise.cli.common import (
    AllowDownload,
    BackendOpt,
    DatasetOpt,
    DeviceOpt,
    FirstStageOpt,
    GoldsetOpt,
    IndexOpt,
    LimitQueries,
    MaxPOpt,
    MinQueriesOpt,
    RegistryOpt,
    RerankFusionOpt,
    RerankK,
    StrictOpt,
    err,
    evaluation_progress,
    friendly_errors,
    load_goldset,
    load_reranker_option,
    out,
    prelude,
    prepare_goldset,
    warn,
    warn_leakage,
)
from rankwise.evaluation.gates import DEFAULT_MAX_P, DEFAULT_MIN_QUERIES
from rankwise.training.recipe import DEFAULT_BUDGET_S, DEFAULT_NEGATIVES

if TYPE_CHECKING:
    from rankwise.monitoring.probes import ProbeReport, ProbeResult
    from rankwise.registry import CardMetrics, Registry

app = typer.Typer()


def _registry(root: Path | None):
    from rankwise.registry import Registry

    return Registry(root)


@app.command()
@friendly_errors
def train(
    index_dir: Annotated[str, typer.Option("--index", "-i", help="Index to mine negatives from.")],
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(help="Qrels split of --dataset to train on.")] = "train",
    goldset: GoldsetOpt = None,
    base_model: Annotated[str | None, typer.Option(help="Where training starts: a model (local dir or hub id), or a registry name (production, candidate, vN) to continue that model, of its own kind. Default: the index's embedding model for a bi-encoder, the bundled MiniLM for a cross-encoder.")] = None,
    architecture: Annotated[str | None, typer.Option(help="bi-encoder (a domain-tuned copy of the embedding model) | cross-encoder (a residual over the dense cosine unless --no-residual). Default: the recipe's (a bi-encoder where the index has vectors), or the continued model's kind.")] = None,
    loss: Annotated[str | None, typer.Option(help="bce | lambda | listnet | softmax (default: the recipe's)")] = None,
    residual: Annotated[bool | None, typer.Option("--residual/--no-residual", help="Cross-encoder: learn a correction added to the index's dense cosine, starting at zero, so an untrained model ranks like the dense first stage (default: the recipe's).")] = None,
    freeze_passages: Annotated[bool | None, typer.Option("--freeze-passages/--no-freeze-passages", help="Bi-encoder: tune the query side only, against passages embedded once by a frozen copy of the starting model (default: the recipe's, from a few hundred judged queries).")] = None,
    negatives: Annotated[str, typer.Option(help="Negatives per query by source.")] = DEFAULT_NEGATIVES,
    depth: Annotated[int, typer.Option(help="Mine first-stage negatives from this many candidates.")] = 30,
    skip_top: Annotated[int, typer.Option(help="Skip the first N candidates (likely unjudged positives).")] = 0,
    margin: Annotated[float | None, typer.Option(help="Drop candidates scoring >= margin × best positive.")] = None,
    rounds: Annotated[int, typer.Option(help="Groups per query, each with freshly sampled negatives.")] = 1,
    max_positives: Annotated[int | None, typer.Option(min=1, help="At most N positives per query, the best-ranked kept; the rest are never negatives (default: the recipe's).")] = None,
    title_queries: Annotated[bool, typer.Option(help="Also train on document titles as pseudo-queries for their bodies (few labels).")] = False,
    validation_fraction: Annotated[float, typer.Option(help="Share of queries held out for early stopping.")] = 0.1,
    replay: Annotated[float, typer.Option(min=0, help="Continuing a registered model: replay its own training queries, this many per new training query (0: none).")] = 0.5,
    epochs: Annotated[float | None, typer.Option(help="Passes over the data (instead of the recipe's steps).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N steps (default: the recipe's).")] = None,
    train_seconds: Annotated[float | None, typer.Option(min=1, help=f"Wall-clock training budget; the best validated checkpoint is kept (default {DEFAULT_BUDGET_S:.0f}).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Pairs (bce) or groups (listwise) per step (default: the recipe's).")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Default: the recipe's.")] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per (query, passage) input (default: the recipe's).")] = None,
    eval_steps: Annotated[int | None, typer.Option(help="Validate and checkpoint every N steps (default: the recipe's).")] = None,
    layers: Annotated[int | None, typer.Option(help="Keep only the first N backbone layers (compact reranker).")] = None,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in validations.")] = 4,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 autocast (default: where native).")] = None,
    seed: Annotated[int, typer.Option()] = 42,
    output: Annotated[Path, typer.Option(help="Run dir: checkpoints (resumed automatically) and final model.")] = Path("runs/reranker"),
    registry: RegistryOpt = None,
    register: Annotated[bool, typer.Option(help="Register the result as the new 'candidate'.")] = True,
) -> None:
    """Fine-tune a reranker on judged queries with mined hard negatives (resumes from checkpoints).

    Unset options follow a recipe chosen from the data (printed with its reasons); any option set wins.
    """
    prelude()
    from rankwise.index import open_index
    from rankwise.options import choose
    from rankwise.training.data import JudgedQueries
    from rankwise.training.finetune import ARCHITECTURES
    from rankwise.training.session import SessionSettings, train_session

    reg = _registry(registry)
    settings = SessionSettings(
        base_model=base_model, architecture=choose(architecture, ARCHITECTURES, "architecture") if architecture else None,
        loss=loss, residual=residual, frozen_passages=freeze_passages, negatives=negatives, depth=depth, skip_top=skip_top, margin=margin,
        rounds=rounds, max_positives=max_positives, title_queries=title_queries,
        validation_fraction=validation_fraction, replay=replay, epochs=epochs, max_steps=max_steps,
        train_seconds=train_seconds, batch_size=batch_size, learning_rate=learning_rate, max_length=max_length,
        eval_steps=eval_steps, layers=layers, patience=patience, bf16=bf16, seed=seed)
    index = open_index(index_dir)
    judged = JudgedQueries.from_goldset(load_goldset(dataset, split, goldset), known_documents=index.passage_doc_ids)
    session = train_session(index, judged, settings, output, registry=reg, reporter=_ConsoleReporter())
    out.print_json(json.dumps(session.summary))
    verdict = session.verdict
    if verdict is None:
        out.print(f"[yellow]no validation queries ({len(judged.qrels)} judged, --validation-fraction "
                  f"{validation_fraction:g} held out none): nothing says whether this model beats the first stage; "
                  "run the gate (rankwise models promote) before using it[/]", highlight=False)
    else:
        out.print(f"[{'green' if verdict.beats_first_stage else 'bold red'}]{verdict.message}[/]", highlight=False)
    if register:
        # absolute, so that a model continued later, from another directory, can replay them
        source: dict[str, Any] = ({"dataset": str(dataset.resolve()), "split": split} if dataset
                                  else {"goldset": str(goldset.resolve()) if goldset else None})
        card = session.card(settings, source, index, parent=session.start.parent or reg.aliases().get("production"))
        entry = reg.register(session.model_dir, card)
        out.print(f"[green]registered[/] {entry.version} as candidate in {reg.root} (sha256 {entry.weights_sha256[:12]})")


class _ConsoleReporter:
    """What a training session says, on the terminal: lines, and a spinner over the long steps."""

    def note(self, text: str) -> None:
        out.print(escape(text), highlight=False)

    def stage(self, text: str) -> Any:
        return out.status(text)


models_app = typer.Typer(help="The model registry: versions, aliases, promotion and rollback.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@friendly_errors
def list_models(registry: RegistryOpt = None) -> None:
    """All versions with their aliases and headline metrics."""
    reg = _registry(registry)
    aliases: dict[str, list[str]] = {}
    for alias, version in reg.aliases().items():
        aliases.setdefault(version, []).append(alias)
    # fits 80 columns: the base model (often a long path) folds, nothing else is cut
    table = Table(box=box.SIMPLE_HEAD, title=f"models in {reg.root}")
    for col in ("version", "aliases", "created (UTC)", "base model", "val nDCG@10", "sha256"):
        table.add_column(col, overflow="fold", no_wrap=col in ("version", "created (UTC)", "sha256"),
                         min_width=len("production,") if col == "aliases" else None)
    for v in reg.versions():
        val = v.card.validation_ndcg10
        created = "—" if v.card.created_at is None else v.card.created_at[:16].replace("T", " ")
        table.add_row(v.version, ", ".join(aliases.get(v.version, [])), created,
                      str(v.card.base_model), "—" if val is None else f"{val:.4f}",
                      v.weights_sha256[:12])
    out.print(table)
    for problem in reg.problems():
        err.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False, soft_wrap=True)


@models_app.command("add")
@friendly_errors
def add(
    model: Annotated[str, typer.Argument(help="Cross-encoder to register: a local Hugging Face / sentence-"
                                              "transformers directory, or a hub id in the local cache.")],
    name: Annotated[str | None, typer.Option(help="A display name recorded in the card (default: MODEL).")] = None,
    alias: Annotated[str, typer.Option(help="Alias the new version takes: candidate, or none.")] = "candidate",
    index_dir: Annotated[str | None, typer.Option("--index", "-i", help="Index to evaluate it on (optional).")]
    = None,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(help="Qrels split of --dataset.")] = "test",
    goldset: GoldsetOpt = None,
    first_stage: FirstStageOpt = "hybrid",
    limit_queries: LimitQueries = None,
    allow_download: AllowDownload = False,
    registry: RegistryOpt = None,
) -> None:
    """Register any cross-encoder as an immutable version, so it can be evaluated, promoted and rolled back."""
    prelude(allow_download)
    from rankwise.errors import QueryError
    from rankwise.models import resolve_model, weights_sha256
    from rankwise.registry import ModelCard
    from rankwise.rerank import CrossEncoderReranker

    if alias not in ("candidate", "none"):
        raise QueryError(f"--alias must be candidate or none (got '{alias}'); promote with `rankwise models promote`")
    from rankwise.rerank.sanity import probe_reranker

    path = resolve_model(model)
    reranker = CrossEncoderReranker(path, backend="torch")  # refuses what cannot serve as a reranker, in one line
    probe_reranker(reranker)  # ... and what loads but cannot score
    card = ModelCard(source=model, name=name or model, base_model=model, source_weights_sha256=weights_sha256(path),
                     max_length=reranker.max_length, added_with="rankwise models add", parent=None)
    if index_dir is not None or dataset is not None or goldset is not None:
        card = replace(card, metrics=_evaluate_added(reranker, index_dir, dataset, split, goldset, first_stage,
                                                     limit_queries))
    reg = _registry(registry)
    entry = reg.register(path, card, alias=None if alias == "none" else alias)
    evaluated = card.evaluation
    out.print(f"[green]registered[/] {model} as {entry.version}" + (" (candidate)" if alias == "candidate" else "")
              + f" in {reg.root} (sha256 {entry.weights_sha256[:12]})"
              + (f"; {first_stage}+reranker {', '.join(f'{k} {v:.4f}' for k, v in evaluated.items())}"
                 if evaluated else ""), highlight=False)


def _evaluate_added(reranker: Any, index_dir: str | None, dataset: Path | None, split: str,
                    goldset: Path | None, first_stage: str, limit_queries: int | None) -> CardMetrics:
    from rankwise.errors import QueryError
    from rankwise.evaluation.compare import evaluate
    from rankwise.index import open_index
    from rankwise.registry import CardMetrics

    if index_dir is None:
        raise QueryError("evaluating an added model needs --index and one of --dataset/--goldset")
    gold = load_goldset(dataset, split, goldset)
    index = open_index(index_dir)
    prepared = prepare_goldset(gold, index, limit_queries)
    with out.status("evaluating the model…"):
        report = evaluate(index, prepared, first_stages=[first_stage], reranker=reranker, baseline=first_stage,
                          metrics=["nDCG@10", "nDCG@5"], n_resamples=1000)
    system = next(name for name in report.scores if name != first_stage)
    return CardMetrics(evaluation=report.scores[system], first_stage=report.scores[first_stage],
                       goldset=str(dataset or goldset), split=split if dataset else None,
                       queries=len(prepared.queries))


@models_app.command("show")
@friendly_errors
def show(version: str, registry: RegistryOpt = None) -> None:
    """A version's model card (by id or alias), with its latest behaviour-probe results."""
    reg = _registry(registry)
    entry = reg.get(version)
    view: dict[str, Any] = {"path": str(entry.path), **entry.card.to_dict()}
    probes = reg.probe_events(entry.version)
    if probes:
        view["behaviour_probes"] = {"recorded_at": probes[-1].get("at"), **probes[-1]["results"]}
    out.print_json(json.dumps(view))


@models_app.command("diff")
@friendly_errors
def diff(a: str, b: str, registry: RegistryOpt = None) -> None:
    """What differs between two versions' cards."""
    table = Table(title=f"{a} vs {b}")
    for col in ("field", a, b):
        table.add_column(col, overflow="fold")
    for key, (left, right) in _registry(registry).diff(a, b).items():
        table.add_row(key, _short(left), _short(right))
    out.print(table)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "…"


@models_app.command("probe")
@friendly_errors
def probe(
    model: Annotated[str, typer.Argument(help="Registry name (production, candidate, v3: results are "
                                              "recorded in the registry history) or a model directory "
                                              "(printed only).")],
    index_dir: IndexOpt,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(help="Qrels split of --dataset.")] = "test",
    goldset: GoldsetOpt = None,
    pairs: Annotated[int, typer.Option(min=1, help="Probe at most N judged-relevant (query, document) "
                                                   "pairs.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the sample (the same seed probes the same pairs).")] = 0,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    registry: RegistryOpt = None,
) -> None:
    """Behaviour probes: does the score drop under negation and swapped numbers or entities, resist keyword
    stuffing, and hold under paraphrase? (CheckList-style tests on pairs from a gold set.)"""
    prelude()
    from rankwise.index import open_index
    from rankwise.monitoring.probes import run_probes, sample_pairs
    from rankwise.registry import names_registry

    index = open_index(index_dir)
    prepared = prepare_goldset(load_goldset(dataset, split, goldset), index, None)
    warn_leakage(model, registry, prepared.queries, strict=False)  # probing training queries flatters a model
    probe_pairs = sample_pairs(prepared, index, limit=pairs, seed=seed)
    reg = _registry(registry)
    # an alias is resolved once: the version probed is the version the results are recorded for
    version = reg.get(model).version if names_registry(model) else None
    reranker = load_reranker_option(version or model, registry=registry, backend=backend, device=device)
    if reranker is None:
        from rankwise.errors import ModelError

        raise ModelError("probing needs a reranker; pass a registry name or a model directory, not 'none'")
    with out.status(f"probing {reranker.name} on {len(probe_pairs)} pairs…"):
        report = run_probes(reranker, probe_pairs, source=f"{prepared.name}, seed {seed}")
    if version is not None:
        reg.record_probe(version, report.to_dict())
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        for line in report.summary_lines():
            out.print(escape(line), highlight=False, soft_wrap=True)
    if version is not None:
        err.print(f"recorded for {version} in {reg.history_location}", highlight=False, soft_wrap=True)


def _latest_probes(reg: Registry, version: str) -> ProbeReport | None:
    """The latest probe report of a version, or ``None`` when it was never probed."""
    from rankwise.monitoring.probes import ProbeReport

    events = reg.probe_events(version)
    return ProbeReport.from_dict(events[-1]["results"]) if events else None


def _compare_probes(reg: Registry, target: str, name: str) -> None:
    """Print the candidate's behaviour probes against production's and warn on regressions (never blocks:
    even unreadable probe results are only a warning)."""
    from rankwise.errors import ModelError
    from rankwise.monitoring.probes import compare, mismatch

    try:
        candidate = _latest_probes(reg, target)
        production = reg.aliases().get("production")
        baseline = None if production in (None, target) else _latest_probes(reg, str(production))
    except ModelError as error:
        warn([f"behaviour probes not compared: {error}"])
        return
    if candidate is None:
        out.print(f"hint: {target} has no behaviour-probe results; run `rankwise models probe {name} --index "
                  "DIR --dataset DIR` to check negation and keyword stuffing before promoting",
                  highlight=False, soft_wrap=True)
        return
    if production is None or production == target:
        return
    if baseline is None:
        out.print(f"behaviour probes: production {production} has none recorded, nothing to compare",
                  highlight=False, soft_wrap=True)
        return
    rates = [(r.probe, baseline.result(r.probe), r) for r in candidate.results]
    changes = ", ".join(f"{probe} {_rate(old)} → {_rate(new)}"
                        for probe, old, new in rates if old is not None)
    out.print(f"behaviour probes, {target} vs production {production}: {changes}", highlight=False,
              soft_wrap=True)
    note = mismatch(candidate, baseline)
    warn([note] if note else [])
    warn([f"behaviour probe regression: {line} (a warning only: probes never block a promotion)"
          for line in compare(candidate, baseline)])


def _rate(result: ProbeResult | None) -> str:
    return "—" if result is None or result.pass_rate is None else f"{result.pass_rate:.2f}"


@models_app.command("promote")
@friendly_errors
def promote(
    version: Annotated[str, typer.Argument(help="Version or alias to promote.")] = "candidate",
    index_dir: Annotated[str | None, typer.Option("--index", "-i", help="Index the gold set is evaluated on.")] = None,
    dataset: DatasetOpt = None,
    split: Annotated[str, typer.Option(help="Qrels split of --dataset.")] = "test",
    goldset: GoldsetOpt = None,
    first_stage: FirstStageOpt = "hybrid",
    metric: Annotated[str, typer.Option(help="Metric the gain is measured on.")] = "nDCG@5",
    min_gain: Annotated[float, typer.Option(help="Required relative gain (0.05 = +5%).")] = 0.05,
    max_latency_regression: Annotated[float, typer.Option(help="Allowed p95 latency increase (0.25 = +25%).")] = 0.25,
    min_queries: MinQueriesOpt = DEFAULT_MIN_QUERIES,
    max_p: MaxPOpt = DEFAULT_MAX_P,
    rerank_k: RerankK = 100,
    rerank_fusion: RerankFusionOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "cpu",
    limit_queries: LimitQueries = None,
    force: Annotated[bool, typer.Option("--force", help="Promote without the gate (recorded in history).")] = False,
    strict: StrictOpt = False,
    registry: RegistryOpt = None,
) -> None:
    """Promote a version to production if it beats production on a gold set (or --force, recorded).

    Behaviour probes (`rankwise models probe`) recorded for both versions are compared and regressions are
    printed as warnings; they never block a promotion.
    """
    from rankwise.errors import QueryError
    from rankwise.evaluation.gates import GateEvidence

    evidence = GateEvidence(min_queries, max_p)
    reg = _registry(registry)
    target = reg.get(version).version
    if not force and (index_dir is None or (dataset is None) == (goldset is None)):
        raise QueryError("the promotion gate needs --index and exactly one of --dataset/--goldset (or use --force)")
    _compare_probes(reg, target, version)
    if force:
        _check_scores(reg, target, backend, device)  # the gate checks it where it loads the candidate
        reg.promote(target, forced=True, by=_operator())
        out.print(f"[yellow]{target} forced to production (recorded in {reg.history_location})[/]")
        return
    assert index_dir is not None
    gold = load_goldset(dataset, split, goldset)
    from rankwise.index import open_index
    from rankwise.training.promotion import check_promotion

    index = open_index(index_dir)
    prepared = prepare_goldset(gold, index, limit_queries)
    warn_leakage(target, registry, prepared.queries, strict)  # a gate passed on training queries means nothing
    prelude()
    with evaluation_progress() as progress:
        decision = check_promotion(reg, index, prepared, candidate=target, first_stage=first_stage, metric=metric,
                                   min_gain=min_gain, max_latency_regression=max_latency_regression,
                                   rerank_k=rerank_k, rerank_fusion=rerank_fusion, evidence=evidence,
                                   progress=progress, backend=backend, device=device)
    out.print(f"{metric}: {target} {decision.candidate_value:.4f} vs {decision.against} {decision.baseline_value:.4f} "
              f"({decision.relative_gain:+.1%}, required > {min_gain:+.1%}; randomization p = {decision.p_value:.3g} "
              f"over {decision.queries} queries, required < {max_p:g}); p95 {decision.candidate_p95_ms:.0f} ms",
              highlight=False)
    if not decision.passed:
        for reason in decision.reasons:
            out.print(f"[red]refused:[/] {reason}")
        raise typer.Exit(1)
    reg.promote(target, gate=decision.to_dict(), by=_operator())
    out.print(f"[green]{target} promoted to production[/]")


def _check_scores(reg: Registry, version: str, backend: str, device: str) -> None:
    """Refuse, in one line, to force into production a version that cannot score a probe batch."""
    from rankwise.rerank.loading import load_reranker
    from rankwise.rerank.sanity import probe_reranker

    with out.status(f"checking that {version} scores…"):
        reranker = load_reranker(version, registry=reg, backend=backend, device=device)
        assert reranker is not None  # a registry version always loads as a reranker (or raises)
        probe_reranker(reranker)


@models_app.command("rollback")
@friendly_errors
def rollback(registry: RegistryOpt = None) -> None:
    """Point production back at the previous production version."""
    version = _registry(registry).rollback(by=_operator())
    out.print(f"[yellow]production rolled back to {version}[/]")


@models_app.command("share")
@friendly_errors
def share(
    store: Annotated[str, typer.Option("--store", help="postgresql://user@host/database: where every replica will "
                                                       "read the registry's history and aliases.")],
    registry: RegistryOpt = None,
    name: Annotated[str | None, typer.Option(help="The registry's name in the store (default: its directory's).")] = None,
) -> None:
    """Move the registry's history (hence its aliases) into PostgreSQL; the versions stay in the directory."""
    from rankwise.postgres import PostgresStore

    reg = _registry(registry)
    moved = reg.share(PostgresStore(store), name)
    out.print(f"[green]shared[/] {moved} events of {reg.root} in {PostgresStore(store)}; every process that opens "
              f"{reg.root} now reads its aliases there")


def _operator() -> str:
    """Who changed production from the command line, as the registry's history records it (the console
    records the key instead)."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return "cli"
