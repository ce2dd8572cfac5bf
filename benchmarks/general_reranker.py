"""A general starting reranker: a cross-encoder rankwise trains on every judged query it can reach offline.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/general_reranker.py [--max-steps 20000] [--train-seconds S]
        [--run-dir DIR] [--registry DIR] [--no-evaluate]

Training data: the SciFact and NFCorpus train splits (judged queries, mined hard negatives as
``rankwise train`` mines them) plus pseudo-queries from both corpora — each document's title as a query
for its body, and its first sentence as a query for the rest (:func:`~rankwise.training.negatives.lead_sentence_groups`).
10% of the judged queries of each dataset are held out for validation (early stopping on nDCG@10 over
hybrid top-30 lists). The model is a cross-encoder from the bundled MiniLM backbone trained with the
listwise softmax loss; on a GPU (``device`` lends one sometimes) the trainer uses it without a flag.

Resumable: mined groups are kept in ``<run-dir>/groups.json``, checkpoints in ``<run-dir>/checkpoints``
(the trainer resumes from the last one), and ``--train-seconds`` is the budget of the whole run across
resumes. When training ends the model is registered (``<run-dir>/registry`` unless ``--registry``) with a
complete card, its ONNX int8 export is measured (shipping it with the package needs ≲ 30 MB), and it is
evaluated as the starting point it would be — hybrid top 100 on each benchmark domain's held-out split,
before any domain training — with the paired randomization test (``default_recipe.py``'s domains).

Writes ``benchmarks/results/general_reranker.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import BENCH_CACHE, cpu_description, setup_environment, write_json
from default_recipe import BEIR, DOMAINS, against_hybrid
from rich.console import Console

#: judged datasets trained on: name → BEIR directory (its ``train`` split)
SOURCES = {"scifact": BEIR / "scifact", "nfcorpus": BEIR / "nfcorpus"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=BENCH_CACHE / "general-reranker")
    parser.add_argument("--registry", type=Path)
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--train-seconds", type=float, default=None, help="budget of the whole run, across resumes")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-steps", type=int, default=500)
    parser.add_argument("--lead-queries", type=int, default=3000, help="first-sentence pseudo-queries per corpus")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--evaluate", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    setup_environment()
    console = Console(stderr=True)
    for name, source in SOURCES.items():
        if not source.is_dir():
            raise SystemExit(f"{source} is missing ({name}: ../shared/data/beir beside the repository)")

    from rankwise.training.finetune import TrainingConfig
    from rankwise.training.train import train_reranker

    args.run_dir.mkdir(parents=True, exist_ok=True)
    indexes = {name: _index(name, source) for name, source in SOURCES.items()}
    train, validation, counts = _groups(args, indexes, console)
    config = TrainingConfig(base_model="minilm", architecture="cross-encoder", loss="softmax",
                            max_steps=args.max_steps, batch_size=args.batch_size, learning_rate=args.lr,
                            max_length=args.max_length, eval_steps=args.eval_steps, patience=6, seed=args.seed,
                            time_budget_s=args.train_seconds)
    console.print(f"training on {counts}; {len(train)} groups, {len(validation)} for validation")
    result = train_reranker(train, validation, config, args.run_dir, show_progress=True)
    console.print(f"{result.steps} steps in {result.train_seconds:.0f} s this run; best validation nDCG@10 "
                  f"{result.best_validation_ndcg10}")
    version = _register(args, result, counts, indexes)
    payload: dict[str, Any] = {
        "cpu": cpu_description(), "config": result.summary()["config"], "groups": counts,
        "training": {"steps": result.steps, "seconds_this_run": round(result.train_seconds, 1),
                     "best_validation_ndcg@10": result.best_validation_ndcg10},
        "registered": version, "int8_onnx_mb": _int8_size(result.model_dir),
    }
    if args.evaluate:
        payload["domains"] = _evaluate(result.model_dir, console)
    write_json("general_reranker.json", payload)


def _index(name: str, source: Path) -> Any:
    from rankwise.index import Index

    directory = BENCH_CACHE / "indexes" / name
    return Index(directory) if (directory / "manifest.json").is_file() else Index.build(source, directory)


def _groups(args: argparse.Namespace, indexes: dict[str, Any], console: Console) -> tuple[list[Any], list[Any], dict[str, int]]:
    """Training and validation groups, mined once and kept in the run directory (resumes reuse them)."""
    from dataclasses import asdict

    from rankwise.evaluation import GoldSet
    from rankwise.training.data import JudgedQueries
    from rankwise.training.negatives import (
        TrainingGroup,
        lead_sentence_groups,
        mine_groups,
        parse_negative_mix,
        title_groups,
    )
    from rankwise.training.recipe import DEFAULT_NEGATIVES

    file = args.run_dir / "groups.json"
    if file.is_file():
        saved = json.loads(file.read_text())
        load = [[TrainingGroup(**{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()}) for g in part]
                for part in (saved["train"], saved["validation"])]
        return load[0], load[1], saved["counts"]
    mix = parse_negative_mix(DEFAULT_NEGATIVES)
    train: list[TrainingGroup] = []
    validation: list[TrainingGroup] = []
    counts: dict[str, int] = {}
    for name, index in indexes.items():
        with console.status(f"mining {name}…"):
            judged = JudgedQueries.from_goldset(GoldSet.from_beir(SOURCES[name], "train"),
                                                known_documents=index.passage_doc_ids)
            part, held = judged.split(0.1, args.seed)
            judged_groups = mine_groups(index, part.queries, part.qrels, mix=mix, max_positives=3, seed=args.seed)
            titles = title_groups(index, mix=mix, seed=args.seed)
            leads = lead_sentence_groups(index, mix=mix, limit=args.lead_queries, seed=args.seed)
            validation += mine_groups(index, held.queries, held.qrels, mix={"hybrid": 30}, seed=args.seed)
        train += judged_groups + titles + leads
        counts |= {f"{name}_judged": len(judged_groups), f"{name}_titles": len(titles), f"{name}_leads": len(leads)}
    counts["validation"] = len(validation)
    file.write_text(json.dumps({"counts": counts, "train": [asdict(g) for g in train],
                                "validation": [asdict(g) for g in validation]}))
    return train, validation, counts


def _register(args: argparse.Namespace, result: Any, counts: dict[str, int], indexes: dict[str, Any]) -> str:
    """Register the model (once per finished run) with a card that says what it was trained on and how."""
    from rankwise.registry import CardMetrics, ModelCard, Registry, TrainingData, Validation

    registry = Registry(args.registry or args.run_dir / "registry")
    for entry in registry.versions():
        if entry.card.training and entry.card.training.get("run_dir") == str(args.run_dir) \
                and entry.card.training.get("steps") == result.steps:
            return str(entry.version)
    card = ModelCard(
        name="rankwise general reranker", base_model="minilm",
        training_data=TrainingData(dataset="+".join(f"{n}/train" for n in SOURCES), split="train",
                                   index_fingerprint="+".join(i.fingerprint for i in indexes.values()),
                                   max_positives=3, title_queries=sum(v for k, v in counts.items()
                                                                      if k.endswith("_titles")),
                                   extra=counts),
        recipe={"command": "benchmarks/general_reranker.py", "pseudo_queries": ["title", "lead sentence"]},
        hyperparameters=result.summary()["config"],
        metrics=CardMetrics(validation=Validation(ndcg10=result.best_validation_ndcg10)),
        training={"steps": result.steps, "train_seconds": round(result.train_seconds, 1),
                  "run_dir": str(args.run_dir)})
    return str(registry.register(result.model_dir, card, alias=None).version)


def _int8_size(model_dir: Path) -> float | None:
    """Megabytes of the dynamic-int8 ONNX export (what would ship), exported once into the model's cache."""
    from rankwise.rerank.cross_encoder import CrossEncoderReranker

    CrossEncoderReranker(model_dir, backend="onnx-int8").score("warm up", ["the export happens on first use"])
    files = [f for f in model_dir.joinpath(".rankwise").rglob("*.onnx") if "int8" in str(f.relative_to(model_dir))]
    return round(max(f.stat().st_size for f in files) / 1e6, 1) if files else None


def _evaluate(model_dir: Path, console: Console) -> dict[str, Any]:
    """The starting reranker on each domain's held-out split(s), before any domain training."""
    from rankwise.evaluation import GoldSet
    from rankwise.index import Index
    from rankwise.rerank.loading import load_reranker

    reranker = load_reranker(str(model_dir))
    out: dict[str, Any] = {}
    for domain, (source, _train, evaluations) in DOMAINS.items():
        index_dir = BENCH_CACHE / "indexes" / domain
        index = Index(index_dir) if (index_dir / "manifest.json").is_file() else Index.build(source, index_dir)
        for label, qrels_dir, split in evaluations:
            gold = GoldSet.from_beir(qrels_dir, split).prepare(known_documents=set(index.passage_doc_ids))
            out[f"{domain}/{label}"], _report = against_hybrid(index, gold, reranker)
            console.print(f"{domain}/{label}: {out[f'{domain}/{label}']}")
    return out


if __name__ == "__main__":
    main()
