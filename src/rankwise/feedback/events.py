"""What the production loop records: served requests (the query log), feedback events and shadow comparisons.

Value objects only; :mod:`rankwise.feedback.store` persists them. A served request is logged with the
ranking users saw (document ids, 1-based ranks, scores, and for interleaved lists the arm that contributed
each document), so feedback that arrives later can be checked against it and credited to the right model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

from rankwise.clock import utc_now

FeedbackSignal = Literal["click", "thumbs_up", "thumbs_down", "dwell", "copy", "custom"]
FEEDBACK_SIGNALS: tuple[str, ...] = get_args(FeedbackSignal)

#: how much of a query the log keeps: nothing, a keyed hash (joinable, not readable) or the text itself
QueryLogging = Literal["none", "hash", "text"]
QUERY_LOGGING: tuple[str, ...] = get_args(QueryLogging)

#: what became of a request offered to the shadow model: scored, or dropped (its queue was full, or it waited
#: past its age limit while production was busy), or the shadow failed on it
ShadowOutcome = Literal["scored", "dropped_queue_full", "dropped_stale", "failed"]


#: what the query log and shadow records call a ranking no reranker made (a server without ``--reranker``)
FIRST_STAGE_MODEL = "first stage"


def _stamp() -> str:
    """Request-level records keep milliseconds: many land within a second, and their order matters."""
    return utc_now("milliseconds")


@dataclass(frozen=True, slots=True)
class LoggedResult:
    """One document as the user saw it."""

    doc_id: str
    rank: int  # 1-based position in the returned list
    score: float | None = None  # the served score (calibrated reranker score, or first-stage score)
    arm: str | None = None  # interleaving: the arm whose ranking contributed this document


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One answered /v1/search or /v1/rerank request (for /v1/rerank, ``doc_id`` is the input index)."""

    request_id: str
    endpoint: str
    results: tuple[LoggedResult, ...]
    model: str | None = None  # the reranker version that produced the ranking (e.g. "v3 (production)")
    model_sha256: str | None = None
    time: str = field(default_factory=_stamp)
    key_id: str | None = None
    user_id: str | None = None
    query: str | None = None  # only with --log-queries text
    query_sha256: str | None = None
    experiment: str | None = None
    arm: str | None = None  # the A/B arm, or "interleaved" for a team-draft list
    latency_ms: float | None = None
    degraded: bool = False
    #: label-free numbers about the query and its answer (query length, out-of-vocabulary rate, first-stage
    #: top-1 score, reranker top-1 score and margin, rank changes) that drift monitoring compares over time
    signals: dict[str, float] = field(default_factory=dict)
    #: interleaving: the second arm's model (``model`` is the first arm's), so reports name both
    other_model: str | None = None

    def result_for(self, doc_id: str | None = None, rank: int | None = None) -> LoggedResult | None:
        """The returned result a feedback event points at (by document id or by rank), or None."""
        for result in self.results:
            if (doc_id is not None and result.doc_id == doc_id) or (doc_id is None and result.rank == rank):
                return result
        return None


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """A user's reaction to one result of one logged request; ``event_id`` makes intake idempotent."""

    event_id: str
    request_id: str
    signal: FeedbackSignal
    doc_id: str
    rank: int
    value: float | None = None  # dwell seconds, a custom score; None for clicks and thumbs
    user_id: str | None = None
    key_id: str | None = None
    time: str = field(default_factory=_stamp)


@dataclass(frozen=True, slots=True)
class ShadowRecord:
    """A shadow model's ranking of the same candidates production ranked, and how much the two agree."""

    request_id: str
    production_model: str
    shadow_model: str
    kendall_tau: float | None  # None when fewer than two documents
    top5_overlap: float  # |top-5 ∩ top-5| / min(5, n)
    #: the largest rank moves, ``[(doc_id, production_rank, shadow_rank), ...]``, biggest first (at most 5)
    largest_moves: tuple[tuple[str, int, int], ...]
    #: the shadow's full ranking, best first: ``[(doc_id, score), ...]``, to score it once feedback arrives
    shadow_ranking: tuple[tuple[str, float], ...]
    shadow_ms: float = 0.0
    time: str = field(default_factory=_stamp)
    #: what became of the offered request: only ``scored`` rows carry a ranking; the others are kept so a
    #: report can say how much of the traffic its comparison covers and why the rest is missing
    outcome: ShadowOutcome = "scored"


def by_request(events: Iterable[FeedbackEvent]) -> dict[str, list[FeedbackEvent]]:
    """``events`` grouped by the request they are about, each group in the order given."""
    grouped: dict[str, list[FeedbackEvent]] = {}
    for event in events:
        grouped.setdefault(event.request_id, []).append(event)
    return grouped
