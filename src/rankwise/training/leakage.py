"""Leakage guard: does a gold set ask the queries a model was trained on?

A reranker evaluated on its own training queries looks better than it is, and a promotion gate fed such a
gold set passes a model for the wrong reason. Training records a digest of every query it saw (train and
validation: both shaped the model, the second by choosing its checkpoint) in the model card; evaluation
and promotion compare the gold set's queries with them. Digests, not texts: a model card is shared more
widely than its training data. Queries are compared after lower-casing and collapsing whitespace, so a
trailing space or a capital letter does not hide a copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rankwise.errors import QueryError
from rankwise.registry.card import ModelCard

#: hex characters kept per digest: 64 bits, so thousands of queries cost kilobytes in a card, never collide
DIGEST_CHARS = 16


def query_digest(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()[:DIGEST_CHARS]


def query_digests(texts: Iterable[str]) -> list[str]:
    """Sorted, distinct digests of ``texts`` (what training stores in ``training_data.query_digests``)."""
    return sorted({query_digest(t) for t in texts})


@dataclass(frozen=True, slots=True)
class Leakage:
    """How many of a gold set's queries a model was trained on (``examples``: a few of their ids)."""

    model: str
    overlapping: int
    total: int
    examples: tuple[str, ...]

    def message(self) -> str:
        return (f"{self.overlapping} of {self.total} gold-set queries were in {self.model}'s training data "
                f"(e.g. {', '.join(self.examples)}): its metrics on them are optimistic")


def find_leakage(model: str, card: ModelCard, queries: Mapping[str, str]) -> Leakage | None:
    """The overlap between ``queries`` (id → text) and the queries ``card`` says the model was trained on."""
    trained = set(card.query_digests)
    if not trained:
        return None
    hits = sorted(qid for qid, text in queries.items() if query_digest(text) in trained)
    return Leakage(model, len(hits), len(queries), tuple(hits[:3])) if hits else None


def guard(leakage: Leakage | None, *, strict: bool) -> str | None:
    """The warning to print, or (``strict``) a :class:`QueryError` that refuses the evaluation."""
    if leakage is None:
        return None
    if strict:
        raise QueryError(leakage.message() + "; evaluate on queries the model never saw (or drop --strict)")
    return leakage.message() + " (--strict refuses)"
