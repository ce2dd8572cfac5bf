"""Replay: when a model is continued on new judged queries, a sample of its parent's training queries
goes along, so the child does not forget what the parent learned (catastrophic forgetting is the usual
fate of fine-tuning on a narrow new batch, such as one week of feedback).

The parent's card says where its judgements came from (a BEIR directory and split, or a gold set
file); a source that moved or is not a gold set JSONL is reported and training goes on without replay.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankwise.evaluation.goldset import GoldSet
from rankwise.registry.card import ModelCard, TrainingData
from rankwise.training.data import JudgedQueries


@dataclass(frozen=True, slots=True)
class Replay:
    """The parent's judged queries chosen for replay, or why there are none (``reason``)."""

    queries: JudgedQueries | None
    source: str | None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        count = len(self.queries.qrels) if self.queries else 0
        return {"queries": count, "source": self.source, **({"skipped": self.reason} if self.reason else {})}


def parent_judgements(card: ModelCard) -> tuple[GoldSet | None, str | None, str]:
    """The parent's training judgements from its card: ``(gold set, source, why not)``."""
    data = card.training_data or TrainingData()
    if data.dataset:
        source = Path(data.dataset)
        split = data.split or "train"
        if not (source / "qrels" / f"{split}.tsv").is_file():
            return None, str(source), f"its dataset {source} (split {split}) is not there any more"
        return GoldSet.from_beir(source, split), f"{source} ({split})", ""
    if data.goldset:
        source = Path(data.goldset)
        if source.suffix.lower() != ".jsonl" or not source.is_file():
            return None, str(source), f"its gold set {source} is not a gold set JSONL that is still there"
        return GoldSet.load(source), str(source), ""
    return None, None, "its card does not say what it was trained on"


def choose_replay(card: ModelCard, count: int, *, exclude: set[str], known_documents: set[str],
                  seed: int) -> Replay:
    """Up to ``count`` of the parent's judged queries, seeded, none whose text is in ``exclude`` (the new
    training and validation queries: a held-out query must never be trained on through replay)."""
    gold, source, reason = parent_judgements(card)
    if gold is None:
        return Replay(None, source, reason)
    judged = JudgedQueries.from_goldset(gold, known_documents=known_documents)
    ids = sorted(q for q in judged.qrels if judged.queries.get(q) not in exclude)
    random.Random(seed).shuffle(ids)
    chosen = judged.subset(set(ids[:count]))
    if not chosen.qrels:
        return Replay(None, source, "none of its judged queries is new to this run")
    return Replay(chosen, source)
