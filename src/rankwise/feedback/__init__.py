"""The production feedback loop: log what was served, take users' reactions, turn them into a gold set.

* :mod:`~rankwise.feedback.events` — the value objects: a served request, a feedback event, a shadow record;
* :mod:`~rankwise.feedback.store` — where they live (:class:`FeedbackStore`, :class:`SQLiteFeedbackStore`),
  append-only with a retention purge;
* :mod:`~rankwise.feedback.clicks` — labels from feedback: explicit thumbs, then clicks debiased for
  position (:class:`ClickModel`);
* :mod:`~rankwise.feedback.export` — a gold set in rankwise's JSONL format plus a misranked-pairs report.

>>> store = SQLiteFeedbackStore("feedback.db")
>>> summary = export_goldset(store, since="30d", out=Path("feedback-gold.jsonl"))
>>> print("\\n".join(summary.lines()))

This package sits below serving: the server writes through it, it never reads the server.
"""

from __future__ import annotations

from rankwise.feedback.clicks import ClickModel, ClickModelError, PairEvidence, normalize_query
from rankwise.feedback.events import (
    FeedbackEvent,
    FeedbackSignal,
    LoggedRequest,
    LoggedResult,
    QueryLogging,
    ShadowRecord,
)
from rankwise.feedback.export import (
    ExportSummary,
    FeedbackExportError,
    MisrankedPair,
    export_goldset,
    feedback_query_id,
    find_misranked,
)
from rankwise.feedback.store import (
    FeedbackConflict,
    FeedbackStore,
    FeedbackStoreError,
    SQLiteFeedbackStore,
    since_timestamp,
)

__all__ = [
    "ClickModel", "ClickModelError", "ExportSummary", "FeedbackConflict", "FeedbackEvent",
    "FeedbackExportError", "FeedbackSignal", "FeedbackStore", "FeedbackStoreError", "LoggedRequest",
    "LoggedResult", "MisrankedPair", "PairEvidence", "QueryLogging", "SQLiteFeedbackStore", "ShadowRecord",
    "export_goldset", "feedback_query_id", "find_misranked", "normalize_query", "since_timestamp",
]
