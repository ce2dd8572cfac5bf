"""Paired significance tests over per-query metric values, and multiple-comparison correction.

Two systems evaluated on the same queries give paired samples; the question is whether the mean of the
per-query differences is distinguishable from zero.

* :func:`paired_t_test` — Student's paired t-test (scipy). Smucker, Allan & Carterette (CIKM 2007) found
  it agrees closely with the randomization test on IR metrics despite their non-normality.
* :func:`randomization_test` — Fisher's paired randomization (permutation) test: under the null
  hypothesis the two systems' labels are exchangeable within each query, so the sign of each
  difference is flipped at random. Recommended for IR by Smucker, Allan & Carterette, "A Comparison of
  Statistical Significance Tests for Information Retrieval Evaluation", CIKM 2007.
* :func:`bootstrap_ci` — percentile bootstrap confidence interval of a mean (Efron & Tibshirani, "An
  Introduction to the Bootstrap", 1993; for IR see Sakai, SIGIR 2006), applied to the paired differences
  or to one system's values.
* :func:`holm` — Holm's step-down correction (Holm, "A Simple Sequentially Rejective Multiple Test
  Procedure", Scandinavian Journal of Statistics 6(2), 1979): controls the family-wise error rate when
  several systems are compared with one baseline, and is uniformly more powerful than Bonferroni.

Every resampling method takes a fixed seed, so a report is reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired tests need two equally long 1-d samples (got {x.shape} and {y.shape})")
    if x.size < 2:
        raise ValueError("paired tests need at least 2 queries")
    return x - y


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of ``mean(a - b) == 0``.

    When every difference is identical the t statistic is 0/0 or x/0; we return 1.0 (all differences
    zero: no evidence) or 0.0 (a constant non-zero shift) instead of scipy's NaN.
    """
    diff = _differences(a, b)
    if np.ptp(diff) == 0.0:
        return 1.0 if diff[0] == 0.0 else 0.0
    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def randomization_test(a: Sequence[float], b: Sequence[float], *, n_resamples: int = DEFAULT_RESAMPLES,
                       seed: int = DEFAULT_SEED) -> float:
    """Two-sided p-value of the paired randomization test on the mean difference (Smucker et al. 2007).

    scipy enumerates all ``2**n`` sign assignments when that is at most ``n_resamples`` (exact test),
    otherwise it samples ``n_resamples`` of them.
    """
    diff = _differences(a, b)
    if not diff.any():
        return 1.0
    result = stats.permutation_test(
        (np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples", vectorized=True, n_resamples=n_resamples,
        alternative="two-sided", rng=np.random.default_rng(seed))
    return float(min(1.0, result.pvalue))


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``mean(values)`` (pass paired differences for a CI of
    the mean difference)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return float("nan"), float("nan")
    if np.ptp(data) == 0.0:  # every resample has the same mean; scipy would warn about degenerate data
        return float(data[0]), float(data[0])
    result = stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input order, via statsmodels."""
    if not len(p_values):
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(np.asarray(p_values, dtype=np.float64), method="holm")[1]]
