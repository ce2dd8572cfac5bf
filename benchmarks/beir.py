"""Reproduce published BEIR first-stage baselines with rankwise's own evaluation framework.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/beir.py [--data ../shared/data/beir] [--cache DIR]
        [--datasets scifact:test,nfcorpus:dev] [--first-stages bm25,dense,hybrid] [--limit-queries N]
        [--threads N]

Indexes are reused from ``--cache`` (default ``$RANKWISE_BENCH_CACHE`` or ``/work/cache``: ``<cache>/<name>``
as built by ``rankwise index``) and built there when missing (the dense vectors of SciFact take ~5 minutes
on 2 cores). Writes ``benchmarks/results/beir.json`` and prints a table; exits 1 when a reproduction check
fails. Checks (SciFact test, nDCG@10): BM25 within [0.665, 0.695] (published 0.665 BEIR/Anserini – 0.687
bm25s) and dense all-MiniLM-L6-v2 within ±0.01 of the published 0.645. NFCorpus ships here with train/dev
qrels only; published numbers are for its test split, so they are listed for reference, not checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import BENCH_CACHE, DEFAULT_SCIFACT, RESULTS, cpu_description, print_cpu, setup_environment
from rich.console import Console
from rich.table import Table

from rankwise.evaluation import GoldSet, evaluate
from rankwise.index import Index

METRICS = ["nDCG@10", "R@100", "nDCG@5", "P@5", "R@20"]
#: (dataset/split, system) → (low, high) an nDCG@10 must fall in, and where the number comes from
CHECKS: dict[tuple[str, str], tuple[float, float, str]] = {
    ("scifact/test", "bm25"): (0.665, 0.695, "published 0.665 (BEIR, Anserini) – 0.687 (bm25s)"),
    ("scifact/test", "dense"): (0.635, 0.655, "published 0.645 (all-MiniLM-L6-v2, MTEB) ± 0.01"),
}
#: published nDCG@10 on a *different* split than the one available here: context, not a check
REFERENCES: dict[tuple[str, str], str] = {
    ("nfcorpus/dev", "bm25"): "BEIR test split: 0.325",
    ("nfcorpus/dev", "dense"): "MTEB test split (all-MiniLM-L6-v2): 0.316",
}


def open_or_build(data: Path, cache: Path, console: Console) -> Index:
    path = cache / data.name
    if (path / "manifest.json").is_file():
        console.print(f"reusing index {path}")
        return Index(path)
    console.print(f"building index {path} from {data} (BM25 + all-MiniLM-L6-v2 vectors; minutes on a CPU)")
    return Index.build(data, path)


def run_dataset(data: Path, split: str, cache: Path, first_stages: list[str], limit: int | None,
                console: Console) -> dict[str, Any]:
    index = open_or_build(data, cache, console)
    gold = GoldSet.from_beir(data, split).prepare(known_documents=set(index.passage_doc_ids))
    if limit:
        gold = gold.limit(limit)
    for warning in gold.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    started = time.perf_counter()
    report = evaluate(index, gold, first_stages=first_stages, metrics=METRICS,
                      baseline="dense" if "dense" in first_stages else first_stages[0])
    name = f"{data.name}/{split}"
    result: dict[str, Any] = {
        "queries": gold.counts["evaluated_queries"], "documents": index.manifest.num_documents,
        "passages": index.manifest.num_passages, "index_fingerprint": index.fingerprint,
        "evaluation_seconds": round(time.perf_counter() - started, 1),
        "systems": {s: {**{m: round(report.scores[s][m], 4) for m in METRICS},
                        "latency_ms": {k: round(v, 1) for k, v in report.latency_ms[s]["total"].items() if k != "n"}}
                    for s in report.systems},
        "comparisons": {c.system: {"vs": c.baseline, "nDCG@10_delta": round(c.metrics["nDCG@10"].delta, 4),
                                   "p_randomization_holm": round(c.metrics["nDCG@10"].p_randomization_holm, 4)}
                        for c in report.comparisons},
        "checks": [], "references": {},
    }
    for (dataset, system), (low, high, source) in CHECKS.items():
        if dataset == name and system in report.scores and limit is None:
            value = report.scores[system]["nDCG@10"]
            result["checks"].append({"system": system, "metric": "nDCG@10", "value": round(value, 4),
                                     "range": [low, high], "source": source, "passed": low <= value <= high})
    result["references"] = {s: ref for (dataset, s), ref in REFERENCES.items() if dataset == name}
    return result


def print_table(results: dict[str, Any], console: Console) -> None:
    table = Table(title="BEIR first stages (nDCG@10, R@100; latency = end-to-end per query)")
    for column in ("dataset", "system", "nDCG@10", "R@100", "p50 ms", "p95 ms", "check / reference"):
        table.add_column(column, justify="left" if column in ("dataset", "system", "check / reference") else "right")
    for name, res in results["datasets"].items():
        checks = {c["system"]: c for c in res["checks"]}
        for system, row in res["systems"].items():
            check = checks.get(system)
            note = (f"[{'green' if check['passed'] else 'red'}]{'PASS' if check['passed'] else 'FAIL'} "
                    f"[{check['range'][0]}, {check['range'][1]}][/]" if check else res["references"].get(system, ""))
            table.add_row(name, system, f"{row['nDCG@10']:.4f}", f"{row['R@100']:.4f}",
                          f"{row['latency_ms']['p50']:.1f}", f"{row['latency_ms']['p95']:.1f}", note)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_SCIFACT.parent)
    parser.add_argument("--cache", type=Path, default=BENCH_CACHE)
    parser.add_argument("--datasets", default="scifact:test,nfcorpus:dev", help="name:split, comma-separated")
    parser.add_argument("--first-stages", default="bm25,dense,hybrid")
    parser.add_argument("--limit-queries", type=int, default=None, help="first N queries only (checks skipped)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 is much faster on a shared, loaded CPU)")
    parser.add_argument("--out", type=Path, default=RESULTS / "beir.json")
    args = parser.parse_args(argv)
    setup_environment()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    cpu = cpu_description()
    print_cpu(cpu)
    console.print(f"torch threads: {torch.get_num_threads()}")
    results: dict[str, Any] = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "metrics": METRICS, "limit_queries": args.limit_queries, "torch_threads": torch.get_num_threads(),
        "datasets": {},
    }
    for item in args.datasets.split(","):
        name, _, split = item.strip().partition(":")
        data = args.data / name
        if not (data / "corpus.jsonl").is_file():
            console.print(f"[red]error:[/] {data} is missing (expected a BEIR dataset with corpus.jsonl)")
            return 2
        results["datasets"][f"{name}/{split or 'test'}"] = run_dataset(
            data, split or "test", args.cache, args.first_stages.split(","), args.limit_queries, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, console)
    console.print(f"wrote {args.out}")
    failed = [f"{name} {c['system']}" for name, res in results["datasets"].items() for c in res["checks"]
              if not c["passed"]]
    if failed:
        console.print(f"[red]reproduction check failed: {', '.join(failed)}[/]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
