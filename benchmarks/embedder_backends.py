"""Is ``auto``'s embedder backend as good as torch on both CPU kinds? SciFact test, dense and hybrid nDCG@10.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embedder_backends.py [--data ../shared/data/beir/scifact]
        [--kinds native,avx2] [--backends torch,onnx,onnx-int8,openvino,openvino-int8] [--cache DIR]

Each (CPU kind, backend) variant indexes SciFact with that embedder backend and evaluates dense and
hybrid on the test split, in its own process: ``native`` as the machine is, ``avx2`` under the caps of
``make test-avx2`` (torch, oneDNN and MKL capped to AVX2; rankwise's per-CPU choices — the int8 recipe's
7-bit weights among them — made as on an AVX2-only CPU). What cannot be capped: ONNX Runtime's MLAS picks
its kernels from the real CPU (VNNI int8 dot products stay on), and OpenVINO compiles nothing with oneDNN
capped on an AVX-512 CPU, so its variants run natively only (and ONNX fp32 under the caps would repeat the
native computation, so it is skipped too). On a real AVX2-only machine run
``--kinds native``. Every variant is compared with torch on the same kind (paired randomization test over
the queries, per metric) and ``auto``'s choice for each kind is named.

Resumable: each variant's index lives under ``--cache`` and its per-query scores in ``<cache>/<kind>-<backend>.json``;
a rerun skips what is done (``--fresh`` redoes it). Writes ``benchmarks/results/embedder_backends.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import BENCH_CACHE, DEFAULT_SCIFACT, cpu_description, print_cpu, setup_environment, write_json

AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "RANKWISE_CPU_KIND": "avx2"}
SYSTEMS = ("dense", "hybrid")
METRICS = ("nDCG@10", "R@100")


def run_variant(data: Path, kind: str, backend: str, cache: Path) -> dict[str, Any]:
    """Index and evaluate one variant in this process (the parent set the kind's environment)."""
    from rankwise.evaluation import GoldSet, evaluate
    from rankwise.index import Index
    from rankwise.index.dense import Embedder
    from rankwise.inference.backends import cpu_kind, resolve_backend

    path = cache / f"{kind}-{backend}"
    started = time.perf_counter()
    if (path / "manifest.json").is_file():
        index = Index(path)
    else:
        index = Index.build(data, path, embedder=Embedder(backend=backend))  # type: ignore[arg-type]
    build_seconds = time.perf_counter() - started
    gold = GoldSet.from_beir(data, "test").prepare(known_documents=set(index.passage_doc_ids))
    report = evaluate(index, gold, first_stages=list(SYSTEMS), metrics=list(METRICS), baseline="dense")
    return {"kind": kind, "backend": backend, "cpu_kind_seen": cpu_kind(),
            "auto_embedder": resolve_backend("auto", "embedder").backend,
            "index_seconds": round(build_seconds, 1), "queries": gold.counts["evaluated_queries"],
            "scores": {s: {m: round(report.scores[s][m], 4) for m in METRICS} for s in SYSTEMS},
            "per_query": {s: report.per_query[s]["nDCG@10"] for s in SYSTEMS}}


def compare(variants: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant against torch on the same kind, and avx2 torch against native torch."""
    from rankwise.evaluation.significance import randomization_test

    rows = []
    for name, v in variants.items():
        reference = f"{v['kind']}-torch" if v["backend"] != "torch" else ("native-torch" if v["kind"] != "native"
                                                                          else None)
        if reference is None or reference not in variants:
            continue
        ref = variants[reference]
        row: dict[str, Any] = {"variant": name, "vs": reference}
        for system in SYSTEMS:
            ids = sorted(set(v["per_query"][system]) & set(ref["per_query"][system]))
            a = [v["per_query"][system][q] for q in ids]
            b = [ref["per_query"][system][q] for q in ids]
            row[system] = {"delta": round(sum(a) / len(a) - sum(b) / len(b), 4),
                           "p_randomization": round(randomization_test(a, b), 4)}
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_SCIFACT)
    parser.add_argument("--kinds", default="native,avx2")
    parser.add_argument("--backends", default="torch,onnx,onnx-int8,openvino,openvino-int8")
    parser.add_argument("--cache", type=Path, default=BENCH_CACHE / "embedder-backends")
    parser.add_argument("--fresh", action="store_true", help="redo variants already done")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # kind:backend, run in a child process
    parser.add_argument("--out", default="embedder_backends.json")
    args = parser.parse_args(argv)
    setup_environment()
    if args.variant:
        kind, backend = args.variant.split(":")
        result = run_variant(args.data, kind, backend, args.cache)
        (args.cache / f"{kind}-{backend}.json").write_text(json.dumps(result))
        return 0
    if not (args.data / "corpus.jsonl").is_file():
        sys.exit(f"error: no SciFact corpus at '{args.data}'; pass --data DIR (a BEIR scifact directory)")
    cpu = cpu_description()
    print_cpu(cpu)
    args.cache.mkdir(parents=True, exist_ok=True)
    variants: dict[str, dict[str, Any]] = {}
    for kind in args.kinds.split(","):
        for backend in args.backends.split(","):
            if kind == "avx2" and backend.startswith("openvino"):
                continue  # OpenVINO compiles nothing with oneDNN capped on an AVX-512 CPU (module docstring)
            if kind == "avx2" and backend == "onnx":
                continue  # ONNX Runtime's fp32 kernels cannot be capped: the native run is the same computation
            done = args.cache / f"{kind}-{backend}.json"
            if args.fresh or not done.is_file():
                print(f"{kind} {backend}: indexing and evaluating ...", flush=True)
                env = {**os.environ, **(AVX2_CAPS if kind == "avx2" else {})}
                child = subprocess.run([sys.executable, __file__, "--data", str(args.data), "--cache",
                                        str(args.cache), "--variant", f"{kind}:{backend}"], env=env, check=False)
                if child.returncode != 0:
                    print(f"{kind} {backend}: failed (exit {child.returncode})", flush=True)
                    continue
            variants[f"{kind}-{backend}"] = json.loads(done.read_text())
            v = variants[f"{kind}-{backend}"]
            print(f"{kind:>6} {backend:<14} dense {v['scores']['dense']['nDCG@10']:.4f} · hybrid "
                  f"{v['scores']['hybrid']['nDCG@10']:.4f} (auto here: {v['auto_embedder']}, index "
                  f"{v['index_seconds']:.0f} s)", flush=True)
    comparisons = compare(variants)
    for row in comparisons:
        print(f"{row['variant']:<22} vs {row['vs']:<14} " + " · ".join(
            f"{s} {row[s]['delta']:+.4f} (p {row[s]['p_randomization']:.2f})" for s in SYSTEMS))
    write_json(args.out, {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu, "dataset": "scifact/test",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "avx2_caps": AVX2_CAPS,
        "variants": {name: {k: v for k, v in variant.items() if k != "per_query"} for name, variant in variants.items()},
        "comparisons": comparisons})
    return 0


if __name__ == "__main__":
    sys.exit(main())
