"""First-stage baselines on the near-miss knowledge base ``src/rankwise/data/demo_kb`` (no reranker).

    nice -n 19 env HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/demo_kb_baselines.py [--index DIR] [--out NAME]

Builds (or updates; unchanged passages are not re-embedded) an index of the demo KB, then evaluates
``bm25``, ``dense`` (all-MiniLM-L6-v2) and ``hybrid`` (RRF) with rankwise's own evaluation on the
*train* and *test* splits and on the independent *held-out* set (``demo_kb/heldout``, BEIR layout,
split ``test``). Prints nDCG@5, nDCG@10 and R@20 per system and split, and for every system where its
top-1 result lands: a document judged 2 (answers), 1 (partial), a **sibling** of the relevant document
(same near-miss family, not relevant: the error the KB is built to provoke and a reranker should fix),
or a document of another family. Writes ``benchmarks/results/demo_kb_baselines.json``.

The held-out set is reported only: no choice (KB adjustment, tuning, model or threshold selection) may
be based on it; see ``demo_kb/heldout/README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import BENCH_CACHE, REPO, cpu_description, print_cpu, setup_environment, write_json

from rankwise.corpus import SAMPLE_KB
from rankwise.evaluation import GoldSet, evaluate
from rankwise.index import Index

DEMO_KB = SAMPLE_KB.parent / "demo_kb"
HELDOUT = DEMO_KB / "heldout"
SYSTEMS = ["bm25", "dense", "hybrid"]
METRICS = ["nDCG@5", "nDCG@10", "R@20"]
TOP1_KINDS = ("answer", "partial", "sibling", "other_family")


def families(kb: Path) -> dict[str, str | None]:
    """``{doc_id: family}`` from the corpus metadata (stand-alone pages have none)."""
    out: dict[str, str | None] = {}
    with (kb / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                out[str(record["_id"])] = (record.get("metadata") or {}).get("family")
    return out


def top1_breakdown(rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]],
                   family_of: dict[str, str | None]) -> dict[str, Any]:
    """Where each query's top-1 lands; ``sibling`` = same family as a relevant document but not relevant."""
    kinds: Counter[str] = Counter()
    per_query: dict[str, str] = {}
    for qid, judged in qrels.items():
        ranking = rankings.get(qid) or []
        top = ranking[0] if ranking else None
        label = judged.get(top, 0) if top else 0
        relevant_families = {family_of.get(d) for d, g in judged.items() if g > 0} - {None}
        if label >= 2:
            kind = "answer"
        elif label == 1:
            kind = "partial"
        elif top is not None and family_of.get(top) in relevant_families:
            kind = "sibling"
        else:
            kind = "other_family"
        kinds[kind] += 1
        per_query[qid] = kind
    n = len(qrels)
    wrong = n - kinds["answer"] - kinds["partial"]
    return {"queries": n, "counts": {k: kinds[k] for k in TOP1_KINDS},
            "rates": {k: round(kinds[k] / n, 4) if n else None for k in TOP1_KINDS},
            # of the queries whose top-1 is not relevant at all, the share that went to a near-miss sibling
            "sibling_share_of_errors": round(kinds["sibling"] / wrong, 4) if wrong else None,
            "per_query": per_query}


def run_split(index: Index, dataset: Path, split: str, label: str, family_of: dict[str, str | None]) -> dict[str, Any]:
    gold = GoldSet.from_beir(dataset, split).prepare(known_documents=set(index.passage_doc_ids))
    for warning in gold.warnings:
        print(f"  warning ({label}): {warning}")
    report = evaluate(index, gold, first_stages=SYSTEMS, metrics=METRICS, baseline="dense", top_results=5)
    shown = dataset.resolve()
    result: dict[str, Any] = {"dataset": str(shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown),
                              "split": split,
                              "counts": report.dataset["counts"], "scores": report.scores,
                              "scores_ci95": report.scores_ci95, "top1": {}, "comparisons_vs_dense": {}}
    for system in SYSTEMS:
        result["top1"][system] = top1_breakdown(report.rankings[system], gold.qrels, family_of)
    for comparison in report.comparisons:
        m = comparison.metrics["nDCG@5"]
        result["comparisons_vs_dense"][comparison.system] = {
            "nDCG@5_delta": m.delta, "ci95": list(m.ci95), "p_randomization_holm": m.p_randomization_holm}
    # the dense system's top-1 mistakes, for reading (query, what it picked, what was relevant)
    titles = {q: {r["doc_id"]: r["title"] for s in report.queries[q]["top"].values() for r in s}
              for q in report.queries}
    result["dense_top1_mistakes"] = [
        {"query_id": qid, "query": gold.queries[qid], "kind": kind,
         "top1": report.rankings["dense"][qid][0], "top1_title": titles[qid].get(report.rankings["dense"][qid][0]),
         "relevant": sorted((d for d, g in gold.qrels[qid].items() if g > 0), key=lambda d: -gold.qrels[qid][d]),
         "relevant_rank": next((i + 1 for i, d in enumerate(report.rankings["dense"][qid]) if gold.qrels[qid].get(d, 0) >= 2), None)}
        for qid, kind in result["top1"]["dense"]["per_query"].items() if kind in ("sibling", "other_family")]
    return result


