"""Label-free drift monitoring on real searches of the KB index: in-domain traffic against out-of-domain
traffic alarms on the query signals, two halves of one traffic do not (nor do the sample KB's own query
splits), discrete signals get a test that suits them, and references survive the query log and the disk."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
from scipy import stats

from conftest import SHARED
from rankwise.corpus import SAMPLE_KB
from rankwise.corpus.beir import load_qrels, load_queries
from rankwise.feedback import LoggedRequest, SQLiteFeedbackStore
from rankwise.index import Index
from rankwise.monitoring.drift import (
    SIGNAL_KINDS,
    SIGNALS,
    DriftError,
    DriftReference,
    DriftThresholds,
    QueryVocabulary,
    RollingWindow,
    SignalKind,
    category_edges,
    chi_square_homogeneity,
    compare_windows,
    population_stability_index,
    quantile_edges,
    query_signals,
    signals_from_store,
)
from rankwise.pipeline import Pipeline
from rankwise.rerank.base import RerankScores, sigmoid

SCIFACT_QUERIES = SHARED / "data" / "beir" / "scifact" / "queries.jsonl"
OLD = "2020-01-01T00:00:00.000+00:00"

# in-domain traffic: helpdesk questions about the KB's billing, access and runbook topics
_ASKS = ["", "how do I", "how to", "steps to", "who can", "where do I", "need to", "help"]
_TASKS = ["reset mfa", "reset multi-factor authentication", "rotate postgres credentials", "rotate redis credentials",
          "refund annual plan", "refund monthly plan", "cancel monthly plan", "restart api pods",
          "update redis acl file", "reload the sentinel", "vault write credentials", "customer churn q4",
          "churn analysis", "billing date charges", "self-service portal", "sponsor it desk"]
_FOR = ["", "", "for contractors", "for employees", "in production", "policy", "billing team", "renewal"]
# out-of-domain traffic: biomedical claims, written in the style of SciFact
_SUBJECTS = ["Tumour necrosis factor alpha", "Mitochondrial DNA methylation", "Interleukin 6 signalling",
             "Vitamin D supplementation", "Statin therapy", "CRISPR knockout of BRCA1", "Gut microbiota diversity",
             "Insulin receptor phosphorylation", "Hepatitis B vaccination", "Telomere shortening"]
_EFFECTS = ["is associated with increased", "significantly reduces", "does not affect", "accelerates",
            "is inversely correlated with"]
_OUTCOMES = ["cardiovascular mortality", "neuronal apoptosis", "tumour metastasis", "insulin resistance",
             "bone mineral density", "viral replication"]
_COHORTS = ["in elderly patients with type 2 diabetes", "in murine models of colorectal carcinoma",
            "among adolescents in randomised controlled trials", "in postmenopausal women across cohort studies",
            "in hippocampal neurons after ischaemic stroke"]


def in_domain_queries(n: int = 200, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(part for part in (rng.choice(_ASKS), rng.choice(_TASKS), rng.choice(_FOR)) if part)
            for _ in range(n)]


def biomedical_claims(n: int = 150, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_EFFECTS)} {rng.choice(_OUTCOMES)} {rng.choice(_COHORTS)}"
            for _ in range(n)]


@pytest.fixture(scope="module")
def vocabulary(kb_index) -> QueryVocabulary:
    return QueryVocabulary.from_index(kb_index)


@pytest.fixture(scope="module")
def pipeline(kb_index) -> Pipeline:
    return Pipeline(kb_index, None, first_stage="bm25")


@pytest.fixture(scope="module")
def sample_kb_signals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    """The signals the server would log for each of the sample KB's queries, searched in its own index."""
    index = Index.build(SAMPLE_KB, tmp_path_factory.mktemp("sample-kb") / "index", embedding_model=None)
    pipeline, vocabulary = Pipeline(index, None, first_stage="bm25"), QueryVocabulary.from_index(index)
    return {query_id: query_signals(text, pipeline.search(text, k=5), vocabulary)
            for query_id, text in load_queries(SAMPLE_KB).items()}


