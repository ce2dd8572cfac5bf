"""The promotion gate: a candidate reranker replaces production only if it measurably beats it.

The rule follows the reranking playbook's fine-tuning step — deploy a custom model only if it improves
nDCG@5 by more than a threshold (default +5% relative) on the gold set — and adds the guard the design
notes ask for: latency may not regress beyond a bound. With no production model yet, the candidate must
beat the first stage it reranks (a reranker that loses to its own candidate list is never promoted).
Both systems are evaluated in the same run, on the same candidates, by :func:`rankwise.evaluation.evaluate`.
Like every gate it demands evidence (:class:`~rankwise.evaluation.gates.GateEvidence`): at least 30
judged queries, and a gain the paired randomization test finds significant (p < 0.05) over them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rankwise.evaluation.compare import RERANKED_SUFFIX, Progress, evaluate
from rankwise.evaluation.gates import DEFAULT_EVIDENCE, DEFAULT_MAX_P, GateEvidence
from rankwise.evaluation.goldset import PreparedGoldSet
from rankwise.evaluation.significance import randomization_test
from rankwise.index import Index
from rankwise.options import PipelineSettings
from rankwise.registry import Registry
from rankwise.rerank.loading import load_reranker
from rankwise.rerank.sanity import probe_reranker


@dataclass(slots=True)
class PromotionDecision:
    candidate: str
    against: str
    metric: str
    candidate_value: float
    baseline_value: float
    relative_gain: float
    min_gain: float
    candidate_p95_ms: float
    baseline_p95_ms: float | None
    max_latency_regression: float
    rerank_k: int = 100
    rerank_fusion: str = "none"
    queries: int = 0
    #: paired randomization p-value of the candidate against what it would replace, over ``queries``
    p_value: float = float("nan")
    max_p: float = DEFAULT_MAX_P
    passed: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_promotion(
    registry: Registry,
    index: Index,
    goldset: PreparedGoldSet,
    *,
    candidate: str = "candidate",
    first_stage: str = "hybrid",
    metric: str = "nDCG@5",
    min_gain: float = 0.05,
    max_latency_regression: float = 0.25,
    rerank_k: int = 100,
    rerank_fusion: str | None = None,
    evidence: GateEvidence = DEFAULT_EVIDENCE,
    progress: Progress | None = None,
    **reranker_options: Any,
) -> PromotionDecision:
    """Evaluate ``candidate`` against production (or the bare first stage) and apply the gate.

    ``rerank_k`` and ``rerank_fusion`` must be what production will serve with: a reranker that only
    helps when fused with the first stage is judged as fused, and both sides use the same settings
    (unset, each model is judged with the ordering its training declared, as it would be served).
    """
    version = registry.get(candidate).version
    evidence.check_queries(len(goldset.queries))  # before minutes of evaluation
    production = registry.aliases().get("production")
    system = first_stage + RERANKED_SUFFIX

    def run(spec: str):
        reranker = load_reranker(spec, registry=registry, **reranker_options)
        if spec == version and reranker is not None:  # a candidate that cannot score is refused in one line, not by a failed evaluation
            probe_reranker(reranker)

        def named(system: str, done: int, total: int) -> None:  # both runs have the same system names
            if progress is not None:
                progress(f"{spec}: {system}", done, total)

        return evaluate(index, goldset, first_stages=[first_stage], reranker=reranker, metrics=[metric],
                        baseline=first_stage, settings=PipelineSettings(rerank_k=rerank_k, rerank_fusion=rerank_fusion),
                        n_resamples=1000,
                        progress=named)

    cand = run(version)
    cand_value = cand.scores[system][metric]
    cand_p95 = cand.latency_ms[system]["total"]["p95"]
    if production and production != version:
        prod = run(production)
        against, base_value, base_p95 = production, prod.scores[system][metric], prod.latency_ms[system]["total"]["p95"]
        # two runs over the same queries: the pairs are per query
        ids = sorted(cand.per_query[system][metric])
        p_value = randomization_test([cand.per_query[system][metric][q] for q in ids],
                                     [prod.per_query[system][metric][q] for q in ids], n_resamples=1000)
    else:
        against, base_value, base_p95 = f"{first_stage} (no production model)", cand.scores[first_stage][metric], None
        p_value = cand.comparison(system).metrics[metric].p_randomization
    gain = (cand_value - base_value) / base_value if base_value > 0 else float("inf") if cand_value > 0 else 0.0
    decision = PromotionDecision(version, against, metric, cand_value, base_value, gain, min_gain, cand_p95,
                                 base_p95, max_latency_regression, rerank_k, str(cand.config["rerank_fusion"]),
                                 queries=len(goldset.queries), p_value=p_value, max_p=evidence.max_p)
    if gain <= min_gain:
        decision.reasons.append(f"{metric} gain {gain:+.1%} vs {against} does not clear the required {min_gain:+.1%}")
    elif not evidence.significant(p_value):
        decision.reasons.append(f"{metric} gain {gain:+.1%} vs {against} is not significant: randomization "
                                f"p = {p_value:.3g} over {decision.queries} queries (required < {evidence.max_p:g})")
    if base_p95 is not None and cand_p95 > base_p95 * (1 + max_latency_regression):
        decision.reasons.append(f"p95 latency {cand_p95:.0f} ms regresses more than {max_latency_regression:.0%} "
                                f"over {against}'s {base_p95:.0f} ms")
    decision.passed = not decision.reasons
    return decision
