"""Real data: BM25 on SciFact must reproduce the published baseline (skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

import ir_measures
import pytest
from ir_measures import R, nDCG

from conftest import beir_dataset
from rankwise import Index, Pipeline
from rankwise.corpus.beir import load_qrels, load_queries


@pytest.fixture(scope="module")
def scifact_bm25(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Index]:
    data = beir_dataset("scifact")
    return data, Index.build(data, tmp_path_factory.mktemp("sf") / "idx", embedding_model=None)


def test_scifact_bm25_reproduces_published_ndcg(scifact_bm25: tuple[Path, Index]) -> None:
    data, index = scifact_bm25
    assert index.manifest.num_documents == 5183
    queries, qrels = load_queries(data), load_qrels(data, "test")
    assert len(qrels) == 300
    pipeline = Pipeline(index, first_stage="bm25")
    run = {qid: {r.doc_id: r.score for r in pipeline.search(queries[qid], k=100).results} for qid in qrels}
    metrics = ir_measures.calc_aggregate([nDCG @ 10, R @ 100], qrels, run)
    # published BM25 on SciFact: 0.665 (BEIR, Anserini) to 0.687 (bm25s)
    assert 0.665 <= metrics[nDCG @ 10] <= 0.695, metrics
    assert metrics[R @ 100] >= 0.88, metrics