def print_table(results: dict[str, dict[str, Any]]) -> None:
    header = f"{'split':<18} {'system':<7} " + " ".join(f"{m:>8}" for m in METRICS) + \
        "   top-1: answer partial sibling other   sibling share of errors"
    print(header)
    print("-" * len(header))
    for label, res in results.items():
        n = res["counts"].get("evaluated_queries")
        for system in SYSTEMS:
            scores = res["scores"][system]
            t = res["top1"][system]
            share = t["sibling_share_of_errors"]
            print(f"{label + f' ({n}q)':<18} {system:<7} " + " ".join(f"{scores[m]:>8.3f}" for m in METRICS)
                  + f"   {t['rates']['answer']:>13.2f} {t['rates']['partial']:>7.2f} {t['rates']['sibling']:>7.2f}"
                  f" {t['rates']['other_family']:>5.2f}   {'-' if share is None else f'{share:.2f}':>10}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=Path, default=DEMO_KB, help="the demo KB directory (BEIR layout)")
    parser.add_argument("--index", type=Path, default=BENCH_CACHE / "demo_kb",
                        help="where to build / update the index (default $RANKWISE_BENCH_CACHE/demo_kb)")
    parser.add_argument("--out", default="demo_kb_baselines.json", help="results file (in benchmarks/results/)")
    parser.add_argument("--no-heldout", action="store_true", help="skip the held-out set")
    args = parser.parse_args(argv)

    setup_environment()
    cpu = cpu_description()
    print_cpu(cpu)
    started = time.perf_counter()
    index = Index.build(args.kb, args.index)
    m = index.manifest
    print(f"index {args.index}: {m.num_documents} documents → {m.num_passages} passages "
          f"(embedded {m.stats['embedded']}, reused {m.stats['reused']}, {m.stats['build_seconds']} s); dense: "
          f"{(m.embedding or {}).get('model')} via {(m.embedding or {}).get('backend')}")
    family_of = families(args.kb)
    splits: list[tuple[str, Path, str]] = [("train", args.kb, "train"), ("test", args.kb, "test")]
    if not args.no_heldout:
        if (args.kb / "heldout" / "qrels" / "test.tsv").is_file():
            splits.append(("heldout", args.kb / "heldout", "test"))
        else:
            print(f"no held-out set at {args.kb / 'heldout'}; skipping it")
    results = {label: run_split(index, dataset, split, label, family_of) for label, dataset, split in splits}
    print()
    print_table(results)
    dense_test = results["test"]["top1"]["dense"]
    print(f"\ndense on test: top-1 is a near-miss sibling of the relevant document in {dense_test['counts']['sibling']}"
          f" of {dense_test['queries']} queries ({dense_test['rates']['sibling']:.0%}); of its "
          f"{dense_test['queries'] - dense_test['counts']['answer'] - dense_test['counts']['partial']} wrong top-1s, "
          f"{dense_test['counts']['sibling']} are siblings")
    payload = {
        "benchmark": "demo_kb_baselines",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu,
        "index": {"path": str(args.index), "fingerprint": index.fingerprint, "documents": m.num_documents,
                  "passages": m.num_passages,
                  "embedding": {k: (m.embedding or {}).get(k) for k in ("model", "backend", "sha256")}},
        "metrics": METRICS, "systems": SYSTEMS,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
