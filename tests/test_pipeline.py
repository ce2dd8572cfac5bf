from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rankwise import CrossEncoderReranker, Index, Pipeline
from rankwise.errors import QueryError
from rankwise.options import DEFAULT_PIPELINE, PipelineSettings


@pytest.mark.parametrize("method", ["bm25", "dense", "hybrid"])
def test_first_stage_finds_the_obvious_document(kb_index: Index, method: str) -> None:
    response = Pipeline(kb_index, first_stage=method).search("rotate postgres production credentials", k=3)
    assert response.results[0].doc_id == "pg-rotate"
    assert [r.rank for r in response.results] == list(range(1, len(response.results) + 1))
    assert len(response.results) >= 2
    assert all(r.reranker is None and r.rank_change == 0 for r in response.results)
    assert response.provenance.first_stage == method and response.provenance.reranker == "none"


def test_hybrid_convex_and_passage_granularity(kb_index: Index) -> None:
    p = Pipeline(kb_index, first_stage="hybrid", fusion="convex", alpha=0.3, granularity="passage")
    top = p.search("refund annual plan", k=2).results[0]
    assert top.doc_id == "refund-annual" and 0 < top.first_stage.score <= 1.0


def test_reranked_results_show_both_signals(kb_index: Index, tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder, name="tiny", backend="torch")
    response = Pipeline(kb_index, reranker, first_stage="hybrid", rerank_k=5).search("reset MFA", k=8)
    reranked = [r for r in response.results if r.reranker is not None]
    assert len(reranked) == 5 and response.provenance.num_reranked == 5
    assert [r.reranker.rank for r in reranked] == [1, 2, 3, 4, 5]
    raws = [r.reranker.raw_score for r in reranked]
    assert raws == sorted(raws, reverse=True), "reranked head is ordered by the reranker"
    for r in response.results:
        assert r.rank_change == r.first_stage.rank - r.rank
        assert r.score == (r.reranker.score if r.reranker else r.first_stage.score)
    tail = [r.first_stage.rank for r in response.results[5:]]
    assert tail == sorted(tail) and min(tail) > 5, "candidates beyond rerank_k keep first-stage order"
    prov = response.provenance
    assert prov.reranker == "tiny" and prov.reranker_sha256 == reranker.weights_sha256
    assert prov.embedding_sha256 == kb_index.manifest.embedding["sha256"]
    assert {"first_stage", "rerank", "total"} <= set(response.timings_ms)
    d = response.to_dict()
    assert set(d) == {"query", "warnings", "results", "provenance", "timings_ms"}
    assert set(d["results"][0]["reranker"]) == {"rank", "score", "raw_score"}


def test_rrf_rerank_fusion_orders_by_both_ranks(kb_index: Index, tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder, name="tiny", backend="torch")
    plain = Pipeline(kb_index, reranker, first_stage="bm25", rerank_k=6).search("refund annual plan", k=8)
    fused = Pipeline(kb_index, reranker, first_stage="bm25", rerank_k=6, rerank_fusion="rrf").search(
        "refund annual plan", k=8)
    assert fused.provenance.rerank_fusion == "rrf" and plain.provenance.rerank_fusion == "none"
    head = fused.results[:6]
    for r in head:  # both inputs stay visible; the score is the fused one the order follows
        assert r.score == pytest.approx(1 / (60 + r.reranker.rank) + 1 / (60 + r.first_stage.rank))
    assert [r.score for r in head] == sorted((r.score for r in head), reverse=True)
    by_doc = {r.doc_id: r.reranker.raw_score for r in plain.results[:6]}
    assert {r.doc_id: r.reranker.raw_score for r in head} == by_doc, "same reranker scores, only the order differs"
    assert [r.first_stage.rank for r in fused.results[6:]] == [r.first_stage.rank for r in plain.results[6:]]
    with pytest.raises(QueryError, match="rerank fusion"):
        Pipeline(kb_index, reranker, rerank_fusion="linear")


def test_filters_restrict_candidates(kb_index: Index) -> None:
    response = Pipeline(kb_index, first_stage="hybrid").search("rotate credentials", filters={"category": "billing"})
    assert {r.doc_id for r in response.results} <= {"refund-annual", "refund-monthly"}
    assert Pipeline(kb_index).search("x", filters={"category": "nothing"}).results == []
    assert response.warnings == []
    # a key no document has is a typo, not an empty result — unless asked for
    with pytest.raises(QueryError, match=r"unknown metadata filter key\(s\) categroy; this index's documents have category"):
        Pipeline(kb_index).search("x", filters={"categroy": "billing"})
    assert Pipeline(kb_index, allow_unknown_filters=True).search("x", filters={"categroy": "billing"}).results == []


