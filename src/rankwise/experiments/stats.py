"""Is one reranker better online? Tests for A/B rates, interleaving wins and per-request metrics.

Throughout, ``a`` and ``b`` are the two arms in the order they were given, and every difference is
``a − b``; :func:`recommend` is told which of them is the treatment (default ``b``: the second arm of an
experiment file, team "b" of an interleaving). The tests are the textbook ones, taken from scipy and
statsmodels rather than re-derived:

* :func:`two_proportion` — the pooled two-proportion z-test (statsmodels ``proportions_ztest``) for rates
  such as CTR@5, with Newcombe's hybrid-score interval for the difference (statsmodels
  ``confint_proportions_2indep``; Newcombe, "Interval estimation for the difference between independent
  proportions: comparison of eleven methods", Statistics in Medicine 17, 1998). Newcombe rather than Wald
  because the Wald interval undercovers at the low click rates and small counts early in an experiment.
* :func:`sign_test` — the exact two-sided binomial (sign) test on interleaving wins, ties left out
  (scipy ``binomtest``), with a Clopper–Pearson interval for a's share of the wins, as in Chapelle et al.,
  "Large-scale validation and analysis of interleaved search evaluation", ACM TOIS 2012.
* :func:`bootstrap_mean_difference` — two independent samples (latency, a per-request metric in each arm):
  a percentile bootstrap interval for the difference of means (Efron & Tibshirani, "An Introduction to the
  Bootstrap", 1993) and Welch's unequal-variance t-test p-value.
* :func:`paired_bootstrap` — the same requests scored under both models (a shadow deployment): a paired
  percentile bootstrap interval and Fisher's randomization test, reusing
  :mod:`rankwise.evaluation.significance` (Smucker, Allan & Carterette, CIKM 2007).

Every result is a frozen dataclass with a one-line :meth:`summary`; :func:`recommend` turns one into a
decision and states the rule it applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

import numpy as np
from scipy import stats

from rankwise.evaluation.significance import DEFAULT_RESAMPLES, bootstrap_ci, randomization_test
from rankwise.experiments.config import ExperimentError

Decision = Literal["switch", "keep", "inconclusive"]
Side = Literal["a", "b"]
CONFIDENCE = 0.95
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True, slots=True)
class Interval:
    """A confidence interval and how it was computed."""

    low: float
    high: float
    confidence: float
    method: str

    def summary(self, scale: float = 1.0, unit: str = "", *, signed: bool = True) -> str:
        """``95% CI [low, high] (method)``, bounds multiplied by ``scale`` and followed by ``unit``."""
        form = "+.3g" if signed else ".3g"
        low, high = f"{self.low * scale:{form}}{unit}", f"{self.high * scale:{form}}{unit}"
        return f"{self.confidence:.0%} CI [{low}, {high}] ({self.method})"


@dataclass(frozen=True, slots=True)
class ProportionTest:
    """Two rates (successes / trials per arm): difference ``rate_a − rate_b``, its interval, z and p."""

    successes_a: int
    n_a: int
    successes_b: int
    n_b: int
    difference: float
    interval: Interval
    z: float
    p_value: float

    unit: ClassVar[str] = "requests per arm"
    default_metric: ClassVar[str] = "success rate"
    default_min_units: ClassVar[int] = 100

    @property
    def rate_a(self) -> float:
        return self.successes_a / self.n_a

    @property
    def rate_b(self) -> float:
        return self.successes_b / self.n_b

    @property
    def units(self) -> int:
        return min(self.n_a, self.n_b)

    def summary(self) -> str:
        return (f"a {self.rate_a:.1%} ({self.successes_a}/{self.n_a}) vs b {self.rate_b:.1%} "
                f"({self.successes_b}/{self.n_b}): a − b {self.difference * 100:+.2f} pp, "
                f"{self.interval.summary(100, ' pp')}, z = {self.z:.2f}, p = {self.p_value:.3g}")


@dataclass(frozen=True, slots=True)
class SignTest:
    """Interleaving wins of each arm (ties excluded), the binomial p-value and a's share of the wins."""

    wins_a: int
    wins_b: int
    ties: int
    p_value: float
    share_a: float  # wins_a / (wins_a + wins_b); 0.5 when nobody won
    interval: Interval  # for share_a

    unit: ClassVar[str] = "non-tied interleaved impressions"
    default_metric: ClassVar[str] = "share of interleaving wins"
    default_min_units: ClassVar[int] = 30

    @property
    def units(self) -> int:
        return self.wins_a + self.wins_b

    @property
    def difference(self) -> float:
        """a's share of the wins minus an even split: positive when a wins more often."""
        return self.share_a - 0.5

    def summary(self, names: tuple[str, str] = ("a", "b")) -> str:
        a, b = names
        return (f"wins {a} {self.wins_a} · {b} {self.wins_b} · ties {self.ties}: {a}'s share {self.share_a:.1%}, "
                f"{self.interval.summary(100, '%', signed=False)}, sign test p = {self.p_value:.3g}")


