"""Relevance labels from production feedback: explicit thumbs first, then position-debiased clicks.

Raw click-through rate is a poor relevance label: users click what they see, and they see the top of the
list. The position-based model (PBM; Craswell et al. 2008, "An experimental comparison of click
position-bias models") factors a click into *examination* and *relevance*:
``P(click at rank r) = P(examined at r) · P(relevant)``, with an examination propensity that depends on
the rank only. Inverse propensity scoring (Joachims, Swaminathan & Schnabel 2017, "Unbiased
Learning-to-Rank with Biased Feedback") weights each click by ``1 / propensity(rank)``, which makes

    ips_ctr = Σ click / propensity(rank)  /  impressions

an unbiased estimate of ``P(relevant)`` = the share of users who click the document once they have looked
at it, wherever it was shown. The propensity is the power law of that paper, ``(1/r) ** eta`` (rank 1 is
always examined; ``eta = 1`` by default), floored at ``propensity_floor`` — the clipping the IPS
literature uses to bound the variance a single click far down the list would add (Strehl et al. 2010,
"Learning from Logged Implicit Exploration Data").

Rules (each a :class:`ClickModel` setting, defaults in brackets):

* **What counts as a click** on a result: ``click``, ``copy`` (copying a snippet is a stronger signal
  than a click), and ``dwell`` with ``value`` ≥ ``dwell_seconds`` [30 s] (a "satisfied click": dwell time
  predicts satisfaction, Fox et al. 2005, "Evaluating implicit measures to improve web search", and 30 s is
  the usual cut). Shorter dwell is ignored — it follows a click already counted — and ``custom`` signals
  are ignored: their meaning is the client's.
  Several clicks on one result of one request count once (an impression can be clicked at most once).
* **The rank** is the one the server logged for that request, not the rank the client reported.
* **Explicit feedback wins.** Each user's latest thumb on a (query, document) counts once; more ups than
  downs → the top label [2], more downs → 0, a tie → the click label. One vote suffices: a user who says
  so is direct evidence. Voters are identified by the event's ``user_id`` (send it with the feedback, so a
  user's later thumb replaces her earlier one). Events without one are never credited to the user of the
  request (anyone holding the request id could otherwise overrule her); they count as one anonymous voter
  per request and key, whose latest thumb wins, so repeating a thumb on one answer does not multiply it.
* **Click labels** need ``min_impressions`` [3] impressions of the pair: with fewer, a single stray click
  at the top already scores ≥ 1/2 and would make the document "highly relevant" (with 3 it scores 1/3).
  ``ips_ctr`` (clipped to [0, 1]) ≥ ``highly_relevant_ctr`` [0.5] → 2: most users who examined it clicked;
  ≥ ``relevant_ctr`` [0.25] → 1: one in four did; below that → 0, but only when the document was examined
  often enough for its missing clicks to mean something: ``Σ propensity ≥ min_examinations`` [3] (three
  expected looks — at rank 10 that takes 30 impressions). Otherwise the pair gets no label.
* **A positive click label needs** ``min_clicks`` [2] clicks: inverse propensity weighting makes one
  click at a low rank weigh a lot (rank 5: 5 examinations' worth), so a single stray click on an
  irrelevant document would already pass the thresholds; two independent clicks rarely happen by accident.

Queries are grouped by their normalised text (:func:`normalize_query`); requests logged without the text
cannot be grouped by it and are skipped (see :mod:`rankwise.feedback.export`).
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from rankwise.errors import RankwiseError
from rankwise.feedback.events import FeedbackEvent, LoggedRequest, by_request

LabelSource = Literal["explicit", "clicks"]

#: the label a thumbs-up (and a document most users click once they see it) gets: the gold-set scale is 0–2
TOP_LABEL = 2


class ClickModelError(RankwiseError):
    """A click-model setting is out of range; the message names it and the valid range."""


def normalize_query(text: str) -> str:
    """The grouping key of a query: Unicode NFKC, case-folded, runs of whitespace collapsed to one space."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True, slots=True)
class PairEvidence:
    """What production says about one (query, document) pair, and the label it supports (None: too little)."""

    query: str  # the query's most frequent logged spelling
    doc_id: str
    impressions: int
    clicks: int
    ips_ctr: float
    examinations: float  # Σ propensity: how often the document was looked at, in expectation
    thumbs_up: int = 0
    thumbs_down: int = 0
    label: int | None = None
    source: LabelSource | None = None

    def describe(self) -> str:
        """The evidence in words, e.g. ``3 clicks / 7 impressions, ips-ctr 0.61; 1 thumbs up, 0 down``."""
        text = f"{self.clicks} clicks / {self.impressions} impressions, ips-ctr {self.ips_ctr:.2f}"
        if self.thumbs_up or self.thumbs_down:
            text += f"; {self.thumbs_up} thumbs up, {self.thumbs_down} down"
        return text


