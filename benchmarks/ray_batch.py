"""Ray for batch work and serving: local vs a local Ray cluster (``ray.init(num_cpus=2)``) with 1 and 2 workers.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_batch.py [--data ../shared/data/beir/scifact]
        [--queries 300] [--rerank-k 100] [--requests 48] [--clients 4] [--out ray_batch.json]

One run, three parts, each variant measured in the same run on the same data:

1. **Indexing** the SciFact corpus (every passage embedded, ``onnx`` backend so all variants compute the
   same vectors): local, Ray with 1 worker, Ray with 2. Wall seconds of the embedding, passages/s, and
   whether the vectors equal the local build's.
2. **Evaluation** of ``--queries`` SciFact test queries, hybrid first stage + a BERT-tiny-shaped
   cross-encoder over ``--rerank-k`` candidates (random weights: the cost of a small reranker, meaningless
   scores): local, Ray with 1 and 2 workers; wall seconds and whether the rankings are equal.
3. **Serving** ``/v1/rerank`` (``--requests`` requests of 20 SciFact abstracts from ``--clients`` clients): the
   plain server vs ``serve --ray local --replicas 1`` and ``--replicas 2``; requests/s and p50/p95.

On a 2-core machine Ray cannot be faster than local — there is nothing to spread over — so the numbers
measure its overhead: what a cluster's extra cores have to pay back. Writes ``benchmarks/results/OUT``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import DEFAULT_SCIFACT, cpu_description, print_cpu, setup_environment, write_json
from serve_load import small_model

from rankwise.pipeline import latency_percentiles
from rankwise.serving.readiness import ServeProcess

setup_environment()


def indexing(data: Path, work: Path) -> dict[str, Any]:
    from rankwise.index import Index
    from rankwise.index.dense import Embedder
    from rankwise.index.ray_embedding import embed_with_ray

    embedder = Embedder(backend="onnx")
    rows: dict[str, Any] = {}
    reference = None
    for name, embed in (("local", None), ("ray-1", embed_with_ray("local", workers=1)),
                        ("ray-2", embed_with_ray("local", workers=2))):
        start = time.perf_counter()
        index = Index.build(data / "corpus.jsonl", work / name, embedder=embedder, reuse={}, embed=embed)
        wall = time.perf_counter() - start
        vectors = index.vectors.vectors
        reference = vectors if reference is None else reference
        stats = index.manifest.stats
        rows[name] = {"build_seconds": round(wall, 1), "embed_seconds": stats["embed_seconds"],
                      "passages": index.manifest.num_passages,
                      "passages_per_second": round(index.manifest.num_passages / stats["embed_seconds"], 1),
                      "vectors_equal_local": bool(np.array_equal(vectors, reference)),
                      "max_abs_difference": float(np.abs(vectors - reference).max())}
        print(f"indexing {name:6s} embed {stats['embed_seconds']:7.1f} s · "
              f"{rows[name]['passages_per_second']:6.1f} passages/s · equal {rows[name]['vectors_equal_local']} "
              f"(max |Δ| {rows[name]['max_abs_difference']:.1e})")
    return rows


def evaluation(data: Path, index_dir: Path, model: Path, queries: int, rerank_k: int) -> dict[str, Any]:
    from rankwise.evaluation.compare import evaluate
    from rankwise.evaluation.goldset import GoldSet
    from rankwise.evaluation.query_runs import WorkerLoad, run_on_ray
    from rankwise.index import open_index
    from rankwise.options import PipelineSettings
    from rankwise.rerank.loading import LoadOptions, load_reranker

    index = open_index(index_dir)
    gold = GoldSet.from_beir(data, "test").prepare(known_documents=set(index.passage_doc_ids)).limit(queries)
    options = LoadOptions(backend="torch")
    reranker = load_reranker(str(model), options)
    settings = PipelineSettings(rerank_k=rerank_k)
    rows: dict[str, Any] = {}
    reference = None
    for name, workers in (("local", None), ("ray-1", 1), ("ray-2", 2)):
        run = None if workers is None else run_on_ray("local", WorkerLoad(str(index_dir), str(model), options),
                                                      workers=workers)
        start = time.perf_counter()
        report = evaluate(index, gold, first_stages=["hybrid"], reranker=reranker, baseline="hybrid",
                          settings=settings, run_queries=run)
        wall = time.perf_counter() - start
        rankings = report.rankings
        reference = rankings if reference is None else reference
        rows[name] = {"seconds": round(wall, 1), "queries": len(gold.queries),
                      "queries_per_second": round(len(gold.queries) / wall, 2),
                      "rankings_equal_local": rankings == reference,
                      "nDCG@10": round(report.scores["hybrid+reranker"].get("nDCG@10", float("nan")), 4)}
        print(f"evaluation {name:6s} {wall:7.1f} s · {rows[name]['queries_per_second']:5.2f} queries/s · "
              f"equal {rows[name]['rankings_equal_local']}")
    return rows


def serving(data: Path, model: Path, index_dir: Path, requests: int, clients: int, work: Path) -> dict[str, Any]:
    passages = [json.loads(line) for line in (data / "corpus.jsonl").read_text().splitlines()[:400]]
    texts = [(p.get("title", "") + " " + p["text"])[:1000] for p in passages]
    queries = [json.loads(line)["text"] for line in (data / "queries.jsonl").read_text().splitlines()]
    base = ["--index", str(index_dir), "--reranker", str(model), "--backend", "torch", "--audit", "none",
            "--feedback-db", "none", "--rate-limit", "100000", "--burst", "100000"]
    rows: dict[str, Any] = {}
    for name, extra in (("plain", []), ("ray-1", ["--ray", "local", "--replicas", "1"]),
                        ("ray-2", ["--ray", "local", "--replicas", "2"])):
        server = ServeProcess([*base, *extra], work / f"{name}.log", timeout_s=300)
        if server.problem:
            rows[name] = {"error": server.problem}
            continue
        try:
            latencies, statuses, wall = _load(server.url, queries, texts, requests, clients)
        finally:
            server.stop()
        rows[name] = {"requests_per_second": round(requests / wall, 2), "ok": statuses.count(200),
                      **{k: round(v, 1) for k, v in latency_percentiles(latencies).items()}}
        print(f"serving {name:6s} {rows[name]['requests_per_second']:6.2f} requests/s · "
              f"p50 {rows[name].get('p50', 0):7.1f} ms · p95 {rows[name].get('p95', 0):7.1f} ms · ok {rows[name]['ok']}")
    return rows


def _load(url: str, queries: list[str], texts: list[str], requests: int, clients: int
          ) -> tuple[list[float], list[int], float]:
    """``requests`` rerank requests of 20 passages from ``clients`` threads after one warm-up request."""
    latencies: list[float] = []
    statuses: list[int] = []

    def one(i: int) -> None:
        body = {"query": queries[i % len(queries)], "documents": texts[(i * 20) % 380:(i * 20) % 380 + 20]}
        t0 = time.perf_counter()
        statuses.append(httpx.post(f"{url}/v1/rerank", json=body, timeout=120).status_code)
        latencies.append((time.perf_counter() - t0) * 1000)

    one(0)
    latencies.clear()
    statuses.clear()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(1, requests + 1)))
    return latencies, statuses, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_SCIFACT)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rerank-k", type=int, default=100)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", default="ray_batch.json")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        sys.exit(f"no BEIR dataset at {args.data}: pass --data (SciFact from ../shared/data/beir)")
    cpu = cpu_description()
    print_cpu(cpu)
    from rankwise.ray_cluster import connect_ray

    connect_ray("local", num_cpus=2)
    with tempfile.TemporaryDirectory(prefix="rankwise-ray-bench-") as tmp:
        work = Path(tmp)
        model = small_model(work / "model")
        results = {"cpu": cpu, "dataset": str(args.data), "indexing": indexing(args.data, work)}
        results["evaluation"] = evaluation(args.data, work / "local", model, args.queries, args.rerank_k)
        import ray

        ray.shutdown()  # the servers start clusters of their own
        results["serving"] = serving(args.data, model, work / "local", args.requests, args.clients, work)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
