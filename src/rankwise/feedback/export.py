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
import heapq
import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankwise.errors import RankwiseError
from rankwise.evaluation.goldset import Judgement
from rankwise.feedback.clicks import ClickModel, LabelSource, PairEvidence, normalize_query
from rankwise.feedback.events import LoggedRequest, LoggedResult, by_request
from rankwise.feedback.store import FeedbackStore
from rankwise.storage import atomic_writer

#: endpoints whose document ids are corpus ids (a /v1/rerank "document id" is an index into the caller's list)
GOLDSET_ENDPOINTS = frozenset({"/v1/search"})
#: below this rank a chosen document is misranked under any lower-labelled one, not only a rejected one
TOP_K = 3
#: misranked pairs reported: the most frequent are the ones to look at, and a log can hold millions
MISRANKED_LIMIT = 1_000
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
    misranked: tuple[MisrankedPair, ...]  # the most frequent (at most the export's limit)
    misranked_total: int = 0  # every distinct misranked pair found
    misranked_out: Path | None = None
    #: labelled pairs left out because their document is hidden from the groups exported for
    hidden_pairs: int = 0

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
        if self.hidden_pairs:
            out.append(f"{self.hidden_pairs} labelled pairs were left out: their documents are hidden from the "
                       "groups exported for")
        if self.evaluable_queries < self.queries:
            out.append(f"{self.queries - self.evaluable_queries} queries have no relevant (label ≥ 1) "
                       "judgement; evaluation leaves them out")
        total = max(self.misranked_total, len(self.misranked))
        line = f"{total} misranked pairs"
        if self.misranked_out is not None:
            some = "" if len(self.misranked) == total else f"the {len(self.misranked)} most frequent "
            line += f" ({some}written to {self.misranked_out})"
        out.append(line)
        return out


def export_goldset(store: FeedbackStore, *, since: str | None, out: Path,
                   click_model: ClickModel = DEFAULT_CLICK_MODEL, misranked_out: Path | None = None,
                   top_k: int = TOP_K, misranked_limit: int = MISRANKED_LIMIT,
                   visible: Collection[str] | None = None) -> ExportSummary:
    """Label the logged search queries from their feedback and write them as a gold set (module docstring).

    ``visible``: only judgements (and misranked pairs) on these documents — a gold set for a team that may
    read only its groups' documents; None: every document.

    Two passes over the store, a page of requests at a time: the first labels the pairs, the second finds
    the served lists the labels contradict. Memory grows with the distinct (query, document) pairs, never
    with the number of requests.
    """
    window = f" since {since}" if since else ""
    counts = Counter[str]()
    tally = click_model.tally()
    last: tuple[str, str] | None = None
    for page in _pages(_searches(store.requests(since=since), counts)):
        events = by_request(store.events(since=since, request_ids=[req.request_id for req in page]))
        for req in page:
            tally.add(req, events.get(req.request_id, ()))
        last = (page[-1].time, page[-1].request_id)
    without_text, total = counts["without_text"], counts["total"]
    if last is None and not without_text:
        raise FeedbackExportError(f"the query log has no /v1/search requests{window}; serve an index with "
                                  "--feedback-db and let users search first")
    if last is None:
        raise FeedbackExportError(f"none of the {without_text} logged search requests{window} has its query "
                                  "text (it was logged as a hash or not at all); run the server with "
                                  "--log-queries text to collect queries that can become gold-set entries")
    pairs = tally.evidence()
    labelled = [pair for pair in pairs if pair.label is not None]
    hidden = 0
    if visible is not None:
        kept = [pair for pair in labelled if pair.doc_id in visible]
        hidden, labelled = len(labelled) - len(kept), kept
    if not labelled and hidden:
        raise FeedbackExportError(f"every one of the {hidden} labelled (query, document) pairs{window} is on a "
                                  "document hidden from the groups exported for; nothing to write")
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
    # later passes stop where the first did: requests logged meanwhile were not labelled
    def seen() -> Iterator[LoggedRequest]:
        return (req for req in _searches(store.requests(since=since), Counter())
                if (req.time, req.request_id) <= last)

    inverted, misranked = find_misranked(seen, labelled, top_k=top_k, limit=misranked_limit)
    if misranked_out is not None:
        _write_jsonl(misranked_out, (m.to_dict() for m in misranked))
    relevant = {j.query_id for j in judgements if j.label > 0}
    return ExportSummary(out=out, requests=total, requests_without_text=without_text,
                         requests_other_endpoints=counts["other"], queries=len(order),
                         evaluable_queries=len(relevant),
                         by_label=dict(Counter(j.label for j in judgements)),
                         by_source=dict(Counter(p.source for p in labelled if p.source is not None)),
                         unlabelled_pairs=len(pairs) - len(labelled), misranked=tuple(misranked),
                         misranked_total=inverted, misranked_out=misranked_out, hidden_pairs=hidden)


