"""Train a reranker on a BEIR train split with rankwise's own pipeline, then measure what it buys.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_beir.py --dataset scifact [--run-dir DIR]
        [--first-stages bm25,hybrid] [--eval-backend onnx] [--limit-queries N] [...training options]

Phases, each resumable (a session cut off mid-run continues where it stopped when started again with the
same arguments):

1. **mine**: hard-negative groups from the index (``--negatives``, ``--rounds`` fresh samples per query);
   a seeded share of the training queries is held out for validation (early stopping on nDCG@10 over the
   hybrid top-30 — realistic candidate lists, never the evaluation split).
2. **train**: ``rankwise.training.train_cross_encoder``; checkpoints under ``<run-dir>/checkpoints`` are
   resumed automatically; wall time is summed over sessions in ``<run-dir>/progress.json``.
3. **evaluate**: ``rankwise.evaluation.evaluate`` on the evaluation split — each first stage's top 100 vs
   the same list reranked, ordered by the reranker alone (``+reranker``) and fused with the first stage's
   ranks (``+reranker+rrf``, ``Pipeline(rerank_fusion="rrf")``) — with a paired randomization test each. Reranker scores persist in
   ``<run-dir>/scores-<backend>.jsonl`` so an interrupted evaluation resumes instead of rescoring.
4. **latency**: rerank 100 candidates for ``--latency-queries`` queries without the score cache.

Writes ``benchmarks/results/train_<dataset>.json``. SciFact check: a first stage's top 100 reranked (either
ordering; both are reported) reaches nDCG@10 ≥ 0.70 (published BM25 + ms-marco-MiniLM-L-6-v2: 0.688) and
beats that first stage with a significant paired test (p < 0.05); exit 1 when none does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from common import BENCH_CACHE, setup_environment, start_run, write_json
from rich.console import Console

from rankwise.options import PipelineSettings
from rankwise.rerank.base import RerankScores, logits_to_scores

#: dataset → (train split, evaluation split, validation source); NFCorpus has no test qrels here, so its
#: dev split is both where early stopping looks and what is reported (said so in the results)
SPLITS = {"scifact": ("train", "test", "train"), "nfcorpus": ("train", "dev", "dev")}
TARGET_NDCG10 = 0.70
PUBLISHED = "BM25 + cross-encoder/ms-marco-MiniLM-L-6-v2 on SciFact: nDCG@10 0.688 (BEIR leaderboard)"


class PersistentScores:
    """A reranker wrapper that remembers raw logits on disk, keyed by (query, passage) digest.

    Why: scoring a BEIR test split takes tens of minutes on two cores; a session that ends mid-evaluation
    must not start over, and two first stages share most of their candidates. Scores depend only on the
    model, its backend and the text pair, all fixed by the file name and the key.
    """

    def __init__(self, reranker: Any, path: Path) -> None:
        self.reranker = reranker
        self.name = reranker.name
        self.weights_sha256 = reranker.weights_sha256
        self.path = path
        self.scores: dict[str, float] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    key, value = json.loads(line)
                    self.scores[key] = value

    @staticmethod
    def key(query: str, text: str) -> str:
        return hashlib.sha1(f"{query}\x00{text}".encode()).hexdigest()

    def score(self, query: str, texts: Sequence[str]) -> RerankScores:
        keys = [self.key(query, t) for t in texts]
        missing = [i for i, k in enumerate(keys) if k not in self.scores]
        if missing:
            fresh = self.reranker.score(query, [texts[i] for i in missing]).raw
            with self.path.open("a") as fh:
                for i, value in zip(missing, fresh.tolist(), strict=True):
                    self.scores[keys[i]] = value
                    fh.write(json.dumps([keys[i], value]) + "\n")
        raw, calibrated = logits_to_scores(np.array([self.scores[k] for k in keys], dtype=np.float32))
        return RerankScores(raw=raw, calibrated=calibrated)


class RunState:
    """``<run-dir>/progress.json``: which phases finished and the wall time each took, over sessions."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "progress.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add_seconds(self, phase: str, seconds: float) -> None:
        self.data.setdefault("seconds", {})
        self.data["seconds"][phase] = round(self.data["seconds"].get(phase, 0.0) + seconds, 1)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2))


