"""Label-free drift monitoring: is today's traffic still the traffic the gold set describes?

A gold-set evaluation says how good the ranking is, but only as often as someone runs it, and only for the
queries it holds. Between evaluations, the served traffic can be watched without any labels: every answered
request logs a few numbers about the query and its answer (:data:`SIGNALS`, computed by
:func:`query_signals`), and a recent window of them is compared with a reference window from a time the
system was known to be good (:class:`DriftReference`, :class:`RollingWindow`).

Two tests compare a signal's two windows (:func:`compare_windows`), and a signal *drifts* only when both
agree, so neither a noisy small-sample PSI nor a large sample's tiny KS p-value alone pages anyone:

* the Population Stability Index, the credit-scoring convention for a shifted score distribution
  (Siddiqi, "Credit Risk Scorecards", 2006; its sampling distribution: Yurdakul, "Statistical Properties
  of Population Stability Index", Western Michigan University, 2018) — an effect size: how far the
  shares of the reference's quantile bins moved (:func:`population_stability_index`);
* the two-sample Kolmogorov–Smirnov test (:func:`scipy.stats.ks_2samp`) — the evidence: how unlikely so
  large a gap between the two empirical distributions is if both windows come from one distribution.

A drift is a reason to look (new users, a new product area, a broken tokenizer, a changed model), not a
verdict on quality: that still takes a gold-set evaluation.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import bm25s
import numpy as np
import Stemmer
from scipy import stats

from rankwise.clock import utc_now
from rankwise.errors import RankwiseError
from rankwise.feedback.store import FeedbackStore, since_timestamp
from rankwise.index.lexical import BM25Settings
from rankwise.storage import atomic_write_text
from rankwise.types import SearchResponse

if TYPE_CHECKING:
    from rankwise.index import Index

#: the label-free signals; the names are Prometheus label values and JSON keys
SignalName = Literal["query_words", "oov_rate", "first_stage_top1", "reranker_top1", "reranker_margin",
                     "rank_change"]
SIGNALS: tuple[str, ...] = get_args(SignalName)
DriftStatus = Literal["ok", "drift", "not enough data"]

#: the only endpoint whose requests carry a query and a ranking of the index
SEARCH_ENDPOINT = "/v1/search"
#: quantile bins of the reference window that PSI compares (the scorecard convention is 10)
DEFAULT_BINS = 10
#: the share an empty bin is given, so PSI's logarithm stays finite (a common choice in scorecard practice)
PSI_EPSILON = 1e-4
#: most values per signal a saved reference keeps (PSI's noise from the reference is then ~(B-1)/5000)
MAX_REFERENCE_VALUES = 5_000
#: seed of the uniform subsample, so saving the same window twice writes the same reference
SUBSAMPLE_SEED = 0
_FORMAT = "rankwise drift reference"
_VERSION = 1


class DriftError(RankwiseError):
    """A drift reference cannot be created, read or written, or a drift setting is invalid."""


# ---------------------------------------------------------------------------------------------- signals
class QueryVocabulary:
    """The BM25 index's vocabulary, to tell which of a query's terms the index has never seen.

    A query is split, stopword-filtered and stemmed by the same :func:`bm25s.tokenize` call with the same
    settings the index was built with (:class:`~rankwise.index.lexical.BM25Settings`), so a term counts as
    out of vocabulary exactly when BM25 cannot match it. That costs a few tens of microseconds per query:
    cheap enough for the request path. PyStemmer's stemmers are not thread-safe, so each thread stems
    with its own.
    """

    def __init__(self, terms: Iterable[str], settings: BM25Settings) -> None:
        self.terms = frozenset(terms)
        self.settings = settings
        self._local = threading.local()

    @classmethod
    def from_index(cls, index: Index) -> QueryVocabulary:
        """The vocabulary of ``index``'s BM25 index (the stemmed terms bm25s scores), with its tokenizer.

        bm25s adds an empty token to the vocabulary of a corpus with an empty passage; no query produces
        it, so it is left out.
        """
        bm25 = index.bm25
        return cls((term for term in bm25.retriever.vocab_dict if isinstance(term, str) and term), bm25.settings)

    def __len__(self) -> int:
        return len(self.terms)

    def tokens(self, query: str) -> list[str]:
        """The query's BM25 terms, as the index's search tokenizes it."""
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer(self.settings.stemmer)
        return bm25s.tokenize([query], stopwords=self.settings.stopwords, stemmer=stemmer, return_ids=False,
                              show_progress=False)[0]

    def oov_rate(self, query: str) -> float:
        """Share of the query's BM25 terms absent from the index; 1.0 for a query with no terms at all.

        A query of stopwords or punctuation only gives BM25 nothing to match, so it counts as wholly out
        of vocabulary rather than as NaN.
        """
        tokens = self.tokens(query)
        if not tokens:
            return 1.0
        return sum(token not in self.terms for token in tokens) / len(tokens)


def query_signals(query: str, response: SearchResponse, vocabulary: QueryVocabulary | None) -> dict[str, float]:
    """The label-free signals of one answered query (see :data:`SIGNALS`); absent ones are left out.

    * ``query_words`` — the query's length in whitespace-separated words;
    * ``oov_rate`` — :meth:`QueryVocabulary.oov_rate` (left out without a vocabulary);
    * ``first_stage_top1`` — the first-stage score of the best first-stage candidate among the results
      (rank 1 unless the reranker moved it off the list). Its scale is the first stage's own: BM25 is
      unbounded, dense is a cosine, hybrid is the fused RRF value, so only windows of one configuration
      can be compared;
    * ``reranker_top1`` and ``reranker_margin`` — the reranker's best calibrated (0..1) score among the
      results and its lead over the second best: a confident reranker has a high top score and a clear
      margin. ``reranker_margin`` needs two reranked results;
    * ``rank_change`` — mean absolute change between first-stage and final rank over the results: how
      much the reranker disagreed with the first stage.

    The reranker signals and ``rank_change`` are left out when no result carries a reranker score (a
    degraded answer, or no reranker): ``rank_change`` would be 0 by construction. The result has only
    finite values.
    """
    signals = {"query_words": float(len(query.split()))}
    if vocabulary is not None:
        signals["oov_rate"] = vocabulary.oov_rate(query)
    results = response.results
    if results:
        best = min(results, key=lambda result: result.first_stage.rank)
        signals["first_stage_top1"] = float(best.first_stage.score)
    reranked = sorted((result.reranker.score for result in results if result.reranker is not None), reverse=True)
    if reranked:
        signals["reranker_top1"] = float(reranked[0])
        if len(reranked) > 1:
            signals["reranker_margin"] = float(reranked[0] - reranked[1])
        signals["rank_change"] = float(np.mean([abs(result.rank_change) for result in results]))
    return {name: value for name, value in signals.items() if math.isfinite(value)}


# ---------------------------------------------------------------------------------------------- tests
@dataclass(frozen=True, slots=True)
class DriftThresholds:
    """When a signal drifts: PSI at least ``psi`` *and* KS p-value below ``ks_alpha``.

    The usual PSI reading is < 0.1 no shift, 0.1–0.25 a moderate one, > 0.25 a major one (Siddiqi 2006).
    0.2 sits in the upper half of "moderate": a shift worth a look before it is major. PSI measured on
    samples is noisy, though: with B bins, two windows of n and m values from the *same* distribution
    give about (B−1)·(1/n + 1/m) on average (Yurdakul 2018), 0.36 at n = m = 50. Requiring the KS test
    too keeps small windows from alarming on noise, and requiring PSI keeps a large window's significant
    but negligible shift (KS p ≈ 0 for a 1% move over 10⁵ requests) from alarming. Below ``min_samples``
    values in either window, neither test is computed.
    """

    psi: float = 0.2
    ks_alpha: float = 0.01
    min_samples: int = 50

    def __post_init__(self) -> None:
        if not (math.isfinite(self.psi) and self.psi > 0):
            raise DriftError(f"the PSI threshold must be a positive number (got {self.psi}); 0.2 is usual")
        if not 0 < self.ks_alpha < 1:
            raise DriftError(f"the KS significance level must be between 0 and 1 (got {self.ks_alpha}); "
                             "0.01 is usual")
        if self.min_samples < 2:
            raise DriftError(f"min_samples must be at least 2 (got {self.min_samples}); 50 is usual")


def _finite(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    return array[np.isfinite(array)]


def quantile_edges(reference: Sequence[float], bins: int = DEFAULT_BINS) -> np.ndarray:
    """The inner edges of ``bins`` equal-frequency bins of ``reference``, duplicates removed.

    Quantile bins give every reference bin the same share, so PSI weighs all parts of the distribution
    alike and needs no assumptions about a signal's range. A discrete signal (``query_words``) puts
    several quantiles on one value; de-duplicating merges those bins instead of leaving empty ones.
    """
    if bins < 2:
        raise DriftError(f"PSI needs at least 2 bins (got {bins}); 10 is usual")
    values = _finite(reference)
    if not values.size:
        raise DriftError("PSI needs a reference window with at least one finite value")
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin ``(edge[i-1], edge[i]]``, with open outer bins."""
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)
    return counts / max(values.size, 1)


