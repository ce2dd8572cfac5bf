"""The promotion gate on real (tiny) models: a trained candidate beats a random production model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_training import QRELS, QUERIES, write_beir_dataset

from conftest import build_tiny_cross_encoder
from rankwise import Index
from rankwise.evaluation.compare import evaluate
from rankwise.evaluation.errors import EvaluationError
from rankwise.evaluation.gates import GateEvidence
from rankwise.evaluation.goldset import GoldSet, Judgement
from rankwise.options import PipelineSettings
from rankwise.registry import Registry
from rankwise.rerank.loading import load_reranker
from rankwise.training.finetune import TrainingConfig, train_cross_encoder
from rankwise.training.negatives import mine_groups
from rankwise.training.promotion import check_promotion

#: five judged queries: the gain and latency rules alone (a real gate needs 30 queries and significance)
FEW = GateEvidence(min_queries=5, max_p=1)


@pytest.fixture(scope="module")
def registry_with_models(tmp_path_factory: pytest.TempPathFactory, kb_index: Index) -> Registry:
    root = tmp_path_factory.mktemp("promotion")
    registry = Registry(root / "registry")
    registry.register(build_tiny_cross_encoder(root / "random", seed=7), {"note": "untrained"})  # v1
    groups = mine_groups(kb_index, QUERIES, QRELS, mix={"bm25": 2, "random": 3}, seed=0)
    # 3e-3, not 1e-2: a rate at the edge of stability trains well under one CPU kind's numerics only
    trained = train_cross_encoder(groups, [], TrainingConfig(
        base_model=str(build_tiny_cross_encoder(root / "base", seed=1)), max_steps=100, batch_size=8,
        learning_rate=3e-3, max_length=64, eval_steps=100, warmup_ratio=0.0, seed=0), root / "run", show_progress=False)
    registry.register(trained.model_dir, {"note": "trained"})  # v2
    return registry


@pytest.fixture(scope="module")
def gold(kb_index: Index):
    judgements = [Judgement(q, QUERIES[q], d, label) for q, docs in QRELS.items() for d, label in docs.items()]
    return GoldSet(judgements, name="kb").prepare(known_documents=set(kb_index.passage_doc_ids))


def test_gate_refuses_a_worse_candidate_and_accepts_a_better_one(registry_with_models: Registry, kb_index: Index,
                                                                 gold) -> None:
    reg = registry_with_models
    reg.promote("v2", forced=True)
    refused = check_promotion(reg, kb_index, gold, candidate="v1", first_stage="bm25", metric="nDCG@5", evidence=FEW)
    assert not refused.passed and "does not clear" in refused.reasons[0]
    assert refused.against == "v2" and refused.candidate_value < refused.baseline_value
    reg.promote("v1", forced=True)
    # millisecond latencies of tiny models are noise on a shared CI machine: this case checks the metric rule
    accepted = check_promotion(reg, kb_index, gold, candidate="v2", first_stage="bm25", metric="nDCG@5",
                               max_latency_regression=1000.0, evidence=FEW)
    assert accepted.passed, accepted.reasons
    assert accepted.relative_gain > 0.05 and accepted.against == "v1"
    # ...and this one the latency rule: with no regression allowed at all, any positive latency is refused
    slow = check_promotion(reg, kb_index, gold, candidate="v2", first_stage="bm25", metric="nDCG@5",
                           max_latency_regression=-1.0, evidence=FEW)
    assert not slow.passed and any("latency" in r for r in slow.reasons)
    # the gate judges the ordering production will serve: fused with the first stage, recorded in the decision
    fused = check_promotion(reg, kb_index, gold, candidate="v2", first_stage="bm25", metric="nDCG@5",
                            max_latency_regression=1000.0, rerank_k=4, rerank_fusion="rrf", evidence=FEW)
    assert fused.to_dict()["rerank_fusion"] == "rrf" and fused.rerank_k == 4
    direct = evaluate(kb_index, gold, first_stages=["bm25"], reranker=load_reranker("v2", registry=reg),
                      metrics=["nDCG@5"], baseline="bm25", settings=PipelineSettings(rerank_k=4, rerank_fusion="rrf"), n_resamples=10)
    assert fused.candidate_value == pytest.approx(direct.scores["bm25+reranker"]["nDCG@5"])


def test_a_gain_on_too_few_queries_or_without_significance_is_refused(registry_with_models: Registry,
                                                                      kb_index: Index, gold) -> None:
    reg = registry_with_models
    reg.promote("v1", forced=True)
    with pytest.raises(EvaluationError, match="at least 30 judged queries and this gold set has 5"):
        check_promotion(reg, kb_index, gold, candidate="v2", first_stage="bm25")
    # v2 beats v1 by far more than +5%: still, five queries cannot make that significant
    # (the exact randomization test's smallest two-sided p over 5 pairs is 2/32)
    noise = check_promotion(reg, kb_index, gold, candidate="v2", first_stage="bm25", max_latency_regression=1000.0,
                            evidence=GateEvidence(min_queries=5))
    assert noise.relative_gain > 0.05 and noise.p_value >= 0.0625 and not noise.passed
    assert noise.reasons == [(f"nDCG@5 gain {noise.relative_gain:+.1%} vs v1 is not significant: randomization "
                              f"p = {noise.p_value:.3g} over 5 queries (required < 0.05)")]


def test_promote_cli_records_the_gate_and_exits_nonzero_when_refused(registry_with_models: Registry,
                                                                     kb_index: Index, tmp_path: Path) -> None:
    reg = registry_with_models
    reg.promote("v2", forced=True)
    dataset = write_beir_dataset(tmp_path / "ds", "test")
    cmd = [sys.executable, "-m", "rankwise", "models", "promote", "v1", "--index", str(kb_index.path),
           "--dataset", str(dataset), "--first-stage", "bm25", "--registry", str(reg.root)]
    too_few = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert too_few.returncode == 2 and "at least 30 judged queries" in too_few.stderr
    assert len(too_few.stderr.strip().splitlines()) == 1 and "Traceback" not in too_few.stderr
    cmd += ["--min-queries", "5", "--max-p", "1"]
    refused = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert refused.returncode == 1 and "refused" in refused.stdout
    assert reg.aliases()["production"] == "v2", "a refused promotion changes nothing"
    forced = subprocess.run([*cmd[:6], "--force", "--registry", str(reg.root)], capture_output=True, text=True, check=False)
    assert forced.returncode == 0, forced.stderr
    assert reg.aliases()["production"] == "v1" and reg.history()[-1]["forced"] is True
    assert reg.history()[-1]["by"].startswith("cli")  # who changed production, as the console records its key
