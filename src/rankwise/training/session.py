"""One training session, as ``rankwise train`` runs it: from judged queries to a validated model and its card.

The steps — the starting point (a backbone, or a registered model continued with its own kind), the
validation split, the recipe chosen from the data, negatives mined from the index, replay of the parent's
own training queries, training under a wall-clock budget, the verdict against the first stage on the
held-out queries, and the serving order the verdict declares — are one function, so the CLI, the
benchmarks and a notebook train the same way. What a caller shows while it runs is its own business
(:class:`Reporter`).

A run directory that already holds a finished run of the very same configuration is returned as it is:
training resumes from checkpoints on its own, and this lets a finished run go straight to what follows
instead of taking one more step past its spent budget. Delete the directory to train again.
"""

from __future__ import annotations

import contextlib
import json
import math
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rankwise.errors import QueryError
from rankwise.index import Index
from rankwise.models import weights_sha256
from rankwise.registry import CardMetrics, ModelCard, Registry, TrainingData, Validation
from rankwise.rerank.declaration import read_declaration
from rankwise.training.data import JudgedQueries, group_stats
from rankwise.training.finetune import Architecture, TrainingConfig, TrainingResult
from rankwise.training.frozen_passages import passage_encoder_of
from rankwise.training.leakage import query_digests
from rankwise.training.negatives import TrainingGroup, mine_groups, parse_negative_mix, title_groups
from rankwise.training.recipe import DEFAULT_BUDGET_S, DEFAULT_NEGATIVES, Recipe, choose_recipe
from rankwise.training.replay import Replay, choose_replay
from rankwise.training.train import StartingPoint, starting_point, train_reranker
from rankwise.training.verdict import TrainingVerdict, declare_serving_order, judge_against_first_stage


class Reporter(Protocol):
    """What a session says while it runs: a line, or a longer step in progress."""

    def note(self, text: str) -> None: ...

    def stage(self, text: str) -> AbstractContextManager[object]: ...


