"""Load test of ``rankwise serve``: throughput and latency percentiles of ``/v1/rerank`` on loopback.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py [--model small|minilm|PATH] [--docs 100]
        [--clients 1,4,16] [--requests 24] [--max-length 256] [--backends auto] [--batching on,off]
        [--max-seconds 900] [--data DIR] [--out NAME] [--baseline-src OTHER/src]

One run measures every cell of {backend} × {micro-batching on, off} × {1, 4, 16 concurrent clients} ×
{cache cold, warm}: one server process per (backend, batching) arm runs on 127.0.0.1 (nothing else is
contacted) and the arms alternate cell by cell, so e.g. ``--backends torch,openvino-int8 --batching on``
compares the exact fp32 server with the int8 one under the same load in the same run; each cell sends ``--requests`` requests of ``--docs`` documents with queries never
seen before (cold: every pair is scored), then replays exactly those requests (warm: every pair is a
cache hit). Requests are
SciFact test queries with SciFact abstracts (title + text, cut at ~1,000 characters, about one 256-token
window) when ../shared is present, synthetic sentences otherwise.

``--model small`` (default) builds a randomly initialised 2-layer, 128-wide BERT cross-encoder with the
bundled MiniLM tokenizer: a BERT-tiny-sized model, so the run takes a few minutes on 2 cores; its scores are
meaningless but its cost per token is that of a real small reranker. Pass a model directory for real
numbers. Bounded: at most ``--requests`` per cell and ``--max-seconds`` overall (cells left when time runs
out are skipped and listed). Writes ``benchmarks/results/serve_load.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from common import DEFAULT_SCIFACT, REPO, cpu_description, print_cpu, setup_environment, write_json

from rankwise.pipeline import latency_percentiles
from rankwise.serving.readiness import ServeProcess

setup_environment()


def small_model(directory: Path) -> Path:
    """A BERT-tiny-shaped cross-encoder (2 layers, hidden 128): real cost per token, random scores."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rankwise.models import bundled_minilm_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_dir()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, num_labels=1, max_position_embeddings=512)
    BertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def minilm_model(directory: Path) -> Path:
    """The bundled MiniLM-L6 with a fresh 1-logit head: the shape and cost per token of a rankwise reranker."""
    from sentence_transformers import CrossEncoder

    from rankwise.models import bundled_minilm_dir

    CrossEncoder(str(bundled_minilm_dir()), num_labels=1).save(str(directory))
    return directory


def load_inputs(data: Path, docs: int) -> tuple[list[str], list[str], str]:
    """(queries, passages, source): SciFact if present, else synthetic."""
    if (data / "corpus.jsonl").is_file() and (data / "queries.jsonl").is_file():
        passages = []
        with open(data / "corpus.jsonl") as fh:
            for line in itertools.islice(fh, 4000):
                row = json.loads(line)
                text = f"{row.get('title', '')}\n{row.get('text', '')}".strip()
                passages.append(text if len(text) <= 1000 else text[:1000].rsplit(" ", 1)[0])
        with open(data / "queries.jsonl") as fh:
            queries = [json.loads(line)["text"] for line in fh]
        return queries, passages, f"SciFact ({data})"
    words = ["retrieval", "reranking", "passage", "query", "model", "score", "latency", "budget", "cache", "batch",
             "token", "cross", "encoder", "document", "relevance", "index", "vector", "lexical", "hybrid", "fusion",
             "calibration", "audit"]
    passages = [" ".join(words[(i * 7 + j) % len(words)] for j in range(150)) for i in range(max(docs * 4, 400))]
    queries = [" ".join(words[(i * 3 + j) % len(words)] for j in range(8)) for i in range(1000)]
    return queries, passages, "synthetic"


