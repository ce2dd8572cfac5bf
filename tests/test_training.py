"""End-to-end fine-tuning on a tiny model and tiny data (seconds), and hard-negative mining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_cross_encoder
from rankwise import CrossEncoderReranker, Index
from rankwise.errors import QueryError
from rankwise.inference.calibration import CALIBRATION_FILE, read_calibration
from rankwise.rerank.declaration import read_declaration
from rankwise.training.data import JudgedQueries
from rankwise.training.finetune import TrainingConfig, train_cross_encoder
from rankwise.training.negatives import lead_sentence_groups, mine_groups, parse_negative_mix, title_groups

QUERIES = {"q1": "refund annual plan", "q2": "contractor mfa reset", "q3": "rotate postgres credentials",
           "q4": "customer churn q4", "q5": "monthly plan refund"}
QRELS = {"q1": {"refund-annual": 1}, "q2": {"mfa-contractor": 1}, "q3": {"pg-rotate": 1},
         "q4": {"churn-q4": 1}, "q5": {"refund-monthly": 1, "refund-annual": 0}}


def write_beir_dataset(root: Path, split: str) -> Path:
    """QUERIES/QRELS as a BEIR directory (queries.jsonl + qrels/<split>.tsv), for the CLI commands."""
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": t}) for q, t in QUERIES.items()))
    (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(
        f"{q}\t{d}\t{label}" for q, docs in QRELS.items() for d, label in docs.items()))
    return root


def test_mined_negatives_never_include_judged_documents(kb_index: Index) -> None:
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 3, "dense": 2, "random": 2}, depth=8, seed=1)
    assert len(groups) == 5
    for g in groups:
        relevant = {d for d, grade in QRELS[g.query_id].items() if grade > 0}
        assert not set(g.negative_ids) & relevant, "judged positives are never negatives"
        assert len(set(g.negative_ids)) == len(g.negative_ids) >= 3
    q5 = next(g for g in groups if g.query_id == "q5")
    assert len(q5.positives) == 1, "grade-0 judgements are not positives"
    assert "refund-annual" in q5.negative_ids, "a document judged not relevant is a negative, before mined ones"


def test_rounds_resample_negatives_per_query(kb_index: Index) -> None:
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 2, "random": 2}, depth=10, rounds=3, seed=4)
    assert len(groups) == 3 * len(QUERIES)
    per_query: dict[str, set[tuple[str, ...]]] = {}
    for g in groups:
        assert not set(g.negative_ids) & {d for d, grade in QRELS[g.query_id].items() if grade > 0}
        per_query.setdefault(g.query_id, set()).add(g.negative_ids)
    assert sum(len(samples) for samples in per_query.values()) > len(QUERIES), "rounds must draw fresh negatives"
    with pytest.raises(QueryError):
        mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 2}, rounds=0)


def test_max_positives_keeps_the_best_ranked_and_never_turns_the_rest_into_negatives(kb_index: Index) -> None:
    from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings

    query = {"qm": "refund plan billing"}
    qrels = {"qm": {"mfa-contractor": 1, "refund-monthly": 1, "refund-annual": 1, "churn-q4": 2}}
    ranked = [c.passage.doc_id for c in FirstStage(kb_index, FirstStageSettings(method="bm25")).retrieve(query["qm"], 8)]
    grade_1 = sorted(["mfa-contractor", "refund-monthly", "refund-annual"], key=lambda d: ranked.index(d) if d in ranked else 99)
    groups = mine_groups(kb_index, query, qrels, mix={"bm25": 7, "random": 2}, depth=8, rounds=4, max_positives=2, seed=3)
    kept = {kb_index.docstore.document(d).text for d in ("churn-q4", grade_1[0])}
    for g in groups:
        assert {p.split("\n", 1)[-1] for p in g.positives} == kept, "best grade first, then best first-stage rank"
        assert not set(g.negative_ids) & set(qrels["qm"]), "capped positives stay judged: never negatives"
        assert g.negative_ids, "the unjudged documents are still mined"


def test_margin_filter_drops_near_positive_scores(kb_index: Index) -> None:
    loose = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 7}, depth=8)
    strict = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 7}, depth=8, false_negative_margin=0.01)
    assert sum(len(g.negatives) for g in strict) < sum(len(g.negatives) for g in loose)


def test_title_groups_pair_each_title_with_its_own_untitled_body(kb_index: Index, kb_documents) -> None:
    groups = title_groups(kb_index, mix={"bm25": 2, "random": 1}, depth=8, exclude={"churn-theory"}, seed=2)
    by_title, by_id = {d.title: d for d in kb_documents}, {d.id: d for d in kb_documents}
    assert len(groups) == len(kb_documents) - 1 and "Research on churn patterns" not in {g.query for g in groups}
    for g in groups:
        doc = by_title[g.query]
        assert g.positives == (doc.text,), "the positive is the body alone: the title would give the answer away"
        assert doc.id not in g.negative_ids and 1 <= len(g.negative_ids) <= 3
        assert g.negatives == tuple(by_id[n].text for n in g.negative_ids), "negatives are untitled too"


def test_lead_sentence_groups_ask_a_documents_first_sentence_of_the_rest(tmp_path: Path) -> None:
    from rankwise.types import Document

    docs = [Document(f"d{i}", f"{lead} {rest}", title) for i, (title, lead, rest) in enumerate([
        ("Annual refunds", "Annual plans are refunded pro rata within 30 days.", "Ask the billing team by email."),
        ("Monthly plans", "Monthly plans are never refunded at all.", "Cancel before the next billing date."),
        ("MFA resets", "Contractors reset MFA through their sponsor.", "The IT desk confirms the identity first."),
        ("Short lead", "Too short.", "This document's lead has under four words, so it asks nothing."),
        ("One sentence", "This document is a single sentence with no rest.", ""),
    ])]
    index = Index.build(docs, tmp_path / "index", embedding_model=None)
    groups = lead_sentence_groups(index, mix={"bm25": 2, "random": 1}, depth=8, seed=2)
    assert [g.query_id for g in groups] == ["lead:d0", "lead:d1", "lead:d2"]
    for g, doc in zip(groups, docs, strict=False):
        assert doc.text.startswith(g.query) and g.query.endswith(".")
        assert g.positives == (f"{doc.title}\n{doc.text.removeprefix(g.query).strip()}",), "the lead is cut out"
        assert doc.id not in g.negative_ids and g.negatives
    assert [g.query_id for g in lead_sentence_groups(index, mix={"bm25": 1}, limit=2, seed=2)] in (
        [["lead:d0", "lead:d1"], ["lead:d0", "lead:d2"], ["lead:d1", "lead:d2"]])


def test_negative_mix_parsing() -> None:
    assert parse_negative_mix("bm25:3, random:2") == {"bm25": 3, "random": 2}
    with pytest.raises(QueryError):
        parse_negative_mix("bm25:x")
    with pytest.raises(QueryError):
        parse_negative_mix("web:3")


def test_query_split_is_seeded_and_disjoint() -> None:
    judged = JudgedQueries(QUERIES, QRELS)
    train, val = judged.split(0.4, seed=3)
    assert set(train.qrels).isdisjoint(val.qrels) and len(val.qrels) == 2
    assert judged.split(0.4, seed=3)[1].qrels == val.qrels
    assert judged.fingerprint == JudgedQueries(dict(QUERIES), dict(QRELS)).fingerprint


@pytest.mark.parametrize("loss", ["bce", "softmax", "lambda"])
def test_training_end_to_end_learns_the_training_positives(tmp_path: Path, kb_index: Index, loss: str) -> None:
    base = build_tiny_cross_encoder(tmp_path / "base", seed=1)
    # q5's judged negative is q1's positive: fine for a real model, a contradiction for a random tiny one in
    # 100 steps — this test is about the training loop, so it learns the four queries without one
    learnable = {q: r for q, r in QRELS.items() if min(r.values()) > 0}
    groups = mine_groups(kb_index, QUERIES, learnable, mix={"bm25": 2, "random": 3}, seed=0)
    # a randomly initialised tiny model needs a high learning rate to learn 4 queries in 100 steps, but not one
    # at the edge of stability: at 1e-2 lambda diverged under AVX2 numerics and converged under AVX-512's;
    # at 3e-3 every loss ranks every positive first on both CPU kinds
    config = TrainingConfig(base_model=str(base), loss=loss, max_steps=100, batch_size=8 if loss == "bce" else 2,
                            learning_rate=3e-3, max_length=64, eval_steps=50, warmup_ratio=0.0, seed=0)
    before = _positive_reciprocal_ranks(CrossEncoderReranker(base, max_length=64, backend="torch"), groups)
    result = train_cross_encoder(groups, groups[:2], config, tmp_path / "run", show_progress=False)
    assert result.steps == 100 and result.model_dir.is_dir()
    # what training means, not one trajectory: the loss's trajectory differs with the CPU's numerics (with
    # lambda on AVX2 it rises again after its low), so the logged losses after the first are compared on average
    assert len(result.losses) >= 3 and np.mean(result.losses[1:]) < 0.8 * result.losses[0], result.losses
    assert result.best_validation_ndcg10 is not None and 0 < result.best_validation_ndcg10 <= 1
    after = _positive_reciprocal_ranks(CrossEncoderReranker(result.model_dir, max_length=64, backend="torch"), groups)
    assert sum(rr == 1 for rr in after) >= 3, f"the trained model ranks the positive first for only {after} of 4"
    assert np.mean(after) >= np.mean(before) + 0.25, f"training barely moved the positives: {before} → {after}"
    from sentence_transformers import CrossEncoder

    plain = CrossEncoder(str(result.model_dir))  # loadable by plain sentence-transformers
    assert plain.predict([("a", "b")]).shape == (1,)


def _positive_reciprocal_ranks(reranker: CrossEncoderReranker, groups) -> list[float]:
    """Per training group, 1 / the rank of its best-scored positive among its positives and negatives."""
    ranks = []
    for g in groups:
        scores = reranker.score(g.query, list(g.positives) + list(g.negatives)).raw
        best_positive = max(scores[: len(g.positives)])
        ranks.append(1.0 / (1 + int(np.sum(scores[len(g.positives):] > best_positive))))
    return ranks


def test_training_resumes_from_its_last_checkpoint(tmp_path: Path, kb_index: Index) -> None:
    base = build_tiny_cross_encoder(tmp_path / "base")
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 2}, seed=0)
    first = train_cross_encoder(groups, [], TrainingConfig(base_model=str(base), max_steps=10, eval_steps=5,
                                batch_size=4, max_length=32), tmp_path / "run", show_progress=False)
    assert first.resumed_from is None
    second = train_cross_encoder(groups, [], TrainingConfig(base_model=str(base), max_steps=15, eval_steps=5,
                                 batch_size=4, max_length=32), tmp_path / "run", show_progress=False)
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-10")
    assert second.steps == 15
    # no validation queries: the model carries calibration windows from its training groups instead
    calibration = read_calibration(second.model_dir / CALIBRATION_FILE)
    assert [c.query for c in calibration] == [g.query for g in groups]
    assert all(c.texts[0] == g.positives[0] and set(c.texts[1:]) <= set(g.negatives) for c, g in zip(calibration, groups))


def test_a_time_budget_covers_the_whole_run_across_resumes(tmp_path: Path, kb_index: Index) -> None:
    from rankwise.training.finetune import BUDGET_FILE

    base = build_tiny_cross_encoder(tmp_path / "base")
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 2}, seed=0)

    def config(max_steps: int) -> TrainingConfig:
        return TrainingConfig(base_model=str(base), max_steps=max_steps, eval_steps=5, batch_size=4, max_length=32,
                              time_budget_s=3600.0)

    train_cross_encoder(groups, [], config(10), tmp_path / "run", show_progress=False)
    spent = tmp_path / "run" / "checkpoints" / "checkpoint-10" / BUDGET_FILE
    assert 0 < json.loads(spent.read_text())["elapsed_s"] < 3600
    # as if the first part had used the whole hour: the resumed run stops at its first step
    spent.write_text(json.dumps({"elapsed_s": 3600.0}))
    resumed = train_cross_encoder(groups, [], config(50), tmp_path / "run", show_progress=False)
    assert resumed.resumed_from is not None and resumed.steps == 11


def test_compact_reranker_keeps_only_the_first_layers(tmp_path: Path, kb_index: Index) -> None:
    base = build_tiny_cross_encoder(tmp_path / "base", layers=2)
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 1}, seed=0)
    result = train_cross_encoder(groups, [], TrainingConfig(base_model=str(base), max_steps=2, eval_steps=2,
                                 batch_size=4, max_length=32, layers=1), tmp_path / "run", show_progress=False)
    reranker = CrossEncoderReranker(result.model_dir, max_length=32, backend="torch")
    assert json.loads((result.model_dir / "config.json").read_text())["num_hidden_layers"] == 1
    assert reranker.score("q", ["a", "b"]).raw.shape == (2,)
    with pytest.raises(QueryError, match="cannot keep 5"):
        train_cross_encoder(groups, [], TrainingConfig(base_model=str(base), max_steps=1, layers=5),
                            tmp_path / "run2", show_progress=False)


def test_train_cli_trains_registers_and_records_the_title_queries(tmp_path: Path, kb_index: Index,
                                                                  kb_documents) -> None:
    import os
    import subprocess
    import sys

    from rankwise.registry import Registry

    dataset = write_beir_dataset(tmp_path / "ds", "train")
    base = build_tiny_cross_encoder(tmp_path / "base", seed=1)
    cmd = [sys.executable, "-m", "rankwise", "train", "--index", str(kb_index.path), "--dataset", str(dataset),
           "--base-model", str(base), "--architecture", "cross-encoder", "--no-residual", "--loss", "softmax",
           "--negatives", "bm25:2,random:2", "--title-queries", "--max-positives", "1",
           "--validation-fraction", "0.2", "--max-steps", "12", "--batch-size", "2", "--lr", "1e-2",
           "--max-length", "64", "--eval-steps", "6", "--output", str(tmp_path / "run"),
           "--registry", str(tmp_path / "registry")]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"title pseudo-queries {len(kb_documents)}" in " ".join(done.stdout.split())  # rich wraps lines
    entry = Registry(tmp_path / "registry").get("candidate")
    card = entry.card.to_dict()
    assert card["training_data"]["title_queries"] == len(kb_documents)
    assert card["training_data"]["max_positives"] == 1
    assert card["training"]["steps"] == 12 and card["hyperparameters"]["loss"] == "softmax"
    # the end of training says how the model does against the first stage it would rerank, as served
    verdict = card["metrics"]["validation"]["against_first_stage"]
    assert verdict["first_stage"] == "hybrid" and verdict["queries"] == 1
    said = " ".join(done.stdout.split())
    assert f"{verdict['model_value']:.2f} (hybrid + this model, " in said
    assert f"vs hybrid alone {verdict['first_stage_value']:.2f}" in said
    # the ordering measured best on the validation queries is what the model declares and is served with
    assert verdict["fusion"] in ("none", "rrf") and verdict["other_value"] is not None
    assert read_declaration(entry.path).fusion == verdict["fusion"]
    assert CrossEncoderReranker(entry.path, backend="torch").declared_fusion == verdict["fusion"]
    assert ("do not promote:" in said) != verdict["beats_first_stage"]
    assert read_calibration(entry.path / CALIBRATION_FILE), "the registered copy keeps its calibration windows"
    reloaded = CrossEncoderReranker(entry.path, backend="torch")
    assert reloaded.score("refund annual plan", ["Annual plans can be refunded.", "Rotate Redis."]).raw.shape == (2,)
    # the same command again finds the finished run and goes straight to its verdict: no step past it
    weights = sorted((tmp_path / "run").rglob("model.safetensors"))
    assert weights
    before = [w.stat().st_mtime_ns for w in weights]
    again = subprocess.run([*cmd, "--no-register"], capture_output=True, text=True, check=False, timeout=600,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    assert '"steps": 12' in again.stdout and [w.stat().st_mtime_ns for w in weights] == before


def test_train_continues_a_registered_model_with_its_kind_and_records_the_parent(tmp_path: Path,
                                                                                kb_index: Index) -> None:
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from rankwise.registry import Registry

    registry = Registry(tmp_path / "registry")
    parent = registry.register(build_tiny_cross_encoder(tmp_path / "parent", seed=3), {"note": "production"})
    registry.promote(parent.version, forced=True)
    dataset = write_beir_dataset(tmp_path / "ds", "train")
    cmd = [sys.executable, "-m", "rankwise", "train", "--index", str(kb_index.path), "--dataset", str(dataset),
           "--base-model", "production", "--max-steps", "2", "--batch-size", "4", "--lr", "1e-9",
           "--max-length", "32", "--eval-steps", "2", "--validation-fraction", "0.2",
           "--output", str(tmp_path / "run"), "--registry", str(registry.root)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    child = registry.get("candidate")
    assert child.card.continued_from == parent.version and child.card.parent == parent.version
    # it started from the parent's weights (hidden size 32), not the default MiniLM backbone's (384): at
    # lr 1e-9 two steps leave them where they were
    before, after = (load_file(str(d / "model.safetensors")) for d in (parent.path, child.path))
    head = next(k for k in after if k.endswith("classifier.weight"))
    assert after[head].shape == (1, 32)
    np.testing.assert_allclose(after[head].numpy(), before[head].numpy(), atol=1e-5)
    wrong = subprocess.run([*cmd, "--architecture", "bi-encoder"], capture_output=True, text=True, check=False,
                           timeout=600, env=env)
    assert wrong.returncode == 2 and "is v1, a cross-encoder: continuing it trains a cross-encoder" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_the_verdict_says_plainly_when_a_model_loses_to_its_first_stage() -> None:
    from rankwise.training.verdict import TrainingVerdict

    losing = TrainingVerdict("hybrid", 12, model_value=0.2, first_stage_value=0.79, p_value=0.001, fusion="rrf",
                             other_value=0.1)
    assert not losing.beats_first_stage
    assert losing.message.startswith("do not promote: validation nDCG@10 0.20 (hybrid + this model, fused with "
                                     "hybrid's ranks (rrf); alone 0.10) vs hybrid alone 0.79 over 12 held-out queries")
    tie = TrainingVerdict("bm25", 3, model_value=0.5, first_stage_value=0.5, p_value=1.0)
    assert tie.message.startswith("do not promote"), "no gain is no reason to promote"
    assert TrainingVerdict("hybrid", 12, 0.85, 0.79, 0.04).message.startswith("beats the first stage")
    apart = TrainingVerdict("hybrid", 12, 0.85, 0.79, 0.04, unseen_queries=4, unseen_model_value=0.61,
                            unseen_first_stage_value=0.70)
    assert apart.message.endswith("; on the 4 whose answers no training query had: 0.61 vs 0.70")


def test_a_time_budget_stops_training_early_and_keeps_a_validated_model(tmp_path: Path, kb_index: Index) -> None:
    base = build_tiny_cross_encoder(tmp_path / "base")
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 2}, seed=0)
    config = TrainingConfig(base_model=str(base), max_steps=10_000, eval_steps=1_000, batch_size=4, max_length=32,
                            time_budget_s=1.0)
    result = train_cross_encoder(groups, groups[:2], config, tmp_path / "run", show_progress=False)
    assert 1 <= result.steps < 10_000 and result.train_seconds < 60
    # stopping validated the last step (eval_steps alone would never have), so a best model exists
    assert result.validation_history and result.validation_history[-1]["step"] == result.steps
    with pytest.raises(QueryError, match="time budget"):
        TrainingConfig(time_budget_s=0)
