"""Online comparison of reranker versions: experiment definitions, sticky A/B assignment, team-draft
interleaving, the statistics that decide between versions, and rank agreement for shadow deployments.

>>> from rankwise.experiments import load_experiment, assign, team_draft, credit, sign_test, recommend
>>> experiment = load_experiment("experiments/v4-vs-v3.toml")
>>> assign(experiment, user_id).reranker                       # ab mode: the same arm for this user
>>> shown = team_draft(control_ids, treatment_ids, 10, rng)     # interleave mode: one list of both
>>> credit(dict(shown), clicked_ids)                            # "a", "b" or "tie"
>>> recommend(sign_test(wins_a, wins_b)).summary()
"""

from __future__ import annotations

from rankwise.experiments.agreement import Agreement, agreement, dcg_at_k, ndcg_at_k
from rankwise.experiments.assignment import assign, bucket, enrolled
from rankwise.experiments.config import (
    ASSIGNMENT_UNITS,
    EXPERIMENT_MODES,
    INTERLEAVED_ARM,
    Arm,
    AssignmentUnit,
    Experiment,
    ExperimentError,
    ExperimentMode,
    load_experiment,
)
from rankwise.experiments.interleave import Outcome, Team, credit, team_draft
from rankwise.experiments.stats import (
    ComparisonResult,
    Decision,
    Interval,
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

__all__ = [
    "ASSIGNMENT_UNITS", "EXPERIMENT_MODES", "INTERLEAVED_ARM", "Agreement", "Arm", "AssignmentUnit",
    "ComparisonResult", "Decision", "Experiment", "ExperimentError", "ExperimentMode", "Interval",
    "MeanDifference", "Outcome", "PairedDifference", "ProportionTest", "Recommendation", "SignTest", "Team",
    "agreement", "assign", "bootstrap_mean_difference", "bucket", "credit", "dcg_at_k", "enrolled", "load_experiment",
    "ndcg_at_k", "paired_bootstrap", "recommend", "sign_test", "team_draft", "two_proportion",
]
