"""Training data: judged queries from a BEIR split (or a gold set) split into train/validation groups."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass

from rankwise.training.negatives import TrainingGroup


@dataclass(frozen=True, slots=True)
class JudgedQueries:
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    @property
    def fingerprint(self) -> str:
        """Identifies the exact judgements trained on (goes into the model card for lineage)."""
        payload = json.dumps({q: [self.queries.get(q, ""), sorted(self.qrels[q].items())] for q in sorted(self.qrels)})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def split(self, validation_fraction: float, seed: int) -> tuple[JudgedQueries, JudgedQueries]:
        """Hold out a seeded random fraction of *queries* (never pairs of one query on both sides)."""
        ids = sorted(self.qrels)
        random.Random(seed).shuffle(ids)
        n_val = round(len(ids) * validation_fraction)
        val, train = set(ids[:n_val]), set(ids[n_val:])
        return self._subset(train), self._subset(val)

    def _subset(self, ids: set[str]) -> JudgedQueries:
        return JudgedQueries({q: t for q, t in self.queries.items() if q in ids},
                             {q: dict(r) for q, r in self.qrels.items() if q in ids})


def group_stats(groups: list[TrainingGroup]) -> Mapping[str, int]:
    return {"queries": len(groups), "positives": sum(len(g.positives) for g in groups),
            "negatives": sum(len(g.negatives) for g in groups)}
