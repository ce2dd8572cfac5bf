"""Training data: judged queries from a BEIR split (or a gold set) split into train/validation groups."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rankwise.training.negatives import TrainingGroup

if TYPE_CHECKING:
    from rankwise.evaluation.goldset import GoldSet


@dataclass(frozen=True, slots=True)
class JudgedQueries:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def fingerprint(self) -> str:
        """Identifies the exact judgements trained on (goes into the model card for lineage)."""
        payload = json.dumps({q: [self.queries.get(q, ""), sorted(self.qrels[q].items())] for q in sorted(self.qrels)})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def texts(self) -> list[str]:
        """The texts of the judged queries (``queries`` may hold more, e.g. a BEIR file's other splits)."""
        return [self.queries[q] for q in sorted(self.qrels) if q in self.queries]

    @classmethod
    def from_goldset(cls, gold: GoldSet, known_documents: Collection[str] | None = None) -> JudgedQueries:
        """Train from a gold set (graded or binary): positives are labels > 0, and labels <= 0 are judged
        negatives, which training uses before mined ones (see :func:`~rankwise.training.negatives.mine_groups`).
        Annotators are merged and unusable queries set aside exactly as evaluation does."""
        prepared = gold.prepare(known_documents=known_documents)
        return cls(dict(prepared.queries), {q: dict(r) for q, r in prepared.qrels.items()})

    def unseen_answers(self, qrels: Mapping[str, Mapping[str, int]]) -> list[str]:
        """The queries of ``qrels`` none of whose relevant documents is relevant to a query judged here.

        One corpus serves training and evaluation, so a held-out query often shares its answer with a
        training query; only the others show how a model treats documents nobody judged for it.
        """
        answered = {d for docs in self.qrels.values() for d, grade in docs.items() if grade > 0}
        return sorted(q for q, docs in qrels.items() if not any(g > 0 and d in answered for d, g in docs.items()))

    def split(self, validation_fraction: float, seed: int) -> tuple[JudgedQueries, JudgedQueries]:
        """Hold out a seeded random fraction of *queries* (never pairs of one query on both sides)."""
        ids = sorted(self.qrels)
        random.Random(seed).shuffle(ids)
        n_val = round(len(ids) * validation_fraction)
        val, train = set(ids[:n_val]), set(ids[n_val:])
        return self.subset(train), self.subset(val)

    def subset(self, ids: set[str]) -> JudgedQueries:
        """The judged queries among ``ids``."""
        return JudgedQueries({q: t for q, t in self.queries.items() if q in ids},
                             {q: dict(r) for q, r in self.qrels.items() if q in ids})


def group_stats(groups: list[TrainingGroup]) -> Mapping[str, int]:
    return {"queries": len(groups), "positives": sum(len(g.positives) for g in groups),
            "negatives": sum(len(g.negatives) for g in groups)}
