"""Cross-encoder reranking speed and fidelity on CPU: sentence-transformers vs rankwise torch / ONNX / OpenVINO.

Same model, same candidate lists (SciFact test queries, BM25 top-100 passages, title + text, max_length
256), all variants in one run and interleaved query by query (the variant order rotates), so background
load hits every variant alike. Per variant: median and p95 ms per query, pairs/s, tokens/s, nDCG@10
(ir_measures), score correlation with fp32 torch, and achieved model FLOP/s against GEMM ceilings
measured in the same run.

    .venv/bin/python benchmarks/rerank_speed.py --queries 20          # while developing
    .venv/bin/python benchmarks/rerank_speed.py                       # all 300 test queries

To match sentence-transformers' work exactly, rankwise scores only the first 256-token window of each
pair here (``long_documents="truncate"``, which is what ``CrossEncoder.predict`` does); the number of
pairs that were longer is reported.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    TRAINED_SCIFACT_RERANKER,
    bm25_index,
    encoder_flops,
    gemm_ceilings,
    scifact_dir,
    setup_environment,
    start_run,
    write_json,
)

TRAINED_DEFAULT = TRAINED_SCIFACT_RERANKER  # benchmarks/train_beir.py's model
#: fp32 variants, equal to each other within 1e-6: correlations are taken against the first one that ran
REFERENCES = ("rankwise-torch", "rankwise-onnx", "sentence-transformers")
VARIANTS = ("sentence-transformers", "rankwise-torch", "rankwise-torch-bf16", "rankwise-onnx", "rankwise-onnx-int8",
            "rankwise-openvino", "rankwise-openvino-int8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help=f"cross-encoder dir (default: {TRAINED_DEFAULT} if it "
                        "exists, else the bundled MiniLM with a fresh, untrained 1-logit head)")
    parser.add_argument("--queries", type=int, default=300,
                        help="SciFact test queries, evenly spaced over the test set (default: all 300)")
    parser.add_argument("--candidates", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="rankwise token budget per forward pass")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--data", help="BEIR scifact directory (default: ../shared/data/beir/scifact)")
    parser.add_argument("--index", help="index to take BM25 candidates from (default: /work/cache/scifact if "
                        "built, else a BM25-only index built once in the user cache)")
    parser.add_argument("--calibration", help="openvino-int8 calibration: a JSONL file, or 'scifact-train' for 48 "
                        "SciFact train queries with one judged and three BM25 passages each (what `rankwise train` "
                        "stores with a model it trains); default: the model's own file, else the bundled KB")
    parser.add_argument("--out", default="rerank_speed.json", help="file name under benchmarks/results/")
    return parser.parse_args()


def fresh_head_model() -> Path:
    """The bundled MiniLM transformer under a new, seeded 1-logit head, saved once in the user cache."""
    import torch
    from platformdirs import user_cache_dir
    from sentence_transformers import CrossEncoder

    from rankwise.models import bundled_minilm_dir

    directory = Path(user_cache_dir("rankwise")) / "benchmarks" / "minilm-fresh-head"
    if not (directory / "config.json").is_file():
        torch.manual_seed(0)
        CrossEncoder(str(bundled_minilm_dir()), num_labels=1).save(str(directory))
    return directory


def load_candidates(args: argparse.Namespace) -> tuple[list[tuple[str, str, list[str], list[str]]], Any, Any]:
    """``(qid, query, doc_ids, texts)`` per query, the qrels, and BM25's own run for reference."""
    from rankwise.corpus.beir import load_qrels, load_queries
    from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings

    data = scifact_dir(args.data)
    queries, qrels = load_queries(data), load_qrels(data, "test")
    index = bm25_index(data, args.index)
    bm25 = FirstStage(index, FirstStageSettings(method="bm25"))
    out, bm25_run = [], {}
    qids = sorted(qrels, key=lambda q: int(q) if q.isdigit() else q)
    picked = sorted({qids[round(i)] for i in np.linspace(0, len(qids) - 1, min(args.queries, len(qids)))}, key=qids.index)
    for qid in picked:  # evenly spaced over the test set: a subset's nDCG then tracks the full set's
        candidates = bm25.retrieve(queries[qid], args.candidates)
        out.append((qid, queries[qid], [c.passage.doc_id for c in candidates], [c.passage.full_text for c in candidates]))
        bm25_run[qid] = {c.passage.doc_id: c.score for c in candidates}
    # only the picked queries: ir_measures would count every other judged query as a 0
    return out, {qid: qrels[qid] for qid in picked}, bm25_run


