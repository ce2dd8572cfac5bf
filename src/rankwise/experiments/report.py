"""What an experiment or a shadow deployment found, from the query log and the feedback users sent.

* **A/B**: per arm, CTR@k (share of requests with a positive signal — click, copy, thumbs up, long dwell —
  on a result ranked ≤ k), the thumbs-up ratio, abandonment (no positive signal at all) and latency
  p50/p99; each treatment arm is compared with the first arm (the control) by a two-proportion test on
  CTR@k and a bootstrap interval on latency, and :func:`~rankwise.experiments.stats.recommend` says what
  to do and by which rule.
* **Interleaving**: each interleaved request with positive signals is a win for the arm whose documents
  got more of them (:func:`~rankwise.experiments.interleave.credit`); a binomial sign test over the
  non-tied requests decides. Interleaving needs far fewer requests than A/B for the same difference
  (``benchmarks/interleaving_power.py`` measures how many).
* **Shadow**: rank agreement between production and the shadow per request (Kendall's tau, top-5
  overlap) with bootstrap intervals and, on requests that received feedback, each model's nDCG@k on the
  judged documents compared pairwise. Users could only react to what production showed them, so documents
  the shadow ranks high that production never showed count as not relevant: the comparison is biased
  towards production, and a shadow that still wins is very likely better.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rankwise.evaluation.significance import bootstrap_ci
from rankwise.experiments.agreement import ndcg_at_k
from rankwise.experiments.config import Experiment, ExperimentError
from rankwise.experiments.interleave import credit
from rankwise.experiments.stats import (
    MeanDifference,
    PairedDifference,
    ProportionTest,
    Recommendation,
    SignTest,
    bootstrap_mean_difference,
    paired_bootstrap,
    recommend,
    sign_test,
    two_proportion,
)
from rankwise.feedback.clicks import ClickModel
from rankwise.feedback.events import FeedbackEvent, LoggedRequest, by_request
from rankwise.feedback.store import FeedbackStore

#: what counts as a click (click, copy, a long dwell): the same rule the gold-set export labels by
_CLICKS = ClickModel()


def positive(event: FeedbackEvent) -> bool:
    """Whether an event says the user found the document useful: a click by the click model, or a thumbs up."""
    return event.signal == "thumbs_up" or _CLICKS.is_click(event)


def gain(events: Iterable[FeedbackEvent]) -> float:
    """A document's graded gain from its events: 2 for a thumbs up, 0 for a thumbs down, 1 for other positives."""
    events = list(events)
    if any(e.signal == "thumbs_down" for e in events) and not any(e.signal == "thumbs_up" for e in events):
        return 0.0
    if any(e.signal == "thumbs_up" for e in events):
        return 2.0
    return 1.0 if any(positive(e) for e in events) else 0.0


@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    models: tuple[str, ...]
    requests: int
    ctr_at_k: float
    clicked_at_k: int
    thumbs_up: int
    thumbs_down: int
    abandonment: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None

    @property
    def thumbs_ratio(self) -> float | None:
        total = self.thumbs_up + self.thumbs_down
        return self.thumbs_up / total if total else None


@dataclass(frozen=True, slots=True)
class ArmComparison:
    control: str
    treatment: str
    ctr: ProportionTest | None
    latency: MeanDifference | None
    recommendation: Recommendation


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    mode: str
    k: int
    arms: list[ArmSummary] = field(default_factory=list)
    comparisons: list[ArmComparison] = field(default_factory=list)
    interleaving: SignTest | None = None
    recommendation: Recommendation | None = None
    events: int = 0


def experiment_report(store: FeedbackStore, experiment: Experiment, *, since: str | None = None, k: int = 5,
                      alpha: float = 0.05) -> ExperimentReport:
    """Per-arm metrics, significance and a recommendation for ``experiment`` over the logged traffic."""
    if k < 1:
        raise ExperimentError("--k must be at least 1")
    requests = [r for r in store.requests(since=since, experiment=experiment.name) if not r.degraded]
    if not requests:
        raise ExperimentError(f"no answered requests of experiment '{experiment.name}' in the query log"
                              + (f" since {since}" if since else "") + "; serve it with --experiment and a "
                              "--feedback-db, then send traffic")
    events = by_request(store.events(since=since, request_ids=[r.request_id for r in requests]))
    n_events = sum(len(v) for v in events.values())
    if experiment.mode == "interleave":
        a, b = (arm.name for arm in experiment.arms)
        wins = {"a": 0, "b": 0, "tie": 0}
        for request in requests:
            teams = {r.doc_id: ("a" if r.arm == a else "b") for r in request.results if r.arm in (a, b)}
            clicked = [e.doc_id for e in events.get(request.request_id, []) if positive(e)]
            wins[credit(teams, clicked)] += 1
        test = sign_test(wins["a"], wins["b"], wins["tie"])
        verdict = recommend(test, alpha=alpha, treatment="b", metric=f"share of interleaving wins of '{b}'")
        return ExperimentReport(experiment.name, "interleave", k, [_arm_summary(a, requests, events, k)],
                                interleaving=test, recommendation=verdict, events=n_events)
    arms = [_arm_summary(arm.name, [r for r in requests if r.arm == arm.name], events, k) for arm in experiment.arms]
    control_requests = [r for r in requests if r.arm == arms[0].arm]
    comparisons = []
    for arm in arms[1:]:
        ctr = (two_proportion(arms[0].clicked_at_k, arms[0].requests, arm.clicked_at_k, arm.requests)
               if arms[0].requests and arm.requests else None)
        latency = _latency_difference(control_requests, [r for r in requests if r.arm == arm.arm])
        verdict = (recommend(ctr, alpha=alpha, treatment="b", metric=f"CTR@{k}") if ctr is not None else
                   Recommendation("inconclusive", f"arm '{arms[0].arm if not arms[0].requests else arm.arm}' has no requests yet"))
        comparisons.append(ArmComparison(arms[0].arm, arm.arm, ctr, latency, verdict))
    overall = comparisons[0].recommendation if len(comparisons) == 1 else None
    return ExperimentReport(experiment.name, "ab", k, arms, comparisons, recommendation=overall, events=n_events)