@dataclass(frozen=True, slots=True)
class MeanDifference:
    """Means of two independent samples: difference ``mean_a − mean_b``, bootstrap interval, Welch p."""

    mean_a: float
    n_a: int
    mean_b: float
    n_b: int
    difference: float
    interval: Interval
    p_value: float

    unit: ClassVar[str] = "requests per arm"
    default_metric: ClassVar[str] = "mean"
    default_min_units: ClassVar[int] = 100

    @property
    def units(self) -> int:
        return min(self.n_a, self.n_b)

    def summary(self, names: tuple[str, str] = ("a", "b")) -> str:
        a, b = names
        return (f"mean {a} {self.mean_a:.4g} (n={self.n_a}) vs {b} {self.mean_b:.4g} (n={self.n_b}): "
                f"{a} − {b} {self.difference:+.4g}, {self.interval.summary()}, Welch p = {self.p_value:.3g}")


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """Both arms measured on the same requests: mean of the per-request differences ``a − b``."""

    mean_a: float
    mean_b: float
    n: int
    difference: float
    interval: Interval
    p_value: float

    unit: ClassVar[str] = "paired requests"
    default_metric: ClassVar[str] = "per-request metric"
    default_min_units: ClassVar[int] = 30

    @property
    def units(self) -> int:
        return self.n

    def summary(self, names: tuple[str, str] = ("a", "b")) -> str:
        a, b = names
        return (f"mean {a} {self.mean_a:.4g} vs {b} {self.mean_b:.4g} on {self.n} requests: {a} − {b} "
                f"{self.difference:+.4g}, {self.interval.summary()}, randomization p = {self.p_value:.3g}")


