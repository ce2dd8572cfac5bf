"""Bi-encoder indexing speed on CPU: sentence-transformers ``encode`` vs rankwise ONNX / OpenVINO backends.

Throughput: passages/s on a subset of SciFact documents (title + text, max_seq_length 256), the variants
interleaved chunk by chunk in one run. Fidelity: cosine of each variant's vectors to sentence-transformers'
on that subset, and — with ``--ndcg`` — the nDCG@10 of exact dense retrieval on SciFact test when the
whole corpus (5,183 documents, truncated to 256 tokens, no passage splitting) and the queries are
encoded by each variant. ``--ndcg`` encodes the full corpus once per variant: minutes on two cores.

    .venv/bin/python benchmarks/embed_speed.py --passages 512
    .venv/bin/python benchmarks/embed_speed.py --passages 512 --ndcg
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
from common import scifact_dir, setup_environment, start_run, write_json

VARIANTS = ("sentence-transformers", "rankwise-onnx", "rankwise-onnx-int8", "rankwise-openvino",
            "rankwise-openvino-int8")
CHUNK = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="bi-encoder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--passages", type=int, default=1024, help="documents timed for throughput")
    parser.add_argument("--ndcg", action="store_true", help="also encode the full corpus per variant for nDCG@10")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--data", help="BEIR scifact directory (default: ../shared/data/beir/scifact)")
    parser.add_argument("--out", default="embed_speed.json", help="file name under benchmarks/results/")
    return parser.parse_args()


def main() -> None:
    setup_environment()
    args = parse_args()

    from rankwise.index.dense import Embedder

    threads, cpu = start_run(args.threads)
    data = scifact_dir(args.data)
    docs = [json.loads(line) for line in (data / "corpus.jsonl").open()]
    texts = [f"{d.get('title', '')}\n{d.get('text', '')}".strip() for d in docs]
    subset = texts[: args.passages]

    # "sentence-transformers" is rankwise's torch backend, which *is* SentenceTransformer.encode (batch 64)
    embedders = {name: Embedder(args.model, backend="torch" if name == "sentence-transformers"
                                else name.removeprefix("rankwise-"), threads=threads)  # type: ignore[arg-type]
                 for name in args.variants}
    for name, embedder in embedders.items():
        embedder.encode(subset[:CHUNK])  # warm-up (and the one-off export / int8 calibration)
    seconds = dict.fromkeys(embedders, 0.0)
    vectors: dict[str, list[np.ndarray]] = {n: [] for n in embedders}
    names = list(embedders)
    for i, start in enumerate(range(0, len(subset), CHUNK)):
        chunk = subset[start: start + CHUNK]
        for name in names[i % len(names):] + names[: i % len(names)]:
            started = time.perf_counter()
            vectors[name].append(embedders[name].encode(chunk))
            seconds[name] += time.perf_counter() - started
    reference_name = names[0]
    reference = np.concatenate(vectors[reference_name])
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        cosine = (np.concatenate(vectors[name]) * reference).sum(axis=1)
        results[name] = {"passages_per_s": len(subset) / seconds[name], "seconds": seconds[name],
                         f"cosine_to_{reference_name}_mean": float(cosine.mean()),
                         f"cosine_to_{reference_name}_min": float(cosine.min())}
    base = results.get("sentence-transformers")
    for r in results.values():
        r["speedup_vs_sentence_transformers"] = r["passages_per_s"] / base["passages_per_s"] if base else None

    if args.ndcg:
        dense_ndcg(data, docs, texts, embedders, results)

    print(f"\n{len(subset)} SciFact documents, {threads} threads")
    for name, r in results.items():
        print(f"{name:24} {r['passages_per_s']:7.1f} passages/s  {r['speedup_vs_sentence_transformers'] or 0:5.2f}×  "
              f"cosine mean {r[f'cosine_to_{reference_name}_mean']:.4f} min {r[f'cosine_to_{reference_name}_min']:.4f}"
              + (f"  nDCG@10 {r['ndcg@10']:.4f}" if "ndcg@10" in r else ""))
    write_json(args.out, {
        "benchmark": "embed_speed", "command": "benchmarks/embed_speed.py " + " ".join(
            f"--{k}" if v is True else f"--{k} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if v not in (None, False)),
        "cpu": cpu, "threads": threads, "model": args.model, "passages_timed": len(subset),
        "ndcg_computed": args.ndcg, "variants": results,
    })


def dense_ndcg(data: Any, docs: list[dict[str, Any]], texts: list[str], embedders: dict[str, Any],
               results: dict[str, dict[str, Any]]) -> None:
    """nDCG@10 of exact cosine retrieval over the full corpus, corpus and queries encoded by each variant."""
    import ir_measures
    from ir_measures import nDCG

    from rankwise.corpus.beir import load_qrels, load_queries

    queries, qrels = load_queries(data), load_qrels(data, "test")
    qids = sorted(qrels)
    doc_ids = [str(d["_id"]) for d in docs]
    for name, embedder in embedders.items():
        started = time.perf_counter()
        corpus = embedder.encode(texts)
        scores = embedder.encode([queries[q] for q in qids]) @ corpus.T
        top = np.argsort(-scores, axis=1)[:, :100]
        run = {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(qids)}
        results[name]["ndcg@10"] = ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10]
        results[name]["full_corpus_seconds"] = time.perf_counter() - started
        print(f"{name}: full corpus encoded in {results[name]['full_corpus_seconds']:.0f} s, "
              f"nDCG@10 {results[name]['ndcg@10']:.4f}")
    base = results.get("sentence-transformers", {}).get("ndcg@10")
    for r in results.values():
        r["ndcg@10_change_vs_sentence_transformers"] = r["ndcg@10"] - base if base is not None else None


if __name__ == "__main__":
    main()
