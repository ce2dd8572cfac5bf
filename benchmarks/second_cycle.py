"""Does a second training cycle, continued from the first model on new judged queries, beat the first model?

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/second_cycle.py --domain demo_kb [--budget-s 600]

The loop as an operator runs it, through the CLI: the domain's training queries are split in two seeded
halves. Cycle 1 is ``rankwise train`` on half A (the default recipe) registered as v1 and promoted; cycle 2
is ``rankwise train --base-model production`` on half B — new judged queries, with half as many of A's
replayed — registered as v2. Both are then evaluated as served on the domain's held-out split(s) with the
first stage, and v2 is compared with v1 on the same queries (paired randomization test). The first
cycle's model is what a second cycle must beat; a backbone restart on B alone is the other baseline.

Writes ``benchmarks/results/second_cycle_<domain>.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from typing import Any

from common import BENCH_CACHE, cpu_description, setup_environment, write_json
from default_recipe import DOMAINS
from rich.console import Console

METRICS = ["nDCG@5", "nDCG@10"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", choices=sorted(DOMAINS), required=True)
    parser.add_argument("--budget-s", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    setup_environment()
    console = Console(stderr=True)

    from rankwise.evaluation import GoldSet, evaluate
    from rankwise.evaluation.significance import randomization_test
    from rankwise.index import Index
    from rankwise.registry import Registry
    from rankwise.rerank.loading import LoadOptions, load_reranker

    source, train_split, evaluations = DOMAINS[args.domain]
    index_dir = BENCH_CACHE / "indexes" / args.domain
    index = Index(index_dir) if (index_dir / "manifest.json").is_file() else Index.build(source, index_dir)
    work = BENCH_CACHE / "second-cycle" / args.domain
    work.mkdir(parents=True, exist_ok=True)
    gold = GoldSet.from_beir(source, train_split)
    qids = sorted(gold.queries)
    random.Random(args.seed).shuffle(qids)
    halves = {"a": set(qids[: len(qids) // 2]), "b": set(qids[len(qids) // 2:])}
    for name, ids in halves.items():
        GoldSet([j for j in gold.judgements if j.query_id in ids], name=name).save(work / f"{name}.jsonl")
    registry = work / "registry"

    def rankwise(*cli: str) -> None:
        cmd = [sys.executable, "-m", "rankwise", *cli]
        console.print(" ".join(cmd[2:]), highlight=False)
        done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, text=True, capture_output=True,
                              check=False)
        console.print(done.stdout[-1500:], highlight=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cli[:2])} failed:\n{done.stderr[-3000:]}")

    common = ["--index", str(index_dir), "--train-seconds", str(args.budget_s), "--seed", str(args.seed),
              "--registry", str(registry)]
    reg = Registry(registry)
    if "v1" not in [v.version for v in reg.versions()]:
        rankwise("train", "--goldset", str(work / "a.jsonl"), "--output", str(work / "cycle1"), *common)
        rankwise("models", "promote", "v1", "--force", "--registry", str(registry))
    if "v2" not in [v.version for v in Registry(registry).versions()]:
        rankwise("train", "--goldset", str(work / "b.jsonl"), "--base-model", "production",
                 "--output", str(work / "cycle2"), *common)
    if not (work / "restart" / "final").is_dir():
        rankwise("train", "--goldset", str(work / "b.jsonl"), "--output", str(work / "restart"), *common,
                 "--no-register")
    models = {"v1 (cycle 1, half A)": "v1", "v2 (continued on half B)": "v2",
              "restart (half B only)": str(work / "restart" / "final")}
    splits: dict[str, Any] = {}
    for label, qrels_dir, split in evaluations:
        prepared = GoldSet.from_beir(qrels_dir, split).prepare(known_documents=set(index.passage_doc_ids))
        per_query: dict[str, dict[str, dict[str, float]]] = {}
        row: dict[str, Any] = {"queries": len(prepared.queries)}
        for name, spec in models.items():
            reranker = load_reranker(spec, LoadOptions(registry=registry))
            report = evaluate(index, prepared, first_stages=["hybrid"], reranker=reranker, metrics=METRICS,
                              baseline="hybrid", n_resamples=10_000)
            row.setdefault("hybrid", {m: round(report.scores["hybrid"][m], 4) for m in METRICS})
            row[name] = {m: round(report.scores["hybrid+reranker"][m], 4) for m in METRICS}
            per_query[name] = report.per_query["hybrid+reranker"]
        ids = sorted(per_query["v1 (cycle 1, half A)"]["nDCG@10"])
        for other in ("v1 (cycle 1, half A)", "restart (half B only)"):
            row[f"p v2 vs {other.split(' ')[0]}"] = {
                m: round(randomization_test([per_query["v2 (continued on half B)"][m][q] for q in ids],
                                            [per_query[other][m][q] for q in ids], n_resamples=10_000), 5)
                for m in METRICS}
        splits[label] = row
        console.print(f"{label}: {row}", highlight=False)
    write_json(f"second_cycle_{args.domain}.json", {
        "domain": args.domain, "cpu": cpu_description(), "budget_s": args.budget_s, "seed": args.seed,
        "halves": {k: len(v) for k, v in halves.items()}, "splits": splits,
        "cards": {v.version: {"recipe": v.card.recipe, "continued_from": v.card.continued_from,
                              "training": v.card.training}
                  for v in Registry(registry).versions()},
    })


if __name__ == "__main__":
    main()