class ComparisonResult(Protocol):
    """What :func:`recommend` reads from any of the results above."""

    @property
    def difference(self) -> float: ...
    @property
    def p_value(self) -> float: ...
    @property
    def units(self) -> int: ...
    @property
    def unit(self) -> str: ...
    @property
    def default_metric(self) -> str: ...
    @property
    def default_min_units(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What to do with the treatment, and the rule that decided it, in words."""

    decision: Decision
    rule: str

    def summary(self) -> str:
        return f"{self.decision}: {self.rule}"


def two_proportion(successes_a: int, n_a: int, successes_b: int, n_b: int) -> ProportionTest:
    """Compare two rates (e.g. requests with a click in the top 5, per arm) with the pooled z-test."""
    from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

    for name, successes, n in (("a", successes_a, n_a), ("b", successes_b, n_b)):
        if n < 1 or not 0 <= successes <= n:
            raise ExperimentError(f"arm {name}: need 0 ≤ successes ≤ trials and at least 1 trial, got "
                                  f"{successes} of {n}")
    pooled = (successes_a + successes_b) / (n_a + n_b)
    if pooled in (0.0, 1.0):  # no variance at all: the rates are equal and nothing distinguishes the arms
        z, p = 0.0, 1.0
    else:
        z_stat, p_value = proportions_ztest([successes_a, successes_b], [n_a, n_b])
        z, p = float(z_stat), float(p_value)
    low, high = confint_proportions_2indep(successes_a, n_a, successes_b, n_b, method="newcomb",
                                           compare="diff", alpha=1 - CONFIDENCE)
    return ProportionTest(successes_a, n_a, successes_b, n_b, successes_a / n_a - successes_b / n_b,
                          Interval(float(low), float(high), CONFIDENCE, "Newcombe"), z, p)


def sign_test(wins_a: int, wins_b: int, ties: int = 0) -> SignTest:
    """Exact two-sided binomial test of ``wins_a`` vs ``wins_b`` against an even split; ties are left out.

    ``ties`` (including impressions without clicks) only appear in the summary: they carry no preference.
    With no wins at all the p-value is 1 and the interval is [0, 1].
    """
    if min(wins_a, wins_b, ties) < 0:
        raise ExperimentError(f"win and tie counts cannot be negative, got a {wins_a}, b {wins_b}, "
                              f"ties {ties}")
    n = wins_a + wins_b
    if n == 0:
        return SignTest(0, 0, ties, 1.0, 0.5, Interval(0.0, 1.0, CONFIDENCE, "Clopper-Pearson"))
    result = stats.binomtest(wins_a, n, 0.5, alternative="two-sided")
    ci = result.proportion_ci(confidence_level=CONFIDENCE, method="exact")
    return SignTest(wins_a, wins_b, ties, float(result.pvalue), wins_a / n,
                    Interval(float(ci.low), float(ci.high), CONFIDENCE, "Clopper-Pearson"))


def bootstrap_mean_difference(values_a: Sequence[float], values_b: Sequence[float], *,
                              resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> MeanDifference:
    """Difference of the means of two independent samples, with a percentile bootstrap interval.

    Each sample is resampled on its own (the arms saw different requests). The p-value is Welch's t-test,
    which needs no equal variances and is accurate at the sample sizes :func:`recommend` asks for.
    """
    a, b = _sample(values_a, "a"), _sample(values_b, "b")
    difference = float(a.mean() - b.mean())
    if np.ptp(a) == 0.0 and np.ptp(b) == 0.0:  # constant samples: every resample gives the same difference
        low = high = difference
        p = 1.0 if difference == 0.0 else 0.0
    else:
        result = stats.bootstrap((a, b), _mean_difference, confidence_level=CONFIDENCE, n_resamples=resamples,
                                 method="percentile", vectorized=True, rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return MeanDifference(float(a.mean()), a.size, float(b.mean()), b.size, difference,
                          Interval(low, high, CONFIDENCE, "percentile bootstrap"), p)


def paired_bootstrap(values_a: Sequence[float], values_b: Sequence[float], *,
                     resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedDifference:
    """Mean per-request difference ``a − b`` when both were measured on the same requests (shadow traffic).

    Pairing removes the request-to-request variance (hard queries are hard for both models), so it needs
    far fewer requests than comparing two independent samples.
    """
    a, b = _sample(values_a, "a"), _sample(values_b, "b")
    if a.size != b.size:
        raise ExperimentError(f"paired values need one value per request from each arm, got {a.size} "
                              f"and {b.size}")
    if a.size < 2:
        raise ExperimentError("a paired comparison needs at least 2 requests")
    differences = a - b
    low, high = bootstrap_ci(differences, confidence=CONFIDENCE, n_resamples=resamples, seed=seed)
    p = randomization_test(a, b, n_resamples=resamples, seed=seed)
    return PairedDifference(float(a.mean()), float(b.mean()), a.size, float(differences.mean()),
                            Interval(low, high, CONFIDENCE, "paired percentile bootstrap"), p)


def recommend(result: ComparisonResult, *, alpha: float = DEFAULT_ALPHA, min_units: int | None = None,
              treatment: Side = "b", metric: str | None = None,
              higher_is_better: bool = True) -> Recommendation:
    """Switch to the treatment, keep the control, or wait — and the rule that decided it, in words.

    * fewer than ``min_units`` (default: 100 requests per arm for rates and means, 30 non-tied interleaved
      impressions, 30 paired requests) → ``inconclusive``: early p-values are unreliable, and peeking
      repeatedly at a small experiment inflates false positives;
    * ``p < alpha`` and the treatment ahead → ``switch``; ``p < alpha`` and the treatment behind → ``keep``;
    * otherwise ``inconclusive``: no detectable difference yet (keep production, or collect more data).

    The rule is a single fixed-horizon test: checking again and again until it says "switch" raises the
    false-positive rate above ``alpha``, so fix the number of units in advance.
    """
    if not 0.0 < alpha < 1.0:
        raise ExperimentError(f"alpha must lie in (0, 1), got {alpha}")
    needed = result.default_min_units if min_units is None else min_units
    what = metric or result.default_metric
    over = f"over ≥ {needed} {result.unit}"
    if result.units < needed:
        return Recommendation("inconclusive", f"decide only {over}; there are {result.units} so far")
    # difference is a − b: the treatment is ahead when it moves the metric in the better direction
    treatment_higher = (result.difference > 0) == (treatment == "a")
    better = treatment_higher == higher_is_better
    direction = "higher" if treatment_higher else "lower"
    tested = f"p < {alpha:g} {over} (p = {result.p_value:.3g}, {result.units} {result.unit})"
    if result.p_value < alpha:
        decision: Decision = "switch" if better else "keep"
        return Recommendation(decision, f"the treatment's {what} is {direction} with {tested}")
    return Recommendation("inconclusive", f"no difference in {what} at {tested}; keep production or collect "
                                          "more data")


def _sample(values: Sequence[float], name: str) -> np.ndarray:
    try:
        data = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ExperimentError(f"arm {name}: values must be numbers") from None
    if data.ndim != 1 or data.size == 0:
        raise ExperimentError(f"arm {name}: need a non-empty list of numbers, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ExperimentError(f"arm {name}: values must be finite numbers (found NaN or infinity)")
    return data


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)

