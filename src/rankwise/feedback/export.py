"""Production feedback → a gold set in rankwise's JSONL format, and a report of what the reranker misranked.

Only ``/v1/search`` requests become gold-set entries: their document ids are corpus ids, while a
``/v1/rerank`` request's ids are positions in the caller's own list. A query becomes a gold-set query only
when it was logged with its text (``--log-queries text``): a keyed hash groups equal queries but cannot be
searched again, so hashed requests are counted and left out. Queries are grouped by normalised text
(:func:`~rankwise.feedback.clicks.normalize_query`), and each gets a stable id, ``fb-`` + the first 12 hex
digits of the text's SHA-256, so exports from different windows name the same query the same way.

Each labelled pair (:class:`~rankwise.feedback.clicks.ClickModel`) becomes one
:class:`~rankwise.evaluation.goldset.Judgement` with annotator ``feedback:explicit`` or
``feedback:clicks`` and its evidence in ``notes``, so it can be merged with human judgements and audited.
Files are written atomically (a temporary file in the same directory, fsync, :func:`os.replace`): a crash
or a full disk leaves the previous export intact instead of a truncated gold set.

The misranked report lists the pairs users' labels contradict in a served list: a document users chose
(label ≥ 1) served below one they rejected (label 0), or below a lower-labelled one while itself outside the
top ``top_k`` [3]. Each entry names both documents with their served rank and score (from the most recent
request that showed the inversion), the model that served it, and how many requests showed it — the
queries to look at first when the reranker is retrained or its candidates tuned.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankwise.errors import RankwiseError
from rankwise.evaluation.goldset import Judgement
from rankwise.feedback.clicks import ClickModel, LabelSource, PairEvidence, normalize_query
from rankwise.feedback.events import LoggedRequest, LoggedResult
from rankwise.feedback.store import FeedbackStore
from rankwise.storage import atomic_writer

#: endpoints whose document ids are corpus ids (a /v1/rerank "document id" is an index into the caller's list)
GOLDSET_ENDPOINTS = frozenset({"/v1/search"})
#: below this rank a chosen document is misranked under any lower-labelled one, not only a rejected one
TOP_K = 3
DEFAULT_CLICK_MODEL = ClickModel()


class FeedbackExportError(RankwiseError):
    """The query log cannot produce a gold set (no text, no feedback) or the output cannot be written."""


def feedback_query_id(text: str) -> str:
    """The gold-set query id of a logged query: ``fb-`` + 12 hex digits of the normalised text's SHA-256."""
    return "fb-" + hashlib.sha256(normalize_query(text).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class ServedDocument:
    """One document of a misranked pair, as it was served."""

    doc_id: str
    label: int
    rank: int
    score: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"document_id": self.doc_id, "label": self.label, "rank": self.rank, "score": self.score}