def gathered(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    """Logged requests' signals, gathered as a window."""
    rolling = RollingWindow(size=len(rows))
    for row in rows:
        rolling.append(row)
    return rolling.snapshot()


def window(pipeline: Pipeline, vocabulary: QueryVocabulary, queries: list[str]) -> dict[str, list[float]]:
    """The signals the server would log for ``queries``, gathered as a window."""
    return gathered([query_signals(query, pipeline.search(query, k=5), vocabulary) for query in queries])


def numbers(report) -> str:
    return " | ".join(f"{s.name}: PSI {s.psi:.3f} {s.test} p={s.pvalue:.2g} (KS p={s.ks_pvalue:.2g}) median "
                      f"{s.reference_median:g}->{s.current_median:g} {s.status}" if s.psi is not None
                      else f"{s.name}: {s.status}" for s in report.signals)


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert text and "\n" not in text, text
    return text


# ------------------------------------------------------------------------------------------ signals
def test_vocabulary_counts_a_term_as_known_exactly_when_bm25_can_match_it(kb_index, kb_documents,
                                                                         vocabulary) -> None:
    # the KB's own words (inflected: stemming must match), stopwords, and words it never uses
    words = {w.strip(".,;%") for d in kb_documents for w in f"{d.title} {d.text}".split()}
    words |= {"refunds", "rotating", "Authentications", "PODS", "the", "of", "genome", "apoptosis", "zebrafish"}
    known = [w for w in sorted(words) if vocabulary.oov_rate(w) == 0.0]
    unknown = [w for w in sorted(words) if vocabulary.oov_rate(w) == 1.0]
    assert len(known) + len(unknown) == len(words)  # one word is one term or none
    assert {"refunds", "rotating", "Authentications", "PODS"} <= set(known)
    assert {"the", "genome", "apoptosis", "zebrafish"} <= set(unknown)
    for word in words:
        hits, _ = kb_index.bm25.search(word, 3)
        assert (len(hits) > 0) == (word in known), word


def test_oov_rate_is_the_share_of_unknown_terms_and_one_without_terms(vocabulary) -> None:
    assert vocabulary.oov_rate("rotate redis credentials") == 0.0
    assert vocabulary.oov_rate("rotate the quantum chromodynamics") == pytest.approx(2 / 3)  # "the": stopword
    assert vocabulary.oov_rate("redis redis genome") == pytest.approx(1 / 3)  # occurrences, not distinct terms
    for empty in ("", "the of and", "?!", "a"):
        assert vocabulary.oov_rate(empty) == 1.0


def test_oov_rate_is_cheap_enough_for_the_request_path(vocabulary) -> None:
    query = "how do contractors reset multi-factor authentication for the production vault credentials"
    assert len(query.split()) == 11
    started = time.perf_counter()
    for _ in range(10_000):
        vocabulary.oov_rate(query)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"10,000 oov_rate calls took {elapsed:.2f}s (target: 2s, i.e. 0.2 ms each)"


def test_query_signals_of_a_first_stage_answer(pipeline, vocabulary) -> None:
    response = pipeline.search("rotate the Postgres credentials in production", k=5)
    signals = query_signals(response.query, response, vocabulary)
    assert set(signals) == {"query_words", "oov_rate", "first_stage_top1"}  # no reranker: nothing reranked
    assert signals["query_words"] == 6.0
    assert signals["oov_rate"] == 0.0
    assert signals["first_stage_top1"] == pytest.approx(response.results[0].first_stage.score)
    assert signals["first_stage_top1"] > response.results[1].first_stage.score
    nothing = pipeline.search("zebrafish apoptosis", k=5)
    assert nothing.results == []
    assert query_signals(nothing.query, nothing, None) == {"query_words": 2.0}


def test_query_signals_of_a_reranked_answer(pipeline, vocabulary) -> None:
    query = "rotate credentials refund churn"
    candidates = pipeline.retrieve(query)
    n = len(candidates)
    assert n >= 4
    raw = np.linspace(-2.0, 3.0, n)  # the reranker reverses the first stage's order
    response = pipeline.respond(query, candidates, RerankScores(raw=raw, calibrated=sigmoid(raw)), k=n)
    signals = query_signals(query, response, vocabulary)
    assert set(signals) == set(SIGNALS)
    assert signals["reranker_top1"] == pytest.approx(sigmoid(raw[-1]))
    assert signals["reranker_margin"] == pytest.approx(sigmoid(raw[-1]) - sigmoid(raw[-2]))
    assert signals["rank_change"] == pytest.approx(np.mean([abs(r - (n + 1 - r)) for r in range(1, n + 1)]))
    assert signals["first_stage_top1"] == pytest.approx(candidates[0].score)
    # a degraded answer (no reranker scores) logs no reranker signals, and no rank change of 0
    degraded = query_signals(query, pipeline.respond(query, candidates, None, k=n), vocabulary)
    assert set(degraded) == {"query_words", "oov_rate", "first_stage_top1"}


# ------------------------------------------------------------------------------------------ the tests
def test_psi_matches_the_formula_on_a_hand_computed_example() -> None:
    reference = [0.0, 1.0] * 50  # 2 bins split at the median 0.5: shares 0.5 / 0.5
    current = [0.0] * 80 + [1.0] * 20  # shares 0.8 / 0.2
    expected = 0.3 * np.log(0.8 / 0.5) + (-0.3) * np.log(0.2 / 0.5)
    assert population_stability_index(reference, current, bins=2) == pytest.approx(expected)
    assert population_stability_index(reference, reference, bins=2) == 0.0


def test_quantile_bins_of_a_discrete_signal_are_deduplicated() -> None:
    words = [3.0] * 60 + [4.0] * 30 + [7.0] * 10
    edges = quantile_edges(words, 10)
    assert list(edges) == sorted(set(edges)) and len(edges) < 9
    assert population_stability_index(words, words) == 0.0
    assert population_stability_index([5.0] * 100, [5.0] * 100) == 0.0  # a constant signal: one edge
    assert population_stability_index([5.0] * 100, [6.0] * 100) > 5.0  # every value left its bin


def test_every_signal_has_a_declared_kind_that_alone_picks_its_test() -> None:
    assert set(SIGNAL_KINDS) == set(SIGNALS)
    assert set(SIGNAL_KINDS.values()) <= set(get_args(SignalKind))
    assert {name for name, kind in SIGNAL_KINDS.items() if kind == "discrete"} == {"query_words", "oov_rate",
                                                                                    "rank_change"}
    rng = np.random.default_rng(0)
    # the declaration decides, not the values: whole-number scores stay continuous, fractional counts discrete
    whole = rng.integers(0, 4, 100).astype(float)
    fractional = rng.normal(8, 2, 100)
    report = compare_windows({"reranker_top1": whole, "query_words": fractional, "custom": whole},
                             {"reranker_top1": whole[::-1], "query_words": fractional[::-1], "custom": whole})
    assert (report["reranker_top1"].test, report["query_words"].test, report["custom"].test) == ("ks", "chi2", "ks")
    assert report["reranker_top1"].pvalue == report["reranker_top1"].ks_pvalue  # KS decides a continuous signal
    assert report["query_words"].ks_pvalue is not None  # still reported for a discrete one


def test_drift_needs_both_a_large_psi_and_a_significant_ks() -> None:
    rng = np.random.default_rng(3)
    # a negligible shift over a large sample: KS is sure, PSI says it does not matter
    big = compare_windows({"first_stage_top1": rng.normal(0, 1, 20_000)},
                          {"first_stage_top1": rng.normal(0.05, 1, 20_000)})["first_stage_top1"]
    assert big.ks_pvalue < 0.01 and big.psi < 0.2 and big.status == "ok"
    # two small samples of one distribution: PSI is noisy, KS sees no evidence
    small = compare_windows({"reranker_top1": rng.normal(0, 1, 50)},
                            {"reranker_top1": rng.normal(0, 1, 50)})["reranker_top1"]
    assert small.psi >= 0.2 and small.ks_pvalue >= 0.01 and small.status == "ok"
    shifted = compare_windows({"reranker_top1": rng.normal(0, 1, 200)},
                              {"reranker_top1": rng.normal(1.5, 1, 200)})
    assert shifted["reranker_top1"].status == "drift" and shifted.alarm


# ------------------------------------------------------------------------------------------ discrete signals
def test_chi_square_and_psi_over_categories_match_a_hand_computed_example() -> None:
    reference = [3.0] * 30 + [4.0] * 40 + [5.0] * 30  # shares 0.3 / 0.4 / 0.3
    current = [3.0] * 20 + [4.0] * 40 + [5.0] * 40  # shares 0.2 / 0.4 / 0.4
    edges = category_edges(reference, current)
    assert list(edges) == [3.0, 4.0]  # three categories: ≤ 3, 4, ≥ 5
    # expected counts under one distribution: 25 / 40 / 35 per window; χ² = 2 · (5²/25 + 0 + 5²/35) = 24/7,
    # and with 2 degrees of freedom the p-value is exp(−χ²/2)
    statistic, pvalue = chi_square_homogeneity(reference, current, edges)
    assert statistic == pytest.approx(24 / 7)
    assert pvalue == pytest.approx(np.exp(-12 / 7))
    # PSI over the same categories: (−0.1)·ln(2/3) + 0 + 0.1·ln(4/3) = 0.1·ln 2
    assert population_stability_index(reference, current, edges=edges) == pytest.approx(0.1 * np.log(2))
    drift = compare_windows({"query_words": reference}, {"query_words": current})["query_words"]
    assert (drift.test, drift.statistic, drift.pvalue) == ("chi2", pytest.approx(24 / 7), pytest.approx(pvalue))
    assert drift.psi == pytest.approx(0.1 * np.log(2)) and drift.status == "ok"
    assert drift.ks_statistic == pytest.approx(0.1)  # KS is still reported, and decides nothing here


def test_sparse_categories_are_pooled_with_their_neighbours_until_the_chi_square_test_holds() -> None:
    reference = [1.0] * 40 + [2.0] * 40 + [3.0] * 15 + [7.0] * 3 + [9.0] * 2
    current = [1.0] * 20 + [2.0] * 20 + [3.0] * 8 + [4.0] * 2
    # 5 expected in the smaller window needs 5 · 150 / 50 = 15 values of both: 1 and 2 stand alone, and the
    # tail 4, 7, 9 (7 values) is too rare on its own, so it joins 3
    assert list(category_edges(reference, current)) == [1.0, 2.0]
    rng = np.random.default_rng(1)
    for n, m in ((60, 50), (500, 80), (5_000, 500)):
        for draw in (lambda k: 1.0 + rng.poisson(7, k), lambda k: np.round(rng.gamma(6, 1.2, k) * 5) / 5,
                     lambda k: np.where(rng.random(k) < 0.8, 0.0, rng.choice([0.25, 1 / 3, 0.5, 1.0], k))):
            a, b = draw(n), draw(m)
            edges = category_edges(a, b)
            assert 1 <= edges.size <= 9  # two to ten categories, as many as PSI's quantile bins at most
            table = [np.bincount(np.searchsorted(edges, v, side="left"), minlength=edges.size + 1) for v in (a, b)]
            assert stats.chi2_contingency(table).expected_freq.min() >= 5


def test_count_windows_of_one_distribution_do_not_alarm() -> None:
    rng = np.random.default_rng(2)
    for _ in range(5):
        drift = compare_windows({"query_words": 1.0 + rng.poisson(7, 300)},
                                {"query_words": 1.0 + rng.poisson(7, 300)})["query_words"]
        assert drift.test == "chi2" and drift.status == "ok", drift


def test_a_shifted_count_distribution_alarms() -> None:
    rng = np.random.default_rng(3)
    report = compare_windows({"query_words": 1.0 + rng.poisson(5, 200)}, {"query_words": 1.0 + rng.poisson(8, 200)})
    drift = report["query_words"]
    assert drift.status == "drift" and drift.psi >= 0.2 and drift.pvalue < 0.01, drift
    assert report.summary().startswith("drift in query_words (PSI ") and "chi2 p=" in report.summary()


def zero_inflated(rng: np.random.Generator, zero_share: float, n: int) -> np.ndarray:
    """An out-of-vocabulary rate: mostly zeros, otherwise a share of a few query terms."""
    return np.where(rng.random(n) < zero_share, 0.0, rng.choice([0.25, 1 / 3, 0.5, 1.0], n))


def test_a_zero_inflated_signal_whose_zero_share_falls_alarms() -> None:
    rng = np.random.default_rng(4)
    reference = zero_inflated(rng, 0.9, 200)
    moved = compare_windows({"oov_rate": reference}, {"oov_rate": zero_inflated(rng, 0.5, 200)})["oov_rate"]
    assert moved.test == "chi2" and moved.status == "drift" and moved.pvalue < 1e-6, moved
    same = compare_windows({"oov_rate": reference}, {"oov_rate": zero_inflated(rng, 0.9, 200)})["oov_rate"]
    assert same.status == "ok", same


def test_a_signal_identical_in_both_windows_does_not_alarm_or_crash() -> None:
    rng = np.random.default_rng(5)
    varied = zero_inflated(rng, 0.7, 100)
    for values in ([0.0] * 100, [5.0] * 100, varied):
        for name in ("oov_rate", "query_words", "rank_change"):
            drift = compare_windows({name: values}, {name: list(values)})[name]
            assert (drift.status, drift.psi, drift.pvalue) == ("ok", 0.0, pytest.approx(1.0)), drift
    # a constant: one category, no edges, no evidence either way
    assert category_edges([0.0] * 100, [0.0] * 100).size == 0
    assert chi_square_homogeneity([0.0] * 100, [0.0] * 100, []) == (0.0, 1.0)
    # a constant that changes is a drift all the same
    assert compare_windows({"oov_rate": [0.0] * 100}, {"oov_rate": [1.0] * 100})["oov_rate"].status == "drift"


# ------------------------------------------------------------------------------------------ real traffic
def test_in_domain_against_out_of_domain_queries_alarms_on_the_query_signals(pipeline, vocabulary) -> None:
    reference = window(pipeline, vocabulary, in_domain_queries())
    current = window(pipeline, vocabulary, biomedical_claims())
    report = compare_windows(reference, current)
    print("\nin-domain vs written biomedical claims:", numbers(report), "\n", report.summary())
    assert report.alarm
    for name in ("oov_rate", "query_words"):
        assert report[name].status == "drift" and report[name].test == "chi2", report.summary()
        assert report[name].current_median > report[name].reference_median
    assert report["first_stage_top1"].status == "drift" and report["first_stage_top1"].test == "ks"
    assert report.summary().startswith("drift in ")
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["alarm"] is True
    assert {key: as_json["signals"]["oov_rate"][key] for key in ("test", "status")} == {"test": "chi2",
                                                                                       "status": "drift"}
    assert as_json["signals"]["oov_rate"]["pvalue"] < 0.01 and as_json["signals"]["oov_rate"]["ks_pvalue"] < 0.01


def test_in_domain_against_scifact_claims_alarms(pipeline, vocabulary) -> None:
    if not SCIFACT_QUERIES.is_file():
        pytest.skip(f"real data not available: {SCIFACT_QUERIES} is missing (CI provides ../shared)")
    with SCIFACT_QUERIES.open(encoding="utf-8") as lines:
        claims = [json.loads(line)["text"] for line, _ in zip(lines, range(200), strict=False)]
    report = compare_windows(window(pipeline, vocabulary, in_domain_queries()),
                             window(pipeline, vocabulary, claims))
    print("\nin-domain vs SciFact claims:", numbers(report))
    assert report["oov_rate"].status == "drift" and report["query_words"].status == "drift", report.summary()


def test_sample_kb_train_queries_against_its_test_queries_do_not_alarm(sample_kb_signals) -> None:
    train = [sample_kb_signals[query_id] for query_id in sorted(load_qrels(SAMPLE_KB, "train"))]
    test = [sample_kb_signals[query_id] for query_id in sorted(load_qrels(SAMPLE_KB, "test"))]
    assert (len(train), len(test)) == (80, 40)
    report = compare_windows(gathered(train), gathered(test))
    print("\nsample KB train vs test:", numbers(report))
    assert not report.alarm, report.summary()
    # 40 test queries are fewer than a window needs to be judged at all
    assert {s.name for s in report.signals} == {"query_words", "oov_rate", "first_stage_top1"}
    assert all(s.status == "not enough data" for s in report.signals)
    # judged anyway, the vocabulary and the scores of the two splits agree. query_words is left out: the test
    # split was written with longer queries (10.9 against 8.9 words on average), a real difference that the
    # chi-square test reports (p ≈ 0.005; random 80/40 splits of the same 120 queries differ so much in
    # under 0.5% of draws)
    lowered = compare_windows(gathered(train), gathered(test), DriftThresholds(min_samples=len(test)))
    print("sample KB train vs test, judged from 40 values:", numbers(lowered))
    assert lowered["oov_rate"].status == "ok" and lowered["first_stage_top1"].status == "ok", lowered.summary()


def test_random_splits_of_the_sample_kb_queries_alarm_about_as_often_as_the_significance_level(
        sample_kb_signals) -> None:
    # two halves of one pool of queries share one distribution, so an alarm is a false one: each signal's test
    # should give one in about 1% of splits (its significance level), never routinely
    query_ids = sorted(sample_kb_signals)
    assert len(query_ids) == 120
    rng = random.Random(0)
    splits = 200
    alarms = dict.fromkeys(("query_words", "oov_rate", "first_stage_top1"), 0)
    for _ in range(splits):
        shuffled = rng.sample(query_ids, len(query_ids))
        report = compare_windows(gathered([sample_kb_signals[q] for q in shuffled[:60]]),
                                 gathered([sample_kb_signals[q] for q in shuffled[60:]]))
        assert [(s.name, s.test) for s in report.signals] == [
            ("query_words", "chi2"), ("oov_rate", "chi2"), ("first_stage_top1", "ks")]
        assert all(s.status in ("ok", "drift") for s in report.signals)
        for name in report.with_status("drift"):
            alarms[name] += 1
    print(f"\nsample KB queries, alarms in {splits} random 60/60 splits:", alarms)
    assert all(count <= 0.03 * splits for count in alarms.values()), alarms


def test_two_halves_of_the_same_traffic_do_not_alarm(pipeline, vocabulary) -> None:
    queries = in_domain_queries()
    random.Random(5).shuffle(queries)
    report = compare_windows(window(pipeline, vocabulary, queries[:100]), window(pipeline, vocabulary, queries[100:]))
    print("\nin-domain half vs half:", numbers(report))
    assert not report.alarm, report.summary()
    assert {s.name for s in report.signals} == {"query_words", "oov_rate", "first_stage_top1"}
    assert all(s.status == "ok" for s in report.signals)
    assert report.summary().startswith("no drift; ok: ")


def test_small_or_empty_windows_are_not_enough_data_never_zeros() -> None:
    reference = {"query_words": [float(w) for w in range(3, 9)] * 20}
    report = compare_windows(reference, {"query_words": [40.0] * 49, "oov_rate": []},
                             DriftThresholds(min_samples=50))
    for name in ("query_words", "oov_rate"):
        drift = report[name]
        assert drift.status == "not enough data"
        assert drift.psi is None and drift.ks_statistic is None and drift.ks_pvalue is None
        assert drift.statistic is None and drift.pvalue is None
    assert report["oov_rate"].n_reference == 0 and report["oov_rate"].reference_median is None
    assert report["query_words"].current_median == 40.0  # the medians are still worth showing
    assert not report.alarm
    assert "not enough data (< 50 values): query_words, oov_rate" in report.summary()
    assert report.to_dict()["signals"]["query_words"]["psi"] is None
    # one more value and the same shift is a drift
    assert compare_windows(reference, {"query_words": [40.0] * 50})["query_words"].status == "drift"


def test_thresholds_are_checked_in_one_line() -> None:
    for bad in ({"psi": 0.0}, {"ks_alpha": 1.0}, {"min_samples": 1}):
        with pytest.raises(DriftError) as err:
            DriftThresholds(**bad)
        one_line(err)


# ------------------------------------------------------------------------------------------ windows
def test_reference_round_trips_through_the_query_log_and_the_disk(tmp_path: Path, pipeline, vocabulary) -> None:
    queries = in_domain_queries(120)
    logged = [query_signals(q, pipeline.search(q, k=5), vocabulary) for q in queries]
    with SQLiteFeedbackStore(tmp_path / "feedback.db") as store:
        for i, signals in enumerate(logged):
            store.log_request(LoggedRequest(request_id=f"r{i:03d}", endpoint="/v1/search", results=(), signals=signals,
                                            **({"time": OLD} if i < 20 else {})))
        outlier = {"query_words": 99.0, "oov_rate": 1.0}
        store.log_request(LoggedRequest(request_id="rerank", endpoint="/v1/rerank", results=(), signals=outlier))
        store.log_request(LoggedRequest(request_id="degraded", endpoint="/v1/search", results=(), signals=outlier,
                                        degraded=True))
        store.log_request(LoggedRequest(request_id="unsignalled", endpoint="/v1/search", results=()))
        store.flush()

        expected = {name: [s[name] for s in logged[20:] if name in s] for name in SIGNALS if name in logged[0]}
        assert signals_from_store(store, since="2021-01-01") == expected
        reference = DriftReference.from_store(store, since="2021-01-01")
        assert reference.values == {name: tuple(v) for name, v in expected.items()}
        assert reference.counts == {name: 100 for name in expected}
        assert reference.requests == 100
        assert (reference.since, reference.until) == ("2021-01-01T00:00:00.000+00:00", None)

        capped = DriftReference.from_store(store, max_values=30)
        assert capped.counts["query_words"] == 120 and len(capped.values["query_words"]) == 30
        full = [s["query_words"] for s in logged]
        assert capped.values == DriftReference.from_store(store, max_values=30).values  # a fixed seed
        rest = iter(full)  # a subsequence: the original order is kept
        assert all(value in rest for value in capped.values["query_words"])

        with pytest.raises(DriftError) as err:
            DriftReference.from_store(store, until="2019-01-01")
        one_line(err)

    path = tmp_path / "refs" / "reference.json"
    reference.save(path)
    loaded = DriftReference.load(path)
    assert loaded == reference
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["window"] == {"since": "2021-01-01T00:00:00.000+00:00", "until": None}
    assert saved["requests"] == 100 and saved["created"] == reference.created
    assert loaded.compare(window(pipeline, vocabulary, biomedical_claims())).alarm
    assert not loaded.compare(expected).alarm


_VALID = {"format": "rankwise drift reference", "version": 1, "created": "2025-01-01T00:00:00.000+00:00",
          "window": {"since": None, "until": None}, "requests": 1, "counts": {"oov_rate": 1},
          "values": {"oov_rate": [0.5]}}
CORRUPT = {
    "not-json": "not json {",
    "not-an-object": "[1, 2]",
    "other-format": json.dumps({**_VALID, "format": "something else"}),
    "not-numbers": json.dumps({**_VALID, "values": {"oov_rate": [0.5, "high"]}}),
    "nan": json.dumps({**_VALID, "values": {"oov_rate": [float("nan")]}}),
    "newer-version": json.dumps({**_VALID, "version": 9}),
    "missing-window": json.dumps({k: v for k, v in _VALID.items() if k != "window"}),
    "bad-window": json.dumps({**_VALID, "window": {"since": 5, "until": None}}),
    "nested-too-deeply": "[" * 100_000 + "]" * 100_000,
}


def test_the_valid_reference_the_corrupt_ones_are_made_from_loads(tmp_path: Path) -> None:
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(_VALID), encoding="utf-8")
    assert DriftReference.load(path).values == {"oov_rate": (0.5,)}


