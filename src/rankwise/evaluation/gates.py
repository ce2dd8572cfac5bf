"""Go/no-go gates for CI and nightly jobs: does the candidate beat the baseline by enough, fast enough?

Rules, each judged on the candidate against the baseline of an :class:`EvaluationReport`:

* ``"nDCG@5:+15%"`` — relative: the candidate's mean must be at least 15% above the baseline's;
* ``"nDCG@10:+0.02"`` — absolute: at least 0.02 above (``"R@20:-0.01"`` allows a drop of at most 0.01);
* ``max_latency_ms=500`` — the candidate's end-to-end (``total`` stage) **p95** latency per query must be
  at most 500 ms.

A gain alone is not evidence: on two queries any reranker can look +150% better. So every gate also
demands :class:`GateEvidence` — at least ``min_queries`` judged queries (default 30; fewer is refused
before anything is evaluated) and, for each rule that asks for an improvement, a paired randomization test
of candidate against baseline with ``p < max_p`` (default 0.05) after Holm's correction across the gated
metrics. Rules that allow a drop (``R@20:-0.01``) are guards, not claims, and need no significance.

The default rule from the reranking playbook — adopt a reranker if it gains more than 15% over
embedding-only retrieval at under 500 ms end to end — is ``--gate "nDCG@5:+15%" --max-latency-ms 500``.
A failed gate gives exit code :data:`GATE_FAILED_EXIT` (1); malformed rules are user errors (exit 2).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.metrics import parse_metric

if TYPE_CHECKING:
    from rankwise.evaluation.compare import EvaluationReport

GATE_FAILED_EXIT = 1
LATENCY_STAGE = "total"
LATENCY_PERCENTILE = "p95"
DEFAULT_MIN_QUERIES = 30
DEFAULT_MAX_P = 0.05
_RULE = re.compile(r"^\s*(?P<metric>[^:]+?)\s*:\s*(?P<value>[+-]?\d+(?:\.\d+)?)\s*(?P<pct>%?)\s*$")


@dataclass(frozen=True, slots=True)
class MetricGate:
    """``metric`` must improve on the baseline by at least ``threshold`` (a fraction when ``relative``)."""

    spec: str
    metric: str
    threshold: float
    relative: bool

    @classmethod
    def parse(cls, spec: str) -> MetricGate:
        match = _RULE.match(spec)
        if not match:
            raise EvaluationError(f"gate '{spec}' is not valid; write METRIC:+PERCENT% (e.g. nDCG@5:+15%) or "
                                  "METRIC:+DELTA (e.g. nDCG@10:+0.02)")
        relative = bool(match["pct"])
        value = float(match["value"])
        return cls(spec=spec.strip(), metric=str(parse_metric(match["metric"])),
                   threshold=value / 100 if relative else value, relative=relative)


@dataclass(frozen=True, slots=True)
class GateEvidence:
    """What a gate demands besides the gain: enough judged queries, and a significant difference."""

    min_queries: int = DEFAULT_MIN_QUERIES
    max_p: float = DEFAULT_MAX_P

    def __post_init__(self) -> None:
        if self.min_queries < 1:
            raise EvaluationError(f"--min-queries must be at least 1 (got {self.min_queries})")
        if not 0 < self.max_p <= 1:
            raise EvaluationError(f"--max-p must be in (0, 1] (got {self.max_p}); 1 turns the significance test off")

    def check_queries(self, queries: int) -> None:
        """Refuse, in one line, to judge a gain on fewer than ``min_queries`` queries."""
        if queries < self.min_queries:
            raise EvaluationError(f"a gate needs at least {self.min_queries} judged queries and this gold set has "
                                  f"{queries}: a gain on so few is noise; judge more queries or lower --min-queries")

    def significant(self, p: float) -> bool:
        return self.max_p >= 1 or (not math.isnan(p) and p < self.max_p)


DEFAULT_EVIDENCE = GateEvidence()


@dataclass(frozen=True, slots=True)
class GateOutcome:
    rule: str
    passed: bool
    observed: float | None
    required: float
    message: str
    #: the Holm-adjusted randomization p-value the rule was judged on (None: a guard, or a latency rule)
    p_value: float | None = None


@dataclass(frozen=True, slots=True)
class GateResult:
    candidate: str
    baseline: str
    outcomes: list[GateOutcome]

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else GATE_FAILED_EXIT

    def to_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "baseline": self.baseline, "passed": self.passed,
                "rules": [asdict(o) for o in self.outcomes]}


def parse_gates(specs: Sequence[str]) -> list[MetricGate]:
    return [MetricGate.parse(s) for s in specs]


def check_latency_limit(max_latency_ms: float | None) -> None:
    if max_latency_ms is not None and not max_latency_ms > 0:
        raise EvaluationError(f"--max-latency-ms must be positive (got {max_latency_ms})")


def evaluate_gates(report: EvaluationReport, gates: Sequence[MetricGate], max_latency_ms: float | None = None,
                   evidence: GateEvidence = DEFAULT_EVIDENCE) -> GateResult:
    """Judge the report's candidate; one outcome (with a one-line message) per rule."""
    from rankwise.evaluation.significance import holm

    check_latency_limit(max_latency_ms)
    if report.candidate is None:
        raise EvaluationError("gates need a candidate system besides the baseline; evaluate more than one system")
    candidate, baseline = report.candidate, report.baseline
    comparison = report.comparison(candidate)
    for gate in gates:
        if gate.metric not in comparison.metrics:
            raise EvaluationError(f"gate metric {gate.metric} was not evaluated; add it to --metrics")
    queries = len(next(iter(report.per_query[candidate].values()), {}))
    if gates:
        evidence.check_queries(queries)
    claims = [i for i, g in enumerate(gates) if g.threshold > 0]
    adjusted = dict(zip(claims, holm([comparison.metrics[gates[i].metric].p_randomization for i in claims]),
                        strict=True))
    outcomes = []
    for i, gate in enumerate(gates):
        m = comparison.metrics[gate.metric]
        observed = m.relative_gain if gate.relative else m.delta
        shown = (lambda v: f"{v:+.1%}") if gate.relative else (lambda v: f"{v:+.4f}")
        if observed is None:
            outcomes.append(GateOutcome(gate.spec, False, None, gate.threshold,
                                        f"FAIL {gate.spec}: baseline {baseline} has {gate.metric} = 0, so a relative "
                                        "gain is undefined; use an absolute gate"))
            continue
        gained = observed >= gate.threshold - 1e-12
        p = adjusted.get(i)
        significant = p is None or evidence.significant(p)
        message = (f"{candidate} {gate.metric} {m.system_mean:.4f} vs {baseline} {m.baseline_mean:.4f} = "
                   f"{shown(observed)} ({'≥' if gained else '<'} required {shown(gate.threshold)})")
        if p is not None:
            message += (f", randomization p = {p:.3g} (Holm over {len(claims)} gated metric"
                        f"{'s' if len(claims) > 1 else ''}, {queries} queries)")
            if gained and not significant:
                message += f": not significant at {evidence.max_p:g}"
        passed = gained and significant
        outcomes.append(GateOutcome(gate.spec, passed, observed, gate.threshold,
                                    f"{'PASS' if passed else 'FAIL'} {gate.spec}: {message}", p))
    if max_latency_ms is not None:
        observed = report.latency_ms[candidate][LATENCY_STAGE][LATENCY_PERCENTILE]
        passed = not math.isnan(observed) and observed <= max_latency_ms
        outcomes.append(GateOutcome(
            f"max-latency-ms {max_latency_ms:g}", passed, observed, max_latency_ms,
            f"{'PASS' if passed else 'FAIL'} latency: {candidate} end-to-end {LATENCY_PERCENTILE} {observed:.1f} ms "
            f"{'≤' if passed else '>'} {max_latency_ms:g} ms"))
    return GateResult(candidate, baseline, outcomes)
