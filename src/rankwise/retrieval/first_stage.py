"""The first stage: BM25, dense or hybrid (fused) retrieval of candidates over an :class:`Index`.

Retrieval runs over passages; with ``granularity="document"`` (the default) each document is represented
by its best passage (MaxP: Dai & Callan, "Deeper Text Understanding for IR with Contextual Neural
Language Modeling", SIGIR 2019), which is also the passage the reranker reads.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankwise.errors import QueryError
from rankwise.index import Index
from rankwise.options import (
    FIRST_STAGE_METHODS,
    FUSIONS,
    GRANULARITIES,
    FirstStageMethod,
    Fusion,
    Granularity,
    choose,
)
from rankwise.retrieval.convex import convex_combination
from rankwise.retrieval.rrf import RRF_K, reciprocal_rank_fusion
from rankwise.types import Candidate, Signal


@dataclass(frozen=True, slots=True)
class FirstStageSettings:
    """``alpha`` is the dense weight of the convex combination (BM25 gets ``1 - alpha``)."""

    method: FirstStageMethod = "hybrid"
    fusion: Fusion = "rrf"
    rrf_k: int = RRF_K
    alpha: float = 0.5
    granularity: Granularity = "document"
    #: a filter on a metadata key no document has matches nothing; by default that is refused as a likely typo
    allow_unknown_filters: bool = False

    def __post_init__(self) -> None:
        choose(self.method, FIRST_STAGE_METHODS, "first stage")
        choose(self.fusion, FUSIONS, "fusion")
        choose(self.granularity, GRANULARITIES, "granularity")
        if not 0.0 <= self.alpha <= 1.0:
            raise QueryError(f"fusion alpha must be within 0..1 (got {self.alpha})")


_Hit = tuple[str, int, float]  # (key, passage row, score), best first
_MISSING = Signal(None, None)  # a retriever that did not return the candidate within its fetch depth


class FirstStage:
    def __init__(self, index: Index, settings: FirstStageSettings | None = None) -> None:
        self.index = index
        self.settings = settings or FirstStageSettings()
        if self.settings.method != "bm25":
            # fail fast when the index has no vectors, and load the vectors and the query encoder now so
            # that model loading never shows up as first-stage latency
            index.vectors  # noqa: B018
            index.embedder  # noqa: B018
        if self.settings.method != "dense":
            index.bm25  # noqa: B018

    def retrieve(self, query: str, k: int, filters: dict[str, Any] | None = None,
                 groups: Collection[str] | None = None) -> list[Candidate]:
        """The top ``k`` candidates (documents or passages), best first.

        ``groups``: the caller's groups, or None for a caller who may see every document. Documents the
        caller may not see are excluded inside both retrievers, before anything is ranked or reranked, so
        they cannot show up, push a visible document down or leave a gap in the ranks.
        """
        if k <= 0:
            raise QueryError(f"retrieve_k must be positive (got {k})")
        if filters and not self.settings.allow_unknown_filters:
            unknown = sorted(set(filters) - self.index.docstore.metadata_keys)
            if unknown:  # a typo would otherwise match nothing and answer an empty list, silently
                known = sorted(self.index.docstore.metadata_keys)
                raise QueryError(f"unknown metadata filter key(s) {', '.join(unknown)}; this index's documents have "
                                 + (", ".join(known[:20]) if known else "no metadata")
                                 + " (allow_unknown_filters / --allow-unknown-filters to match nothing instead)")
        allowed = self.index.docstore.rows_matching(filters) if filters else None
        if groups is not None:
            visible = self.index.docstore.rows_visible_to(frozenset(groups))
            allowed = visible if allowed is None else np.intersect1d(allowed, visible, assume_unique=True)
        if allowed is not None and allowed.size == 0:
            return []
        fetch = self._passages_to_fetch(k)
        method = self.settings.method
        lists: dict[str, list[_Hit]] = {}
        if method != "dense":
            lists["bm25"] = self._collapse(*self.index.bm25.search(query, fetch, allowed))
        if method != "bm25":
            lists["dense"] = self._collapse(*self._dense(query, fetch, allowed))
        hits = (self._fuse(lists["bm25"], lists["dense"]) if method == "hybrid" else lists[method])[:k]
        ranked = {name: {key: Signal(rank, float(score)) for rank, (key, _, score) in enumerate(found, start=1)}
                  for name, found in lists.items()}
        passages = self.index.docstore.passages([row for _, row, _ in hits],
                                                None if groups is None else frozenset(groups))
        return [Candidate(passage=p, method=method, rank=i, score=float(score),
                          signals={name: by_key.get(key, _MISSING) for name, by_key in ranked.items()})
                for i, (p, (key, _, score)) in enumerate(zip(passages, hits, strict=True), start=1)]

    def _passages_to_fetch(self, k: int) -> int:
        if self.settings.granularity == "passage":
            return k
        m = self.index.manifest
        per_doc = math.ceil(m.num_passages / max(m.num_documents, 1))
        return min(m.num_passages, k * min(per_doc + 1, 5))

    def _dense(self, query: str, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        vector = self.index.embedder.encode([query])[0]
        return self.index.vectors.search(vector, k, allowed)

    def _collapse(self, rows: np.ndarray, scores: np.ndarray) -> list[_Hit]:
        """Keep the best passage per document (MaxP) unless results are per passage."""
        doc_of_row = self.index.passage_doc_ids
        by_passage = self.settings.granularity == "passage"
        seen: set[str] = set()
        hits: list[_Hit] = []
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
            key = str(row) if by_passage else doc_of_row[row]
            if key not in seen:
                seen.add(key)
                hits.append((key, row, score))
        return hits

    def _fuse(self, lexical: list[_Hit], dense: list[_Hit]) -> list[_Hit]:
        # The passage that represents a document: BM25's when it found the document, else dense's.
        rows = {key: row for key, row, _ in dense} | {key: row for key, row, _ in lexical}
        if self.settings.fusion == "rrf":
            fused = reciprocal_rank_fusion([[h[0] for h in lexical], [h[0] for h in dense]], self.settings.rrf_k)
        else:
            a = self.settings.alpha
            fused = convex_combination([{h[0]: h[2] for h in lexical}, {h[0]: h[2] for h in dense}], [1 - a, a])
        order = sorted(fused, key=lambda key: (-fused[key], key))
        return [(key, rows[key], fused[key]) for key in order]
