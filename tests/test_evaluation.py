"""The evaluation library: metrics, significance, gold sets, TREC files, labelling, comparison, gates."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import ir_measures
import numpy as np
import pytest

from rankwise import CrossEncoderReranker, Index, Pipeline
from rankwise.errors import QueryError
from rankwise.evaluation import EvaluationError, GoldSet, Judgement, LabelScale, evaluate
from rankwise.evaluation.gates import GateEvidence, MetricGate, evaluate_gates
from rankwise.evaluation.labeling import build_sheet, merge_sheets, read_sheet, write_sheet
from rankwise.evaluation.metrics import parse_metrics, per_query, required_depth
from rankwise.evaluation.queries import read_queries, stable_query_id
from rankwise.evaluation.report import to_html, to_markdown
from rankwise.evaluation.runs import read_trec_qrels, read_trec_run, run_from_rankings, write_trec_run
from rankwise.evaluation.significance import bootstrap_ci, holm, paired_t_test, randomization_test
from rankwise.options import PipelineSettings

# A gold set over the conftest KB: one query per document it should find, plus judged non-relevant ones.
KB_QUERIES = {
    "q-refund": ("how are annual plans refunded", {"refund-annual": 2, "refund-monthly": 0}),
    "q-mfa": ("contractor reset multi-factor authentication", {"mfa-contractor": 1, "mfa-employee": 0}),
    "q-pg": ("rotate production postgres credentials", {"pg-rotate": 1}),
    "q-churn": ("why did customer churn rise in Q4", {"churn-q4": 1, "churn-theory": 0}),
    "q-redis": ("redis ACL credentials rotation", {"redis-rotate": 1}),
    "q-selfservice": ("self-service portal video check", {"mfa-employee": 1}),
}


def kb_goldset() -> GoldSet:
    return GoldSet(Judgement(qid, text, doc, label) for qid, (text, docs) in KB_QUERIES.items()
                   for doc, label in docs.items())


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_match_hand_computed_values() -> None:
    qrels = {"q1": {"a": 1, "b": 0, "c": 1}, "q2": {"x": 1}, "q3": {"n": 1}, "q4": {"g2": 2, "g1": 1}}
    run = run_from_rankings({"q1": ["a", "b", "c", "z"], "q2": ["y", "x"], "q3": [], "q4": ["g1", "g2"]})
    values = per_query(parse_metrics("nDCG@10,P@5,R@20,RR@10,MAP"), qrels, run)
    assert set(values) == {"nDCG@10", "P@5", "R@20", "RR@10", "AP"}  # MAP is ir_measures' AP
    # q1: relevant at ranks 1 and 3 of 2 relevant
    assert values["P@5"]["q1"] == pytest.approx(2 / 5)
    assert values["R@20"]["q1"] == pytest.approx(1.0)
    assert values["RR@10"]["q1"] == pytest.approx(1.0)
    assert values["AP"]["q1"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert values["nDCG@10"]["q1"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    # q2: the only relevant document at rank 2
    assert values["RR@10"]["q2"] == pytest.approx(0.5)
    assert values["nDCG@10"]["q2"] == pytest.approx(1 / math.log2(3))
    # q3: nothing retrieved → 0 for every metric, and it still counts in the mean
    assert all(values[m]["q3"] == 0.0 for m in values)
    # q4: graded, trec_eval's linear gain: DCG = 1 + 2/log2(3), ideal = 2 + 1/log2(3)
    assert values["nDCG@10"]["q4"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    aggregate = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    assert np.mean(list(values["nDCG@10"].values())) == pytest.approx(aggregate)


def test_metric_parsing_errors_and_depth() -> None:
    assert parse_metrics(["nDCG@5,P@5", "nDCG@5", "MAP"]) == ["nDCG@5", "P@5", "AP"]
    assert required_depth(["nDCG@10", "R@20", "AP"]) == 20 and required_depth(["AP"]) is None
    for bad in ("foo@3", "P@x", ""):
        with pytest.raises(EvaluationError, match="nDCG@10, P@5"):
            parse_metrics(bad)


# ------------------------------------------------------------------------------------------- significance
def test_identical_runs_are_not_significant() -> None:
    a = np.random.default_rng(3).random(50)
    assert paired_t_test(a, a) == 1.0
    assert randomization_test(a, a) == 1.0
    low, high = bootstrap_ci(a - a)
    assert low <= 0.0 <= high


def test_clear_improvement_is_significant_and_ci_covers_the_shift() -> None:
    rng = np.random.default_rng(7)
    base = rng.random(200)
    better = np.clip(base + 0.1 + rng.normal(0, 0.05, 200), 0, None)
    assert paired_t_test(better, base) < 1e-6
    assert randomization_test(better, base, n_resamples=5000) < 0.001
    low, high = bootstrap_ci(better - base)
    assert 0.0 < low < np.mean(better - base) < high
    assert bootstrap_ci(better - base) == (low, high)  # fixed seed: reproducible


def test_randomization_test_is_exact_for_few_queries() -> None:
    # 5 queries each +1: of the 2**5 sign flips only all-plus and all-minus reach |mean| = 1 → p = 2/32
    assert randomization_test([2, 2, 2, 2, 2], [1, 1, 1, 1, 1]) == pytest.approx(2 / 32)


def test_holm_correction() -> None:
    # sorted 0.01, 0.03, 0.04 → 3*0.01, max(that, 2*0.03), max(that, 1*0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


# ------------------------------------------------------------------------------------------------ gold sets
def test_goldset_jsonl_and_trec_round_trip(tmp_path: Path) -> None:
    gold = GoldSet([Judgement("q1", "reset mfa", "d1", 2, "alice", "clear"), Judgement("q1", "reset mfa", "d2", 0),
                    Judgement("q2", "refunds", "d3", 1)])
    again = GoldSet.load(gold.save(tmp_path / "gold.jsonl"))
    assert again.judgements == gold.judgements
    assert json.loads((tmp_path / "gold.jsonl").read_text().splitlines()[1]) == {
        "query_id": "q1", "query": "reset mfa", "document_id": "d2", "label": 0}
    gold.save_trec_qrels(tmp_path / "qrels.txt")
    assert (tmp_path / "qrels.txt").read_text().splitlines()[0] == "q1 0 d1 2"
    back = GoldSet.from_trec_qrels(tmp_path / "qrels.txt", gold.queries)
    assert [(j.query_id, j.query, j.document_id, j.label) for j in back.judgements] == [
        (j.query_id, j.query, j.document_id, j.label) for j in gold.judgements]


def test_goldset_from_beir(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "alpha"}\n{"_id": "2", "text": "beta"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\tdA\t1\n2\tdB\t2\n3\tdC\t1\n")
    gold = GoldSet.from_beir(tmp_path, "test")
    assert gold.name.endswith("/test") and len(gold) == 3
    prepared = gold.prepare(known_documents={"dA", "dB", "dC"})
    assert prepared.qrels == {"1": {"dA": 1}, "2": {"dB": 2}}
    assert prepared.counts["excluded_no_text"] == 1 and "1 of 3 queries have no text" in prepared.warnings[0]


def test_unknown_documents_warn_with_counts_and_are_kept() -> None:
    gold = GoldSet([Judgement("q1", "a", "known", 1), Judgement("q1", "a", "gone1", 1),
                    Judgement("q2", "b", "gone2", 0), Judgement("q2", "b", "known", 1)])
    prepared = gold.prepare(known_documents={"known"})
    assert prepared.counts["unknown_documents"] == 2 and prepared.counts["unknown_relevant"] == 1
    assert any("2 judgements (1 relevant) reference 2 documents that are not in the index" in w
               for w in prepared.warnings)
    assert prepared.qrels["q1"] == {"known": 1, "gone1": 1}  # kept: recall counts it as missed, never inflated
    with pytest.raises(EvaluationError, match="none of the 3 judged documents"):
        gold.prepare(known_documents={"other"})


@pytest.mark.parametrize(("judgements", "scale", "message"), [
    ([Judgement("q", "t", "d", 1, "ann"), Judgement("q", "t", "d", 1, "ann"), Judgement("q", "t", "e", 0),
      Judgement("q", "t", "e", 1)], None, "2 duplicate judgements"),
    ([Judgement("q", "t", "d", 1), Judgement("q", "t", "e", 3), Judgement("q", "t", "f", -1)], "0-2",
     "2 labels in 'goldset' are outside the declared scale {0,1,2}"),
    ([Judgement("q", "t", "d", 2)], "binary", "outside the declared scale {0,1}"),
    ([Judgement("q", "one text", "d", 1), Judgement("q", "another", "e", 1)], None, "more than one text"),
    ([], None, "has no judgements"),
    ([Judgement("q", "t", "d", 0)], None, "no query that can be evaluated"),
])
def test_bad_goldsets_are_errors(judgements: list[Judgement], scale: str | None, message: str) -> None:
    with pytest.raises(EvaluationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        GoldSet(judgements).prepare(scale=LabelScale.parse(scale) if scale else None)


def test_annotators_are_merged_by_majority_and_ties_left_out() -> None:
    gold = GoldSet([Judgement("q", "t", "d", 1, "a"), Judgement("q", "t", "d", 1, "b"), Judgement("q", "t", "d", 0, "c"),
                    Judgement("q", "t", "e", 1, "a"), Judgement("q", "t", "e", 0, "b")])
    prepared = gold.prepare()
    assert prepared.qrels == {"q": {"d": 1}} and prepared.counts["tied_pairs"] == 1
    with pytest.raises(EvaluationError, match="tied between annotators"):
        gold.save_trec_qrels("/dev/null")


def test_label_scale_parsing() -> None:
    assert LabelScale.parse("0-3").labels == {0, 1, 2, 3}
    assert LabelScale.parse("0,1,2").labels == {0, 1, 2} and LabelScale.parse("binary").labels == {0, 1}
    with pytest.raises(EvaluationError, match="not valid"):
        LabelScale.parse("3-0")


def test_malformed_goldset_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"query_id": "q", "query": "t", "document_id": "d", "label": 1}\n'
                    '{"query_id": "q", "query": "t", "document_id": "e", "label": "high"}\n')
    with pytest.raises(EvaluationError, match=r"g.jsonl:2: label 'high' must be an integer"):
        GoldSet.load(path)


# ---------------------------------------------------------------------------------------------- TREC files
def test_trec_run_round_trip_keeps_the_order(tmp_path: Path) -> None:
    rankings = {"q1": ["c", "a", "b"], "q2": ["x"]}
    path = write_trec_run(rankings, tmp_path / "sys.run", tag="hybrid+reranker")
    assert path.read_text().splitlines()[0] == "q1 Q0 c 1 3 hybrid+reranker"
    run = read_trec_run(path)
    assert {q: sorted(d, key=d.get, reverse=True) for q, d in run.items()} == rankings
    assert run == run_from_rankings(rankings)
    (tmp_path / "bad.run").write_text("q1 Q0 a 1 2.0 t\nq1 Q0 a 2 1.0 t\n")
    with pytest.raises(EvaluationError, match=r"bad.run:2: document 'a' is listed twice"):
        read_trec_run(tmp_path / "bad.run")
    (tmp_path / "bad.qrels").write_text("q1 0 a 1\nq1 a 1\n")
    with pytest.raises(EvaluationError, match=r"bad.qrels:2: expected 4 columns"):
        read_trec_qrels(tmp_path / "bad.qrels")


def test_query_files(tmp_path: Path) -> None:
    (tmp_path / "q.txt").write_text("reset mfa\n\nrefund policy\nreset mfa\n")
    assert read_queries(tmp_path / "q.txt") == {stable_query_id("reset mfa"): "reset mfa",
                                                stable_query_id("refund policy"): "refund policy"}
    (tmp_path / "q.tsv").write_text("101\tfirst topic\n102\tsecond topic\n")
    assert read_queries(tmp_path / "q.tsv") == {"101": "first topic", "102": "second topic"}
    (tmp_path / "q.csv").write_text("id,query\na,alpha\nb,beta\n")
    assert read_queries(tmp_path / "q.csv") == {"a": "alpha", "b": "beta"}
    (tmp_path / "q.jsonl").write_text('{"_id": "1", "text": "one"}\n{"_id": "1", "text": "uno"}\n')
    with pytest.raises(EvaluationError, match="two different texts"):
        read_queries(tmp_path / "q.jsonl")


# -------------------------------------------------------------------------------------------------- labelling
def _annotate(rows: list, annotator: str, labels: list[int]) -> list:
    return [replace(r, label=lab, annotator=annotator) for r, lab in zip(rows, labels, strict=True)]


def test_label_sheet_round_trip_and_kappa(tmp_path: Path, kb_index: Index) -> None:
    queries = {qid: text for qid, (text, _) in list(KB_QUERIES.items())[:3]}
    rows = build_sheet(Pipeline(kb_index, first_stage="bm25"), queries, k=2)
    assert [r.rank for r in rows[:2]] == [1, 2] and all(r.label is None and r.title for r in rows)
    csv_path, jsonl_path = write_sheet(rows, tmp_path / "sheet")
    # blank annotator → the sheet's file name; everything else comes back unchanged from both formats
    assert read_sheet(csv_path) == read_sheet(jsonl_path) == [replace(r, annotator="labels") for r in rows]

    six = rows[:6]
    a = _annotate(six, "alice", [1, 1, 0, 0, 1, 0])
    b = _annotate(six, "bob", [1, 0, 0, 0, 1, 1])
    merged = merge_sheets([a, b])
    # p_o = 4/6, p_e = 0.5·0.5 + 0.5·0.5 → kappa = (2/3 − 1/2) / (1/2) = 1/3
    assert merged.agreement is not None and merged.agreement.statistic == "cohen_kappa"
    assert merged.agreement.kappa == pytest.approx(1 / 3) and merged.agreement.items == 6
    assert len(merged.disagreements) == 2 and len(merged.ties) == 2  # two annotators disagreeing always tie
    assert len(merged.goldset) == 4 and {j.annotator for j in merged.goldset.judgements} == {"majority"}

    c = _annotate(six, "carol", [1, 1, 0, 1, 0, 0])
    three = merge_sheets([a, b, c])
    # items (alice, bob, carol): 111 100 000 010 110 010 → Fleiss' kappa from the per-item agreement
    counts = np.array([[sum(1 for v in item if v == k) for k in (0, 1)] for item in
                       zip([1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1], [1, 1, 0, 1, 0, 0], strict=True)])
    p_i = ((counts ** 2).sum(1) - 3) / 6
    p_j = counts.sum(0) / counts.sum()
    expected = (p_i.mean() - (p_j ** 2).sum()) / (1 - (p_j ** 2).sum())
    assert three.agreement is not None and three.agreement.statistic == "fleiss_kappa"
    assert three.agreement.kappa == pytest.approx(expected)
    assert not three.ties and len(three.goldset) == 6
    with pytest.raises(EvaluationError, match="appears in two sheets"):
        merge_sheets([a, a])
    with pytest.raises(EvaluationError, match="outside the declared scale"):
        merge_sheets([_annotate(six, "dan", [0, 1, 2, 3, 0, 1])], scale=LabelScale.parse("binary"))


# ------------------------------------------------------------------------------------------------ comparison
@pytest.fixture(scope="module")
def kb_report(kb_index: Index, tiny_cross_encoder: Path):
    gold = kb_goldset().prepare(known_documents=set(kb_index.passage_doc_ids))
    reranker = CrossEncoderReranker(tiny_cross_encoder, backend="torch")
    return evaluate(kb_index, gold, first_stages=["bm25", "dense"], reranker=reranker, n_resamples=500), reranker


def test_evaluate_shares_candidates_and_matches_separate_pipelines(kb_index: Index, kb_report) -> None:
    report, reranker = kb_report
    assert report.systems == ["bm25", "bm25+reranker", "dense", "dense+reranker"]
    assert report.baseline == "dense" and report.candidate == "dense+reranker"
    plain, reranked = Pipeline(kb_index, first_stage="bm25"), Pipeline(kb_index, reranker, first_stage="bm25")
    for qid, (text, _) in KB_QUERIES.items():
        assert report.rankings["bm25"][qid] == [r.doc_id for r in plain.search(text, k=100).results]
        assert report.rankings["bm25+reranker"][qid] == [r.doc_id for r in reranked.search(text, k=100).results]
    gold = kb_goldset().prepare()
    for system in report.systems:
        expected = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], gold.qrels,
                                              run_from_rankings(report.rankings[system]))[ir_measures.nDCG @ 10]
        assert report.scores[system]["nDCG@10"] == pytest.approx(expected)


def test_report_json_schema_and_comparisons(kb_report) -> None:
    report, _ = kb_report
    data = json.loads(report.to_json())
    assert data["schema"] == "rankwise.evaluation/1"
    assert set(data) == {"schema", "created_at", "dataset", "config", "systems", "metrics", "baseline", "candidate",
                         "scores", "scores_ci95", "per_query", "comparisons", "latency_ms", "latency_samples_ms",
                         "queries", "gates", "cost"}
    assert data["metrics"] == ["nDCG@5", "P@5", "R@20", "nDCG@10"]
    # cost per query: the first stage alone scores no pairs; with the reranker, one pair per reranked candidate
    assert data["cost"]["bm25"]["pairs_per_query"] == 0 and data["cost"]["bm25"]["cpu_ms_per_query"] > 0
    reranked = [s for s in data["systems"] if s.endswith("+reranker")]
    assert all(data["cost"][s]["pairs_per_query"] > 0 for s in reranked)
    assert set(data["per_query"]["bm25"]["nDCG@10"]) == set(KB_QUERIES)
    comp = {c["system"]: c for c in data["comparisons"]}
    assert set(comp) == {"bm25", "bm25+reranker", "dense+reranker"}
    cell = comp["dense+reranker"]["metrics"]["nDCG@5"]
    assert set(cell) == {"baseline_mean", "system_mean", "delta", "relative_gain", "ci95", "p_ttest",
                         "p_randomization", "p_ttest_holm", "p_randomization_holm", "wins", "losses", "ties"}
    assert cell["wins"] + cell["losses"] + cell["ties"] == len(KB_QUERIES)
    assert cell["p_randomization_holm"] >= cell["p_randomization"]
    degraded = comp["dense+reranker"]["degraded"]
    assert len(degraded) == cell["losses"] and all(d["delta"] < 0 for d in degraded)
    assert set(data["latency_ms"]["dense+reranker"]) == {"first_stage", "rerank", "total"}
    assert data["latency_ms"]["bm25"]["total"]["n"] == len(KB_QUERIES)
    top = data["queries"]["q-pg"]["top"]["bm25+reranker"][0]
    assert top["reranker_score"] is not None and top["first_stage_rank"] >= 1
    assert "| bm25+reranker |" in to_markdown(report)
    page = to_html(report)
    assert page.count("data:image/svg+xml;base64,") == 3 and "<script" not in page and "http" not in page.split(
        "<body>")[1].replace("http://www.w3.org", "")


def test_gates(kb_report) -> None:
    report, _ = kb_report
    m = report.comparison(report.candidate).metrics["nDCG@5"]
    few = GateEvidence(min_queries=1, max_p=1)  # six queries: the rules alone, without the evidence rules
    ok = evaluate_gates(report, [MetricGate.parse("nDCG@5:-1")], max_latency_ms=1e9, evidence=few)
    assert ok.passed and ok.exit_code == 0
    bad = evaluate_gates(report, [MetricGate.parse("nDCG@5:+2"), MetricGate.parse("nDCG@5:-1")], max_latency_ms=1e-6,
                         evidence=few)
    assert not bad.passed and bad.exit_code == 1
    assert [o.passed for o in bad.outcomes] == [False, True, False]
    assert bad.outcomes[0].message.startswith("FAIL nDCG@5:+2: dense+reranker nDCG@5")
    assert "end-to-end p95" in bad.outcomes[2].message
    if m.relative_gain is not None:
        exact = evaluate_gates(report, [MetricGate(spec="x", metric="nDCG@5", threshold=m.relative_gain, relative=True)],
                               evidence=few)
        assert exact.passed
    with pytest.raises(EvaluationError, match="not evaluated"):
        evaluate_gates(report, [MetricGate.parse("RR@10:+1%")], evidence=few)
    with pytest.raises(EvaluationError, match="at least 30 judged queries and this gold set has 6"):
        evaluate_gates(report, [MetricGate.parse("nDCG@5:-1")])  # the default evidence: 30 queries
    with pytest.raises(EvaluationError, match="not valid"):
        MetricGate.parse("nDCG@5 > 15%")


def test_a_gain_must_also_be_significant_after_holm_across_the_gated_metrics(kb_report) -> None:
    """The same +20% gain passes at p = 0.01 and fails at p = 0.4; two claims are corrected together."""
    from dataclasses import replace

    report, _ = kb_report
    comparison = report.comparison(report.candidate)

    def with_p(**p: float):
        metrics = {name: replace(comparison.metrics[name], baseline_mean=0.5, system_mean=0.6, delta=0.1,
                                 relative_gain=0.2, p_randomization=value) for name, value in p.items()}
        return replace(report, comparisons=[replace(comparison, metrics={**comparison.metrics, **metrics})])

    evidence = GateEvidence(min_queries=6)
    gate = [MetricGate.parse("nDCG@5:+15%")]
    assert evaluate_gates(with_p(**{"nDCG@5": 0.01}), gate, evidence=evidence).passed
    noise = evaluate_gates(with_p(**{"nDCG@5": 0.4}), gate, evidence=evidence)
    assert not noise.passed and noise.outcomes[0].p_value == pytest.approx(0.4)
    assert "+20.0% (≥ required +15.0%)" in noise.outcomes[0].message
    assert "not significant at 0.05" in noise.outcomes[0].message
    two = [MetricGate.parse("nDCG@5:+15%"), MetricGate.parse("nDCG@10:+15%")]
    holm_ok = evaluate_gates(with_p(**{"nDCG@5": 0.02, "nDCG@10": 0.03}), two, evidence=evidence)
    assert holm_ok.passed and [o.p_value for o in holm_ok.outcomes] == pytest.approx([0.04, 0.04])
    holm_fail = evaluate_gates(with_p(**{"nDCG@5": 0.03, "nDCG@10": 0.04}), two, evidence=evidence)
    assert not holm_fail.passed, "each p < 0.05 alone, but not after Holm's correction for two claims"
    # a guard (a drop allowed) claims nothing and needs no significance
    assert evaluate_gates(with_p(**{"nDCG@5": 0.9}), [MetricGate.parse("nDCG@5:-0.05")], evidence=evidence).passed
    with pytest.raises(EvaluationError, match="--max-p must be in"):
        GateEvidence(max_p=0)


def test_evaluate_rejects_bad_options(kb_index: Index) -> None:
    gold = kb_goldset().prepare()
    with pytest.raises(EvaluationError, match="baseline 'dense' is not among"):
        evaluate(kb_index, gold, first_stages=["bm25"])
    with pytest.raises(EvaluationError, match="raise --retrieve-k to at least 20"):
        evaluate(kb_index, gold, first_stages=["bm25"], baseline="bm25", settings=PipelineSettings(retrieve_k=10))
    with pytest.raises(QueryError, match="unknown first stage 'bm42'; choose bm25, dense, hybrid"):
        evaluate(kb_index, gold, first_stages=["bm42"])


def test_a_reranker_that_caches_passages_is_timed_cold_for_every_system(kb_index: Index) -> None:
    from rankwise.rerank.bi_encoder import BiEncoderReranker

    class Observed(BiEncoderReranker):
        """Records how many of each call's passages came from the cache (the scores are the real ones)."""

        def __init__(self) -> None:
            super().__init__("minilm", backend="torch")
            self.cached: list[float] = []

        def score(self, query, texts):  # type: ignore[no-untyped-def]
            scores = super().score(query, texts)
            self.cached.append(scores.stats["cached"])
            return scores

    gold = kb_goldset().prepare(known_documents=set(kb_index.passage_doc_ids))
    reranker = Observed()
    report = evaluate(kb_index, gold, first_stages=["bm25", "dense"], reranker=reranker, n_resamples=100,
                      settings=PipelineSettings(rerank_k=5))
    per_system = len(gold.queries) + 1  # one warm-up call, then each query
    bm25, dense = reranker.cached[1:per_system], reranker.cached[per_system + 1:]
    # the dense system's first query meets passages the BM25 system embedded: cold only if the cache was emptied
    assert bm25[0] == 0 and dense[0] == 0
    assert "timed cold" in report.config["latency_note"]