class Quiet:
    """A :class:`Reporter` that shows nothing."""

    def note(self, text: str) -> None:
        return None

    def stage(self, text: str) -> AbstractContextManager[object]:
        return contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Every choice of a session; ``None`` is the recipe's (or the continued model's) choice."""

    base_model: str | None = None
    architecture: Architecture | None = None
    loss: str | None = None
    residual: bool | None = None
    frozen_passages: bool | None = None
    negatives: str = DEFAULT_NEGATIVES
    depth: int = 30
    skip_top: int = 0
    margin: float | None = None
    rounds: int = 1
    max_positives: int | None = None
    title_queries: bool = False
    validation_fraction: float = 0.1
    replay: float = 0.5
    epochs: float | None = None
    max_steps: int | None = None
    train_seconds: float | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    max_length: int | None = None
    eval_steps: int | None = None
    layers: int | None = None
    patience: int = 4
    bf16: bool | None = None
    seed: int = 42


@dataclass(slots=True)
class Session:
    """What a session did: the recipe it chose, the groups it trained on, the model and its verdict."""

    start: StartingPoint
    begin: str  # the weights training started from
    recipe: Recipe
    judged: JudgedQueries
    validation: JudgedQueries
    train_groups: list[TrainingGroup]
    validation_groups: list[TrainingGroup]
    pseudo_groups: list[TrainingGroup]
    replayed: Replay | None
    replay_groups: list[TrainingGroup]
    result: TrainingResult
    verdict: TrainingVerdict | None
    #: ``training.json`` of the run: config, steps, time, losses
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.result.model_dir

    def card(self, settings: SessionSettings, source: dict[str, Any], index: Index,
             parent: str | None) -> ModelCard:
        """The model card of the trained model: where it started, what it was trained on, how it validated.

        ``source`` names the judgements (``{"dataset": ..., "split": ...}`` or ``{"goldset": ...}``), with
        absolute paths, so a model continued later, from another directory, can replay them.
        """
        declared = read_declaration(self.model_dir)
        passage_encoder = None if declared.passage_encoder is None else {
            "directory": declared.passage_encoder, "copied_from": str(passage_encoder_of(self.begin)),
            "weights_sha256": weights_sha256(self.model_dir / declared.passage_encoder)}
        replayed_texts = (self.replayed.queries.texts
                          if self.replayed is not None and self.replayed.queries is not None else [])
        training_data = TrainingData(
            **source, fingerprint=self.judged.fingerprint,
            query_digests=query_digests(self.judged.texts + replayed_texts),
            index_fingerprint=index.fingerprint, max_positives=self.recipe.max_positives,
            title_queries=len(self.pseudo_groups), replay=self.replayed.to_dict() if self.replayed else None,
            extra=group_stats(self.train_groups))  # queries, positives and negatives trained on
        return ModelCard(
            base_model=settings.base_model or self.begin, continued_from=self.start.parent,
            training_data=training_data, recipe=self.recipe.to_dict(),
            residual=asdict(declared.residual) if declared.residual else None, passage_encoder=passage_encoder,
            hyperparameters=self.summary.get("config"),
            metrics=CardMetrics(validation=Validation(
                ndcg10=self.result.best_validation_ndcg10,
                against_first_stage=self.verdict.to_dict() if self.verdict else None)),
            training={k: self.summary[k] for k in ("steps", "train_seconds", "loss_first", "loss_last")
                      if k in self.summary},
            parent=parent)


def train_session(index: Index, judged: JudgedQueries, settings: SessionSettings, output: Path, *,
                  registry: Registry | None = None, reporter: Reporter | None = None) -> Session:
    """Train a reranker on ``judged`` queries over ``index`` (module docstring), validated against the first
    stage on a held-out share of them."""
    say = reporter or Quiet()
    s = settings
    start = starting_point(s.base_model or "minilm", s.architecture, registry)
    mix = parse_negative_mix(s.negatives)
    train_part, val_part = judged.split(s.validation_fraction, s.seed)
    # the kind decides the recipe's numbers: a continued model's own, a cross-encoder asked for, or the data's
    if start.parent is not None:
        frozen = start.frozen_passages or bool(s.frozen_passages and start.architecture == "bi-encoder")
    elif s.architecture == "cross-encoder" or s.residual:
        frozen = False
    else:
        frozen = s.frozen_passages
    recipe = choose_recipe(len(train_part.qrels), index.manifest.num_documents,
                           budget_s=s.train_seconds or DEFAULT_BUDGET_S, has_dense=index.has_dense,
                           frozen_passages=frozen)
    if start.parent is not None:
        recipe = recipe.continuing(start.architecture, start.residual is not None, start.parent, bool(frozen))
    if s.residual is False and start.residual is not None:
        raise QueryError(f"'{s.base_model}' is {start.parent}, a residual reranker: continuing it keeps its "
                         "residual base; drop --no-residual, or start from a backbone")
    if s.frozen_passages is False and start.frozen_passages:
        raise QueryError(f"'{s.base_model}' is {start.parent}, a bi-encoder with frozen passages: continuing it "
                         "keeps its passage encoder; drop --no-freeze-passages, or start from a backbone")
    recipe = recipe.overridden(architecture=start.architecture if s.architecture else None, residual=s.residual,
                               loss=s.loss, max_steps=-1 if s.epochs is not None and s.max_steps is None else s.max_steps,
                               batch_size=s.batch_size, learning_rate=s.learning_rate, max_length=s.max_length,
                               eval_steps=s.eval_steps, max_positives=s.max_positives,
                               frozen_passages=s.frozen_passages)
    if recipe.residual and start.residual is None and not index.has_dense:
        raise QueryError(f"a residual reranker adds a correction to the dense cosine, and {index.location} has no "
                         "vectors; build it with an embedding model or pass --no-residual")
    say.note(f"recipe: {recipe.explain()}")
    dense_model = str(index.manifest.embedding["model"]) if index.manifest.embedding else None
    # a new bi-encoder is a copy of the index's own embedding model unless told otherwise
    begin = dense_model if s.base_model is None and recipe.architecture == "bi-encoder" and dense_model else start.path
    config = recipe.config(base_model=begin, residual_over=dense_model, residual_base=start.residual, seed=s.seed,
                           patience=s.patience, layers=s.layers, bf16=s.bf16, epochs=s.epochs or 1.0)

    def mine_training(part: JudgedQueries) -> list[TrainingGroup]:
        """Training groups, mined alike for the new judged queries and the parent's replayed ones."""
        return mine_groups(index, part.queries, part.qrels, mix=mix, depth=s.depth, skip_top=s.skip_top,
                           false_negative_margin=s.margin, rounds=s.rounds, max_positives=recipe.max_positives,
                           seed=s.seed)

    with say.stage("mining hard negatives…"):
        train_groups = mine_training(train_part)
        pseudo = title_groups(index, mix=mix, depth=s.depth, seed=s.seed) if s.title_queries else []
        # validation sees realistic candidate lists: the hybrid (or BM25) top-depth, not random documents
        val_mix = {"hybrid" if index.has_dense else "bm25": s.depth}
        val_groups = mine_groups(index, val_part.queries, val_part.qrels, mix=val_mix, depth=s.depth, seed=s.seed)
        replayed = None
        if start.parent is not None and s.replay > 0:
            parent_card = (registry or Registry()).get(start.parent).card
            replayed = choose_replay(parent_card, math.ceil(s.replay * len(train_part.qrels)),
                                     exclude=set(judged.texts), known_documents=set(index.passage_doc_ids),
                                     seed=s.seed)
        replay_groups = [] if replayed is None or replayed.queries is None else mine_training(replayed.queries)
    say.note(f"training groups {dict(group_stats(train_groups))}, title pseudo-queries {len(pseudo)}, "
             f"validation groups {dict(group_stats(val_groups))}")
    if replayed is not None:
        say.note(f"replaying {len(replay_groups)} of {start.parent}'s training queries from {replayed.source}"
                 if replay_groups else f"not replaying {start.parent}'s training queries: {replayed.reason}")
    result = (finished_run(output, config)
              or train_reranker(train_groups + replay_groups + pseudo, val_groups, config, output))
    summary = result.summary()
    with say.stage("validating against the first stage…"):
        verdict = judge_against_first_stage(index, val_part, result.model_dir, rerank_k=s.depth,
                                            trained=train_part)
        declare_serving_order(result.model_dir, verdict)
    return Session(start=start, begin=begin, recipe=recipe, judged=judged, validation=val_part,
                   train_groups=train_groups, validation_groups=val_groups, pseudo_groups=pseudo,
                   replayed=replayed, replay_groups=replay_groups, result=result, verdict=verdict, summary=summary)


def finished_run(run_dir: Path, config: TrainingConfig) -> TrainingResult | None:
    """The result of a run that already finished in ``run_dir`` with this very config, else None."""
    summary_file = Path(run_dir) / "training.json"
    if not summary_file.is_file():
        return None
    try:
        summary = json.loads(summary_file.read_text())
        if summary["config"] != json.loads(json.dumps(asdict(config))) or not Path(summary["model_dir"]).is_dir():
            return None
        return TrainingResult(model_dir=Path(summary["model_dir"]), config=config, steps=summary["steps"],
                              train_seconds=summary["train_seconds"], resumed_from=summary["resumed_from"],
                              losses=[v for v in (summary.get("loss_first"), summary.get("loss_last")) if v is not None],
                              best_validation_ndcg10=summary["best_validation_ndcg@10"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unreadable summary is a run to resume, not one to trust
