"""Label-free drift monitoring: is today's traffic still the traffic the gold set describes?

A gold-set evaluation says how good the ranking is, but only as often as someone runs it, and only for the
queries it holds. Between evaluations, the served traffic can be watched without any labels: every answered
request logs a few numbers about the query and its answer (:data:`SIGNALS`, computed by
:func:`query_signals`), and a recent window of them is compared with a reference window from a time the
system was known to be good (:class:`DriftReference`, :class:`RollingWindow`).

Two tests compare a signal's two windows (:func:`compare_windows`), and a signal *drifts* only when both
agree, so neither a noisy small-sample PSI nor a large sample's tiny p-value alone pages anyone:

* the Population Stability Index, the credit-scoring convention for a shifted score distribution
  (Siddiqi, "Credit Risk Scorecards", 2006; its sampling distribution: Yurdakul, "Statistical Properties
  of Population Stability Index", Western Michigan University, 2018) — an effect size: how far the
  shares of a set of bins moved (:func:`population_stability_index`);
* a two-sample test — the evidence: how unlikely so large a difference is if both windows come from one
  distribution.

Which bins and which test depend on the signal's kind (:data:`SIGNAL_KINDS`), declared per signal because
both tests assume something about the values:

* a *continuous* signal (the scores) gets the reference's quantile bins and the Kolmogorov–Smirnov test
  (:func:`scipy.stats.ks_2samp`), which need no assumption about the signal's range or shape;
* a *discrete* signal (word counts, mean rank changes, out-of-vocabulary shares: few distinct values, and
  ``oov_rate`` mostly zeros) breaks both. Its quantile edges collapse onto a few values and leave lumpy bins
  whose shares swing with a handful of queries, and KS's p-value assumes no ties (with ties it comes out
  too large, so it misses real shifts). It gets its observed values as categories instead, adjacent ones
  pooled until every expected count is at least 5 (:func:`category_edges`), a chi-square test of
  homogeneity over them (:func:`chi_square_homogeneity`), and PSI over the same categories.

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
from types import MappingProxyType
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
#: how a signal's values are distributed, which decides how its windows are compared (see the module docstring)
SignalKind = Literal["continuous", "discrete"]
#: the two-sample test that gave a comparison's evidence: Kolmogorov–Smirnov or chi-square of homogeneity
EvidenceTest = Literal["ks", "chi2"]
#: each signal's kind, declared rather than guessed from the values: a window of whole-number scores or a
#: continuous signal's few values would fool a guess, and the same signal must get the same test every time.
#: ``oov_rate`` is a share of a query's few terms (k/n for small n), mostly 0; ``rank_change`` a mean of
#: whole rank moves over a few results. A signal missing here is compared as continuous.
SIGNAL_KINDS: Mapping[str, SignalKind] = MappingProxyType({
    "query_words": "discrete", "oov_rate": "discrete", "first_stage_top1": "continuous",
    "reranker_top1": "continuous", "reranker_margin": "continuous", "rank_change": "discrete",
})

#: the only endpoint whose requests carry a query and a ranking of the index
SEARCH_ENDPOINT = "/v1/search"
#: quantile bins of the reference window that PSI compares (the scorecard convention is 10)
DEFAULT_BINS = 10
#: the smallest expected count per category of the chi-square test: the usual condition for its p-value
#: (Cochran, "Some methods for strengthening the common χ² tests", Biometrics 10, 1954)
MIN_EXPECTED_COUNT = 5.0
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
    """When a signal drifts: PSI at least ``psi`` *and* the two-sample test's p-value below ``ks_alpha``.

    The usual PSI reading is < 0.1 no shift, 0.1–0.25 a moderate one, > 0.25 a major one (Siddiqi 2006).
    0.2 sits in the upper half of "moderate": a shift worth a look before it is major. PSI measured on
    samples is noisy, though: with B bins (or categories), two windows of n and m values from the *same*
    distribution give about (B−1)·(1/n + 1/m) on average (Yurdakul 2018), 0.36 at n = m = 50. Requiring
    the two-sample test too keeps small windows from alarming on noise, and requiring PSI keeps a large
    window's significant but negligible shift (p ≈ 0 for a 1% move over 10⁵ requests) from alarming.
    Below ``min_samples`` values in either window, neither test is computed. ``ks_alpha`` is the
    significance level of whichever test the signal's kind gets (KS or chi-square); it keeps its name
    because the JSON report and ``--ks-alpha`` on the command line carry it.
    """

    psi: float = 0.2
    ks_alpha: float = 0.01
    min_samples: int = 50

    def __post_init__(self) -> None:
        if not (math.isfinite(self.psi) and self.psi > 0):
            raise DriftError(f"the PSI threshold must be a positive number (got {self.psi}); 0.2 is usual")
        if not 0 < self.ks_alpha < 1:
            raise DriftError(f"the significance level must be between 0 and 1 (got {self.ks_alpha}); "
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


def _counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Number of ``values`` in each bin ``(edge[i-1], edge[i]]``, with open outer bins."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return _counts(values, edges) / max(values.size, 1)


def population_stability_index(reference: Sequence[float], current: Sequence[float], bins: int = DEFAULT_BINS,
                               epsilon: float = PSI_EPSILON, *, edges: Sequence[float] | None = None) -> float:
    """PSI = Σ (c − r) · ln(c / r) over the reference's quantile bins (:func:`quantile_edges`), or ``edges``.

    ``r`` and ``c`` are the shares of the reference and current values in a bin; an empty bin's share is
    raised to ``epsilon`` so the logarithm stays finite. Bins are right-closed with open outer bins, so
    current values beyond the reference's range land in the outermost bins. A discrete signal passes its
    pooled categories (:func:`category_edges`) as ``edges``, so PSI and the chi-square test see one binning.
    """
    edges = quantile_edges(reference, bins) if edges is None else np.asarray(edges, dtype=np.float64)
    expected = np.maximum(_shares(_finite(reference), edges), epsilon)
    actual = np.maximum(_shares(_finite(current), edges), epsilon)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def category_edges(reference: Sequence[float], current: Sequence[float], bins: int = DEFAULT_BINS,
                   min_expected: float = MIN_EXPECTED_COUNT) -> np.ndarray:
    """The inner edges of a discrete signal's categories: its observed values, adjacent ones pooled.

    Every value seen in either window is a category, in order; a category too rare is pooled with the
    next ones until the group is frequent enough, and a rare remainder at the top joins the last group.
    Frequent enough means two things: an expected count of at least ``min_expected`` in the smaller
    window if both windows shared one distribution (the chi-square test's condition), and at least a
    ``bins``-th of both windows' values, so a signal with many distinct values (``rank_change`` over a
    long result list) gets at most ``bins`` categories and its PSI no more sampling noise than a
    continuous signal's (see :class:`DriftThresholds`). Pooling neighbours rather than all rare values
    keeps the order: a long query's rare word count joins other long queries, not short ones. Groups are
    right-closed intervals with open outer ones, as for :func:`population_stability_index`. Values of
    both windows make the categories, so a value common only in the current window gets a category of its
    own rather than vanishing into a reference bin. No edges (one group) when the windows together are
    too few or too uniform to split.
    """
    if bins < 2:
        raise DriftError(f"PSI needs at least 2 bins (got {bins}); 10 is usual")
    ref, cur = _finite(reference), _finite(current)
    if not (ref.size and cur.size):
        return np.empty(0)
    # a cell's expected count is n_window · group_total / n_both, smallest in the smaller window
    need = max(min_expected * (ref.size + cur.size) / min(ref.size, cur.size), (ref.size + cur.size) / bins)
    values, counts = np.unique(np.concatenate([ref, cur]), return_counts=True)
    edges: list[float] = []
    total = 0
    for value, count in zip(values, counts, strict=True):
        total += int(count)
        if total >= need:
            edges.append(float(value))
            total = 0
    # the last closed group's edge goes: the values above it (too few for a group of their own) join it,
    # and with none above it, its edge would only bound an empty open bin
    return np.asarray(edges[:-1], dtype=np.float64)


def chi_square_homogeneity(reference: Sequence[float], current: Sequence[float],
                           edges: Sequence[float]) -> tuple[float, float]:
    """Chi-square statistic and p-value of "both windows share one distribution" over ``edges``'s groups.

    The test for a discrete signal: it compares the two windows' counts per category
    (:func:`scipy.stats.chi2_contingency` on the 2 × categories table), so ties are what it expects rather
    than a violated assumption, as they are for KS. Its p-value holds when every expected count is at
    least 5, which :func:`category_edges` ensures; a 2 × 2 table gets Yates's continuity correction, as
    scipy applies it, which errs towards no alarm. One category is no evidence of a difference: (0, 1).
    """
    edges = np.asarray(edges, dtype=np.float64)
    if not edges.size:
        return 0.0, 1.0
    table = np.vstack([_counts(_finite(reference), edges), _counts(_finite(current), edges)])
    result = stats.chi2_contingency(table)
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True, slots=True)
class SignalDrift:
    """One signal's comparison. The test values are None (never zeros) when a window is too small.

    ``psi`` is over the bins of the signal's kind (quantile bins or pooled categories); ``test``,
    ``statistic`` and ``pvalue`` are the two-sample test that decided, with ``pvalue`` compared with the
    significance level. ``ks_statistic`` and ``ks_pvalue`` are the KS test's for every signal, so a
    dashboard that plots them keeps its series; for a discrete signal they are informational only (KS's
    p-value is too large with ties).
    """

    name: str
    n_reference: int
    n_current: int
    psi: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    reference_median: float | None
    current_median: float | None
    status: DriftStatus
    test: EvidenceTest
    statistic: float | None
    pvalue: float | None

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
        drifted = [f"{s.name} (PSI {s.psi:.2f}, {_TEST_LABEL[s.test]} p={s.pvalue:.2g})" for s in self.signals
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


_TEST_LABEL: dict[EvidenceTest, str] = {"ks": "KS", "chi2": "chi2"}


def _compare(name: str, reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds) -> SignalDrift:
    medians = tuple(float(np.median(v)) if v.size else None for v in (reference, current))
    test: EvidenceTest = "chi2" if SIGNAL_KINDS.get(name, "continuous") == "discrete" else "ks"
    if min(reference.size, current.size) < thresholds.min_samples:
        return SignalDrift(name, reference.size, current.size, None, None, None, *medians, "not enough data",
                           test, None, None)
    ks = stats.ks_2samp(reference, current)
    ks_statistic, ks_pvalue = float(ks.statistic), float(ks.pvalue)
    if test == "chi2":
        edges = category_edges(reference, current)
        psi = population_stability_index(reference, current, edges=edges)
        statistic, pvalue = chi_square_homogeneity(reference, current, edges)
    else:
        psi = population_stability_index(reference, current)
        statistic, pvalue = ks_statistic, ks_pvalue
    drifted = psi >= thresholds.psi and pvalue < thresholds.ks_alpha
    return SignalDrift(name, reference.size, current.size, psi, ks_statistic, ks_pvalue, *medians,
                       "drift" if drifted else "ok", test, statistic, pvalue)


def compare_windows(reference: Mapping[str, Sequence[float]], current: Mapping[str, Sequence[float]],
                    thresholds: DriftThresholds = DriftThresholds()) -> DriftReport:
    """Compare every signal present in either window (non-finite values are ignored), in :data:`SIGNALS` order.

    Each signal gets the bins and the test of its kind in :data:`SIGNAL_KINDS`.
    """
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