def population_stability_index(reference: Sequence[float], current: Sequence[float], bins: int = DEFAULT_BINS,
                               epsilon: float = PSI_EPSILON) -> float:
    """PSI = Σ (c − r) · ln(c / r) over the reference's quantile bins (:func:`quantile_edges`).

    ``r`` and ``c`` are the shares of the reference and current values in a bin; an empty bin's share is
    raised to ``epsilon`` so the logarithm stays finite. Bins are right-closed with open outer bins, so
    current values beyond the reference's range land in the outermost bins.
    """
    edges = quantile_edges(reference, bins)
    expected = np.maximum(_shares(_finite(reference), edges), epsilon)
    actual = np.maximum(_shares(_finite(current), edges), epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


@dataclass(frozen=True, slots=True)
class SignalDrift:
    """One signal's comparison. The test values are None (never zeros) when a window is too small."""

    name: str
    n_reference: int
    n_current: int
    psi: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    reference_median: float | None
    current_median: float | None
    status: DriftStatus

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DriftReport:
    """All signals' comparisons; ``alarm`` when any drifts."""

    signals: tuple[SignalDrift, ...]
    thresholds: DriftThresholds

    @property
    def alarm(self) -> bool:
        return any(signal.status == "drift" for signal in self.signals)

    def __getitem__(self, name: str) -> SignalDrift:
        for signal in self.signals:
            if signal.name == name:
                return signal
        raise KeyError(name)

    def with_status(self, status: DriftStatus) -> list[str]:
        return [signal.name for signal in self.signals if signal.status == status]

    def summary(self) -> str:
        """One line: the drifting signals with their evidence, then the others by status."""
        drifted = [f"{s.name} (PSI {s.psi:.2f}, KS p={s.ks_pvalue:.2g})" for s in self.signals
                   if s.status == "drift"]
        parts = [f"drift in {', '.join(drifted)}" if drifted else "no drift"]
        if ok := self.with_status("ok"):
            parts.append(f"ok: {', '.join(ok)}")
        if few := self.with_status("not enough data"):
            parts.append(f"not enough data (< {self.thresholds.min_samples} values): {', '.join(few)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "thresholds": asdict(self.thresholds),
                "signals": {signal.name: signal.to_dict() for signal in self.signals}}


def _compare(name: str, reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds) -> SignalDrift:
    medians = tuple(float(np.median(v)) if v.size else None for v in (reference, current))
    if min(reference.size, current.size) < thresholds.min_samples:
        return SignalDrift(name, reference.size, current.size, None, None, None, *medians, "not enough data")
    psi = population_stability_index(reference, current)
    ks = stats.ks_2samp(reference, current)
    drifted = psi >= thresholds.psi and ks.pvalue < thresholds.ks_alpha
    return SignalDrift(name, reference.size, current.size, psi, float(ks.statistic), float(ks.pvalue), *medians,
                       "drift" if drifted else "ok")


def compare_windows(reference: Mapping[str, Sequence[float]], current: Mapping[str, Sequence[float]],
                    thresholds: DriftThresholds = DriftThresholds()) -> DriftReport:
    """Compare every signal present in either window (non-finite values are ignored), in :data:`SIGNALS` order."""
    names = [name for name in SIGNALS if name in reference or name in current]
    names += sorted((set(reference) | set(current)) - set(SIGNALS))
    return DriftReport(tuple(_compare(name, _finite(reference.get(name, ())), _finite(current.get(name, ())),
                                      thresholds) for name in names), thresholds)


# ---------------------------------------------------------------------------------------------- windows
def _read_window(store: FeedbackStore, since: str | None, until: str | None) -> tuple[dict[str, list[float]], int]:
    values: dict[str, list[float]] = {}
    requests = 0
    for request in store.requests(since, until):
        if request.endpoint != SEARCH_ENDPOINT or request.degraded or not request.signals:
            continue
        requests += 1
        for name, value in request.signals.items():
            if math.isfinite(value):
                values.setdefault(name, []).append(float(value))
    return values, requests


def signals_from_store(store: FeedbackStore, since: str | None = None,
                       until: str | None = None) -> dict[str, list[float]]:
    """Each signal's values over the query log's search requests in ``[since, until)``, in time order.

    Degraded answers are left out: they skip the reranker to meet a latency budget, so they belong to
    another configuration and would mix in a shift of their own whenever the server is under load.
    ``since`` / ``until`` take ``30m``, ``7d`` or an ISO time, as everywhere in the query log.
    """
    return _read_window(store, since, until)[0]


def _subsample(values: Sequence[float], cap: int) -> tuple[float, ...]:
    """At most ``cap`` of ``values``, drawn uniformly with a fixed seed, in their original order."""
    if len(values) <= cap:
        return tuple(values)
    keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(len(values), size=cap, replace=False))
    return tuple(values[i] for i in keep)