def mine(args: argparse.Namespace, index: Any, console: Console) -> tuple[list[Any], list[Any], dict[str, Any]]:
    from rankwise.corpus.beir import load_qrels, load_queries
    from rankwise.training.data import JudgedQueries, group_stats
    from rankwise.training.negatives import mine_groups, parse_negative_mix

    train_split, _, val_source = SPLITS[args.dataset]
    queries = load_queries(args.data / args.dataset)
    judged = JudgedQueries(queries, load_qrels(args.data / args.dataset, train_split))
    if val_source == train_split:
        train_part, val_part = judged.split(args.validation_fraction, args.seed)
    else:  # tune on a separate split (NFCorpus dev)
        train_part = judged
        val_part = JudgedQueries(queries, load_qrels(args.data / args.dataset, val_source))
        _, val_part = val_part.split(args.validation_fraction, args.seed)
    started = time.perf_counter()
    train = mine_groups(index, train_part.queries, train_part.qrels, mix=parse_negative_mix(args.negatives),
                        depth=args.depth, rounds=args.rounds, max_positives=args.max_positives, seed=args.seed)
    val = mine_groups(index, val_part.queries, val_part.qrels, mix={"hybrid": args.depth}, depth=args.depth,
                      seed=args.seed)
    info = {"train": dict(group_stats(train)), "validation": dict(group_stats(val)),
            "train_fingerprint": judged.fingerprint, "negatives": args.negatives, "rounds": args.rounds,
            "depth": args.depth, "max_positives": args.max_positives, "mining_seconds": round(time.perf_counter() - started, 1)}
    console.print(f"mined {info}")
    return train, val, info


def evaluate_model(args: argparse.Namespace, index: Any, model_dir: Path, console: Console) -> dict[str, Any]:
    from rankwise.evaluation import GoldSet, evaluate
    from rankwise.evaluation.significance import paired_t_test, randomization_test
    from rankwise.rerank.cross_encoder import CrossEncoderReranker

    _, eval_split, _ = SPLITS[args.dataset]
    reranker = CrossEncoderReranker(model_dir, backend=args.eval_backend, max_length=args.eval_max_length,
                                    threads=args.threads)
    cached = PersistentScores(reranker, args.run_dir / f"scores-{args.eval_backend}-{reranker.max_length}.jsonl")
    gold = GoldSet.from_beir(args.data / args.dataset, eval_split).prepare(known_documents=set(index.passage_doc_ids))
    if args.limit_queries:
        gold = gold.limit(args.limit_queries)
    stages = [s.strip() for s in args.first_stages.split(",") if s.strip()]
    started = time.perf_counter()
    last = [time.perf_counter()]

    def progress(system: str, done: int, total: int) -> None:
        if done % 10 == 0 or done == total:
            rate = (time.perf_counter() - last[0]) / 10
            last[0] = time.perf_counter()
            console.print(f"  {system}: {done}/{total} queries ({rate:.1f} s/query)", highlight=False)

    systems: dict[str, dict[str, float]] = {}
    tests = {}
    for fusion in ("none", "rrf"):  # the second pass reuses every score of the first (PersistentScores)
        report = evaluate(index, gold, first_stages=stages, reranker=cached, metrics=["nDCG@10", "R@100", "nDCG@5"],
                          baseline=stages[0], settings=PipelineSettings(rerank_fusion=fusion), progress=progress)
        suffix = "" if fusion == "none" else "+rrf"
        for system in report.systems:
            if fusion == "none" or system.endswith("+reranker"):
                systems[system + (suffix if system.endswith("+reranker") else "")] = {
                    m: round(v, 4) for m, v in report.scores[system].items()}
        for stage in stages:
            a = report.per_query[stage + "+reranker"]["nDCG@10"]
            b = report.per_query[stage]["nDCG@10"]
            qids = sorted(a)
            xs, ys = [a[q] for q in qids], [b[q] for q in qids]
            tests[f"{stage}+reranker{suffix}"] = {
                "vs": stage, "delta": round(float(np.mean(xs) - np.mean(ys)), 4),
                "p_randomization": round(randomization_test(xs, ys, seed=args.seed), 5),
                "p_t_test": round(paired_t_test(xs, ys), 5),
                "wins": sum(x > y for x, y in zip(xs, ys, strict=True)),
                "losses": sum(x < y for x, y in zip(xs, ys, strict=True))}
    return {"split": eval_split, "queries": gold.counts["evaluated_queries"], "systems": systems,
            "reranked_vs_first_stage": tests, "backend": args.eval_backend, "max_length": reranker.max_length,
            "seconds": round(time.perf_counter() - started, 1)}


