"""How exact dense search (FAISS ``IndexFlatIP``, what the directory index uses) scales with the corpus.

    .venv/bin/python benchmarks/dense_scale.py [--sizes 100000,1000000] [--queries 20] [--out dense_scale.json]

Random unit vectors of MiniLM's 384 dimensions (exact search costs the same whatever the vectors are),
k = 100, one query at a time after one warm-up, all cores. The sizing arithmetic in ``docs/scaling.md``
uses it. Writes ``benchmarks/results/OUT``.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from common import cpu_description, print_cpu, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--out", default="dense_scale.json")
    args = parser.parse_args()
    cpu = cpu_description()
    print_cpu(cpu)
    rng = np.random.default_rng(0)
    results = {}
    for n in (int(x) for x in args.sizes.split(",")):
        vectors = rng.standard_normal((n, 384), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(384)
        index.add(vectors)
        queries = vectors[:args.queries] + 0.01
        index.search(queries[:1], 100)
        start = time.perf_counter()
        for i in range(args.queries):
            index.search(queries[i:i + 1], 100)
        ms = (time.perf_counter() - start) / args.queries * 1000
        results[str(n)] = {"ms_per_query": round(ms, 1), "vector_bytes": int(vectors.nbytes)}
        print(f"{n:>10,} passages: {ms:6.1f} ms per query · {vectors.nbytes / 2**30:.2f} GiB of vectors")
        del vectors, index
    write_json(args.out, {"cpu": cpu, "dim": 384, "k": 100, "sizes": results})


if __name__ == "__main__":
    main()