@pytest.mark.parametrize("content", list(CORRUPT.values()), ids=list(CORRUPT))
def test_a_corrupt_reference_is_one_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "reference.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DriftError) as err:
        DriftReference.load(path)
    assert str(path) in one_line(err)


def test_a_missing_or_cut_reference_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DriftError) as err:
        DriftReference.load(tmp_path / "missing.json")
    assert "no drift reference" in one_line(err)
    path = tmp_path / "reference.json"
    DriftReference({"query_words": (3.0, 4.0)}, {"query_words": 2}, 2, None, None).save(path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DriftError) as err:
        DriftReference.load(path)
    assert "not a valid drift reference" in one_line(err)


def test_rolling_rollingkeeps_the_last_requests_across_threads() -> None:
    rolling = RollingWindow(size=100)
    for i in range(5):
        rolling.append({"query_words": float(i)})
    assert rolling.snapshot() == {"query_words": [0.0, 1.0, 2.0, 3.0, 4.0]}

    def feed(thread: int) -> None:
        for i in range(2_000):
            rolling.append({"query_words": float(thread), "oov_rate": float(i)})

    threads = [threading.Thread(target=feed, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    snapshots = [rolling.snapshot() for _ in range(200)]  # read while the writers write
    for t in threads:
        t.join()
    assert len(rolling) == 100
    final = rolling.snapshot()
    assert len(final["query_words"]) == len(final["oov_rate"]) == 100  # whole rows, never torn
    assert all(len(s["query_words"]) <= 100 for s in snapshots)
    with pytest.raises(DriftError) as err:
        RollingWindow(size=0)
    one_line(err)
