"""Residual rerankers: the dense first stage's cosine plus a learned correction that starts at zero."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_cross_encoder
from rankwise import Index, Pipeline
from rankwise.errors import ModelError, QueryError
from rankwise.index.dense import Embedder
from rankwise.rerank.declaration import KIND_FILE, read_declaration
from rankwise.rerank.loading import load_reranker
from rankwise.rerank.residual import ResidualReranker
from rankwise.training.finetune import TrainingConfig, train_cross_encoder
from rankwise.training.negatives import mine_groups

QUERIES = {"q1": "refund annual plan", "q2": "contractor mfa reset", "q3": "rotate postgres credentials",
           "q4": "customer churn q4"}
#: each query's positive is a page the dense cosine ranks low for it: training has to move away from the base
SWAPPED = {"q1": {"pg-rotate": 1}, "q2": {"churn-q4": 1}, "q3": {"refund-annual": 1}, "q4": {"mfa-contractor": 1}}


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory: pytest.TempPathFactory, kb_documents) -> Index:
    """The KB embedded with fp32 torch, the numerics the residual's base uses with ``backend="torch"``."""
    return Index.build(kb_documents, tmp_path_factory.mktemp("kb-torch") / "index",
                       embedder=Embedder("minilm", backend="torch"))


def _train(tmp_path: Path, index: Index, qrels, *, steps: int, lr: float) -> Path:
    groups = mine_groups(index, QUERIES, qrels, mix={"bm25": 2, "random": 3}, seed=0)
    config = TrainingConfig(base_model=str(build_tiny_cross_encoder(tmp_path / "backbone", seed=1)), loss="softmax",
                            max_steps=steps, batch_size=2, learning_rate=lr, max_length=64, eval_steps=max(steps, 1),
                            warmup_ratio=0.0, seed=0, residual_over="minilm")
    return train_cross_encoder(groups, groups[:2], config, tmp_path / "run", show_progress=False).model_dir


def test_an_untrained_residual_reranker_returns_the_dense_first_stage_order_exactly(tmp_path: Path,
                                                                                   torch_index: Index) -> None:
    model = _train(tmp_path, torch_index, SWAPPED, steps=1, lr=1e-12)
    declared = read_declaration(model)
    assert declared.kind == "cross-encoder" and declared.residual is not None
    # the swapped positives are pages the cosine ranks low: the fitted weight sits at the smallest tried
    assert declared.residual.embedder == "minilm" and declared.residual.weight == 1.0
    reranker = load_reranker(str(model), backend="torch")
    assert isinstance(reranker, ResidualReranker)
    dense = Pipeline(torch_index, None, first_stage="dense")
    lexical = Pipeline(torch_index, None, first_stage="bm25")
    served = Pipeline(torch_index, reranker, first_stage="bm25")
    reordered = 0
    for query in [*QUERIES.values(), "annual refund window", "which database rotates credentials"]:
        candidates = lexical.retrieve(query)
        bm25_order = [c.passage.doc_id for c in candidates]
        dense_rank = {r.doc_id: r.rank for r in dense.search(query, k=100).results}
        expected = sorted(bm25_order, key=dense_rank.__getitem__)
        assert [r.doc_id for r in served.search(query, k=100).results] == expected, query
        correction = reranker.correction.score(query, [c.passage.full_text for c in candidates]).raw
        assert np.abs(correction).max() < 1e-6, "the correction must start at zero"
        reordered += expected != bm25_order
    assert reordered >= 2, "the dense order must differ from the candidates' order for this to prove anything"


def test_training_moves_the_ranking_away_from_the_base_where_the_data_says_so(tmp_path: Path,
                                                                              torch_index: Index) -> None:
    model = _train(tmp_path, torch_index, SWAPPED, steps=100, lr=3e-3)
    reranker = load_reranker(str(model), backend="torch")
    untrained = ResidualReranker(_train(tmp_path / "untrained", torch_index, SWAPPED, steps=1, lr=1e-12),
                                 backend="torch")
    groups = mine_groups(torch_index, QUERIES, SWAPPED, mix={"bm25": 2, "random": 3}, seed=0)
    before = [_positive_rank(untrained, g) for g in groups]
    after = [_positive_rank(reranker, g) for g in groups]
    assert sum(before) > len(groups), f"the base already ranks the swapped positives first: {before}"
    assert sum(after) < sum(before) and sum(r == 1 for r in after) >= 3, f"{before} → {after}"


def _positive_rank(reranker: ResidualReranker, group) -> int:
    scores = reranker.score(group.query, [*group.positives, *group.negatives]).raw
    return 1 + int(np.sum(scores[len(group.positives):] > scores[0]))


def test_a_residual_base_whose_weights_changed_is_refused_in_one_line(tmp_path: Path, torch_index: Index) -> None:
    model = _train(tmp_path, torch_index, SWAPPED, steps=1, lr=1e-12)
    file = model / KIND_FILE
    file.write_text(file.read_text().replace(read_declaration(model).residual.embedder_sha256, "0" * 64))
    with pytest.raises(ModelError, match="trained over embedding model 'minilm' with weights sha256 000000000000"):
        load_reranker(str(model), backend="torch")