class Server(ServeProcess):
    def __init__(self, model: Path, backend: str, batching: bool, max_length: int, log: Path,
                 extra: list[str], src: Path | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
        super().__init__(["--reranker", str(model), "--backend", backend, "--max-length", str(max_length),
                          "--audit", "none", "--timeout-ms", "300000", "--batching" if batching else "--no-batching",
                          # its own query log: servers of two versions never share (or upgrade) one file
                          "--feedback-db", str(log.with_suffix(".feedback.sqlite")), *extra],
                         log, timeout_s=600, env=env)
        if self.problem:
            sys.exit(f"error: {self.problem}; see {log}")

    def rounds(self) -> tuple[float, float]:
        """(batching rounds, requests scored in them) so far, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
        return samples.get("rankwise_batch_requests_count", 0.0), samples.get("rankwise_batch_requests_sum", 0.0)


def run_cell(server: Server, payloads: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """Send ``payloads`` with ``clients`` concurrent connections; latency per request and throughput."""
    pending = iter(payloads)
    lock = threading.Lock()
    latencies: list[float] = []
    stats = {"degraded": 0, "cache_hits": 0, "shed": 0, "errors": 0}
    all_latencies: list[float] = []

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            while True:
                with lock:
                    payload = next(pending, None)
                if payload is None:
                    return
                t0 = time.perf_counter()
                response = http.post("/v1/rerank", json=payload)
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    all_latencies.append(elapsed)  # what a client sees, shed requests included
                    if response.status_code in (429, 503):
                        stats["shed"] += 1
                        continue
                    if response.status_code != 200:
                        stats["errors"] += 1
                        continue
                    meta = response.json()["meta"]
                    latencies.append(elapsed)
                    stats["degraded"] += int(meta["degraded"])
                    stats["cache_hits"] += meta["cache_hits"]

    rounds0, scored0 = server.rounds()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    wall = time.perf_counter() - started
    rounds1, scored1 = server.rounds()
    pct = latency_percentiles(latencies)
    client = latency_percentiles(all_latencies)
    rounds = rounds1 - rounds0
    return {"requests": len(latencies), "seconds": round(wall, 3),
            "throughput_rps": round(len(latencies) / wall, 3) if wall else None,
            "p50_ms": round(pct["p50"], 1), "p95_ms": round(pct["p95"], 1), "p99_ms": round(pct["p99"], 1),
            "all_p99_ms": round(client["p99"], 1),
            "requests_per_round": round((scored1 - scored0) / rounds, 2) if rounds else None, **stats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", help="'small' or 'minilm' (built now), or a cross-encoder directory")
    parser.add_argument("--docs", type=int, default=100, help="documents per request")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=24, help="requests per cell")
    parser.add_argument("--max-length", type=int, default=256, help="reranker tokens per window")
    parser.add_argument("--backends", default="auto", help="server --backend values, comma-separated")
    parser.add_argument("--batching", default="on,off", help="micro-batching arms: on, off or on,off")
    parser.add_argument("--timeout-ms", type=int, default=None,
                        help="latency budget sent with every request (default: none, every pair scored)")
    parser.add_argument("--max-in-flight", type=int, default=None, help="server --max-in-flight (admission limit)")
    parser.add_argument("--max-seconds", type=float, default=900, help="overall time bound")
    parser.add_argument("--data", default=str(DEFAULT_SCIFACT), help="BEIR SciFact directory (optional)")
    parser.add_argument("--out", default="serve_load.json", help="result file name in benchmarks/results/")
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="also serve every arm with this checkout's src/ (e.g. a `git worktree` of an earlier "
                             "commit), alternating with the current code cell by cell: before/after in one run")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    cpu = cpu_description()
    print_cpu(cpu)
    queries, passages, source = load_inputs(Path(args.data), args.docs)
    work = Path(tempfile.mkdtemp(prefix="rankwise-serve-load-"))
    builders = {"small": small_model, "minilm": minilm_model}
    model = builders[args.model](work / "model") if args.model in builders else Path(args.model)
    deadline = time.monotonic() + args.max_seconds
    fresh = itertools.count()

    def payloads(n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            i = next(fresh)  # a query never sent before: nothing of it can be cached
            start = (i * 97) % max(1, len(passages) - args.docs)
            payload = {"query": f"{queries[i % len(queries)]} (#{i})", "documents": passages[start: start + args.docs]}
            if args.timeout_ms is not None:
                payload["timeout_ms"] = args.timeout_ms
            out.append(payload)
        return out

    cells: list[dict[str, Any]] = []
    skipped: list[str] = []
    # Both servers run for the whole benchmark (an idle one uses no CPU) and the arms alternate cell by cell,
    # so drifting load on a shared machine hits both arms alike instead of whichever ran second.
    codes = ["current"] + (["baseline"] if args.baseline_src is not None else [])
    arms = [(b.strip(), on.strip(), code) for b in args.backends.split(",") for on in args.batching.split(",")
            for code in codes]
    extra = ["--max-in-flight", str(args.max_in_flight)] if args.max_in_flight else []
    servers = {arm: Server(model, arm[0], arm[1] == "on", args.max_length,
                           work / f"server-{arm[0]}-{arm[1]}-{arm[2]}.log", extra,
                           args.baseline_src if arm[2] == "baseline" else None)
               for arm in arms}
    try:
        for c in clients:
            for (backend, arm, code), server in servers.items():
                if time.monotonic() > deadline:
                    skipped.append(f"{backend}, batching {arm}, {c} clients ({code})")
                    continue
                requests = payloads(args.requests)
                for cache in ("cold", "warm"):
                    cell = {"backend": backend, "batching": arm, "code": code, "clients": c, "cache": cache,
                            **run_cell(server, requests, c)}
                    cells.append(cell)
                    print(f"{code:8} · {backend:13} · batching {arm:3} · {c:2} clients · cache {cache}: "
                          f"{cell['throughput_rps']} req/s, "
                          f"p50 {cell['p50_ms']} ms, p95 {cell['p95_ms']} ms, p99 {cell['p99_ms']} ms "
                          f"(all answers incl. shed: p99 {cell['all_p99_ms']} ms, {cell['shed']} shed), "
                          f"{cell['requests_per_round']} requests/round", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    payload = {
        "what": f"/v1/rerank over loopback, {args.docs} documents per request, {args.requests} requests per cell",
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "cpu": cpu, "model": args.model, "max_length": args.max_length, "inputs": source,
        "server": "python -m rankwise serve --reranker MODEL --backend B --max-length N --audit none "
                  "--timeout-ms 300000 [--no-batching] --feedback-db OWN_FILE (memory cache, default batching "
                  "settings)",
        "baseline_src": str(args.baseline_src) if args.baseline_src else None, "cells": cells, "skipped": skipped,
    }
    write_json(args.out, payload)
    print("\n| code | backend | batching | clients | cache | req/s | p50 ms | p95 ms | p99 ms | requests/round |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        print(f"| {c['code']} | {c['backend']} | {c['batching']} | {c['clients']} | {c['cache']} | {c['throughput_rps']} | {c['p50_ms']} | "
              f"{c['p95_ms']} | {c['p99_ms']} | {c['requests_per_round'] or '—'} |")
    if skipped:
        print(f"skipped (time bound): {', '.join(skipped)}")


if __name__ == "__main__":
    os.chdir(REPO)
    main()