def latency(args: argparse.Namespace, index: Any, model_dir: Path) -> dict[str, Any]:
    """Median / p95 ms to rerank one query's BM25 top 100 (no cache), per backend."""
    from rankwise.corpus.beir import load_queries
    from rankwise.pipeline import latency_percentiles
    from rankwise.rerank.cross_encoder import CrossEncoderReranker
    from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings

    stage = FirstStage(index, FirstStageSettings(method="bm25"))
    queries = list(load_queries(args.data / args.dataset).values())[: args.latency_queries]
    lists = [(q, [c.passage.full_text for c in stage.retrieve(q, 100)]) for q in queries]
    out = {}
    for backend in args.latency_backends.split(","):
        reranker = CrossEncoderReranker(model_dir, backend=backend, max_length=args.eval_max_length,
                                        threads=args.threads)
        reranker.score(lists[0][0], lists[0][1][:4])
        ms = []
        for q, texts in lists:
            started = time.perf_counter()
            reranker.score(q, texts)
            ms.append((time.perf_counter() - started) * 1000)
        out[backend] = {k: round(v, 1) for k, v in latency_percentiles(ms).items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SPLITS), default="scifact")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/beir")
    parser.add_argument("--cache", type=Path, default=BENCH_CACHE,
                        help="where indexes live (<cache>/<dataset>, built by benchmarks/beir.py or rankwise index)")
    parser.add_argument("--run-dir", type=Path, default=None, help="default: <cache>/runs/<dataset>-reranker")
    parser.add_argument("--base-model", default="minilm")
    parser.add_argument("--loss", default="softmax")
    parser.add_argument("--negatives", default="bm25:3,dense:2,random:2")
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--max-positives", type=int, default=4)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--batch-size", type=int, default=4, help="groups per step (pairs for bce)")
    parser.add_argument("--lr", type=float, default=6e-5)
    parser.add_argument("--max-length", type=int, default=128, help="training tokens per pair")
    parser.add_argument("--eval-steps", type=int, default=150)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--first-stages", default="bm25,hybrid")
    parser.add_argument("--eval-backend", default="onnx", help="onnx: fused fp32, same scores as torch, faster")
    parser.add_argument("--eval-max-length", type=int, default=None,
                        help="reranker window (default: the trained --max-length; longer passages become windows)")
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--latency-queries", type=int, default=10)
    parser.add_argument("--latency-backends", default="torch,torch-bf16,onnx,onnx-int8")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.run_dir = args.run_dir or args.cache / "runs" / f"{args.dataset}-reranker"
    setup_environment()
    console = Console()
    args.threads, cpu = start_run(args.threads)
    from rankwise.index import Index
    from rankwise.training.finetune import TrainingConfig, train_cross_encoder

    index_dir = args.cache / args.dataset
    if not (index_dir / "manifest.json").is_file():
        console.print(f"[red]no index at {index_dir}[/]; build it first: benchmarks/beir.py --datasets "
                      f"{args.dataset}:{SPLITS[args.dataset][1]} (or rankwise index {args.data / args.dataset} "
                      f"--index {index_dir})")
        return 2
    index = Index(index_dir)
    state = RunState(args.run_dir)
    config = TrainingConfig(base_model=args.base_model, loss=args.loss, epochs=args.epochs, max_steps=args.max_steps,
                            batch_size=args.batch_size, learning_rate=args.lr, max_length=args.max_length,
                            seed=args.seed, eval_steps=args.eval_steps, layers=args.layers, threads=args.threads)
    model_dir = args.run_dir / "final"
    if "training" not in state.data:
        train, val, state.data["mining"] = mine(args, index, console)
        started = time.perf_counter()
        try:
            result = train_cross_encoder(train, val, config, args.run_dir)
        finally:
            state.add_seconds("train", time.perf_counter() - started)
        state.data["training"] = result.summary() | {"validation_history": result.validation_history}
        state.save()
    console.print(f"model: {model_dir} · training {state.data['seconds']['train']:.0f} s over all sessions")
    state.data["evaluation"] = evaluate_model(args, index, model_dir, console)
    state.data["latency_ms_per_100_candidates"] = latency(args, index, model_dir)
    state.save()
    evaluation = state.data["evaluation"]
    checks = []
    if args.dataset == "scifact" and not args.limit_queries:
        for system, test in evaluation["reranked_vs_first_stage"].items():
            value = evaluation["systems"][system]["nDCG@10"]
            checks.append({"system": system, "nDCG@10": value, "target": TARGET_NDCG10,
                           "p_randomization": test["p_randomization"],
                           "passed": value >= TARGET_NDCG10 and test["delta"] > 0 and test["p_randomization"] < 0.05})
    payload = {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "dataset": args.dataset,
               "cpu": cpu, "published_reference": PUBLISHED, "arguments": {k: str(v) for k, v in vars(args).items()},
               **state.data, "checks": checks}
    write_json(args.out.name if args.out else f"train_{args.dataset}.json", payload)
    for system, scores in evaluation["systems"].items():
        console.print(f"{system:>18}  " + "  ".join(f"{m} {v:.4f}" for m, v in scores.items()), highlight=False)
    for system, test in evaluation["reranked_vs_first_stage"].items():
        console.print(f"{system} vs {test['vs']}: Δ nDCG@10 {test['delta']:+.4f} · p {test['p_randomization']:.4f}"
                      f" · {test['wins']} wins / {test['losses']} losses", highlight=False)
    console.print(f"latency (ms per 100 candidates): {state.data['latency_ms_per_100_candidates']}")
    return 0 if any(c["passed"] for c in checks) or not checks else 1


if __name__ == "__main__":
    sys.exit(main())
