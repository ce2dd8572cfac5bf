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

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

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
from rankwise.feedback.events import FIRST_STAGE_MODEL, FeedbackEvent, LoggedRequest, ShadowRecord, by_request
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
    """One arm's traffic and what users did with it. For an interleaved arm, ``requests`` is every
    interleaved list (each showed both arms) and the clicks and thumbs are those on its own documents."""

    arm: str
    #: the served names (version and alias) that answered the arm's requests
    models: tuple[str, ...]
    requests: int
    #: the arm's share of the experiment's answered requests (for interleaving: 1, every list holds both)
    share: float
    #: answers in first-stage order because the latency budget ran out: not in the comparison
    degraded: int
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

    # the tests report control − treatment; people read "how much better is the treatment"
    def ctr_line(self, k: int) -> str | None:
        if self.ctr is None:
            return None
        t = self.ctr
        return (f"{self.treatment} vs {self.control}: CTR@{k} {t.rate_b:.1%} vs {t.rate_a:.1%}, "
                f"{-t.difference * 100:+.1f} pp (95% CI {-t.interval.high * 100:+.1f} to "
                f"{-t.interval.low * 100:+.1f} pp, {t.interval.method}), p = {t.p_value:.2g}")

    def latency_line(self) -> str | None:
        if self.latency is None:
            return None
        lat = self.latency
        return (f"mean latency {lat.mean_b:.0f} vs {lat.mean_a:.0f} ms, {-lat.difference:+.0f} ms (95% CI "
                f"{-lat.interval.high:+.0f} to {-lat.interval.low:+.0f}), p = {lat.p_value:.2g}")


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    mode: Literal["ab", "interleave", "canary"]
    k: int
    arms: list[ArmSummary] = field(default_factory=list)
    comparisons: list[ArmComparison] = field(default_factory=list)
    interleaving: SignTest | None = None
    recommendation: Recommendation | None = None
    events: int = 0


#: a rule for which of a request's feedback events count for an arm (every one in A/B; interleaving: only
#: those on the documents the arm contributed)
_Owns = Callable[[LoggedRequest, FeedbackEvent], bool]


def experiment_report(store: FeedbackStore, experiment: Experiment, *, since: str | None = None, k: int = 5,
                      alpha: float = 0.05) -> ExperimentReport:
    """Per-arm metrics, significance and a recommendation for ``experiment`` over the logged traffic."""
    if k < 1:
        raise ExperimentError("--k must be at least 1")
    logged = list(store.requests(since=since, experiment=experiment.name))
    requests = [r for r in logged if not r.degraded]
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
        degraded = len(logged) - len(requests)
        arms = [_arm_summary(name, requests, events, k, share=1.0, degraded=degraded, owns=_contributed_by(name),
                             model=(lambda r: r.model) if name == a else (lambda r: r.other_model))
                for name in (a, b)]
        return ExperimentReport(experiment.name, "interleave", k, arms, interleaving=test, recommendation=verdict,
                                events=n_events)
    groups = [(arm.name, [r for r in logged if r.arm == arm.name]) for arm in experiment.arms]
    return _split_traffic_report(experiment.name, "ab", groups, events, k, alpha, n_events)


def canary_report(store: FeedbackStore, *, since: str | None = None, k: int = 5,
                  alpha: float = 0.05) -> ExperimentReport:
    """Production against the canary over the logged traffic outside experiments: the canary is an A/B test
    whose treatment gets ``--canary`` of the callers, read with the same tests and the same rule. The period
    starts at the first canary request: production's traffic from before the canary ran is no control."""
    if k < 1:
        raise ExperimentError("--k must be at least 1")
    logged = [r for r in store.requests(since=since) if r.experiment is None and r.arm in (None, "canary")]
    started = next((r.time for r in logged if r.arm == "canary"), None)
    logged = [r for r in logged if started is not None and r.time >= started]
    if not logged:
        raise ExperimentError("no canary requests in the query log" + (f" since {since}" if since else "")
                              + "; serve with --canary 10% (and --canary-model) and a --feedback-db, then send "
                              "traffic")
    answered = [r.request_id for r in logged if not r.degraded]
    events = by_request(store.events(since=since, request_ids=answered))
    groups = [("production", [r for r in logged if r.arm is None]), ("canary", [r for r in logged if r.arm == "canary"])]
    return _split_traffic_report("canary", "canary", groups, events, k, alpha, sum(len(v) for v in events.values()))


def _split_traffic_report(name: str, mode: Literal["ab", "canary"], groups: Sequence[tuple[str, list[LoggedRequest]]],
                          events: dict[str, list[FeedbackEvent]], k: int, alpha: float,
                          n_events: int) -> ExperimentReport:
    """Arms that each answered their own share of the traffic: every later arm against the first."""
    answered = {arm: [r for r in logged if not r.degraded] for arm, logged in groups}
    total = sum(len(v) for v in answered.values())
    arms = [_arm_summary(arm, answered[arm], events, k, share=len(answered[arm]) / total if total else 0.0,
                         degraded=len(logged) - len(answered[arm])) for arm, logged in groups]
    control = arms[0]
    comparisons = []
    for arm in arms[1:]:
        ctr = (two_proportion(control.clicked_at_k, control.requests, arm.clicked_at_k, arm.requests)
               if control.requests and arm.requests else None)
        latency = _latency_difference(answered[control.arm], answered[arm.arm])
        verdict = (recommend(ctr, alpha=alpha, treatment="b", metric=f"CTR@{k}") if ctr is not None else
                   Recommendation("inconclusive", f"arm '{control.arm if not control.requests else arm.arm}' has no "
                                                  "requests yet"))
        comparisons.append(ArmComparison(control.arm, arm.arm, ctr, latency, verdict))
    overall = comparisons[0].recommendation if len(comparisons) == 1 else None
    return ExperimentReport(name, mode, k, arms, comparisons, recommendation=overall, events=n_events)


