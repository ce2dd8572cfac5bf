"""Core performance on SciFact: first-stage latency, indexing throughput and peak memory.

    .venv/bin/python benchmarks/core_latency.py [--data ../shared/data/beir/scifact] [--cache DIR]

Measures, on this machine, in one run:
* top-100 latency p50/p95/p99 per first stage (bm25, dense, hybrid) over the SciFact test queries,
  end to end through ``Pipeline.search`` (query encoding included for dense/hybrid);
* indexing time and embedding throughput (passages/s) as recorded in the index manifest — the index is
  reused from ``--cache`` when present (building it embeds ~9.4k passages, minutes on 2 cores);
* peak resident memory of this process.
Writes ``benchmarks/results/core_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from common import cpu_description, print_cpu, setup_environment

from rankwise import Index, Pipeline
from rankwise.corpus.beir import load_qrels, load_queries
from rankwise.pipeline import latency_percentiles

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/beir/scifact")
    parser.add_argument("--cache", type=Path, default=Path("/work/cache/scifact"))
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/core_latency.json")
    args = parser.parse_args()

    setup_environment()
    cpu = cpu_description()
    print_cpu(cpu)
    if (args.cache / "manifest.json").is_file():
        index = Index(args.cache)
    else:
        print(f"building the index at {args.cache} (embeds every passage; minutes on 2 cores)…")
        index = Index.build(args.data, args.cache)
    m = index.manifest
    queries, qrels = load_queries(args.data), load_qrels(args.data, "test")
    texts = [queries[q] for q in sorted(qrels)]
    results: dict[str, object] = {}
    for method in ("bm25", "dense", "hybrid"):
        pipeline = Pipeline(index, first_stage=method, retrieve_k=args.k)
        pipeline.search(texts[0], k=args.k)  # warm-up: lazy loads and first-call allocations
        samples = []
        for text in texts:
            t0 = time.perf_counter()
            pipeline.search(text, k=args.k)
            samples.append((time.perf_counter() - t0) * 1000)
        stats = {k: round(v, 2) for k, v in latency_percentiles(samples).items()}
        results[method] = {**stats, "queries": len(samples)}
        print(f"{method:>7}: top-{args.k} p50 {stats['p50']:.1f} ms · p95 {stats['p95']:.1f} ms · p99 {stats['p99']:.1f} ms")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "benchmark": "core_latency", "dataset": "scifact/test", "cpu": cpu, "k": args.k,
        "index": {"documents": m.num_documents, "passages": m.num_passages, **m.stats},
        "latency_ms": results, "peak_rss_mb": round(peak_mb, 1),
    }
    print(f"index: {m.num_documents} docs → {m.num_passages} passages, built in {m.stats.get('build_seconds')} s, "
          f"embedding {m.stats.get('passages_per_second')} passages/s; peak RSS {peak_mb:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
