"""Plain typed value objects that flow through the pipeline.

The three concepts a user works with are an :class:`~rankwise.index.Index` (what you search), a
:class:`~rankwise.pipeline.Pipeline` (how you search it) and a :class:`SearchResponse` holding
:class:`SearchResult` objects (what you get back). Everything here is a frozen dataclass so results can
be cached, compared and serialised without surprises.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Document:
    """A source document as ingested: stable id, optional title, body text and free metadata."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Passage:
    """A token-bounded window of a document; the unit that is indexed, retrieved and reranked.

    ``start``/``end`` are character offsets into the document's ``text`` so a UI can highlight the
    passage in context; ``content_hash`` identifies the exact text that was embedded, which is what
    lets re-indexing skip passages whose text did not change.
    """

    id: str
    doc_id: str
    index: int
    title: str
    text: str
    start: int
    end: int
    content_hash: str

    @property
    def full_text(self) -> str:
        """Title and body as the models see them (titles carry much of the signal in short docs)."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True, slots=True)
class Signal:
    """One retriever's view of a candidate: its rank and score (``None`` when it did not retrieve it).

    Scores keep each retriever's own scale — BM25's is unbounded (compare within a query only), dense
    cosine similarity is -1..1 — so a fused hybrid value (RRF: 1/(60 + rank), summed) can be read next
    to the evidence behind it instead of alone.
    """

    rank: int | None
    score: float | None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A first-stage hit: the best passage of a document and how the first stage ranked it.

    ``signals``: each retriever behind ``score`` (``bm25``, ``dense``), with its own rank and score.
    """

    passage: Passage
    method: str
    rank: int
    score: float
    signals: dict[str, Signal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FirstStageScore:
    method: str
    rank: int
    score: float
    #: per retriever (bm25, dense): rank and score before fusion — see :class:`Signal`
    signals: dict[str, Signal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RerankerScore:
    """``score`` is calibrated to 0..1 (sigmoid of the logit); ``raw_score`` is the model's logit."""

    rank: int
    score: float
    raw_score: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One ranked result with *both* signals visible, so operators can see why it is where it is.

    ``rank_change`` is first-stage rank minus final rank: positive means the reranker moved it up.
    """

    rank: int
    doc_id: str
    passage_id: str
    score: float
    first_stage: FirstStageScore
    reranker: RerankerScore | None
    rank_change: int
    title: str
    snippet: str
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Provenance:
    """What produced a response: enough to reproduce it or to audit it later."""

    index_fingerprint: str
    embedding_model: str
    embedding_sha256: str
    reranker: str
    reranker_sha256: str
    first_stage: str
    num_candidates: int
    num_reranked: int
    #: reranked passages longer than the reranker's max_length (split into windows, or truncated if asked)
    num_split: int = 0
    #: how the reranked order was formed: ``none`` (reranker score alone) or ``rrf`` (fused with first stage)
    rerank_fusion: str = "none"
    #: the inference backends that produced the vectors and the scores, and why (``auto`` picks per CPU)
    embedding_backend: str = "none"
    reranker_backend: str = "none"


@dataclass(frozen=True, slots=True)
class SearchResponse:
    query: str
    results: list[SearchResult]
    provenance: Provenance
    timings_ms: dict[str, float]
    #: what a user should know about this answer (e.g. why filters matched nothing); empty when all is well
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "warnings": list(self.warnings),
            "results": [r.to_dict() for r in self.results],
            "provenance": asdict(self.provenance),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)