def scifact_train_calibration(args: argparse.Namespace) -> Path:
    """48 evenly spaced SciFact *train* queries, each with its best-ranked judged passage and three unjudged
    BM25 passages — the shape of the file ``rankwise train`` writes, for a model trained before it did."""
    from platformdirs import user_cache_dir

    from rankwise.corpus.beir import load_qrels, load_queries
    from rankwise.inference.calibration import CalibrationQuery, spread, write_calibration
    from rankwise.retrieval.first_stage import FirstStage, FirstStageSettings

    data = scifact_dir(args.data)
    queries, qrels = load_queries(data), load_qrels(data, "train")
    bm25 = FirstStage(bm25_index(data, args.index), FirstStageSettings(method="bm25"))
    items = []
    for qid in spread(sorted(qrels, key=lambda q: int(q) if q.isdigit() else q)):
        found = bm25.retrieve(queries[qid], 30)
        judged = [c.passage.full_text for c in found if qrels[qid].get(c.passage.doc_id, 0) > 0]
        others = [c.passage.full_text for c in found if qrels[qid].get(c.passage.doc_id, 0) <= 0]
        items.append(CalibrationQuery.pick(queries[qid], judged, others))
    directory = Path(user_cache_dir("rankwise")) / "benchmarks"
    directory.mkdir(parents=True, exist_ok=True)
    return write_calibration(directory / "scifact-train-calibration.jsonl", items)


def build_variants(names: list[str], model: Path, args: argparse.Namespace) -> dict[str, Any]:
    """name → ``score(query, texts) -> raw logits``; every variant loads the same model directory."""
    import torch
    from sentence_transformers import CrossEncoder

    from rankwise.rerank import CrossEncoderReranker

    variants: dict[str, Any] = {}
    calibration = scifact_train_calibration(args) if args.calibration == "scifact-train" else args.calibration
    for name in names:
        if name == "sentence-transformers":
            encoder = CrossEncoder(str(model), max_length=args.max_length, local_files_only=True)
            # defaults (batch 32, fp32, its own length sorting); identity activation only so logits compare
            variants[name] = lambda q, texts, e=encoder: np.asarray(e.predict(
                [(q, t) for t in texts], activation_fn=torch.nn.Identity(), convert_to_numpy=True), dtype=np.float32)
        else:
            backend = name.removeprefix("rankwise-")
            reranker = CrossEncoderReranker(model, backend=backend, max_length=args.max_length,
                                            batch_tokens=args.batch_tokens, long_documents="truncate",
                                            threads=args.threads,
                                            calibration=calibration if backend == "openvino-int8" else None)
            variants[name] = lambda q, texts, r=reranker: r.score(q, texts).raw
    return variants


