"""Online comparison of reranker versions: experiment files, assignment, interleaving, statistics,
agreement."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from rankwise.errors import RankwiseError
from rankwise.evaluation.metrics import per_query
from rankwise.evaluation.runs import run_from_rankings
from rankwise.experiments import (
    Experiment,
    ExperimentError,
    agreement,
    assign,
    bootstrap_mean_difference,
    bucket,
    credit,
    dcg_at_k,
    enrolled,
    load_experiment,
    ndcg_at_k,
    paired_bootstrap,
    recommend,
    sign_test,
    team_draft,
    two_proportion,
)

GOOD_TOML = """
name = "v4-vs-v3"
mode = "ab"
unit = "user"
[[arms]]
name = "control"
reranker = "production"
share = 0.5
[[arms]]
name = "treatment"
reranker = "candidate"
share = 0.5
first_stage = "hybrid"
rerank_k = 50
rerank_fusion = "rrf"
"""


def _arms(*shares: float, **extra: object) -> list[dict[str, object]]:
    return [{"name": f"arm{i}", "reranker": "none", "share": s, **extra} for i, s in enumerate(shares)]


def _experiment(mode: str = "ab", shares: tuple[float, ...] = (0.5, 0.5), name: str = "exp") -> Experiment:
    return Experiment.from_dict({"name": name, "mode": mode, "unit": "user", "arms": _arms(*shares)})


# ---------------------------------------------------------------------------------------------- config


def test_toml_and_json_definitions_load_to_the_same_experiment(tmp_path: Path) -> None:
    toml_file = tmp_path / "exp.toml"
    toml_file.write_text(GOOD_TOML)
    experiment = load_experiment(toml_file)
    json_file = tmp_path / "exp.json"
    json_file.write_text(json.dumps({"name": "v4-vs-v3", "mode": "ab", "unit": "user", "arms": [
        {"name": "control", "reranker": "production", "share": 0.5},
        {"name": "treatment", "reranker": "candidate", "share": 0.5, "first_stage": "hybrid", "rerank_k": 50,
         "rerank_fusion": "rrf"}]}))
    assert load_experiment(json_file) == experiment
    assert experiment.mode == "ab" and experiment.unit == "user"
    control, treatment = experiment.arms
    assert (control.reranker, control.share) == ("production", 0.5)
    assert (control.first_stage, control.rerank_k, control.rerank_fusion) == (None, None, None)
    assert (treatment.first_stage, treatment.rerank_k, treatment.rerank_fusion) == ("hybrid", 50, "rrf")
    assert experiment.arm("treatment") is treatment


def test_shares_default_to_an_equal_split_and_interleave_mode_ignores_them() -> None:
    data = {"name": "e", "arms": [{"name": n, "reranker": "none"} for n in ("a", "b", "c")]}
    assert [arm.share for arm in Experiment.from_dict(data).arms] == pytest.approx([1 / 3] * 3)
    interleaved = Experiment.from_dict({"name": "e", "mode": "interleave", "arms": _arms(0.9, 0.9)})
    assert [arm.share for arm in interleaved.arms] == [0.5, 0.5]


def _bad(arms: list[dict[str, object]] | None = None, **top: object) -> str:
    return json.dumps({"name": "e", "arms": _arms(0.5, 0.5) if arms is None else arms, **top})


BAD_FILES = [
    ("exp.toml", "name = 'e'\n[[arms]\nname = 'x'", "malformed TOML"),
    ("exp.json", '{"name": "e", "arms": [', "malformed JSON at line 1"),
    ("exp.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("exp.toml", "a = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("exp.json", _bad(colour="red"), "unknown key 'colour'; expected name, mode, unit, arms"),
    ("exp.json", _bad(_arms(0.5, 0.5, weight=1)), "arms[0]: unknown key 'weight'"),
    ("exp.json", _bad(_arms(0.6, 0.3)), "arms: shares sum to 0.9, not 1"),
    ("exp.json", _bad(_arms(1.5, -0.5)), "arms[0].share: must be a number in (0, 1], got 1.5"),
    ("exp.json", _bad([{"name": "x", "reranker": "a"}, {"name": "x", "reranker": "b"}]),
     "arms[1].name: duplicate arm name 'x'"),
    ("exp.json", _bad(_arms(1.0)), "arms: an experiment compares at least 2 arms, got 1"),
    ("exp.json", _bad(_arms(0.3, 0.3, 0.4), mode="interleave"),
     "interleave mode compares exactly 2 arms, got 3"),
    ("exp.json", _bad(_arms(0.5, 0.5, first_stage="splade")),
     "arms[0].first_stage: unknown first stage 'splade'; choose bm25, dense, hybrid"),
    ("exp.json", _bad(mode="bandit"), "mode: unknown experiment mode 'bandit'; choose ab, interleave"),
    ("exp.json", _bad(_arms(0.5, 0.5, rerank_k=0)), "arms[0].rerank_k: must be a positive integer, got 0"),
    ("exp.json", _bad([{"name": "x", "share": 0.5}, {"name": "y", "reranker": "b", "share": 0.5}]),
     "arms[0].reranker: must be a non-empty string, got nothing"),
    ("exp.json", _bad([{"name": "x", "reranker": "a", "share": 1.0}, {"name": "y", "reranker": "b"}]),
     "arms[1]: no share; give every arm a share, or none for an equal split"),
    ("exp.json", "[1, 2]", "expected a table of experiment settings, got list"),
    ("exp.yaml", "name: e", "experiment files are .toml or .json, not '.yaml'"),
]


BAD_FILE_IDS = [f"{i}-{expected.split(':')[0][:24]}" for i, (*_, expected) in enumerate(BAD_FILES)]


@pytest.mark.parametrize(("filename", "text", "expected"), BAD_FILES, ids=BAD_FILE_IDS)
def test_malformed_experiment_files_give_one_line_naming_the_file_and_field(
        tmp_path: Path, filename: str, text: str, expected: str) -> None:
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(ExperimentError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert isinstance(caught.value, RankwiseError)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_a_missing_experiment_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match=r"nope\.toml: no such experiment file$"):
        load_experiment(tmp_path / "nope.toml")


# ------------------------------------------------------------------------------------------ assignment


def test_bucket_is_the_first_64_bits_of_sha256_of_name_and_unit() -> None:
    expected = int(hashlib.sha256(b"exp:user-42").hexdigest()[:16], 16) / 2**64
    assert bucket("exp", "user-42") == expected


def test_assignment_is_sticky_across_fresh_definitions(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(GOOD_TOML)
    first = {f"user-{i}": assign(load_experiment(path), f"user-{i}").name for i in range(200)}
    again = load_experiment(path)  # as after a restart, or on another replica
    assert {uid: assign(again, uid).name for uid in first} == first
    assert set(first.values()) == {"control", "treatment"}


def test_assignment_respects_shares_over_20k_ids() -> None:
    experiment = _experiment(shares=(0.2, 0.3, 0.5))
    counts = Counter(assign(experiment, f"id-{i}").name for i in range(20_000))
    for arm in experiment.arms:
        assert abs(counts[arm.name] / 20_000 - arm.share) < 0.015, counts


def test_different_experiments_assign_independently() -> None:
    one, two = _experiment(name="one"), _experiment(name="two")
    same = sum(assign(one, f"u{i}").name == assign(two, f"u{i}").name for i in range(4_000)) / 4_000
    assert 0.45 < same < 0.55  # hashing with the experiment's name: the treatment users differ each time


def test_a_traffic_share_enrols_that_share_of_units_without_picking_their_arms() -> None:
    experiment = Experiment.from_dict({"name": "part", "mode": "ab", "traffic": 0.2, "arms": _arms(0.5, 0.5)})
    ids = [f"id-{i}" for i in range(20_000)]
    inside = [i for i in ids if enrolled(experiment, i)]
    assert abs(len(inside) / len(ids) - 0.2) < 0.015
    arms = Counter(assign(experiment, i).name for i in inside)  # its own hash: enrolled units still split evenly
    assert abs(arms["arm0"] / len(inside) - 0.5) < 0.03, arms
    assert all(enrolled(_experiment(), i) for i in ids[:100])  # traffic defaults to everyone


@pytest.mark.parametrize("traffic", [0, 1.5, "half", True])
def test_a_bad_traffic_share_is_one_line(traffic: object) -> None:
    with pytest.raises(ExperimentError) as err:
        Experiment.from_dict({"name": "x", "mode": "interleave", "traffic": traffic, "arms": _arms(0.5, 0.5)})
    assert str(err.value).startswith("experiment: traffic: must be a number in (0, 1]") and "\n" not in str(err.value)


def test_assignment_rejects_interleave_mode_and_empty_ids() -> None:
    with pytest.raises(ExperimentError, match="interleaves every request"):
        assign(_experiment(mode="interleave"), "u1")
    with pytest.raises(ExperimentError, match="assigns by user, but no user id was given"):
        assign(_experiment(), "")


# ---------------------------------------------------------------------------------------- interleaving


def test_identical_rankings_interleave_to_the_same_list_with_alternating_teams() -> None:
    ranking = [f"d{i}" for i in range(10)]
    for seed in range(20):
        shown = team_draft(ranking, ranking, 10, random.Random(seed))
        assert [doc for doc, _ in shown] == ranking
        teams = [team for _, team in shown]
        assert all({teams[i], teams[i + 1]} == {"a", "b"} for i in range(0, 10, 2))  # one pick each per round


def test_every_pick_is_the_teams_best_unshown_document_and_teams_stay_balanced() -> None:
    rng = random.Random(7)
    docs = [f"d{i}" for i in range(12)]
    for seed in range(200):
        a, b = rng.sample(docs, 12), rng.sample(docs, 12)
        shown = team_draft(a, b, 8, random.Random(seed))
        assert len({doc for doc, _ in shown}) == 8
        picks = Counter()
        for i, (doc, team) in enumerate(shown):
            earlier = {d for d, _ in shown[:i]}
            assert doc == next(d for d in (a if team == "a" else b) if d not in earlier)
            picks[team] += 1
            assert abs(picks["a"] - picks["b"]) <= 1


def test_duplicates_and_an_exhausted_ranking_are_handled() -> None:
    shown = team_draft(["x", "x"], ["x", "y", "z"], 5, random.Random(0))
    assert sorted(doc for doc, _ in shown) == ["x", "y", "z"]  # each document once, list filled from b
    assert dict(shown)["y"] == "b" and dict(shown)["z"] == "b"
    assert team_draft([], [], 5, random.Random(0)) == []
    assert len(team_draft(["p", "q"], ["r", "s"], 3, random.Random(0))) == 3
    with pytest.raises(ExperimentError, match="k of at least 0"):
        team_draft(["p"], ["q"], -1, random.Random(0))


def test_the_coin_flip_lets_each_team_pick_first_about_half_the_time() -> None:
    a, b = ["a1", "a2", "a3", "a4"], ["b1", "b2", "b3", "b4"]
    first = Counter(team_draft(a, b, 4, random.Random(seed))[0][1] for seed in range(2_000))
    assert 0.45 < first["a"] / 2_000 < 0.55
    second_round = Counter(team_draft(a, b, 4, random.Random(seed))[2][1] for seed in range(2_000))
    assert 0.45 < second_round["a"] / 2_000 < 0.55  # a new flip each round, not one per list


def test_credit_goes_to_the_team_whose_documents_were_clicked() -> None:
    teams = {"d1": "a", "d2": "b", "d3": "a", "d4": "b"}
    assert credit(teams, ["d1", "d3"]) == "a"
    assert credit(teams, ["d2"]) == "b"
    assert credit(teams, ["d1", "d2"]) == "tie"
    assert credit(teams, []) == "tie"  # no clicks: no preference
    assert credit(teams, ["d1", "d1", "d1", "d2", "d4"]) == "b"  # a document counts once
    assert credit(teams, ["elsewhere", "d2"]) == "b"  # clicks on documents not shown are ignored


def test_interleaving_with_simulated_clicks_finds_the_better_ranker() -> None:
    relevant = {"r1", "r2", "r3"}
    better = ["r1", "r2", "n1", "r3", "n2", "n3", "n4", "n5"]
    worse = ["n1", "n2", "r1", "n3", "n4", "r2", "n5", "r3"]
    rng, clicks = random.Random(3), random.Random(4)
    outcomes: Counter[str] = Counter()
    for _ in range(300):
        shown = team_draft(worse, better, 5, rng)
        clicked = [doc for rank, (doc, _) in enumerate(shown, 1)
                   if clicks.random() < (0.9 if doc in relevant else 0.05) / rank]
        outcomes[credit(dict(shown), clicked)] += 1
    result = sign_test(outcomes["a"], outcomes["b"], outcomes["tie"])
    assert result.wins_b > result.wins_a
    decision = recommend(result)  # the treatment is team b, the better ranker
    assert decision.decision == "switch", decision.rule


# ---------------------------------------------------------------------------------------------- stats


def test_sign_test_matches_the_binomial_distribution_by_hand() -> None:
    result = sign_test(9, 1, ties=7)
    assert result.p_value == pytest.approx(2 * (1 + 10) / 2**10)  # P(X ≤ 1) + P(X ≥ 9), X ~ Bin(10, 1/2)
    assert result.share_a == 0.9 and result.units == 10 and result.ties == 7
    # Clopper–Pearson bounds are beta quantiles
    assert result.interval.low == pytest.approx(stats.beta.ppf(0.025, 9, 2))
    assert result.interval.high == pytest.approx(stats.beta.ppf(0.975, 10, 1))
    assert sign_test(5, 5).p_value == 1.0
    nobody = sign_test(0, 0, ties=12)
    assert (nobody.p_value, nobody.interval.low, nobody.interval.high) == (1.0, 0.0, 1.0)


def test_two_proportion_matches_the_pooled_z_test_and_newcombe_interval_by_hand() -> None:
    result = two_proportion(30, 100, 20, 100)
    pooled = 50 / 200
    z = (0.3 - 0.2) / math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 100))
    assert result.z == pytest.approx(z) and result.z == pytest.approx(1.63299, abs=1e-5)
    assert result.p_value == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert result.difference == pytest.approx(0.1)

    def wilson(k: int, n: int) -> tuple[float, float]:
        q, p = 1.959963984540054, k / n
        centre, half = (p + q * q / (2 * n)), q * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n))
        return (centre - half) / (1 + q * q / n), (centre + half) / (1 + q * q / n)

    (l1, u1), (l2, u2) = wilson(30, 100), wilson(20, 100)
    assert result.interval.low == pytest.approx(0.1 - math.sqrt((0.3 - l1) ** 2 + (u2 - 0.2) ** 2))
    assert result.interval.high == pytest.approx(0.1 + math.sqrt((u1 - 0.3) ** 2 + (0.2 - l2) ** 2))
    assert "Newcombe" in result.summary() and "\n" not in result.summary()


def test_two_proportion_without_any_success_and_with_bad_counts() -> None:
    none = two_proportion(0, 50, 0, 80)
    assert (none.z, none.p_value, none.difference) == (0.0, 1.0, 0.0)
    assert none.interval.low < 0 < none.interval.high
    with pytest.raises(ExperimentError, match="arm b: need 0 ≤ successes ≤ trials"):
        two_proportion(1, 10, 11, 10)


def test_bootstrap_mean_difference_covers_the_true_shift_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(10.0, 2.0, 400), rng.normal(11.0, 2.0, 300)
    result = bootstrap_mean_difference(a, b, resamples=2_000, seed=1)
    assert result.difference == pytest.approx(a.mean() - b.mean())
    assert result.interval.low < -1.0 < result.interval.high and result.interval.high < 0
    assert result.p_value == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert bootstrap_mean_difference(a, b, resamples=2_000, seed=1) == result
    constant = bootstrap_mean_difference([2.0, 2.0], [1.0, 1.0, 1.0])
    assert (constant.interval.low, constant.interval.high, constant.p_value) == (1.0, 1.0, 0.0)
    with pytest.raises(ExperimentError, match="arm b: need a non-empty list of numbers"):
        bootstrap_mean_difference([1.0], [])


def test_pairing_detects_a_shift_that_independent_samples_miss() -> None:
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0.0, 1.0, 40)  # per-request: hard queries are hard for both models
    a = difficulty + 0.05 + rng.normal(0.0, 0.01, 40)
    b = difficulty
    paired = paired_bootstrap(a, b, resamples=2_000)
    independent = bootstrap_mean_difference(a, b, resamples=2_000)
    assert paired.difference == pytest.approx(np.mean(a - b))
    assert paired.interval.low > 0.04 and paired.p_value < 0.001
    assert independent.interval.low < 0 < independent.interval.high and independent.p_value > 0.05
    with pytest.raises(ExperimentError, match="one value per request from each arm, got 3 and 2"):
        paired_bootstrap([1, 2, 3], [1, 2])


def test_recommend_states_its_rule_and_respects_direction_and_minimum_units() -> None:
    treatment_better = two_proportion(200, 1000, 260, 1000)  # b (treatment) has the higher CTR
    switch = recommend(treatment_better, metric="CTR@5")
    assert switch.decision == "switch"
    assert switch.rule.startswith("the treatment's CTR@5 is higher with p < 0.05 over ≥ 100 requests per arm")
    assert recommend(treatment_better, treatment="a").decision == "keep"
    assert recommend(treatment_better, higher_is_better=False).decision == "keep"  # e.g. latency
    assert recommend(treatment_better, alpha=1e-4).decision == "inconclusive"

    early = recommend(two_proportion(2, 50, 20, 50))
    assert early.decision == "inconclusive" and "≥ 100 requests per arm; there are 50 so far" in early.rule
    assert recommend(two_proportion(2, 50, 20, 50), min_units=50).decision == "switch"
    even = sign_test(30, 31)
    flat = recommend(even)
    assert flat.decision == "inconclusive"
    assert flat.rule.startswith("no difference in share of interleaving wins")
    assert "(p = 1, 61 non-tied interleaved impressions)" in flat.rule
    with pytest.raises(ExperimentError, match="alpha must lie in"):
        recommend(even, alpha=0.0)


# ------------------------------------------------------------------------------------------ agreement


def test_agreement_of_identical_and_reversed_rankings() -> None:
    ranking = ["a", "b", "c", "d", "e", "f"]
    same = agreement(ranking, ranking)
    assert (same.kendall_tau, same.top_overlap, same.largest_moves) == (pytest.approx(1.0), 1.0, ())
    reverse = agreement(ranking, ranking[::-1], top=3, moves=2)
    assert reverse.kendall_tau == pytest.approx(-1.0)
    assert reverse.top_overlap == 0.0
    assert reverse.largest_moves == (("a", 1, 6), ("f", 6, 1))


def test_agreement_by_hand_with_one_swap_and_missing_documents() -> None:
    swapped = agreement(["a", "b", "c", "d"], ["b", "a", "c", "d"])
    assert swapped.kendall_tau == pytest.approx((5 - 1) / 6)  # 5 concordant pairs, 1 discordant
    # c is missing from the shadow list and d from production: each sits at rank n + 1 of its list
    missing = agreement(["a", "b", "c"], ["a", "b", "d"], top=5)
    assert missing.kendall_tau == pytest.approx((5 - 1) / 6)
    assert missing.top_overlap == pytest.approx(2 / 3)
    assert set(missing.largest_moves) == {("c", 3, 4), ("d", 4, 3)}
    assert agreement(["a"], ["a"]).kendall_tau is None
    assert agreement([], []).top_overlap == 1.0
    with pytest.raises(ExperimentError, match="the shadow lists document 'a' twice"):
        agreement(["a", "b"], ["a", "a"])


def test_ndcg_matches_ir_measures_on_integer_gains() -> None:
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(15)]
    for query in range(20):
        ranking = rng.sample(docs, 10)
        gains = {doc: rng.choice([1, 2, 3]) for doc in rng.sample(docs, 5)}  # some judged docs unretrieved
        reference = per_query(["nDCG@5"], {"q": gains}, run_from_rankings({"q": ranking}))["nDCG@5"]["q"]
        assert ndcg_at_k(ranking, gains, 5) == pytest.approx(reference, abs=1e-9), query


def test_dcg_with_fractional_gains_by_hand() -> None:
    gains = {"x": 0.5, "y": 1.0}
    assert dcg_at_k(["x", "y", "z"], gains, 2) == pytest.approx(0.5 + 1.0 / math.log2(3))
    ideal = 1.0 + 0.5 / math.log2(3)
    assert ndcg_at_k(["x", "y"], gains, 2) == pytest.approx((0.5 + 1 / math.log2(3)) / ideal)
    assert ndcg_at_k(["x"], {"y": 0.0}, 3) == 0.0
    with pytest.raises(ExperimentError, match="gain of document 'x' must be a finite number ≥ 0"):
        ndcg_at_k(["x"], {"x": -1.0}, 3)
