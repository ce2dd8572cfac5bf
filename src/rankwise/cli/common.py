"""What every command shares: the consoles, one-line errors, the start-up prelude and the options.

Each option is declared once here, so a flag means the same thing, with the same name, help and default,
on every command that has it — a model promoted under one ``--rerank-fusion`` has to be served with the
same one, and ``--backend`` must pick the same numerics in ``search``, ``eval`` and ``serve``. This module
imports no command module (they import it), so the CLI has no import cycle.

Choice options are plain strings here and validated by the library (:mod:`rankwise.options`,
:func:`~rankwise.inference.backends.resolve_backend`): one validator per option for every front end, and a
bad value is one ``error:`` line like any other user error rather than a usage box.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rankwise.errors import RankwiseError
from rankwise.postgres import PostgresStore, StoreError

if TYPE_CHECKING:
    from rankwise.evaluation.goldset import GoldSet, LabelScale, PreparedGoldSet
    from rankwise.index import Index
    from rankwise.registry import ModelCard
    from rankwise.rerank.base import Reranker

# emoji=False: a gate such as "nDCG@10:-1:" must not become a thumbs-down emoji
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(func: F) -> F:
    """Turn user errors into one red ``error:`` line and the error's exit code (tracebacks only for real bugs)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RankwiseError as error:
            err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


DEFAULT_STORE = "default"
FEEDBACK_DB = "feedback.sqlite"
MONITOR_DB = "monitor.sqlite"
#: the same flag on serve, feedback export and feedback purge
RetentionOpt = Annotated[str | None, typer.Option(help="Delete query-log rows (and their feedback) older than "
                                                       "this, e.g. 30d.")]
FeedbackDbOpt = Annotated[str, typer.Option(
    "--feedback-db", help="Query log and feedback store (SQLite): a path, 'default' (the user data "
                          "directory) or 'none' (serve: no query log, no /v1/feedback).")]


StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="Shared PostgreSQL store (postgresql://user@host/db) for several replicas: the audit log, "
                    "the query log and feedback, the monitoring history.")]


def store_location(value: str, store: str | None, flag: str, default_name: str) -> Path | PostgresStore | None:
    """Where a store is: ``none`` turns it off; with ``--store`` it is in PostgreSQL (an explicit path beside
    ``--store`` is refused: two places for one store); else a SQLite path (``default``: the user data dir)."""
    if value.lower() == "none":
        return None
    if store is not None:
        if value != DEFAULT_STORE:
            raise StoreError(f"{flag} {value} and --store both say where this store goes; drop one")
        return PostgresStore(store)
    return store_path(value, default_name)


def audit_location(audit: str, store: str | None) -> Path | PostgresStore | None:
    return store_location(audit, store, "--audit", "audit.sqlite")


def store_path(value: str, default_name: str) -> Path | None:
    """A store option's value: a path, 'default' (the user data directory) or 'none'."""
    if value.lower() == "none":
        return None
    if value == DEFAULT_STORE:
        import platformdirs

        return platformdirs.user_data_path("rankwise") / default_name
    return Path(value)


def open_feedback_store(value: str, store: str | None = None):
    """The feedback store a server wrote (``--feedback-db``, or ``--store``), which must exist: reading
    never creates one."""
    from rankwise.feedback.store import FeedbackStoreError, SQLiteFeedbackStore

    where = store_location(value, store, "--feedback-db", FEEDBACK_DB)
    if isinstance(where, PostgresStore):
        from rankwise.feedback.store_postgres import PostgresFeedbackStore

        return PostgresFeedbackStore(where, create=False)
    path = where
    if path is None or not path.is_file():
        raise FeedbackStoreError(f"no feedback store at '{path or value}'; pass the --feedback-db the server "
                                 "was started with")
    return SQLiteFeedbackStore(path)