def correlations(scores: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """Per-query agreement with the fp32 reference, averaged over queries (rankings are per query)."""
    from scipy.stats import pearsonr, spearmanr

    spearman = [spearmanr(a, b).statistic for a, b in zip(scores, reference, strict=True)]
    pearson = [pearsonr(a, b).statistic for a, b in zip(scores, reference, strict=True)]
    top10 = [len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10 for a, b in zip(scores, reference,
                                                                                         strict=True)]
    return {"spearman_mean": float(np.mean(spearman)), "spearman_min": float(np.min(spearman)),
            "pearson_mean": float(np.mean(pearson)), "top10_overlap_mean": float(np.mean(top10)),
            "max_abs_logit_diff": float(max(np.abs(a - b).max() for a, b in zip(scores, reference, strict=True)))}


def per_query_ndcg(candidates: list[tuple[str, str, list[str], list[str]]], scores: list[np.ndarray],
                   qrels: Any) -> np.ndarray:
    """nDCG@10 of each query, in ``candidates`` order (a query whose run finds nothing relevant scores 0)."""
    from rankwise.evaluation.metrics import per_query

    run = {qid: {d: float(s) for d, s in zip(docs, scores[i], strict=True)}
           for i, (qid, _, docs, _) in enumerate(candidates)}
    values = per_query(["nDCG@10"], qrels, run)["nDCG@10"]
    return np.array([values[qid] for qid, *_ in candidates])


def ndcg_delta(values: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The nDCG@10 change against the fp32 reference, with its paired 95% bootstrap interval and the
    randomization test's p-value: a 0.005 target only means something next to the noise of 300 queries."""
    from rankwise.evaluation.significance import bootstrap_ci, randomization_test

    low, high = bootstrap_ci(values - reference)
    return {"ndcg@10_delta": float(np.mean(values - reference)), "ndcg@10_delta_ci95": [low, high],
            "ndcg@10_delta_p": randomization_test(values, reference)}


def delta_text(result: dict[str, Any]) -> str:
    if "ndcg@10_delta" not in result:
        return "-"
    low, high = result["ndcg@10_delta_ci95"]
    return f"{result['ndcg@10_delta']:+.4f} [{low:+.4f}, {high:+.4f}]"


def main() -> None:
    setup_environment()
    args = parse_args()
    from transformers import AutoConfig, AutoTokenizer

    from rankwise.evaluation.metrics import mean, per_query
    from rankwise.pipeline import latency_percentiles

    threads, cpu = start_run(args.threads)
    model = Path(args.model) if args.model else TRAINED_DEFAULT if (TRAINED_DEFAULT / "config.json").is_file() else None
    trained = model is not None
    model = model or fresh_head_model()
    print(f"model: {model}")
    if not trained:
        print("NOTE: no trained reranker given or found: this is the bundled MiniLM with an UNTRAINED head. Its "
              "nDCG@10 is meaningless; speed and score correlation between variants still are.")

    candidates, qrels, bm25_run = load_candidates(args)
    tokenizer = AutoTokenizer.from_pretrained(model)
    config = AutoConfig.from_pretrained(model)
    lengths = [[len(ids) for ids in tokenizer([q] * len(texts), texts, truncation="only_second",
                                             max_length=args.max_length)["input_ids"]] for _, q, _, texts in candidates]
    untruncated = [[len(ids) for ids in tokenizer([q] * len(texts), texts)["input_ids"]] for _, q, _, texts in candidates]
    longer = sum(n > args.max_length for row in untruncated for n in row)
    pairs = sum(len(t) for *_, t in candidates)
    tokens = sum(sum(row) for row in lengths)
    flops = sum(encoder_flops(config, row) for row in lengths)
    print(f"{len(candidates)} queries · {pairs} pairs · {tokens / pairs:.0f} tokens a pair · "
          f"{longer} pairs longer than {args.max_length} tokens (first window scored, as sentence-transformers does)")

    variants = build_variants(args.variants, model, args)
    for name, score in variants.items():  # warm-up: ONNX export/caches, thread pools, first-call allocations
        started = time.perf_counter()
        score(candidates[0][1], candidates[0][3])
        print(f"warm-up {name}: {time.perf_counter() - started:.1f} s")

    times: dict[str, list[float]] = {n: [] for n in variants}
    scores: dict[str, list[np.ndarray]] = {n: [] for n in variants}
    names = list(variants)
    for i, (_, query, _, texts) in enumerate(candidates):
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate who runs first
            started = time.perf_counter()
            raw = variants[name](query, texts)
            times[name].append((time.perf_counter() - started) * 1000)
            scores[name].append(raw)
        if (i + 1) % 5 == 0 or i + 1 == len(candidates):
            print(f"  {i + 1}/{len(candidates)} queries: " + ", ".join(f"{n} {np.median(t):.0f} ms" for n, t in times.items()))

    gemm = gemm_ceilings(threads, m=8192, k=int(config.hidden_size), n=int(config.intermediate_size))
    reference_name = next((n for n in REFERENCES if n in scores), None)
    reference = scores[reference_name] if reference_name else None
    query_ndcg = {name: per_query_ndcg(candidates, scores[name], qrels) for name in names}
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        seconds = sum(times[name]) / 1000
        pct = latency_percentiles(times[name])
        results[name] = {
            "median_ms_per_query": pct["p50"], "p95_ms_per_query": pct["p95"],
            "pairs_per_s": pairs / seconds, "tokens_per_s": tokens / seconds,
            "ndcg@10": float(np.mean(query_ndcg[name])),
            "model_gflops_per_s": flops / seconds / 1e9,
            **(correlations(scores[name], reference) if reference is not None else {}),
            **(ndcg_delta(query_ndcg[name], query_ndcg[reference_name]) if reference_name else {}),
        }
    base = results.get("sentence-transformers")
    for r in results.values():
        r["speedup_vs_sentence_transformers"] = r["pairs_per_s"] / base["pairs_per_s"] if base else None
    bm25_ndcg = mean(per_query(["nDCG@10"], qrels, bm25_run)["nDCG@10"])

    print(f"\nGEMM ceilings now ({gemm['shape']}, {threads} threads): torch fp32 {gemm['torch_fp32_gflops']:.0f} "
          f"GFLOP/s · ORT fp32 {gemm['ort_fp32_gflops']:.0f} GFLOP/s · ORT int8 {gemm['ort_int8_gops']:.0f} GOP/s")
    print(f"BM25 nDCG@10 on these queries: {bm25_ndcg:.4f}" + ("" if trained else "  (reranker head untrained)"))
    header = f"{'variant':24} {'median ms':>9} {'p95 ms':>8} {'pairs/s':>8} {'tokens/s':>9} {'speed-up':>8} " \
             f"{'nDCG@10':>8} {'delta vs fp32 [95% CI]':>26} {'Spearman':>8} {'Pearson':>8} {'top-10':>6} {'GFLOP/s':>8}"
    print(header)
    for name, r in results.items():
        print(f"{name:24} {r['median_ms_per_query']:9.0f} {r['p95_ms_per_query']:8.0f} {r['pairs_per_s']:8.1f} "
              f"{r['tokens_per_s']:9.0f} {r['speedup_vs_sentence_transformers'] or float('nan'):7.2f}× "
              f"{r['ndcg@10']:8.4f} {delta_text(r):>26} {r.get('spearman_mean', float('nan')):8.4f} {r.get('pearson_mean', float('nan')):8.4f} "
              f"{r.get('top10_overlap_mean', float('nan')):6.3f} {r['model_gflops_per_s']:8.1f}")
    write_json(args.out, {
        "benchmark": "rerank_speed", "command": "benchmarks/rerank_speed.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if v is not None),
        "cpu": cpu, "threads": threads, "model": str(model), "model_trained": trained,
        "ndcg_meaningful": trained, "queries": len(candidates), "pairs": pairs, "tokens": tokens,
        "tokens_per_pair": tokens / pairs, "pairs_longer_than_max_length": longer, "max_length": args.max_length,
        "model_gflop_total": flops / 1e9, "gemm_ceilings": gemm, "bm25_ndcg@10": bm25_ndcg,
        "reference_for_correlation": reference_name, "variants": results,
    })


if __name__ == "__main__":
    main()