def test_residual_training_refuses_what_it_cannot_train() -> None:
    with pytest.raises(QueryError, match="a bi-encoder is already a residual"):
        TrainingConfig(architecture="bi-encoder", loss="softmax", residual_over="minilm")
    with pytest.raises(QueryError, match="trains with --loss softmax or bce"):
        TrainingConfig(loss="lambda", residual_over="minilm")


def _beir(root: Path, qrels: dict[str, dict[str, int]]) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text("\n".join(json.dumps({"_id": q, "text": QUERIES[q]}) for q in qrels))
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(
        f"{q}\t{d}\t{label}" for q, docs in qrels.items() for d, label in docs.items()))
    return root


def test_continuing_production_keeps_its_kind_and_what_it_learned_where_a_restart_forgets(tmp_path: Path,
                                                                                          kb_index: Index) -> None:
    """Cycle 1 learns A; cycle 2 brings only new queries B. Continued from production (replaying A) the
    model still ranks A's positives first and ranks better over A and B than a restart from the backbone on B,
    which never saw A."""
    import os
    import subprocess
    import sys

    from rankwise.registry import Registry

    first = {q: SWAPPED[q] for q in ("q1", "q2")}
    second = {q: SWAPPED[q] for q in ("q3", "q4")}
    backbone = build_tiny_cross_encoder(tmp_path / "backbone", seed=1)
    registry = Registry(tmp_path / "registry")
    groups_a = mine_groups(kb_index, QUERIES, first, mix={"bm25": 2, "random": 3}, seed=0)
    cycle1 = train_cross_encoder(groups_a, [], TrainingConfig(
        base_model=str(backbone), loss="softmax", max_steps=80, batch_size=2, learning_rate=3e-3, max_length=64,
        warmup_ratio=0.0, seed=0, residual_over="minilm"), tmp_path / "cycle1", show_progress=False)
    parent = registry.register(cycle1.model_dir, {"training_data": {"dataset": str(_beir(tmp_path / "a", first)),
                                                                    "split": "train"}})
    registry.promote(parent.version, forced=True)
    dataset_b = _beir(tmp_path / "b", second)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def train(base: str, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "rankwise", "train", "--index", str(kb_index.path), "--dataset", str(dataset_b),
               "--base-model", base, "--max-steps", "80", "--batch-size", "2", "--lr", "3e-3", "--max-length", "64",
               "--validation-fraction", "0", "--negatives", "bm25:2,random:3", "--seed", "0",
               "--output", str(tmp_path / name), "--registry", str(registry.root), *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    continued = train("production", "continued", "--replay", "1")
    assert "replaying 2 of v1's training queries" in continued.stdout, continued.stdout
    child = registry.get("candidate")
    assert child.card.continued_from == parent.version and child.card.residual is not None
    assert child.card.training_data is not None and child.card.training_data.replay is not None
    assert child.card.training_data.replay["queries"] == 2
    assert read_declaration(child.path).residual == read_declaration(parent.path).residual, "kept its base"
    train(str(backbone), "restarted", "--architecture", "cross-encoder", "--no-register")
    restarted = tmp_path / "restarted" / "final"

    groups = mine_groups(kb_index, QUERIES, SWAPPED, mix={"bm25": 2, "random": 3}, seed=1)
    ranks = {name: [_positive_rank(ResidualReranker(path, backend="torch"), g) for g in groups]
             for name, path in (("continued", child.path), ("restarted", restarted))}
    learned_first = [i for i, g in enumerate(groups) if g.query_id in first]
    assert all(ranks["continued"][i] == 1 for i in learned_first), f"the continued model forgot cycle 1: {ranks}"
    assert any(ranks["restarted"][i] > 1 for i in learned_first), f"a restart cannot know cycle 1: {ranks}"
    assert sum(ranks["continued"]) < sum(ranks["restarted"]), ranks


def test_the_recipe_follows_the_data_and_every_option_the_user_sets_wins() -> None:
    from rankwise.training.recipe import choose_recipe

    few, many = choose_recipe(40, 300), choose_recipe(300, 5000)
    assert few.architecture == "bi-encoder" and not few.residual and few.loss == "softmax"
    no_vectors = choose_recipe(40, 300, has_dense=False)
    assert (no_vectors.architecture, no_vectors.residual) == ("cross-encoder", False)
    assert "no vectors" in no_vectors.explain()
    assert (few.overridden(architecture="cross-encoder").residual, few.overridden(residual=True).architecture) == (
        True, "cross-encoder")  # a cross-encoder asked for starts at the first stage too
    assert few.overridden(architecture="cross-encoder", residual=False).residual is False
    assert few.max_steps < many.max_steps <= 400 and few.time_budget_s == many.time_budget_s == 600
    assert "40 training queries" in few.explain()
    mine = few.overridden(architecture="cross-encoder", learning_rate=1e-5, batch_size=None)
    assert (mine.architecture, mine.residual, mine.learning_rate, mine.batch_size) == ("cross-encoder", True, 1e-5, 8)
    assert "set by you: architecture cross-encoder, learning-rate 1e-05" in mine.explain()
    assert "a bi-encoder, a domain-tuned copy" not in mine.explain()  # the reason for the kind no longer holds
    assert few.overridden(loss="lambda").residual is False
    continued = few.continuing("cross-encoder", True, "v3")
    assert continued.residual and continued.explain().count("continues v3, a residual cross-encoder") == 1


def test_the_server_scores_a_residual_reranker_exactly_like_the_library(tmp_path: Path, torch_index: Index) -> None:
    import httpx

    from conftest import KB_TEXTS
    from rankwise.serving.readiness import ServeProcess

    model = _train(tmp_path, torch_index, SWAPPED, steps=40, lr=3e-3)
    library = ResidualReranker(model, backend="torch")
    query = "refund annual plan"
    want = library.score(query, KB_TEXTS)
    assert np.ptp(want.raw) > 0.5, "scores must spread (far beyond the 1e-4 tolerance) for the comparison to mean anything"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = ServeProcess(["--index", str(torch_index.path), "--reranker", str(model), "--backend", "torch"],
                          tmp_path / "server.log", timeout_s=180, env=env)
    try:
        assert not server.problem, (tmp_path / "server.log").read_text()[-3000:]
        for attempt in ("cold", "cached"):
            body = httpx.post(f"{server.url}/v1/rerank", json={"query": query, "documents": KB_TEXTS,
                                                                "raw_scores": True}, timeout=60).json()
            assert [r["index"] for r in body["results"]] == list(np.argsort(-want.raw, kind="stable")), attempt
            for r in body["results"]:
                assert r["raw_score"] == pytest.approx(float(want.raw[r["index"]]), abs=1e-4), attempt
                assert r["relevance_score"] == pytest.approx(float(want.calibrated[r["index"]]), abs=1e-5), attempt
    finally:
        server.stop()


def test_replay_draws_the_parents_queries_but_never_this_runs_and_says_why_when_it_cannot(tmp_path: Path) -> None:
    from rankwise.registry import ModelCard, TrainingData
    from rankwise.training.replay import choose_replay

    dataset = _beir(tmp_path / "a", SWAPPED)
    card = ModelCard(training_data=TrainingData(dataset=str(dataset), split="train"))
    known = {"pg-rotate", "churn-q4", "refund-annual", "mfa-contractor"}
    chosen = choose_replay(card, 10, exclude={QUERIES["q1"]}, known_documents=known, seed=0)
    assert chosen.queries is not None and sorted(chosen.queries.qrels) == ["q2", "q3", "q4"]
    assert len(choose_replay(card, 2, exclude=set(), known_documents=known, seed=0).queries.qrels) == 2
    moved = choose_replay(ModelCard(training_data=TrainingData(dataset=str(tmp_path / "gone"), split="train")), 5,
                          exclude=set(), known_documents=known, seed=0)
    assert moved.queries is None and "is not there any more" in moved.reason
    assert moved.to_dict() == {"queries": 0, "source": str(tmp_path / "gone"), "skipped": moved.reason}
    assert "does not say what it was trained on" in choose_replay(ModelCard(), 5, exclude=set(), known_documents=known,
                                                                   seed=0).reason


def test_a_model_is_served_with_the_ordering_its_training_declared_unless_told_otherwise(
        tmp_path: Path, kb_index: Index) -> None:
    import shutil

    from rankwise.rerank.cross_encoder import CrossEncoderReranker
    from rankwise.rerank.declaration import Declaration, write_declaration

    model = build_tiny_cross_encoder(tmp_path / "ce", seed=2)
    assert Pipeline(kb_index, CrossEncoderReranker(model, backend="torch")).rerank_fusion == "none"
    write_declaration(model, Declaration("cross-encoder", fusion="rrf"))
    reranker = CrossEncoderReranker(model, backend="torch")
    declared, fused = Pipeline(kb_index, reranker), Pipeline(kb_index, reranker, rerank_fusion="rrf")
    alone = Pipeline(kb_index, reranker, rerank_fusion="none")
    assert (declared.rerank_fusion, alone.rerank_fusion) == ("rrf", "none")
    query = "refund annual plan"
    assert [r.doc_id for r in declared.search(query).results] == [r.doc_id for r in fused.search(query).results]
    assert [r.score for r in declared.search(query).results] != [r.score for r in alone.search(query).results]
    broken = shutil.copytree(model, tmp_path / "broken")
    (broken / KIND_FILE).write_text('{"kind": "cross-encoder", "fusion": "borda"}')
    with pytest.raises(ModelError, match="declares fusion 'borda'; rankwise knows none, rrf"):
        load_reranker(str(broken), backend="torch")