def _arm_summary(arm: str, requests: Sequence[LoggedRequest], events: dict[str, list[FeedbackEvent]],
                 k: int) -> ArmSummary:
    clicked = abandoned = up = down = 0
    for request in requests:
        own = events.get(request.request_id, [])
        if any(positive(e) and e.rank <= k for e in own):
            clicked += 1
        if not any(positive(e) for e in own):
            abandoned += 1
        up += sum(e.signal == "thumbs_up" for e in own)
        down += sum(e.signal == "thumbs_down" for e in own)
    latencies = [r.latency_ms for r in requests if r.latency_ms is not None]
    n = len(requests)
    return ArmSummary(arm, tuple(sorted({r.model or "none" for r in requests})), n, clicked / n if n else 0.0,
                      clicked, up, down, abandoned / n if n else 0.0,
                      float(np.percentile(latencies, 50)) if latencies else None,
                      float(np.percentile(latencies, 99)) if latencies else None)


def _latency_difference(a: Sequence[LoggedRequest], b: Sequence[LoggedRequest]) -> MeanDifference | None:
    la = [r.latency_ms for r in a if r.latency_ms is not None]
    lb = [r.latency_ms for r in b if r.latency_ms is not None]
    return bootstrap_mean_difference(la, lb, resamples=2000) if len(la) > 1 and len(lb) > 1 else None


# ---------------------------------------------------------------------------------------------- shadow
@dataclass(frozen=True, slots=True)
class Mean:
    """A mean with a bootstrap interval (None when there are too few values to resample)."""

    value: float
    n: int
    low: float | None
    high: float | None

    def summary(self) -> str:
        interval = f" [95% CI {self.low:.3f}, {self.high:.3f}]" if self.low is not None else ""
        return f"{self.value:.3f}{interval} (n={self.n})"


@dataclass(frozen=True, slots=True)
class ShadowSummary:
    production_model: str
    shadow_model: str
    requests: int
    kendall_tau: Mean | None
    top5_overlap: Mean
    shadow_ms_p50: float
    #: documents that moved most often by the largest distance: ``(doc_id, production_rank, shadow_rank)``
    largest_moves: list[tuple[str, str, int, int]]
    judged_requests: int
    ndcg: PairedDifference | None  # shadow − production on requests with feedback
    recommendation: Recommendation


def _mean(values: Sequence[float]) -> Mean:
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2 or np.ptp(data) == 0:
        return Mean(float(data.mean()), int(data.size), None, None)
    low, high = bootstrap_ci(data, n_resamples=2000)
    return Mean(float(data.mean()), int(data.size), low, high)


def shadow_report(store: FeedbackStore, *, since: str | None = None, k: int = 5,
                  alpha: float = 0.05) -> list[ShadowSummary]:
    """One summary per (production model, shadow model) pair seen in the shadow records."""
    records = store.shadow_records(since=since)
    if not records:
        raise ExperimentError("no shadow records in the feedback store" + (f" since {since}" if since else "")
                              + "; serve with --shadow NAME and a --feedback-db, then send traffic")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for record in records:
        groups[(record.production_model, record.shadow_model)].append(record)
    out = []
    for (production, shadow), group in groups.items():
        ids = [r.request_id for r in group]
        events = by_request(store.events(request_ids=ids))
        prod_scores, shadow_scores = [], []
        for record in group:
            own = events.get(record.request_id)
            logged = store.get_request(record.request_id) if own else None
            if not own or logged is None:
                continue
            per_doc: dict[str, list[FeedbackEvent]] = defaultdict(list)
            for event in own:
                per_doc[event.doc_id].append(event)
            gains = {doc: gain(evs) for doc, evs in per_doc.items()}
            if not any(gains.values()):
                continue
            prod_scores.append(ndcg_at_k([r.doc_id for r in logged.results], gains, k))
            shadow_scores.append(ndcg_at_k([doc for doc, _ in record.shadow_ranking], gains, k))
        ndcg = paired_bootstrap(shadow_scores, prod_scores, resamples=2000) if len(prod_scores) >= 2 else None
        verdict = (recommend(ndcg, alpha=alpha, treatment="a", metric=f"nDCG@{k} on judged documents")
                   if ndcg is not None else Recommendation(
                       "inconclusive", f"{len(prod_scores)} shadowed requests have feedback; need at least 2 (and 30 to decide)"))
        taus = [r.kendall_tau for r in group if r.kendall_tau is not None]
        moves: dict[str, tuple[int, str, int, int]] = {}
        for record in group:
            for doc, before, after in record.largest_moves:
                if abs(after - before) > moves.get(doc, (0, "", 0, 0))[0]:
                    moves[doc] = (abs(after - before), record.request_id, before, after)
        top_moves = sorted(moves.items(), key=lambda item: -item[1][0])[:5]
        out.append(ShadowSummary(production, shadow, len(group), _mean(taus) if taus else None,
                                 _mean([r.top5_overlap for r in group]),
                                 float(np.percentile([r.shadow_ms for r in group], 50)),
                                 [(doc, rid, before, after) for doc, (_, rid, before, after) in top_moves],
                                 len(prod_scores), ndcg, verdict))
    return out
