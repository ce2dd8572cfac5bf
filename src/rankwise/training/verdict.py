"""Does a freshly trained reranker beat the first stage it reranks? Said plainly, at the end of training.

Validation nDCG@10 alone can look fine while the model is useless: it is measured on a candidate list
built for training, and nothing puts it next to what the model would replace. So after training the
held-out validation queries are searched exactly as they would be served — the first stage's top
``rerank_k``, then the model — and both orderings are scored on the same queries, with the paired
randomization test. A model that loses says "do not promote" before anyone registers, gates or serves it.

The same queries choose how the model is served by default: by its own scores, or fused with the first
stage's ranks (RRF). A reranker trained on a few hundred queries often helps most fused — its mistakes
and the first stage's differ — and sometimes only alone; which one is a measurement, not a guess, and
the model directory declares it (:func:`declare_serving_order`) so every front end serves it that way.

One corpus serves training and validation, so a held-out query can share its answer with a training
query; a domain model learns those documents as well as the queries. The verdict says separately how the
model does on the held-out queries whose answers no training query had — the only ones that show how it
treats documents nobody judged for it (on SciFact both bi-encoders gain overall and lose on those, see
``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from rankwise.evaluation.compare import RERANKED_SUFFIX, evaluate
from rankwise.evaluation.goldset import GoldSet, Judgement
from rankwise.index import Index
from rankwise.options import PipelineSettings, RerankFusion
from rankwise.rerank.base import Reranker, RerankScores
from rankwise.rerank.declaration import read_declaration, write_declaration
from rankwise.rerank.loading import load_reranker
from rankwise.training.data import JudgedQueries

METRIC = "nDCG@10"


@dataclass(frozen=True, slots=True)
class TrainingVerdict:
    """The trained model against its first stage on the validation queries, as served."""

    first_stage: str
    queries: int
    model_value: float
    first_stage_value: float
    p_value: float
    metric: str = METRIC
    #: the ordering measured best on these queries (``rrf`` on a tie: closer to the first stage)
    fusion: RerankFusion = "none"
    #: the model's value with the other ordering
    other_value: float | None = None
    #: the held-out queries none of whose relevant documents a training query had as relevant, and the
    #: model's and the first stage's values on them (None: no training queries were given, or none such)
    unseen_queries: int = 0
    unseen_model_value: float | None = None
    unseen_first_stage_value: float | None = None

    @property
    def beats_first_stage(self) -> bool:
        return self.model_value > self.first_stage_value

    @property
    def message(self) -> str:
        how = f"fused with {self.first_stage}'s ranks (rrf)" if self.fusion == "rrf" else "by this model alone"
        other = "" if self.other_value is None else f"; {'alone' if self.fusion == 'rrf' else 'fused'} {self.other_value:.2f}"
        versus = (f"validation {self.metric} {self.model_value:.2f} ({self.first_stage} + this model, {how}{other}) vs "
                  f"{self.first_stage} alone {self.first_stage_value:.2f} over {self.queries} held-out queries "
                  f"(randomization p = {self.p_value:.2g})")
        if self.unseen_model_value is not None and self.unseen_first_stage_value is not None:
            versus += (f"; on the {self.unseen_queries} whose answers no training query had: "
                       f"{self.unseen_model_value:.2f} vs {self.unseen_first_stage_value:.2f}")
        if not self.beats_first_stage:
            return f"do not promote: {versus}; the model is worse than what it would rerank"
        return f"beats the first stage: {versus}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "beats_first_stage": self.beats_first_stage}


def judge_against_first_stage(index: Index, validation: JudgedQueries, model_dir: Path, *, rerank_k: int,
                              first_stage: str | None = None, backend: str = "torch",
                              trained: JudgedQueries | None = None) -> TrainingVerdict | None:
    """Score ``model_dir`` reranking the first stage's top ``rerank_k`` on ``validation``; None without
    validation queries. ``first_stage`` defaults to hybrid (BM25 where the index has no vectors).
    ``trained``: the queries the model was trained on, to judge the unseen-answer queries apart."""
    if not validation.qrels:
        return None
    stage = first_stage or ("hybrid" if index.has_dense else "bm25")
    judgements = [Judgement(q, validation.queries[q], doc, label)
                  for q, docs in validation.qrels.items() if q in validation.queries for doc, label in docs.items()]
    gold = GoldSet(judgements, name="validation").prepare(known_documents=set(index.passage_doc_ids))
    loaded = load_reranker(str(model_dir), backend=backend)
    assert loaded is not None  # a model directory always loads as a reranker (or raises)
    reranker = _ScoredOnce(loaded)
    system = stage + RERANKED_SUFFIX
    unseen = [] if trained is None else trained.unseen_answers(gold.qrels)
    verdicts = []
    for fusion in ("rrf", "none"):
        report = evaluate(index, gold, first_stages=[stage], reranker=reranker, metrics=[METRIC], baseline=stage,
                          settings=PipelineSettings(rerank_k=rerank_k, rerank_fusion=fusion), n_resamples=1000)
        model, base = report.per_query[system][METRIC], report.per_query[stage][METRIC]
        verdicts.append(TrainingVerdict(
            stage, len(gold.queries), report.scores[system][METRIC], report.scores[stage][METRIC],
            report.comparison(system).metrics[METRIC].p_randomization, fusion=fusion, unseen_queries=len(unseen),
            unseen_model_value=float(np.mean([model[q] for q in unseen])) if unseen else None,
            unseen_first_stage_value=float(np.mean([base[q] for q in unseen])) if unseen else None))
    fused, alone = verdicts
    best, other = (alone, fused) if alone.model_value > fused.model_value else (fused, alone)
    return replace(best, other_value=other.model_value)


class _ScoredOnce:
    """A reranker that scores each (query, candidate list) once: both orderings rank the same lists, so the
    second evaluation reuses the first one's scores instead of running the model again."""

    def __init__(self, reranker: Reranker) -> None:
        self.reranker = reranker
        self.name = reranker.name
        self.weights_sha256 = reranker.weights_sha256
        self._scores: dict[tuple[str, tuple[str, ...]], RerankScores] = {}

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        key = (query, tuple(texts))
        if key not in self._scores:
            self._scores[key] = self.reranker.score(query, texts)
        return self._scores[key]


def declare_serving_order(model_dir: Path, verdict: TrainingVerdict | None) -> None:
    """Record the ordering the verdict measured best in the model directory (nothing without a verdict)."""
    if verdict is not None:
        write_declaration(model_dir, replace(read_declaration(model_dir), fusion=verdict.fusion))