@dataclass(frozen=True, slots=True)
class MisrankedPair:
    """A served list put ``placed_above`` over ``preferred`` although users preferred the latter."""

    query_id: str
    query: str
    preferred: ServedDocument
    placed_above: ServedDocument
    requests: int  # requests whose list showed this inversion
    request_id: str  # the most recent of them (the ranks and scores above are from it)
    model: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"query_id": self.query_id, "query": self.query, "preferred": self.preferred.to_dict(),
                "placed_above": self.placed_above.to_dict(), "requests": self.requests,
                "request_id": self.request_id, "model": self.model}


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What :func:`export_goldset` read and wrote; :meth:`lines` is what the CLI prints."""

    out: Path
    requests: int  # logged requests read in the window (all endpoints)
    requests_without_text: int  # /v1/search requests logged with a hash or nothing: unusable for a gold set
    requests_other_endpoints: int
    queries: int
    evaluable_queries: int  # queries with at least one relevant judgement (the only ones a gold set scores)
    by_label: Mapping[int, int]
    by_source: Mapping[LabelSource, int]
    unlabelled_pairs: int  # (query, document) pairs shown, with too little feedback for a label
    misranked: tuple[MisrankedPair, ...]
    misranked_out: Path | None = None

    @property
    def judgements(self) -> int:
        return sum(self.by_label.values())

    def lines(self) -> list[str]:
        labels = ", ".join(f"{label}: {n}" for label, n in sorted(self.by_label.items()))
        sources = ", ".join(f"{source} {n}" for source, n in sorted(self.by_source.items()))
        read = (f"read {self.requests} logged requests: {self.requests_without_text} search requests "
                "without query text (serve with --log-queries text to use them), "
                f"{self.requests_other_endpoints} from other endpoints")
        out = [f"wrote {self.judgements} judgements for {self.queries} queries to {self.out}",
               f"labels: {labels}; sources: {sources}", read]
        if self.unlabelled_pairs:
            out.append(f"{self.unlabelled_pairs} (query, document) pairs had too little feedback for a label")
        if self.evaluable_queries < self.queries:
            out.append(f"{self.queries - self.evaluable_queries} queries have no relevant (label ≥ 1) "
                       "judgement; evaluation leaves them out")
        where = f" (written to {self.misranked_out})" if self.misranked_out is not None else ""
        out.append(f"{len(self.misranked)} misranked pairs{where}")
        return out


def export_goldset(store: FeedbackStore, *, since: str | None, out: Path,
                   click_model: ClickModel = DEFAULT_CLICK_MODEL, misranked_out: Path | None = None,
                   top_k: int = TOP_K) -> ExportSummary:
    """Label the logged search queries from their feedback and write them as a gold set (module docstring)."""
    window = f" since {since}" if since else ""
    total = without_text = other = 0
    searches: list[LoggedRequest] = []
    for req in store.requests(since=since):
        total += 1
        if req.endpoint not in GOLDSET_ENDPOINTS:
            other += 1
        elif req.query is None or not req.query.strip():
            without_text += 1
        else:
            searches.append(req)
    if not searches and not without_text:
        raise FeedbackExportError(f"the query log has no /v1/search requests{window}; serve an index with "
                                  "--feedback-db and let users search first")
    if not searches:
        raise FeedbackExportError(f"none of the {without_text} logged search requests{window} has its query "
                                  "text (it was logged as a hash or not at all); run the server with "
                                  "--log-queries text to collect queries that can become gold-set entries")
    pairs = click_model.collect(searches, store.events(since=since))
    labelled = [pair for pair in pairs if pair.label is not None]
    if not labelled:
        raise FeedbackExportError(f"none of the {len(pairs)} (query, document) pairs{window} has enough "
                                  "feedback for a label yet (a click label needs "
                                  f"{click_model.min_impressions} impressions); wait for more traffic or "
                                  "lower the minimum impressions")
    order = {key: i for i, key in enumerate(dict.fromkeys(normalize_query(p.query) for p in labelled))}
    labelled.sort(key=lambda pair: order[normalize_query(pair.query)])
    judgements = [Judgement(feedback_query_id(p.query), p.query, p.doc_id, p.label, f"feedback:{p.source}",
                            p.describe()) for p in labelled if p.label is not None]
    _write_jsonl(out, (j.to_dict() for j in judgements))
    misranked = find_misranked(searches, labelled, top_k=top_k)
    if misranked_out is not None:
        _write_jsonl(misranked_out, (m.to_dict() for m in misranked))
    relevant = {j.query_id for j in judgements if j.label > 0}
    return ExportSummary(out=out, requests=total, requests_without_text=without_text,
                         requests_other_endpoints=other, queries=len(order), evaluable_queries=len(relevant),
                         by_label=dict(Counter(j.label for j in judgements)),
                         by_source=dict(Counter(p.source for p in labelled if p.source is not None)),
                         unlabelled_pairs=len(pairs) - len(labelled), misranked=tuple(misranked),
                         misranked_out=misranked_out)


def find_misranked(requests: Iterable[LoggedRequest], labelled: Sequence[PairEvidence], *,
                   top_k: int = TOP_K) -> list[MisrankedPair]:
    """Pairs of served documents whose order the labels contradict (module docstring), most frequent first."""
    labels = {(normalize_query(p.query), p.doc_id): p.label for p in labelled if p.label is not None}
    texts = {normalize_query(p.query): p.query for p in labelled}
    counts: Counter[tuple[str, str, str]] = Counter()
    latest: dict[tuple[str, str, str], tuple[LoggedRequest, LoggedResult, LoggedResult]] = {}
    for req in requests:
        if req.query is None:
            continue
        key = normalize_query(req.query)
        judged = [(result, labels[(key, result.doc_id)]) for result in req.results
                  if (key, result.doc_id) in labels]
        for better, better_label in judged:
            for worse, worse_label in judged:
                if (worse.rank < better.rank and worse_label < better_label and better_label >= 1
                        and (worse_label == 0 or better.rank > top_k)):
                    pair = (key, better.doc_id, worse.doc_id)
                    counts[pair] += 1
                    if pair not in latest or req.time >= latest[pair][0].time:
                        latest[pair] = (req, better, worse)
    found = []
    for pair, count in counts.items():
        req, better, worse = latest[pair]
        key = pair[0]
        found.append(MisrankedPair(
            feedback_query_id(texts[key]), texts[key],
            ServedDocument(better.doc_id, labels[(key, better.doc_id)], better.rank, better.score),
            ServedDocument(worse.doc_id, labels[(key, worse.doc_id)], worse.rank, worse.score),
            count, req.request_id, req.model))
    found.sort(key=lambda m: (-m.requests, m.placed_above.rank - m.preferred.rank, m.query_id,
                              m.preferred.doc_id, m.placed_above.doc_id))
    return found


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line atomically: the old file stays whole until the new one is on disk.

    The file is readable by its owner only: it holds users' queries.
    """
    path = Path(path)
    try:
        with atomic_writer(path, private=True) as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    except OSError as err:
        raise FeedbackExportError(f"cannot write '{path}' ({err.strerror or err}); choose a writable path "
                                  "with free space") from None
