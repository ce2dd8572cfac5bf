"""The default training recipe on four domains: does the model ``rankwise train`` makes help, every time?

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/default_recipe.py --domain sample_kb|demo_kb|scifact|nfcorpus
        [--budget-s 600] [--architecture ...] [--residual/--no-residual] [--freeze-passages/--no-freeze-passages]
        [--steps N] [--lr X] [--max-length N]
        [--tag NAME]

For one domain: build (or reuse) its index, take the judged queries of its train split and run the very
training session ``rankwise train`` runs (:func:`rankwise.training.session.train_session`: 10% held out for
validation, the same mined groups, the recipe rankwise picks for that data or the overrides given, a
wall-clock budget, the verdict against the first stage), then evaluate on the domain's held-out
split(s) — the first stage (hybrid top 100) against the same list reranked by the model *as served*
(``auto`` backend, ``load_reranker``, ordered as its training declared: alone or fused with the first
stage's ranks, whichever did better on the validation queries), nDCG@5/@10 with the paired randomization
test.

Domains and splits: SciFact train → test; NFCorpus train → dev (no test qrels here); the demo KB train →
test and its independent held-out set; the sample KB train → test. Training checkpoints live under
``$RANKWISE_BENCH_CACHE/recipe-runs`` and resume when the same command runs again (a finished run goes
straight to evaluation).

Writes ``benchmarks/results/default_recipe_<domain>[_<tag>].json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import BENCH_CACHE, REPO, cpu_description, setup_environment, write_json
from rich.console import Console

DATA = REPO / "src" / "rankwise" / "data"
BEIR = REPO.parent / "shared" / "data" / "beir"
#: domain → (corpus/qrels directory, train split, [(label, qrels directory, split)])
DOMAINS: dict[str, tuple[Path, str, list[tuple[str, Path, str]]]] = {
    "sample_kb": (DATA / "sample_kb", "train", [("test", DATA / "sample_kb", "test")]),
    "demo_kb": (DATA / "demo_kb", "train", [("test", DATA / "demo_kb", "test"),
                                             ("held-out", DATA / "demo_kb" / "heldout", "test")]),
    "scifact": (BEIR / "scifact", "train", [("test", BEIR / "scifact", "test")]),
    "nfcorpus": (BEIR / "nfcorpus", "train", [("dev", BEIR / "nfcorpus", "dev")]),
}
METRICS = ["nDCG@5", "nDCG@10"]


class _Say:
    """The session's progress on the benchmark's console."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def stage(self, text: str) -> Any:
        return self.console.status(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", choices=sorted(DOMAINS), required=True)
    parser.add_argument("--budget-s", type=float, default=600.0, help="wall-clock training budget")
    parser.add_argument("--architecture", choices=["cross-encoder", "bi-encoder"])
    parser.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--freeze-passages", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    setup_environment()
    console = Console(stderr=True)

    from rankwise.evaluation import GoldSet
    from rankwise.index import Index
    from rankwise.rerank.base import backend_label, declared_fusion
    from rankwise.rerank.loading import load_reranker
    from rankwise.training.data import JudgedQueries, group_stats
    from rankwise.training.session import SessionSettings, train_session

    source, train_split, evaluations = DOMAINS[args.domain]
    if not source.is_dir():
        raise SystemExit(f"{source} is missing (../shared/data/beir beside the repository)")
    index_dir = BENCH_CACHE / "indexes" / args.domain
    started = time.perf_counter()
    index = Index(index_dir) if (index_dir / "manifest.json").is_file() else Index.build(source, index_dir)
    index_seconds = time.perf_counter() - started
    judged = JudgedQueries.from_goldset(GoldSet.from_beir(source, train_split),
                                        known_documents=index.passage_doc_ids)
    # exactly what `rankwise train` runs, with the same defaults; only the overrides given differ
    settings = SessionSettings(architecture=args.architecture, residual=args.residual,
                               frozen_passages=args.freeze_passages, max_steps=args.steps,
                               learning_rate=args.lr, max_length=args.max_length, batch_size=args.batch_size,
                               train_seconds=args.budget_s, seed=args.seed)
    run_dir = BENCH_CACHE / "recipe-runs" / f"{args.domain}{'-' + args.tag if args.tag else ''}"
    session = train_session(index, judged, settings, run_dir, reporter=_Say(console))
    recipe, result, verdict = session.recipe, session.result, session.verdict
    train_groups, val_groups = session.train_groups, session.validation_groups
    console.print(f"trained {result.steps} steps in {result.train_seconds:.0f} s, "
                  f"best validation nDCG@10 {result.best_validation_ndcg10}")
    console.print(verdict.message if verdict else "no validation verdict")
    reranker = load_reranker(str(result.model_dir))
    splits = {}
    for label, qrels_dir, split in evaluations:
        gold = GoldSet.from_beir(qrels_dir, split).prepare(known_documents=set(index.passage_doc_ids))
        row, report = against_hybrid(index, gold, reranker)
        splits[label] = {**row, "answers_seen_in_training": _seen_split(report, gold.qrels, judged)}
        console.print(f"  {label}: {splits[label]}")
    payload: dict[str, Any] = {
        "domain": args.domain, "cpu": cpu_description(), "recipe": recipe.to_dict(), "budget_s": args.budget_s,
        "index_seconds": round(index_seconds, 1), "train_groups": dict(group_stats(train_groups)),
        "validation_groups": dict(group_stats(val_groups)),
        "training": {"steps": result.steps, "seconds": round(result.train_seconds, 1),
                     "best_validation_ndcg@10": result.best_validation_ndcg10, "resumed_from": result.resumed_from},
        "backend": backend_label(reranker), "validation_verdict": verdict.to_dict() if verdict else None,
        "served_fusion": declared_fusion(reranker),
        "splits": splits,
    }
    name = f"default_recipe_{args.domain}{'_' + args.tag if args.tag else ''}.json"
    write_json(name, payload)


def against_hybrid(index: Any, gold: Any, reranker: Any) -> tuple[dict[str, Any], Any]:
    """Hybrid top 100 against the same lists reranked as served, on one prepared gold set: the table row
    (values, paired randomization p with Holm across the metrics, wins/losses) and the report."""
    from rankwise.evaluation import evaluate

    started = time.perf_counter()
    report = evaluate(index, gold, first_stages=["hybrid"], reranker=reranker, metrics=METRICS,
                      baseline="hybrid", n_resamples=10_000)
    comparison = report.comparison("hybrid+reranker").metrics
    return {
        "queries": len(gold.queries), "seconds": round(time.perf_counter() - started, 1),
        "first_stage": {m: round(report.scores["hybrid"][m], 4) for m in METRICS},
        "reranked": {m: round(report.scores["hybrid+reranker"][m], 4) for m in METRICS},
        "p_randomization": {m: round(comparison[m].p_randomization, 5) for m in METRICS},
        "p_holm": {m: round(comparison[m].p_randomization_holm, 5) for m in METRICS},
        "wins_losses": {m: [comparison[m].wins, comparison[m].losses] for m in METRICS},
    }, report


def _seen_split(report: Any, qrels: dict[str, dict[str, int]], trained: Any) -> dict[str, Any]:
    """nDCG@10 on the test queries one of whose relevant documents a training query also had as relevant
    ("seen") and on the rest ("unseen"): on one corpus a domain model learns its documents as well as its
    queries, and only the unseen part says how it does on documents nobody judged for it."""
    from rankwise.evaluation.significance import randomization_test

    unseen = trained.unseen_answers(qrels)
    out: dict[str, Any] = {}
    for label, ids in (("seen", sorted(set(qrels) - set(unseen))), ("unseen", unseen)):
        if not ids:
            out[label] = {"queries": 0}
            continue
        base = [report.per_query["hybrid"]["nDCG@10"][q] for q in ids]
        model = [report.per_query["hybrid+reranker"]["nDCG@10"][q] for q in ids]
        out[label] = {"queries": len(ids), "first_stage": round(sum(base) / len(ids), 4),
                      "reranked": round(sum(model) / len(ids), 4),
                      "p_randomization": (round(randomization_test(model, base, n_resamples=10_000), 5)
                                          if len(ids) > 1 else None)}
    return out


if __name__ == "__main__":
    main()