def test_bad_queries(kb_index: Index) -> None:
    p = Pipeline(kb_index, first_stage="bm25")
    for bad in ("", "   "):
        with pytest.raises(QueryError, match="empty"):
            p.search(bad)
    with pytest.raises(QueryError, match="unknown first stage"):
        Pipeline(kb_index, first_stage="magic")
    assert p.search("zzzzqqq").results == [], "no lexical match means no BM25 results, not random ones"


def test_hybrid_results_show_each_retrievers_rank_and_score(kb_index: Index) -> None:
    query = "rotate credentials in production"
    hybrid = Pipeline(kb_index, first_stage="hybrid", retrieve_k=8).search(query, k=8)
    alone = {m: {r.doc_id: r for r in Pipeline(kb_index, first_stage=m, retrieve_k=8).search(query, k=8).results}
             for m in ("bm25", "dense")}
    for r in hybrid.results:
        assert set(r.first_stage.signals) == {"bm25", "dense"}
        for method, signal in r.first_stage.signals.items():
            if signal.rank is None:
                assert r.doc_id not in alone[method]
            else:  # the same rank and score the retriever gives on its own
                assert alone[method][r.doc_id].first_stage.rank == signal.rank
                assert alone[method][r.doc_id].first_stage.score == pytest.approx(signal.score)
    dense = hybrid.results[0].first_stage.signals["dense"]
    assert dense.score is not None and -1.0 <= dense.score <= 1.0
    assert hybrid.to_dict()["results"][0]["first_stage"]["signals"]["bm25"].keys() == {"rank", "score"}


def test_keywords_override_settings_which_override_the_defaults(kb_index: Index, tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder, name="tiny", backend="torch")
    settings = PipelineSettings(first_stage="bm25", retrieve_k=8, rerank_fusion="rrf")
    pipeline = Pipeline(kb_index, reranker, settings=settings, retrieve_k=6)
    assert pipeline.settings == PipelineSettings(first_stage="bm25", retrieve_k=6, rerank_k=100, rerank_fusion="rrf")
    response = pipeline.search("reset MFA", k=10)
    assert response.provenance.first_stage == "bm25" and response.provenance.rerank_fusion == "rrf"
    assert response.provenance.num_candidates <= 6
    # unset everywhere: the defaults, and the fusion the reranker declares (none for an undeclared model)
    assert Pipeline(kb_index, reranker).settings == replace(DEFAULT_PIPELINE, rerank_fusion="none")


@pytest.mark.parametrize(("fields", "message"), [
    ({"first_stage": "bm42"}, "unknown first stage 'bm42'; choose bm25, dense, hybrid"),
    ({"rerank_fusion": "sum"}, "unknown rerank fusion 'sum'; choose none, rrf"),
    ({"retrieve_k": 0}, "retrieve_k must be positive (got 0)"),
    ({"rerank_k": -1}, "rerank_k must not be negative (got -1)"),
])
def test_bad_settings_are_refused_where_they_are_made(kb_index: Index, fields: dict, message: str) -> None:
    with pytest.raises(QueryError) as refused:
        PipelineSettings(**fields)
    assert str(refused.value) == message
    with pytest.raises(QueryError, match="must|unknown"):  # the keywords are checked the same way
        Pipeline(kb_index, **fields)


def test_filters_that_match_nothing_say_why(kb_index: Index) -> None:
    wrong_case = Pipeline(kb_index).search("reset MFA", filters={"category": "Security"})
    assert wrong_case.results == [] and wrong_case.warnings == [
        ('no document has category = "Security" (values are matched exactly; category has "billing", "finance", '
         '"research", "runbook", "security")')]
    apart = Pipeline(kb_index).search("reset MFA", filters={"category": ["nope", "security"]})
    assert apart.results and apart.warnings == []  # one of the values matches: nothing to explain
    lexical = Pipeline(kb_index, first_stage="bm25").search("zzzzqqq", filters={"category": "security"})
    assert lexical.results == [] and lexical.warnings == []  # the filter matches documents; the query does not