@dataclass(frozen=True)
class DriftReference:
    """A saved reference window: the raw values of each signal, from a time the system was known good.

    Raw values rather than bin shares, so the bins, the tests and the thresholds can change later without
    a new reference. ``counts`` are the values per signal in the window, ``values`` at most
    :data:`MAX_REFERENCE_VALUES` of them; ``since`` / ``until`` are the window's UTC bounds (None: open).
    """

    values: dict[str, tuple[float, ...]]
    counts: dict[str, int]
    requests: int
    since: str | None
    until: str | None
    created: str = field(default_factory=utc_now)

    @classmethod
    def from_store(cls, store: FeedbackStore, since: str | None = None, until: str | None = None, *,
                   max_values: int = MAX_REFERENCE_VALUES) -> DriftReference:
        """The reference window ``[since, until)`` of the query log (times resolved once, recorded as UTC)."""
        since, until = (None if t is None else since_timestamp(t) for t in (since, until))
        values, requests = _read_window(store, since, until)
        if not requests:
            raise DriftError(f"the query log has no search requests with signals from {since or 'the start'} "
                             f"to {until or 'now'}; choose a window in which the server answered searches")
        return cls({name: _subsample(v, max_values) for name, v in values.items()},
                   {name: len(v) for name, v in values.items()}, requests, since, until)

    def compare(self, current: Mapping[str, Sequence[float]],
                thresholds: DriftThresholds = DriftThresholds()) -> DriftReport:
        return compare_windows(self.values, current, thresholds)

    def to_dict(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, "created": self.created,
                "window": {"since": self.since, "until": self.until}, "requests": self.requests,
                "counts": self.counts, "values": {name: list(v) for name, v in self.values.items()}}

    def save(self, path: str | Path) -> None:
        """Write the reference as JSON, atomically (a reader never sees half a file)."""
        path = Path(path)
        try:
            atomic_write_text(path, json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")))
        except OSError as err:
            raise DriftError(f"cannot write the drift reference '{path}' ({err.strerror or err}); pass a path "
                             "in a writable directory") from None

    @classmethod
    def load(cls, path: str | Path) -> DriftReference:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DriftError(f"no drift reference at '{path}'; save one from a window of the query log "
                             "first") from None
        except OSError as err:
            raise DriftError(f"cannot read the drift reference '{path}' ({err.strerror or err})") from None
        except RecursionError:  # the JSON parser recurses per level of nesting
            raise DriftError(f"the drift reference '{path}' is nested too deeply to be one") from None
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            raise _corrupt(path, f"not JSON: {err}") from None
        try:
            return _parse(data)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise _corrupt(path, str(err).replace("\n", " ")) from None


def _corrupt(path: Path, why: str) -> DriftError:
    return DriftError(f"'{path}' is not a valid drift reference ({why}); save a new one from the query log")


def _parse(data: Any) -> DriftReference:
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"no '{_FORMAT}' format marker")
    if not isinstance(data["version"], int) or data["version"] > _VERSION:
        raise ValueError(f"version {data['version']!r}, this rankwise reads version {_VERSION}")
    values: dict[str, tuple[float, ...]] = {}
    for name, raw in dict(data["values"]).items():
        if not isinstance(raw, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                and math.isfinite(v) for v in raw):
            raise ValueError(f"the values of '{name}' are not a list of finite numbers")
        values[str(name)] = tuple(float(v) for v in raw)
    counts = {str(name): int(n) for name, n in dict(data["counts"]).items()}
    window = dict(data["window"])
    bounds = [window["since"], window["until"]]
    if not all(bound is None or isinstance(bound, str) for bound in bounds):
        raise ValueError("the window bounds are not times")
    return DriftReference(values, counts, int(data["requests"]), bounds[0], bounds[1], str(data["created"]))


class RollingWindow:
    """The signals of the last ``size`` answered requests, for the server to compare with a reference.

    Thread-safe: request threads :meth:`append`, a metrics or health thread takes a :meth:`snapshot`.
    The default of 500 keeps PSI's sampling noise against a 5,000-value reference near 0.02 (see
    :class:`DriftThresholds`) while following traffic within a few hundred requests.
    """

    def __init__(self, size: int = 500) -> None:
        if size < 1:
            raise DriftError(f"the drift window must hold at least 1 request (got {size}); 500 is usual")
        self.size = size
        self._rows: deque[dict[str, float]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def append(self, signals: Mapping[str, float]) -> None:
        row = dict(signals)  # a copy: the caller may reuse its dict
        with self._lock:
            self._rows.append(row)

    def snapshot(self) -> dict[str, list[float]]:
        """Each signal's values in the window, oldest first."""
        with self._lock:
            rows = list(self._rows)
        values: dict[str, list[float]] = {}
        for row in rows:
            for name, value in row.items():
                values.setdefault(name, []).append(value)
        return values
