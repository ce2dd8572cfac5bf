"""A bi-encoder that tunes its query side only, against passages its frozen passage encoder embeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bi_encoder_reranker import margins
from test_training import QRELS, QUERIES

from rankwise import Index
from rankwise.errors import ModelError, QueryError
from rankwise.index.dense import Embedder
from rankwise.models import resolve_model, weights_sha256
from rankwise.rerank import BiEncoderReranker
from rankwise.rerank.declaration import KIND_FILE, PASSAGE_ENCODER_DIR, read_declaration
from rankwise.rerank.loading import load_reranker
from rankwise.training.finetune import TrainingConfig
from rankwise.training.negatives import TrainingGroup, mine_groups
from rankwise.training.recipe import FROZEN_PASSAGES_FROM, choose_recipe
from rankwise.training.train import train_reranker


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, kb_index: Index) -> tuple[Path, list[TrainingGroup]]:
    learnable = {q: r for q, r in QRELS.items() if min(r.values()) > 0}
    groups = mine_groups(kb_index, QUERIES, learnable, mix={"bm25": 2, "dense": 2}, depth=8, seed=0)
    config = TrainingConfig(architecture="bi-encoder", loss="softmax", frozen_passages=True, max_steps=12,
                            batch_size=4, learning_rate=1e-4, max_length=32, eval_steps=6, warmup_ratio=0.0, seed=0)
    result = train_reranker(groups, groups[:2], config, tmp_path_factory.mktemp("frozen") / "run", show_progress=False)
    assert result.steps == 12 and result.best_validation_ndcg10 is not None
    return result.model_dir, groups


def test_only_the_query_side_moves_and_the_positives_pull_ahead(trained: tuple[Path, list[TrainingGroup]]) -> None:
    model_dir, groups = trained
    assert json.loads((model_dir / KIND_FILE).read_text()) == {"kind": "bi-encoder",
                                                              "passage_encoder": PASSAGE_ENCODER_DIR}
    base = resolve_model("minilm")
    assert weights_sha256(model_dir / PASSAGE_ENCODER_DIR) == weights_sha256(base)  # passages: the first stage's
    reranker = load_reranker(str(model_dir), backend="torch")
    assert isinstance(reranker, BiEncoderReranker) and reranker.passage_embedder is not reranker.embedder
    passages = [*groups[0].positives, *groups[0].negatives]
    want = Embedder("minilm", backend="torch").encode(passages)
    np.testing.assert_allclose(reranker.passage_embedder.encode(passages), want, atol=1e-5)
    assert not np.allclose(reranker.embedder.encode([groups[0].query]), Embedder("minilm", backend="torch").encode(
        [groups[0].query]), atol=1e-3), "the query side must have moved"
    before = margins(BiEncoderReranker("minilm", backend="torch"), groups)
    after = margins(reranker, groups)
    assert after.mean() > before.mean() + 0.02, (before, after)


def test_an_untrained_query_side_scores_exactly_like_the_first_stages_model(tmp_path: Path) -> None:
    model = tmp_path / "untrained"
    shutil.copytree(resolve_model("minilm"), model)
    shutil.copytree(resolve_model("minilm"), model / PASSAGE_ENCODER_DIR)
    (model / KIND_FILE).write_text(json.dumps({"kind": "bi-encoder", "passage_encoder": PASSAGE_ENCODER_DIR}))
    texts = ["Annual plans can be refunded within 30 days.", "Rotate Redis keys every quarter.", "SSO with SAML"]
    frozen = BiEncoderReranker(model, backend="torch").score("refund annual plan", texts)
    plain = BiEncoderReranker("minilm", backend="torch").score("refund annual plan", texts)
    assert np.ptp(plain.raw) > 0.2
    np.testing.assert_allclose(frozen.raw, plain.raw, atol=1e-6)
    cached = BiEncoderReranker(model, backend="torch")
    cached.score("refund annual plan", texts)
    again = cached.score("refund annual plan", texts)
    assert again.stats["cached"] == len(texts)
    np.testing.assert_allclose(again.raw, plain.raw, atol=1e-6)


def test_a_declared_passage_encoder_must_be_a_subdirectory_of_a_bi_encoder(tmp_path: Path) -> None:
    (tmp_path / KIND_FILE).write_text(json.dumps({"kind": "bi-encoder", "passage_encoder": "../elsewhere"}))
    with pytest.raises(ModelError, match="must name a subdirectory"):
        read_declaration(tmp_path)
    (tmp_path / PASSAGE_ENCODER_DIR).mkdir()
    (tmp_path / KIND_FILE).write_text(json.dumps({"kind": "cross-encoder", "passage_encoder": PASSAGE_ENCODER_DIR}))
    with pytest.raises(ModelError, match="must name a subdirectory of a bi-encoder"):
        read_declaration(tmp_path)
    with pytest.raises(QueryError, match="frozen passages are a bi-encoder's"):
        TrainingConfig(architecture="cross-encoder", frozen_passages=True)


def test_the_recipe_freezes_passages_from_a_few_hundred_judged_queries() -> None:
    few, many = choose_recipe(FROZEN_PASSAGES_FROM - 1, 300), choose_recipe(FROZEN_PASSAGES_FROM, 5000)
    assert not few.frozen_passages and many.frozen_passages and many.architecture == "bi-encoder"
    assert many.max_positives is None and many.batch_size > few.batch_size
    assert "bi-encoder with frozen passages" in many.explain() and "frozen" not in few.explain()
    assert not choose_recipe(5000, 5000, has_dense=False).frozen_passages  # no vectors, no first-stage model
    crossed = many.overridden(architecture="cross-encoder")
    assert (crossed.architecture, crossed.residual, crossed.frozen_passages) == ("cross-encoder", True, False)
    assert not many.overridden(residual=True).frozen_passages
    assert few.overridden(frozen_passages=True).frozen_passages
    # the kind, when decided (--freeze-passages/--no-freeze-passages), brings the numbers measured for it
    whole = choose_recipe(2000, 5000, frozen_passages=False)
    assert (whole.frozen_passages, whole.batch_size, whole.learning_rate, whole.max_positives) == (
        False, few.batch_size, few.learning_rate, few.max_positives)
    forced = choose_recipe(100, 300, frozen_passages=True)
    assert forced.batch_size == many.batch_size and "as asked" in forced.explain() and "as asked" not in many.explain()
    continued = few.continuing("bi-encoder", False, "v2", frozen_passages=True)
    assert continued.frozen_passages and "continues v2, a bi-encoder with frozen passages" in continued.explain()


def test_continuing_a_frozen_passage_model_keeps_its_passage_encoder(tmp_path: Path, kb_index: Index,
                                                                     trained: tuple[Path, list[TrainingGroup]]
                                                                     ) -> None:
    from rankwise.registry import Registry
    from rankwise.training.data import JudgedQueries
    from rankwise.training.session import SessionSettings, train_session

    model_dir, _ = trained
    registry = Registry(tmp_path / "registry")
    parent = registry.register(model_dir, {"note": "production"})
    registry.promote(parent.version, forced=True)
    judged = JudgedQueries(queries=QUERIES, qrels=QRELS)
    with pytest.raises(QueryError, match="a bi-encoder with frozen passages: continuing it keeps its passage encoder"):
        train_session(kb_index, judged, SessionSettings(base_model="production", frozen_passages=False),
                      tmp_path / "refused", registry=registry)
    session = train_session(kb_index, judged, SessionSettings(base_model="production", max_steps=2, batch_size=4,
                                                              max_length=32, eval_steps=2, replay=0),
                            tmp_path / "run", registry=registry)
    assert session.recipe.frozen_passages and "continues v1, a bi-encoder with frozen passages" in session.recipe.explain()
    child = session.model_dir
    assert read_declaration(child).passage_encoder == PASSAGE_ENCODER_DIR
    assert weights_sha256(child / PASSAGE_ENCODER_DIR) == weights_sha256(parent.path / PASSAGE_ENCODER_DIR)
    assert weights_sha256(child) != weights_sha256(parent.path)  # the query side went on training
    card = session.card(SessionSettings(base_model="production"), {"goldset": "feedback.jsonl"}, kb_index, "v1")
    assert card.passage_encoder == {"directory": PASSAGE_ENCODER_DIR,
                                    "copied_from": str(parent.path / PASSAGE_ENCODER_DIR),
                                    "weights_sha256": weights_sha256(resolve_model("minilm"))}
    assert card.continued_from == "v1" and card.recipe["frozen_passages"] is True


def test_the_verdict_judges_held_out_queries_whose_answers_training_never_had_apart(
        kb_index: Index, trained: tuple[Path, list[TrainingGroup]]) -> None:
    from rankwise.training.data import JudgedQueries
    from rankwise.training.verdict import judge_against_first_stage

    model_dir, _ = trained
    held_out = JudgedQueries(QUERIES, {q: QRELS[q] for q in ("q1", "q5")})
    # q1's answer (refund-annual) was a training query's answer too; q5's (refund-monthly) was not
    taught = JudgedQueries(QUERIES, {"q4": QRELS["q4"], "q9": {"refund-annual": 1}})
    verdict = judge_against_first_stage(kb_index, held_out, model_dir, rerank_k=8, trained=taught)
    alone = judge_against_first_stage(kb_index, JudgedQueries(QUERIES, {"q5": QRELS["q5"]}), model_dir, rerank_k=8)
    assert verdict is not None and alone is not None and verdict.unseen_queries == 1
    assert alone.unseen_queries == 0 and alone.unseen_model_value is None  # nothing to tell apart without training
    single = judge_against_first_stage(kb_index, JudgedQueries(QUERIES, {"q5": QRELS["q5"]}), model_dir,
                                       rerank_k=8, trained=taught)
    assert single is not None and verdict.unseen_first_stage_value == pytest.approx(single.first_stage_value)
    assert "on the 1 whose answers no training query had" in verdict.message
    everything = JudgedQueries(QUERIES, {"q9": {"refund-annual": 1, "refund-monthly": 1}})
    assert judge_against_first_stage(kb_index, held_out, model_dir, rerank_k=8, trained=everything).unseen_queries == 0