def find_misranked(requests: Callable[[], Iterable[LoggedRequest]], labelled: Sequence[PairEvidence], *,
                   top_k: int = TOP_K, limit: int = MISRANKED_LIMIT) -> tuple[int, list[MisrankedPair]]:
    """Pairs of served documents whose order the labels contradict (module docstring): how many there are,
    and the ``limit`` most frequent, most frequent first.

    ``requests`` is read twice. The first pass only counts, under integer keys (a log whose lists contradict
    its labels a million times costs about a hundred megabytes, not gigabytes of request objects); the
    second keeps the latest request of the pairs that will be reported.
    """
    labels = {(normalize_query(p.query), p.doc_id): p.label for p in labelled if p.label is not None}
    texts = {normalize_query(p.query): p.query for p in labelled}
    query_ids = {key: i for i, key in enumerate(texts)}
    doc_ids = {doc: i for i, doc in enumerate(dict.fromkeys(doc for _, doc in labels))}
    width = max(1, len(doc_ids))

    def inversions(req: LoggedRequest) -> Iterator[tuple[int, LoggedResult, LoggedResult]]:
        if req.query is None:
            return
        key = normalize_query(req.query)
        judged = [(result, labels[(key, result.doc_id)]) for result in req.results
                  if (key, result.doc_id) in labels]
        for better, better_label in judged:
            for worse, worse_label in judged:
                if (worse.rank < better.rank and worse_label < better_label and better_label >= 1
                        and (worse_label == 0 or better.rank > top_k)):
                    code = (query_ids[key] * width + doc_ids[better.doc_id]) * width + doc_ids[worse.doc_id]
                    yield code, better, worse

    counts: Counter[int] = Counter()
    for req in requests():
        counts.update(code for code, _, _ in inversions(req))
    names = list(doc_ids)
    keys = list(texts)
    query_digests = [feedback_query_id(texts[key]) for key in keys]  # once per query, not per pair

    def decode(code: int) -> tuple[int, int, int]:
        rest, worse = divmod(code, width)
        query, better = divmod(rest, width)
        return query, better, worse

    def most_frequent_first(item: tuple[int, int]) -> tuple[int, str, str, str]:
        query, better, worse = decode(item[0])
        return -item[1], query_digests[query], names[better], names[worse]

    chosen = {code for code, _ in heapq.nsmallest(limit, counts.items(), key=most_frequent_first)}
    latest: dict[int, tuple[LoggedRequest, LoggedResult, LoggedResult]] = {}
    if chosen:
        for req in requests():
            for code, better, worse in inversions(req):
                if code in chosen and (code not in latest or req.time >= latest[code][0].time):
                    latest[code] = (req, better, worse)
    found = []
    for code, (req, better, worse) in latest.items():
        query = decode(code)[0]
        key = keys[query]
        found.append(MisrankedPair(
            query_digests[query], texts[key],
            ServedDocument(better.doc_id, labels[(key, better.doc_id)], better.rank, better.score),
            ServedDocument(worse.doc_id, labels[(key, worse.doc_id)], worse.rank, worse.score),
            counts[code], req.request_id, req.model))
    found.sort(key=lambda m: (-m.requests, m.placed_above.rank - m.preferred.rank, m.query_id,
                              m.preferred.doc_id, m.placed_above.doc_id))
    return len(counts), found


def _searches(requests: Iterable[LoggedRequest], counts: Counter[str]) -> Iterator[LoggedRequest]:
    """The search requests logged with their text; ``counts`` tallies what was read and what was left out."""
    for req in requests:
        counts["total"] += 1
        if req.endpoint not in GOLDSET_ENDPOINTS:
            counts["other"] += 1
        elif req.query is None or not req.query.strip():
            counts["without_text"] += 1
        else:
            yield req


def _pages(requests: Iterable[LoggedRequest], size: int = 500) -> Iterator[list[LoggedRequest]]:
    """``requests`` in lists of ``size``: the events of a page are read in one query."""
    page: list[LoggedRequest] = []
    for req in requests:
        page.append(req)
        if len(page) == size:
            yield page
            page = []
    if page:
        yield page


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
