"""A domain-tuned bi-encoder as the reranker: training, the declared model kind, loading and scoring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_training import QRELS, QUERIES

from rankwise import Index, Pipeline
from rankwise.errors import ModelError, QueryError
from rankwise.rerank import BiEncoderReranker, CrossEncoderReranker, WindowedReranker
from rankwise.rerank.declaration import KIND_FILE, reranker_kind
from rankwise.rerank.loading import load_reranker
from rankwise.training.finetune import TrainingConfig
from rankwise.training.negatives import TrainingGroup, mine_groups
from rankwise.training.train import train_reranker


def margins(reranker: BiEncoderReranker, groups: list[TrainingGroup]) -> np.ndarray:
    """Per group: cosine of the positive minus the best negative's (> 0: the positive ranks first)."""
    out = []
    for g in groups:
        raw = reranker.score(g.query, [g.positives[0], *g.negatives]).raw
        out.append(raw[0] - raw[1:].max())
    return np.array(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, kb_index: Index) -> tuple[Path, list[TrainingGroup]]:
    learnable = {q: r for q, r in QRELS.items() if min(r.values()) > 0}
    groups = mine_groups(kb_index, QUERIES, learnable, mix={"bm25": 2, "dense": 2}, depth=8, seed=0)
    config = TrainingConfig(architecture="bi-encoder", loss="softmax", max_steps=12, batch_size=2,
                            learning_rate=1e-4, max_length=32, eval_steps=6, warmup_ratio=0.0, seed=0)
    result = train_reranker(groups, groups[:2], config, tmp_path_factory.mktemp("bi") / "run", show_progress=False)
    assert result.steps == 12 and result.best_validation_ndcg10 is not None
    return result.model_dir, groups


def test_training_moves_the_positives_away_from_their_hard_negatives(trained: tuple[Path, list[TrainingGroup]]
                                                                     ) -> None:
    model_dir, groups = trained
    before = margins(BiEncoderReranker("minilm", backend="torch"), groups)
    after = margins(BiEncoderReranker(model_dir, backend="torch"), groups)
    assert after.mean() > before.mean() + 0.02, (before, after)
    assert (after > 0).sum() >= (before > 0).sum()


def test_the_model_declares_its_kind_and_loads_as_a_bi_encoder(trained: tuple[Path, list[TrainingGroup]],
                                                               kb_index: Index) -> None:
    model_dir, _ = trained
    assert json.loads((model_dir / KIND_FILE).read_text()) == {"kind": "bi-encoder"}
    reranker = load_reranker(str(model_dir), backend="torch")
    assert isinstance(reranker, BiEncoderReranker) and not isinstance(reranker, WindowedReranker)
    # trained on 32-token inputs, served on the whole passage the base model reads
    assert reranker.embedder.info.max_seq_length == 256
    scores = reranker.score("refund annual plan", ["Annual plans can be refunded.", "Rotate Redis keys."])
    assert np.allclose(scores.calibrated, (1 + scores.raw) / 2) and scores.raw[0] > scores.raw[1]
    response = Pipeline(kb_index, reranker, first_stage="hybrid", rerank_k=5).search("refund annual plan", k=3)
    assert response.provenance.reranker_backend.startswith("torch")
    assert [r.reranker.rank for r in response.results if r.reranker] == [1, 2, 3]
    with pytest.raises(ModelError, match="cross-encoder options"):
        load_reranker(str(model_dir), long_documents="maxp")


def test_a_directory_without_a_kind_is_a_cross_encoder_and_a_bad_kind_is_one_line(tmp_path: Path,
                                                                                  tiny_cross_encoder: Path) -> None:
    assert reranker_kind(tiny_cross_encoder) == "cross-encoder"
    assert isinstance(load_reranker(str(tiny_cross_encoder), backend="torch"), CrossEncoderReranker)
    (tmp_path / KIND_FILE).write_text('{"kind": "colbert"}')
    with pytest.raises(ModelError, match="colbert"):
        reranker_kind(tmp_path)
    with pytest.raises(QueryError, match="softmax"):
        TrainingConfig(architecture="bi-encoder", loss="bce")


def test_cached_passage_vectors_give_the_same_scores_and_stay_bounded(trained: tuple[Path, list[TrainingGroup]]
                                                                      ) -> None:
    model_dir, groups = trained
    cached = BiEncoderReranker(model_dir, backend="torch", cache_size=6)
    uncached = BiEncoderReranker(model_dir, backend="torch", cache_size=0)
    for g in groups:
        texts = [*g.positives, *g.negatives]
        first, again = cached.score(g.query, texts), cached.score(g.query, texts)
        assert first.stats["cached"] < len(texts) and again.stats["cached"] == len(texts)
        np.testing.assert_allclose(again.raw, uncached.score(g.query, texts).raw, atol=1e-5)
        assert len(cached._cache) <= 6 and not uncached._cache
    with pytest.raises(QueryError, match="cache_size"):
        BiEncoderReranker(model_dir, cache_size=-1)


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_the_cost_counts_the_tokens_embedded_and_only_those(trained: tuple[Path, list[TrainingGroup]],
                                                            backend: str) -> None:
    model_dir, groups = trained
    reranker = BiEncoderReranker(model_dir, backend=backend, cache_size=100)
    g = groups[0]
    texts = [*g.positives, *g.negatives]
    tokenizer = reranker.embedder.model.tokenizer
    limit = reranker.embedder.info.max_seq_length
    expected = sum(min(len(tokenizer(t)["input_ids"]), limit) for t in [g.query, *texts])
    assert reranker.score(g.query, texts).stats["tokens"] == expected  # the query and every passage
    query_only = min(len(tokenizer(g.query)["input_ids"]), limit)
    assert reranker.score(g.query, texts).stats["tokens"] == query_only  # passages from the vector cache


def test_a_time_budget_without_validation_stops_and_saves_the_last_step(tmp_path: Path, kb_index: Index) -> None:
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 2}, depth=8, seed=0)
    config = TrainingConfig(architecture="bi-encoder", loss="softmax", max_steps=10_000, eval_steps=1_000,
                            batch_size=2, max_length=32, time_budget_s=1.0)
    result = train_reranker(groups, [], config, tmp_path / "run", show_progress=False)
    assert 1 <= result.steps < 10_000 and not result.validation_history
    assert reranker_kind(result.model_dir) == "bi-encoder"