def _contributed_by(arm: str) -> _Owns:
    def owns(request: LoggedRequest, event: FeedbackEvent) -> bool:
        result = request.result_for(event.doc_id)
        return result is not None and result.arm == arm
    return owns


def _arm_summary(arm: str, requests: Sequence[LoggedRequest], events: dict[str, list[FeedbackEvent]], k: int, *,
                 share: float, degraded: int, owns: _Owns | None = None,
                 model: Callable[[LoggedRequest], str | None] = lambda r: r.model) -> ArmSummary:
    clicked = abandoned = up = down = 0
    for request in requests:
        every = events.get(request.request_id, [])
        own = [e for e in every if owns is None or owns(request, e)]
        if any(positive(e) and e.rank <= k for e in own):
            clicked += 1
        if not any(positive(e) for e in every):
            abandoned += 1
        up += sum(e.signal == "thumbs_up" for e in own)
        down += sum(e.signal == "thumbs_down" for e in own)
    latencies = [r.latency_ms for r in requests if r.latency_ms is not None]
    n = len(requests)
    return ArmSummary(arm, tuple(sorted({model(r) or "none" for r in requests})), n, share, degraded,
                      clicked / n if n else 0.0, clicked, up, down, abandoned / n if n else 0.0,
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
    #: requests the shadow scored: what every comparison below is over
    requests: int
    kendall_tau: Mean | None
    top5_overlap: Mean | None
    shadow_ms_p50: float | None
    #: documents that moved most often by the largest distance: ``(doc_id, production_rank, shadow_rank)``
    largest_moves: list[tuple[str, str, int, int]]
    judged_requests: int
    ndcg: PairedDifference | None  # shadow − production on requests with feedback
    recommendation: Recommendation
    #: requests offered to the shadow (sampled by ``--shadow-share``), and what became of those not scored
    offered: int = 0
    unscored: dict[str, int] = field(default_factory=dict)
    #: answered, reranked requests production served in the same period (the shadow could have seen them)
    eligible: int = 0

    @property
    def coverage(self) -> float:
        """The share of production's traffic the comparison covers."""
        return self.requests / self.eligible if self.eligible else 0.0


def _mean(values: Sequence[float]) -> Mean:
    data = np.asarray(values, dtype=np.float64)
    if data.size < 2 or np.ptp(data) == 0:
        return Mean(float(data.mean()), int(data.size), None, None)
    low, high = bootstrap_ci(data, n_resamples=2000)
    return Mean(float(data.mean()), int(data.size), low, high)


def _answered_while_offered(store: FeedbackStore, production: str, offered: Sequence[ShadowRecord]) -> int:
    """Requests ``production`` answered (not degraded) between the first and the last request offered to the
    shadow: what the shadow could have seen while it ran. One pass over the query log from shortly before
    the first record (a record is written at most the shadow's age limit after its request)."""
    ids = {r.request_id for r in offered}
    start = datetime.fromisoformat(min(r.time for r in offered)) - _RECORD_DELAY
    served: list[tuple[str, bool]] = []  # (time, production answered it), in time order
    first = last = None
    for request in store.requests(since=start.isoformat(timespec="milliseconds")):
        served.append((request.time, (request.model or FIRST_STAGE_MODEL) == production and not request.degraded))
        if request.request_id in ids:
            first = request.time if first is None else first
            last = request.time
    if first is None or last is None:  # the offered requests were purged since: count what was offered
        return len(offered)
    return max(len(offered), sum(1 for time, eligible in served if eligible and first <= time <= last))


#: how much earlier than its shadow record a request may have been served (the shadow drops older jobs)
_RECORD_DELAY = timedelta(minutes=5)


def shadow_report(store: FeedbackStore, *, since: str | None = None, k: int = 5,
                  alpha: float = 0.05) -> list[ShadowSummary]:
    """One summary per (production model, shadow model) pair seen in the shadow records, with the share of
    production's traffic it covers: requests the shadow scored over those production answered while it ran."""
    records = store.shadow_records(since=since)
    if not records:
        raise ExperimentError("no shadow records in the feedback store" + (f" since {since}" if since else "")
                              + "; serve with --shadow NAME and a --feedback-db, then send traffic")
    groups: dict[tuple[str, str], list[ShadowRecord]] = defaultdict(list)
    for record in records:
        groups[(record.production_model, record.shadow_model)].append(record)
    out = []
    for (production, shadow), offered in groups.items():
        group = [r for r in offered if r.outcome == "scored"]
        unscored = Counter(r.outcome for r in offered if r.outcome != "scored")
        eligible = _answered_while_offered(store, production, offered)
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
                                 _mean([r.top5_overlap for r in group]) if group else None,
                                 float(np.percentile([r.shadow_ms for r in group], 50)) if group else None,
                                 [(doc, rid, before, after) for doc, (_, rid, before, after) in top_moves],
                                 len(prod_scores), ndcg, verdict, offered=len(offered), unscored=dict(unscored),
                                 eligible=max(eligible, len(group))))
    return out
