"""Behaviour probes: each rule on hand-written pairs, real models on the KB, and the registry round trip.

The probes must be able to fail: a scorer that only counts the query's words in a text (written below, a
real :class:`~rankwise.rerank.base.Reranker`) has to fail ``lexical_overlap`` and ``negation``, while the
same scorer taught that "not" flips a statement passes ``negation`` — so the probe measures the behaviour,
not the probe's own wording.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import build_tiny_cross_encoder
from rankwise.cli import app
from rankwise.errors import ModelError
from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.goldset import GoldSet, Judgement
from rankwise.monitoring.probes import (
    ALL_PROBES,
    Perturbation,
    ProbePair,
    ProbeReport,
    ProbeText,
    compare,
    entity_swap,
    lexical_overlap,
    mismatch,
    negation,
    number_swap,
    paraphrase_kept,
    run_probes,
    sample_pairs,
)
from rankwise.registry import Registry
from rankwise.rerank.base import Reranker, RerankScores, sigmoid

REFUND = ProbeText("refund", "Refund policy", "Annual plans can be refunded within 30 days. Ask billing.")


def pair(query: str, doc: ProbeText = REFUND, irrelevant: ProbeText | None = None,
         others: Sequence[ProbeText] = ()) -> ProbePair:
    return ProbePair("q", query, doc, irrelevant, tuple(others))


def applied(case: Perturbation | None) -> Perturbation:
    assert case is not None, "the rule did not apply"
    return case


# ------------------------------------------------------------------------------------------------ rules
def test_negation_negates_the_first_verb_it_can() -> None:
    case = applied(negation(pair("refund an annual plan")))
    assert case.expect == "lower" and case.edit == "can → cannot" and case.original == REFUND.text
    assert case.perturbed == "Refund policy\nAnnual plans cannot be refunded within 30 days. Ask billing."
    # already negated, contracted and "has to" are passed over: the next sentence with a verb is negated
    doc = ProbeText("d", "", "Plans are not refunded, can't be paused, it has to be said. Invoices are sent.")
    assert applied(negation(pair("invoices", doc))).perturbed == (
        "Plans are not refunded, can't be paused, it has to be said. Invoices are not sent.")
    for body in ("Rotate the Redis credentials and reload the sentinel.", "Renewals happen in May."):
        assert negation(pair("rotate redis", ProbeText("d", "it has a title", body))) is None  # titles stay


def test_number_swap_changes_the_numbers_the_query_asks_about() -> None:
    case = applied(number_swap(pair("refund within 30 days")))
    assert case.edit == "30 → 47" and "within 47 days" in case.perturbed and case.expect == "lower"
    doc = ProbeText("d", "Release 2024", "Version 3.2 shipped in 2024; 30 customers upgraded in Q4.")
    case = applied(number_swap(pair("what changed in version 3.2 in 2024", doc)))
    assert case.edit == "2024 → 2019, 3.2 → 4.2"
    assert case.perturbed == "Release 2019\nVersion 4.2 shipped in 2019; 30 customers upgraded in Q4."
    assert number_swap(pair("upgrades in Q4", doc)) is None  # Q4 is a code (entity_swap), not a number
    assert number_swap(pair("how do refunds work")) is None
    assert number_swap(pair("refund within 47 days")) is None  # the document never says 47


def test_entity_swap_takes_a_same_shape_entity_from_another_document() -> None:
    pg = ProbeText("pg", "Rotate Postgres credentials", "Rotate the production Postgres credentials.")
    redis = ProbeText("redis", "Rotate Redis credentials", "Update the ACL file for Redis and reload.")
    case = applied(entity_swap(pair("rotate postgres credentials", pg, others=[pg, redis])))
    assert case.edit == "Postgres → Redis" and case.expect == "lower"
    assert case.perturbed == "Rotate Redis credentials\nRotate the production Redis credentials."
    # an acronym becomes an acronym, a code a code of the same shape (Q3 → Q4, never Argon2id)
    mfa = ProbeText("mfa", "", "Contractors reset MFA via the IT desk in Q3; error E1234 means locked.")
    sso = ProbeText("sso", "", "Employees use SSO for Okta since Q4, with Argon2id; error E2001 expires.")
    assert applied(entity_swap(pair("reset mfa", mfa, others=[sso]))).edit == "MFA → SSO"
    assert applied(entity_swap(pair("mfa resets in q3", mfa, others=[sso]))).edit == "MFA → SSO"  # first one
    assert applied(entity_swap(pair("resets in q3", mfa, others=[sso]))).edit == "Q3 → Q4"
    assert applied(entity_swap(pair("what is error e1234", mfa, others=[sso]))).edit == "E1234 → E2001"
    assert entity_swap(pair("reset mfa", mfa, others=[mfa])) is None  # no other document to take one from
    assert entity_swap(pair("contractors reset", mfa, others=[sso])) is None  # sentence-initial: no name


def test_lexical_overlap_stuffs_an_irrelevant_document_with_the_query_words() -> None:
    monthly = ProbeText("monthly", "Monthly plans", "Monthly plans are not refunded.")
    case = applied(lexical_overlap(pair("how are annual plans refunded", irrelevant=monthly)))
    assert case.original == REFUND.text and case.expect == "lower"
    assert case.perturbed == "Monthly plans\nMonthly plans are not refunded.\nKeywords: annual plans refunded"
    assert lexical_overlap(pair("how are annual plans refunded")) is None  # no irrelevant document
    assert lexical_overlap(pair("how is it", irrelevant=monthly)) is None  # no content word


def test_paraphrase_kept_uses_synonyms_then_sentence_order() -> None:
    doc = ProbeText("d", "", "Staff usually verify the request. Managers often confirm it quickly.")
    case = applied(paraphrase_kept(pair("who confirms requests", doc)))
    assert case.expect == "stable" and case.edit == "Staff → Employees, usually → typically, verify → confirm"
    assert case.perturbed == "Employees typically confirm the request. Managers often confirm it quickly."
    again = applied(paraphrase_kept(pair("staff usually verify", doc)))  # query words are kept
    assert again.edit == "often → frequently, confirm → verify, quickly → rapidly"
    swapped = applied(paraphrase_kept(pair("refund", REFUND)))
    assert swapped.edit == "first two sentences swapped"
    assert swapped.perturbed == "Refund policy\nAsk billing. Annual plans can be refunded within 30 days."
    assert paraphrase_kept(pair("x", ProbeText("d", "", "One sentence only."))) is None


# ------------------------------------------------------------------------------------------------ scorers
@dataclass
class KeywordScorer:
    """A real reranker that only counts: the share of the query's words found in the text.

    ``negation_aware`` also lowers the score for every "not"/"cannot" — the behaviour the negation probe
    looks for, so the same probe must pass it.
    """

    negation_aware: bool = False
    name: str = "keyword-overlap"
    weights_sha256: str = "none"

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        words = set(re.findall(r"\w+", query.lower()))
        raw = []
        for text in texts:
            tokens = re.findall(r"\w+", text.lower())
            value = 8 * len(words & set(tokens)) / max(1, len(words)) - 4
            negations = sum(t in ("not", "cannot") for t in tokens) if self.negation_aware else 0
            raw.append(value - 3 * negations)
        logits = np.asarray(raw, dtype=np.float32)
        return RerankScores(logits, sigmoid(logits))


#: over the conftest KB: queries chosen so that every rule applies to some pair
JUDGED = {
    "q-refund": ("how are annual plans refunded", {"refund-annual": 2, "refund-monthly": 0}),
    "q-refund-30": ("refund an annual plan within 30 days", {"refund-annual": 1}),
    "q-mfa": ("contractor reset multi-factor authentication", {"mfa-contractor": 1, "mfa-employee": 0}),
    "q-pg": ("rotate production postgres credentials", {"pg-rotate": 1}),
    "q-churn": ("customer churn of 3.1% in Q4", {"churn-q4": 1, "churn-theory": 0}),
    "q-redis": ("redis ACL credentials rotation", {"redis-rotate": 1}),
    "q-selfservice": ("self-service portal video check", {"mfa-employee": 1}),
}


def kb_gold() -> GoldSet:
    return GoldSet((Judgement(qid, text, doc, label) for qid, (text, docs) in JUDGED.items()
                    for doc, label in docs.items()), name="kb-probes")


@pytest.fixture(scope="module")
def kb_pairs(kb_index) -> list[ProbePair]:
    return sample_pairs(kb_gold().prepare(known_documents=set(kb_index.passage_doc_ids)), kb_index, seed=0)


def test_pairs_are_a_seeded_sample_of_judged_relevant_pairs(kb_index, kb_pairs: list[ProbePair]) -> None:
    prepared = kb_gold().prepare(known_documents=set(kb_index.passage_doc_ids))
    assert [(p.query_id, p.relevant.doc_id) for p in kb_pairs] == sorted(
        (q, d) for q, (_, docs) in JUDGED.items() for d, label in docs.items() if label >= 1)
    refund = next(p for p in kb_pairs if p.query_id == "q-refund")
    assert refund.irrelevant is not None and refund.irrelevant.doc_id == "refund-monthly"  # judged negative
    assert refund.relevant.text == ("Refund policy for annual plans\nAnnual plans can be refunded pro rata "
                                    "within 30 days of renewal by the billing team.")  # the passage reranked
    pg = next(p for p in kb_pairs if p.query_id == "q-pg")
    assert pg.irrelevant is not None and pg.irrelevant.doc_id != "pg-rotate"  # a random other document
    few = sample_pairs(prepared, kb_index, limit=3, seed=1)
    assert few == sample_pairs(prepared, kb_index, limit=3, seed=1) and len(few) == 3
    assert {p.query_id for p in few} < {p.query_id for p in kb_pairs}
    with pytest.raises(EvaluationError, match="must be positive"):
        sample_pairs(prepared, kb_index, limit=0)


def test_a_keyword_counter_fails_the_probes_it_should(kb_pairs: list[ProbePair]) -> None:
    counter = KeywordScorer()
    assert isinstance(counter, Reranker)
    report = run_probes(counter, kb_pairs, source="kb")
    applicable = {r.probe: (r.applicable, r.skipped) for r in report.results}
    assert applicable == {"negation": (2, 5), "number_swap": (2, 5), "entity_swap": (2, 5),
                          "lexical_overlap": (7, 0), "paraphrase_kept": (1, 6)}
    negated, stuffed = report.result("negation"), report.result("lexical_overlap")
    assert negated is not None and negated.pass_rate == 0.0 and negated.mean_delta_raw == 0.0
    assert stuffed is not None and stuffed.pass_rate is not None and stuffed.pass_rate <= 0.2
    assert len(stuffed.failures) == 3 and all(f.perturbed_raw >= f.original_raw for f in stuffed.failures)
    assert any("Keywords:" in f.perturbed for f in stuffed.failures)
    aware = run_probes(KeywordScorer(negation_aware=True), kb_pairs, source="kb")
    assert aware.result("negation").pass_rate == 1.0  # type: ignore[union-attr]
    assert compare(report, aware)[0] == "negation pass rate 1.00 → 0.00" and compare(aware, report) == []
    assert compare(report, report) == [] and compare(report, aware, tolerance=1.0) == []
    assert mismatch(report, aware) is None
    assert "different pairs" in str(mismatch(report, run_probes(counter, kb_pairs[:3])))
    assert not report.constant_scores and not any("warning" in line for line in report.summary_lines())


class ConstantScorer(KeywordScorer):
    """Every text scores about 0.49: what a broken export or an untrained head looks like."""

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        logits = np.full(len(texts), -0.04, dtype=np.float32) + np.arange(len(texts), dtype=np.float32) * 1e-4
        return RerankScores(logits, sigmoid(logits))


def test_a_model_whose_scores_do_not_vary_is_called_out(kb_pairs: list[ProbePair]) -> None:
    report = run_probes(ConstantScorer(), kb_pairs, source="kb")
    assert report.constant_scores
    warning = next(line for line in report.summary_lines() if "warning" in line)
    assert "does not tell documents apart" in warning and "0.490" in warning
    restored = ProbeReport.from_dict(json.loads(json.dumps(report.to_dict())))
    assert restored == report and restored.constant_scores
    older = {k: v for k, v in report.to_dict().items() if k != "score_range"}  # recorded before the range was
    assert ProbeReport.from_dict(older).score_range is None


def test_real_cross_encoders_are_probed_and_reports_round_trip(spread_cross_encoder: Path,
                                                               kb_pairs: list[ProbePair]) -> None:
    from rankwise.rerank import CrossEncoderReranker

    reranker = CrossEncoderReranker(spread_cross_encoder, backend="torch")
    report = run_probes(reranker, kb_pairs, source="kb")
    assert [r.probe for r in report.results] == list(ALL_PROBES) and report.pairs == len(kb_pairs)
    expected = {r.probe: r.applicable for r in run_probes(KeywordScorer(), kb_pairs).results}
    for result in report.results:
        assert result.applicable == expected[result.probe]  # the rules do not depend on the model
        assert result.pass_rate is not None and 0.0 <= result.pass_rate <= 1.0
        assert math.isfinite(result.mean_delta_raw or 0.0) and len(result.failures) <= 3
        for failure in result.failures:  # a failure moved the wrong way
            if result.expect == "lower":
                assert failure.perturbed_raw >= failure.original_raw
            else:
                assert abs(failure.perturbed_score - failure.original_score) >= report.stable_tolerance
    assert abs(report.result("negation").mean_delta_raw) > 1e-3  # type: ignore[arg-type,union-attr]  # scores react
    assert ProbeReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert report == run_probes(reranker, kb_pairs, source="kb")  # deterministic
    lines = report.summary_lines()
    assert all(any(line.lstrip().startswith(p) for line in lines) for p in ALL_PROBES)
    with pytest.raises(ModelError, match="malformed"):
        ProbeReport.from_dict({**report.to_dict(), "probes": {"sarcasm": {}}})


# ---------------------------------------------------------------------------------------------- registry, CLI
def test_registry_records_probes_and_the_cli_shows_and_compares_them(tmp_path: Path, kb_index,
                                                                     kb_pairs: list[ProbePair]) -> None:
    runner = CliRunner()
    registry = Registry(tmp_path / "registry")
    model = build_tiny_cross_encoder(tmp_path / "tiny", seed=3)
    for _ in range(3):
        registry.register(model, {"note": "tiny"})
    gold = kb_gold().save(tmp_path / "gold.jsonl")
    common = ["--index", str(kb_index.path), "--goldset", str(gold), "--registry", str(registry.root)]

    probed = runner.invoke(app, ["models", "probe", "v1", *common, "--backend", "torch", "--json"])
    assert probed.exit_code == 0, probed.output
    report = json.loads(probed.stdout)
    assert report["model"] == "v1" and [e["results"] for e in registry.probe_events("v1")] == [report]
    assert registry.aliases() == {"candidate": "v3"} and registry.probe_events("v2") == []  # no alias moved
    shown = json.loads(runner.invoke(app, ["models", "show", "v1", "--registry", str(registry.root)]).stdout)
    negation_rate = report["probes"]["negation"]["pass_rate"]
    assert shown["behaviour_probes"]["probes"]["negation"]["pass_rate"] == negation_rate
    assert shown["behaviour_probes"]["recorded_at"] and shown["note"] == "tiny"

    directory = runner.invoke(app, ["models", "probe", str(model), *common, "--backend", "torch"])
    assert directory.exit_code == 0, directory.output
    assert "lexical_overlap" in directory.stdout and "pass rate" in directory.stdout
    assert len(registry.history()) == 7  # 3 registrations + 3 aliases + 1 probe: a directory is not recorded
    nothing = runner.invoke(app, ["models", "probe", "none", *common])
    assert nothing.exit_code == 2 and nothing.stderr.startswith("error:") and "reranker" in nothing.stderr

    promote = ["models", "promote", "--force", "--registry", str(registry.root)]
    assert runner.invoke(app, [*promote, "v1"]).exit_code == 0
    unprobed = runner.invoke(app, [*promote, "v2"])
    assert unprobed.exit_code == 0 and "run `rankwise models probe v2" in unprobed.stdout
    # production v2 checked for negation, the candidate not: a regression, warned about and not blocking
    aware = run_probes(KeywordScorer(negation_aware=True), kb_pairs, source="kb")
    registry.record_probe("v2", aware.to_dict())
    registry.record_probe("candidate", run_probes(KeywordScorer(), kb_pairs, source="kb").to_dict())
    promoted = runner.invoke(app, [*promote, "candidate"])
    assert promoted.exit_code == 0 and "negation 1.00 → 0.00" in promoted.stdout
    assert "negation pass rate 1.00 → 0.00" in promoted.stderr and "never block" in promoted.stderr
    assert registry.aliases()["production"] == "v3"