def prelude(allow_download: bool = False) -> None:
    """Quiet the model libraries' progress bars and logs; allow hub downloads only when asked.

    Tokenizer parallelism stays at the library default (on): the CLI never forks after tokenizing, and
    tokenizing 100 candidates on every core is a measurable share of an int8 rerank (training, which may
    fork data-loader workers, turns it off itself).
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if allow_download:
        os.environ["RANKWISE_ALLOW_DOWNLOAD"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def warn(messages: list[str]) -> None:
    for message in messages:
        err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, transient=True)


@contextlib.contextmanager
def evaluation_progress() -> Iterator[Callable[[str, int, int], None]]:
    """An ``evaluate(progress=...)`` callback drawing one bar per system evaluated (queries done, ETA)."""
    with progress_bars() as bars:
        tasks: dict[str, Any] = {}

        def progress(system: str, done: int, total: int) -> None:
            if system not in tasks:
                tasks[system] = bars.add_task(system, total=total)
            bars.update(tasks[system], completed=done)

        yield progress


def load_goldset(dataset: Path | None, split: str, goldset: Path | None, queries: Path | None = None) -> GoldSet:
    """The gold set named by ``--dataset DIR --split S`` or ``--goldset FILE`` (exactly one of them).

    ``--goldset`` is a gold set JSONL (what ``label-import`` writes), or TREC qrels with ``--queries``.
    """
    from rankwise.evaluation.errors import EvaluationError
    from rankwise.evaluation.goldset import GoldSet
    from rankwise.evaluation.queries import read_queries

    if (dataset is None) == (goldset is None):
        raise EvaluationError("pass exactly one of --dataset BEIR_DIR (with --split) or --goldset FILE")
    if dataset is not None:
        return GoldSet.from_beir(dataset, split)
    assert goldset is not None
    if goldset.suffix.lower() == ".jsonl":
        return GoldSet.load(goldset)
    if queries is None:
        raise EvaluationError(f"'{goldset}' is read as TREC qrels (not .jsonl); pass --queries FILE with the "
                              "query texts")
    return GoldSet.from_trec_qrels(goldset, read_queries(queries))


def prepare_goldset(gold: GoldSet, index: Index, limit_queries: int | None, scale: LabelScale | None = None,
                    groups: list[str] | None = None) -> PreparedGoldSet:
    """The gold set checked against ``index`` (unknown documents, unusable queries), cut to ``--limit-queries``;
    with ``groups``, without the judgements on documents those groups may not see."""
    doc_ids = index.passage_doc_ids
    hidden = set(doc_ids).difference(index.documents_visible_to(groups)) if groups is not None else set()
    prepared = gold.prepare(scale=scale, known_documents=set(doc_ids), hidden_documents=hidden,
                            hidden_from="groups " + ", ".join(sorted(groups or ())))
    return prepared if limit_queries is None else prepared.limit(limit_queries)


def training_card(spec: str, registry: Path | None) -> tuple[str, ModelCard] | None:
    """(name, model card) of the reranker ``spec`` names, when it has one: a registry version, or a directory
    with a ``model_card.json`` (what the leakage guard reads); ``None`` for other models. A card that is there
    but unreadable is a one-line :class:`ModelError` naming the file, not a skipped check: the guard exists to
    catch what would otherwise go unnoticed."""
    from rankwise.options import no_reranker
    from rankwise.registry import CARD, Registry, names_registry, read_card

    if no_reranker(spec):
        return None
    if names_registry(spec):
        entry = Registry(registry).get(spec)
        return entry.version, entry.card
    card = Path(spec) / CARD
    return (spec, read_card(card)) if card.is_file() else None


def warn_leakage(spec: str, registry: Path | None, queries: dict[str, str], strict: bool) -> None:
    """Warn (or with ``--strict`` refuse) when the gold set asks queries the reranker was trained on."""
    from rankwise.training.leakage import find_leakage, guard

    named = training_card(spec, registry)
    if named is not None:
        message = guard(find_leakage(named[0], named[1], queries), strict=strict)
        if message:
            warn([message])


def load_reranker_option(spec: str, *, registry: Path | None, backend: str, device: str,
                         max_length: int | None = None) -> Reranker | None:
    """The reranker named by ``--reranker`` with the shared model-loading options applied."""
    from rankwise.rerank.loading import LoadOptions, load_reranker

    options = LoadOptions(backend=backend, device=device, max_length=max_length, registry=registry)  # type: ignore[arg-type]
    return load_reranker(spec, options)


RayOpt = Annotated[str | None, typer.Option(
    "--ray", help="Run on a Ray cluster: local (this machine's cores), auto (the cluster `ray start` joined) or "
                  "ray://HOST:PORT (pip install 'rankwise[ray]').")]
WorkersOpt = Annotated[int | None, typer.Option(help="Ray workers (default: one per CPU of the cluster).", min=1)]
IndexOpt = Annotated[str, typer.Option("--index", "-i", help="Index directory, or postgresql://user@host/database#NAME.")]
ExactVectors = Annotated[bool, typer.Option(
    "--exact-vectors", help="A PostgreSQL index searches its vectors exactly, not through HNSW (a directory index is always exact).")]
AllowDownload = Annotated[bool, typer.Option("--allow-download", help="Allow fetching hub models (off: offline only).")]
GroupsOpt = Annotated[list[str] | None, typer.Option(
    "--group", help="Only public documents and those whose `groups` metadata names this group (repeatable).")]
RerankerOpt = Annotated[str, typer.Option(help="Cross-encoder: registry name (production, candidate, v3), local dir, "
                                               "cached hub id, or 'none'.")]
RegistryOpt = Annotated[Path | None, typer.Option("--registry", help="Model registry dir (default: $RANKWISE_REGISTRY "
                                                                     "or the user data dir).")]
BackendOpt = Annotated[str, typer.Option(
    help="Reranker inference backend; auto: fastest for this CPU (openvino-int8 on AVX-512 VNNI, onnx-int8 "
         "otherwise); torch: exact fp32.")]
DeviceOpt = Annotated[str, typer.Option(help="torch device for the reranker (cpu, cuda, mps); the other backends "
                                             "run on the CPU.")]
FirstStageOpt = Annotated[str, typer.Option(help="First stage: bm25 | dense | hybrid.")]
FirstStagesOpt = Annotated[str, typer.Option("--first-stage", help="First stages, comma-separated: bm25,dense,hybrid.")]
RetrieveK = Annotated[int, typer.Option(help="First-stage candidates.")]
RerankK = Annotated[int, typer.Option(help="Candidates the reranker scores.")]
RerankFusionOpt = Annotated[str | None, typer.Option(help="none: reranker order; rrf: fuse reranker and "
                                                   "first-stage ranks (default: what the model's training chose "
                                                   "on its held-out queries, else none).")]
MaxLength = Annotated[int | None, typer.Option(help="Reranker tokens per (query, passage) window "
                                                    "(default: the model's trained length).")]
LimitQueries = Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N queries of the gold set.")]
MinQueriesOpt = Annotated[int, typer.Option(help="Fewest judged queries a gate may decide on (fewer is refused).")]
MaxPOpt = Annotated[float, typer.Option(help="A gated gain must be significant: paired randomization p below this, "
                                             "Holm-corrected across gated metrics (1 turns the test off).")]
DatasetOpt = Annotated[Path | None, typer.Option(help="BEIR dataset directory (queries.jsonl + qrels/<split>.tsv).")]
GoldsetOpt = Annotated[Path | None, typer.Option(help="Gold set JSONL (from `rankwise label-import`), or TREC qrels "
                                                      "with --queries; instead of --dataset.")]
AllowUnknownFilters = Annotated[bool, typer.Option("--allow-unknown-filters", help="Let a filter on a metadata key "
                                                  "no document has match nothing (default: refused as a typo).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Refuse to evaluate a reranker on queries it was "
                                                        "trained on (default: a warning).")]
