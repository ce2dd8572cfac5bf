"""Does a freshly trained reranker beat the first stage it reranks? Said plainly, at the end of training.

Validation nDCG@10 alone can look fine while the model is useless: it is measured on a candidate list
built for training, and nothing puts it next to what the model would replace. So after training the
held-out validation queries are searched exactly as they would be served — the first stage's top
``rerank_k``, then the model — and both orderings are scored on the same queries, with the paired
randomization test. A model that loses says "do not promote" before anyone registers, gates or serves it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rankwise.evaluation.compare import RERANKED_SUFFIX, evaluate
from rankwise.evaluation.goldset import GoldSet, Judgement
from rankwise.index import Index
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

    @property
    def beats_first_stage(self) -> bool:
        return self.model_value > self.first_stage_value

    @property
    def message(self) -> str:
        versus = (f"validation {self.metric} {self.model_value:.2f} ({self.first_stage} + this model) vs "
                  f"{self.first_stage} alone {self.first_stage_value:.2f} over {self.queries} held-out queries "
                  f"(randomization p = {self.p_value:.2g})")
        if not self.beats_first_stage:
            return f"do not promote: {versus}; the model is worse than what it would rerank"
        return f"beats the first stage: {versus}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "beats_first_stage": self.beats_first_stage}


def judge_against_first_stage(index: Index, validation: JudgedQueries, model_dir: Path, *, rerank_k: int,
                              first_stage: str | None = None, backend: str = "torch") -> TrainingVerdict | None:
    """Score ``model_dir`` reranking the first stage's top ``rerank_k`` on ``validation``; None without
    validation queries. ``first_stage`` defaults to hybrid (BM25 where the index has no vectors)."""
    if not validation.qrels:
        return None
    stage = first_stage or ("hybrid" if index.has_dense else "bm25")
    judgements = [Judgement(q, validation.queries[q], doc, label)
                  for q, docs in validation.qrels.items() if q in validation.queries for doc, label in docs.items()]
    gold = GoldSet(judgements, name="validation").prepare(known_documents=set(index.passage_doc_ids))
    reranker = load_reranker(str(model_dir), backend=backend)
    report = evaluate(index, gold, first_stages=[stage], reranker=reranker, metrics=[METRIC], baseline=stage,
                      rerank_k=rerank_k, n_resamples=1000)
    system = stage + RERANKED_SUFFIX
    comparison = report.comparison(system).metrics[METRIC]
    return TrainingVerdict(stage, len(gold.queries), report.scores[system][METRIC], report.scores[stage][METRIC],
                           comparison.p_randomization)