@dataclass(slots=True)
class _Tally:
    impressions: int = 0
    examinations: float = 0.0
    clicks: int = 0
    weighted: float = 0.0  # Σ 1 / propensity over clicked impressions
    #: the latest vote per voter: ``{voter: (time, event_id, up)}``
    votes: dict[str, tuple[str, str, bool]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClickModel:
    """Settings of the position-based click model; see the module docstring for each rule and its default."""

    eta: float = 1.0
    propensity_floor: float = 0.1
    min_impressions: int = 3
    min_clicks: int = 2
    min_examinations: float = 3.0
    relevant_ctr: float = 0.25
    highly_relevant_ctr: float = 0.5
    dwell_seconds: float = 30.0

    def __post_init__(self) -> None:
        checks = [("eta", self.eta, 0.0, math.inf), ("propensity_floor", self.propensity_floor, 1e-6, 1.0),
                  ("min_impressions", self.min_impressions, 1, math.inf),
                  ("min_clicks", self.min_clicks, 1, math.inf),
                  ("min_examinations", self.min_examinations, 0.0, math.inf),
                  ("relevant_ctr", self.relevant_ctr, 1e-6, 1.0),
                  ("highly_relevant_ctr", self.highly_relevant_ctr, self.relevant_ctr, 1.0),
                  ("dwell_seconds", self.dwell_seconds, 0.0, math.inf)]
        for name, value, low, high in checks:
            if not low <= value <= high:  # NaN fails too
                bound = f"at least {low:g}" if high == math.inf else f"between {low:g} and {high:g}"
                raise ClickModelError(f"click model: {name} must be {bound} (got {value:g})")

    def propensity(self, rank: int) -> float:
        """The probability that a user examines rank ``rank`` (1-based): ``(1/rank) ** eta``, floored."""
        return max(self.propensity_floor, (1.0 / rank) ** self.eta)

    def is_click(self, event: FeedbackEvent) -> bool:
        """Whether ``event`` counts as a click: a click, a copy, or a dwell of at least ``dwell_seconds``."""
        if event.signal == "dwell":
            return event.value is not None and event.value >= self.dwell_seconds
        return event.signal in ("click", "copy")

    def label_pairs(self, requests: Iterable[LoggedRequest],
                    events: Iterable[FeedbackEvent]) -> list[PairEvidence]:
        """The labelled (query, document) pairs, in order of first appearance (query, then served rank)."""
        return [pair for pair in self.collect(requests, events) if pair.label is not None]

    def collect(self, requests: Iterable[LoggedRequest],
                events: Iterable[FeedbackEvent]) -> list[PairEvidence]:
        """Every (query, document) pair in ``requests`` with its evidence (``label`` None: too little).

        Requests without query text are skipped, as are events on requests not in ``requests`` and events on
        documents the request did not return.
        """
        grouped = by_request(events)
        tally = self.tally()
        for req in requests:
            tally.add(req, grouped.get(req.request_id, ()))
        return tally.evidence()

    def tally(self) -> PairTally:
        """An empty running tally: feed it requests with their events one at a time (a streaming export)."""
        return PairTally(self)

    def _evidence(self, query: str, doc_id: str, tally: _Tally) -> PairEvidence:
        ups = sum(1 for *_, up in tally.votes.values() if up)
        downs = len(tally.votes) - ups
        ips_ctr = min(1.0, tally.weighted / tally.impressions)
        label: int | None
        source: LabelSource | None = "explicit"
        if ups != downs:
            label = TOP_LABEL if ups > downs else 0
        else:
            label, source = self._click_label(tally, ips_ctr), "clicks"
        return PairEvidence(query, doc_id, tally.impressions, tally.clicks, ips_ctr, tally.examinations, ups,
                            downs, label, source if label is not None else None)

    def _click_label(self, tally: _Tally, ips_ctr: float) -> int | None:
        if tally.impressions < self.min_impressions:
            return None
        if ips_ctr >= self.relevant_ctr and tally.clicks < self.min_clicks:
            return None  # looks relevant, but on one click's evidence
        if ips_ctr >= self.highly_relevant_ctr:
            return TOP_LABEL
        if ips_ctr >= self.relevant_ctr:
            return 1
        return 0 if tally.examinations >= self.min_examinations else None


class PairTally:
    """The click model's counts, fed one request (with its own events) at a time.

    Its memory grows with the distinct (query, document) pairs, not with the requests: a query log of
    millions of requests is labelled in one pass over the store's pages. Every rule is order-free (a click
    counts once per request and document, a voter's latest vote wins by time), so the result does not depend
    on the order requests arrive in.
    """

    def __init__(self, model: ClickModel) -> None:
        self.model = model
        self._spellings: dict[str, Counter[str]] = {}
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def add(self, req: LoggedRequest, events: Iterable[FeedbackEvent]) -> None:
        """Count one logged request's impressions and its events (others' events are ignored)."""
        if req.query is None or not req.query.strip():
            return
        key = normalize_query(req.query)
        self._spellings.setdefault(key, Counter())[req.query.strip()] += 1
        for result in req.results:
            tally = self._tallies.setdefault((key, result.doc_id), _Tally())
            tally.impressions += 1
            tally.examinations += self.model.propensity(result.rank)
        clicked: set[str] = set()
        for event in events:
            if event.request_id != req.request_id:
                continue
            result = req.result_for(doc_id=event.doc_id)
            if result is None:
                continue
            tally = self._tallies[(key, result.doc_id)]
            if self.model.is_click(event) and result.doc_id not in clicked:
                clicked.add(result.doc_id)
                tally.clicks += 1
                tally.weighted += 1.0 / self.model.propensity(result.rank)
            elif event.signal in ("thumbs_up", "thumbs_down"):
                voter = event.user_id or f"anonymous:{req.request_id}:{event.key_id}"
                vote = (event.time, event.event_id, event.signal == "thumbs_up")
                if voter not in tally.votes or tally.votes[voter][:2] < vote[:2]:
                    tally.votes[voter] = vote

    def evidence(self) -> list[PairEvidence]:
        """Every pair counted so far, in order of first appearance (query, then served rank)."""
        return [self.model._evidence(self._spellings[key].most_common(1)[0][0], doc_id, tally)
                for (key, doc_id), tally in self._tallies.items()]
