"""`rankwise models add` through the CLI: any cross-encoder becomes a version that is promoted and rolled back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_evaluation import kb_goldset

from conftest import build_tiny_cross_encoder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def goldset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gold") / "gold.jsonl"
    kb_goldset().save(path)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)


def test_models_add_then_promote_and_roll_back(tmp_path: Path, kb_index, goldset_file: Path) -> None:
    registry = str(tmp_path / "registry")
    first = build_tiny_cross_encoder(tmp_path / "off-the-shelf", seed=1)
    second = build_tiny_cross_encoder(tmp_path / "hand-made", seed=2)
    added = run("models", "add", str(first), "--name", "ms-marco-like", "--registry", registry)
    assert added.returncode == 0 and "as v1 (candidate)" in " ".join(added.stdout.split()), added.stderr
    evaluated = run("models", "add", str(second), "--registry", registry, "--index", str(kb_index.path),
                    "--goldset", str(goldset_file), "--first-stage", "bm25")
    assert evaluated.returncode == 0 and "bm25+reranker nDCG@10" in " ".join(evaluated.stdout.split()), evaluated.stderr
    card = json.loads(run("models", "show", "v2", "--registry", registry).stdout)
    assert card["source"] == str(second) and set(card["metrics"]["evaluation"]) == {"nDCG@10", "nDCG@5"}
    assert card["metrics"]["queries"] > 0 and card["added_with"] == "rankwise models add"
    assert run("models", "promote", "v1", "--force", "--registry", registry).returncode == 0
    assert run("models", "promote", "v2", "--force", "--registry", registry).returncode == 0
    rolled = run("models", "rollback", "--registry", registry)
    assert rolled.returncode == 0 and "rolled back to v1" in " ".join(rolled.stdout.split())
    listed = run("models", "list", "--registry", registry).stdout
    assert "v1" in listed and "production" in listed
    search = run("search", "reset MFA", "--index", str(kb_index.path), "--first-stage", "bm25", "--reranker",
                 "production", "--registry", registry, "--backend", "torch", "--json")
    assert search.returncode == 0 and json.loads(search.stdout)["provenance"]["reranker"].startswith("v1")


def test_models_add_refuses_what_cannot_rerank(tmp_path: Path) -> None:
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    result = run("models", "add", str(not_a_model), "--registry", str(tmp_path / "registry"))
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert not (tmp_path / "registry" / "versions").exists() or not any((tmp_path / "registry" / "versions").iterdir())


def test_train_from_a_goldset_made_by_label_import(tmp_path: Path, kb_index) -> None:
    """Two annotators' sheets → label-import → train --goldset: judged negatives are trained on as negatives."""
    import csv

    from test_evaluation import KB_QUERIES

    from rankwise.evaluation.labeling import SHEET_COLUMNS
    from rankwise.registry import Registry
    from rankwise.training.data import JudgedQueries
    from rankwise.training.negatives import mine_groups

    sheets = []
    for annotator in ("alice", "bob"):
        path = tmp_path / f"{annotator}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=SHEET_COLUMNS)
            writer.writeheader()
            for qid, (text, docs) in KB_QUERIES.items():
                for rank, (doc, label) in enumerate(docs.items(), start=1):
                    writer.writerow({"query_id": qid, "query": text, "rank": rank, "document_id": doc, "title": "",
                                     "snippet": "", "label": label, "annotator": annotator, "notes": ""})
        sheets.append(str(path))
    gold = tmp_path / "gold.jsonl"
    merged = run("label-import", *sheets, "--out", str(gold))
    assert merged.returncode == 0, merged.stderr
    from rankwise.evaluation.goldset import GoldSet

    judged = JudgedQueries.from_goldset(GoldSet.load(gold), known_documents=kb_index.passage_doc_ids)
    groups = mine_groups(kb_index, judged.queries, judged.qrels, mix={"bm25": 2, "random": 2}, seed=0)
    refund = next(g for g in groups if g.query_id == "q-refund")
    assert "refund-monthly" in refund.negative_ids, "the judged-irrelevant document is a negative"
    assert "refund-annual" not in refund.negative_ids  # the judged positive never is

    base = build_tiny_cross_encoder(tmp_path / "base", seed=1)
    trained = run("train", "--index", str(kb_index.path), "--goldset", str(gold), "--base-model", str(base),
                  "--architecture", "cross-encoder", "--no-residual", "--loss", "softmax", "--negatives", "bm25:2,random:2", "--validation-fraction", "0.2",
                  "--max-steps", "4", "--batch-size", "2", "--max-length", "64", "--eval-steps", "2",
                  "--output", str(tmp_path / "run"), "--registry", str(tmp_path / "registry"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    card = Registry(tmp_path / "registry").get("candidate").card
    assert card.training_data is not None and card.training_data.goldset == str(gold)
    assert card.training is not None and card.training["steps"] == 4
    assert len(card.query_digests) == len(KB_QUERIES)
    # evaluating (or gating) the model on the queries it was trained on: a warning, or with --strict a refusal
    common = ("--index", str(kb_index.path), "--goldset", str(gold), "--first-stage", "bm25", "--baseline", "bm25",
              "--reranker", "candidate", "--registry", str(tmp_path / "registry"), "--backend", "torch")
    leaked = run("eval", *common)
    assert leaked.returncode == 0 and f"{len(KB_QUERIES)} of {len(KB_QUERIES)} gold-set queries were in v1's training" \
        in " ".join(leaked.stderr.split()), leaked.stderr
    refused = run("eval", *common, "--strict")
    assert refused.returncode == 2 and "were in v1's training data" in refused.stderr and "Traceback" not in refused.stderr
    both = run("train", "--index", str(kb_index.path), "--goldset", str(gold), "--dataset", str(tmp_path),
               "--registry", str(tmp_path / "registry"))
    assert both.returncode == 2 and "exactly one of --dataset" in both.stderr


def test_leakage_is_found_whatever_the_case_and_spacing() -> None:
    from rankwise.errors import QueryError
    from rankwise.registry import ModelCard, TrainingData
    from rankwise.training.leakage import find_leakage, guard, query_digests

    card = ModelCard(training_data=TrainingData(query_digests=query_digests(["How are annual plans refunded",
                                                                             "reset MFA"])))
    leak = find_leakage("v3", card, {"a": "how are  annual plans refunded ", "b": "a new question"})
    assert leak is not None and (leak.overlapping, leak.total, leak.examples) == (1, 2, ("a",))
    assert "1 of 2 gold-set queries were in v3's training data" in (guard(leak, strict=False) or "")
    with pytest.raises(QueryError, match="never saw"):
        guard(leak, strict=True)
    assert find_leakage("v3", card, {"b": "a new question"}) is None
    older = ModelCard.from_dict({"training_data": {}})  # older cards: nothing to check
    assert find_leakage("v3", older, {"a": "reset MFA"}) is None
