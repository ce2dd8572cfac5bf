"""Recipe search for the demo reranker on the near-miss knowledge base, judged on train queries only.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_kb_reranker.py [--steps 100] [--max-length 64]
        [--train-seconds 110] [--no-titles] [--negatives bm25:2,dense:3,hybrid:2] [--final] [--out NAME]

Trains a cross-encoder the way ``make demo`` would (softmax loss over 1 positive + 7 mined negatives, the
bundled MiniLM backbone, title pseudo-queries) on 80% of ``demo_kb``'s train queries, and reports
nDCG@5 of dense, hybrid, and both reranked (RRF-fused and not) on the other 20% — the only numbers a
recipe may be chosen by. ``--final`` also evaluates the frozen test queries once the recipe is fixed (the
test split must never drive a choice). Writes ``benchmarks/results/demo_kb_reranker.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BENCH_CACHE, cpu_description, print_cpu, setup_environment, write_json

from rankwise import Index
from rankwise.corpus import DEMO_KB
from rankwise.corpus.beir import load_qrels, load_queries
from rankwise.evaluation.compare import evaluate
from rankwise.evaluation.goldset import GoldSet, PreparedGoldSet
from rankwise.rerank.cross_encoder import CrossEncoderReranker
from rankwise.training.data import JudgedQueries
from rankwise.training.finetune import TrainingConfig, train_cross_encoder
from rankwise.training.negatives import mine_groups, parse_negative_mix, title_groups

setup_environment()


def subset(gold: PreparedGoldSet, keep: set[str]) -> PreparedGoldSet:
    ids = [q for q in gold.queries if q in keep]
    return PreparedGoldSet(gold.name, {q: gold.queries[q] for q in ids}, {q: gold.qrels[q] for q in ids},
                           {**gold.counts, "evaluated_queries": len(ids)})


def scores(index: Index, gold: PreparedGoldSet, reranker: CrossEncoderReranker) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for fusion in ("none", "rrf"):
        report = evaluate(index, gold, first_stages=["dense", "hybrid"], reranker=reranker, baseline="dense",
                          candidate="hybrid+reranker", rerank_k=20, rerank_fusion=fusion, metrics=["nDCG@5"])
        out[fusion] = {s: round(report.scores[s]["nDCG@5"], 4) for s in report.systems}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--train-seconds", type=float, default=None)
    parser.add_argument("--no-titles", action="store_true", help="leave out the title pseudo-queries")
    parser.add_argument("--negatives", default="bm25:2,dense:3,hybrid:2")
    parser.add_argument("--final", action="store_true", help="also evaluate the frozen test queries")
    parser.add_argument("--out", default="demo_kb_reranker.json")
    args = parser.parse_args()
    cpu = cpu_description()
    print_cpu(cpu)
    index = Index.build(DEMO_KB, BENCH_CACHE / "demo_kb")  # incremental: an unchanged KB is not re-embedded
    judged = JudgedQueries(load_queries(DEMO_KB), load_qrels(DEMO_KB, "train"))
    train_part, val_part = judged.split(0.2, seed=13)
    mix = parse_negative_mix(args.negatives)
    groups = mine_groups(index, train_part.queries, train_part.qrels, mix=mix, depth=20, rounds=2, seed=13)
    if not args.no_titles:
        groups += title_groups(index, mix=mix, depth=20, seed=13)
    val_groups = mine_groups(index, val_part.queries, val_part.qrels, mix={"hybrid": 20}, depth=20, seed=13)
    config = TrainingConfig(loss="softmax", epochs=100, max_steps=args.steps, batch_size=4, learning_rate=2e-4,
                            warmup_ratio=0.05, max_length=args.max_length, eval_steps=10, patience=4, seed=13,
                            time_budget_s=args.train_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        result = train_cross_encoder(groups, val_groups, config, Path(tmp), show_progress=False)
        reranker = CrossEncoderReranker(result.model_dir)
        known = set(index.passage_doc_ids)
        train_gold = GoldSet.from_beir(DEMO_KB, "train").prepare(known_documents=known)
        started = time.perf_counter()
        payload: dict[str, Any] = {
            "cpu": cpu, "settings": vars(args), "steps": result.steps, "train_seconds": round(result.train_seconds, 1),
            "validation_queries": len(val_part.queries),
            "validation": scores(index, subset(train_gold, set(val_part.queries)), reranker)}
        if args.final:
            payload["test"] = scores(index, GoldSet.from_beir(DEMO_KB, "test").prepare(known_documents=known),
                                     reranker)
    payload["evaluate_seconds"] = round(time.perf_counter() - started, 1)
    for split in ("validation", "test"):
        for fusion, row in payload.get(split, {}).items():
            print(f"{split:<10} fusion={fusion:<4} " + " · ".join(f"{s} {v:.3f}" for s, v in row.items()))
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
