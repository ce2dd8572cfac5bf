"""What a shadow reranker costs production: ``/v1/rerank`` latency with and without ``--shadow``, one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/shadow_overhead.py [--docs 20] [--requests 60] [--phases 4]
        [--load 0.5] [--backend auto] [--shadow-chunk 2] [--data DIR] [--out shadow_overhead.json]

Two servers with the same production reranker (MiniLM-L6 shape, a fresh 1-logit head) run on 127.0.0.1;
one also has ``--shadow`` with a second model of the same size and ``--shadow-share 100%``. They are
measured in alternating phases (A, B, A, B, …) so both see the same machine state. Load is open-loop:
Poisson arrivals at ``--load`` × the capacity measured on the no-shadow server before the run (a
production server with no idle time would leave the shadow nothing to do, and a closed loop would hide
queueing). Requests are SciFact test queries with ``--docs`` SciFact abstracts each (synthetic text
without ../shared). Reports p50/p95/p99 per arm, their ratio, and how many offered requests the shadow
scored or dropped (its share of the work). Writes ``benchmarks/results/shadow_overhead.json``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from common import DEFAULT_SCIFACT, cpu_description, print_cpu, setup_environment, write_json
from prometheus_client.parser import text_string_to_metric_families
from serve_load import load_inputs, minilm_model

from rankwise.pipeline import latency_percentiles
from rankwise.serving.readiness import ServeProcess

setup_environment()


def start(args: list[str], log: Path) -> ServeProcess:
    server = ServeProcess(args, log, timeout_s=600)
    if server.problem:
        raise SystemExit(f"error: {server.problem}; see {log}")
    return server


def shadow_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "rankwise_shadow_total"}


def settled(url: str, timeout_s: float = 120.0) -> dict[str, float]:
    """The shadow counters once every offered request is scored, dropped or failed (the shadow has drained)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = shadow_counts(url)
        done = sum(v for k, v in counts.items() if k != "offered")
        if done >= counts.get("offered", 0) or time.monotonic() > deadline:
            return counts
        time.sleep(0.5)


def open_loop(url: str, payloads: list[dict[str, Any]], rate: float, seed: int) -> list[float]:
    """Send ``payloads`` at Poisson arrival times (``rate`` per second); latency of each, in ms."""
    rng = random.Random(seed)
    start_at = time.perf_counter() + 0.2
    times, t = [], 0.0
    for _ in payloads:
        times.append(start_at + t)
        t += rng.expovariate(rate)
    latencies: list[float] = []
    lock = threading.Lock()

    def send(item: tuple[float, dict[str, Any]]) -> None:
        at, payload = item
        time.sleep(max(0.0, at - time.perf_counter()))
        t0 = time.perf_counter()
        response = client.post(f"{url}/v1/rerank", json=payload)
        elapsed = (time.perf_counter() - t0) * 1000
        response.raise_for_status()
        with lock:
            latencies.append(elapsed)

    with httpx.Client(timeout=600) as client, ThreadPoolExecutor(16) as pool:
        list(pool.map(send, zip(times, payloads, strict=True)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20, help="documents per request")
    parser.add_argument("--requests", type=int, default=60, help="requests per phase")
    parser.add_argument("--phases", type=int, default=4, help="phases per arm (alternating)")
    parser.add_argument("--load", type=float, default=0.5, help="arrival rate as a share of measured capacity")
    parser.add_argument("--backend", default="auto", help="server --backend")
    parser.add_argument("--shadow-chunk", type=int, default=2, help="server --shadow-chunk")
    parser.add_argument("--data", default=str(DEFAULT_SCIFACT), help="BEIR SciFact directory (optional)")
    parser.add_argument("--out", default="shadow_overhead.json", help="result file name in benchmarks/results/")
    args = parser.parse_args()
    cpu = cpu_description()
    print_cpu(cpu)
    queries, passages, source = load_inputs(Path(args.data), args.docs)
    rng = random.Random(0)

    def payloads(n: int, offset: int) -> list[dict[str, Any]]:
        return [{"query": queries[(offset + i) % len(queries)], "documents": rng.sample(passages, args.docs)}
                for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        production, shadow = minilm_model(tmp / "production"), minilm_model(tmp / "shadow")
        common = ["--reranker", str(production), "--backend", args.backend, "--audit", "none",
                  "--timeout-ms", "300000", "--feedback-db", str(tmp / "fb.sqlite")]
        plain = start(common, tmp / "plain.log")
        shadowed = start([*common, "--shadow", str(shadow), "--shadow-share", "100%",
                          "--shadow-chunk", str(args.shadow_chunk),
                          "--feedback-db", str(tmp / "fb-shadow.sqlite")], tmp / "shadow.log")
        try:
            with httpx.Client(timeout=600) as client:  # capacity: sequential service time on the plain server
                warm = payloads(12, 10_000)
                service = []
                for payload in warm:
                    t0 = time.perf_counter()
                    client.post(f"{plain.url}/v1/rerank", json=payload).raise_for_status()
                    service.append(time.perf_counter() - t0)
                for payload in warm[:3]:
                    client.post(f"{shadowed.url}/v1/rerank", json=payload).raise_for_status()
            median_s = sorted(service)[len(service) // 2]
            rate = args.load / median_s
            print(f"service time p50 {median_s * 1000:.0f} ms → arrivals at {rate:.2f}/s ({args.load:.0%} of capacity)")
            before = settled(shadowed.url)  # the warm-up requests' shadow work is not counted
            arms: dict[str, list[float]] = {"no shadow": [], "shadow": []}
            for phase in range(args.phases):
                batch = payloads(args.requests, phase * args.requests)  # the same requests for both arms
                for name, server in (("no shadow", plain), ("shadow", shadowed)):
                    arms[name] += open_loop(server.url, batch, rate, seed=phase)
                    time.sleep(1.0)  # let the shadow drain before the other arm's phase
                print(f"phase {phase + 1}/{args.phases} done")
            after = settled(shadowed.url)
        finally:
            plain.stop()
            shadowed.stop()
    counts = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
    result: dict[str, Any] = {"cpu": cpu, "inputs": source, "docs": args.docs, "load": args.load,
                              "arrival_rate_per_s": round(rate, 3), "service_ms_p50": round(median_s * 1000, 1),
                              "shadow_chunk": args.shadow_chunk, "shadow": counts, "arms": {}}
    print(f"\n{'arm':<10} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for name, latencies in arms.items():
        pct = latency_percentiles(latencies)
        result["arms"][name] = {"requests": len(latencies), **{k: round(v, 1) for k, v in pct.items()}}
        print(f"{name:<10} {len(latencies):>8} {pct['p50']:>8.0f} {pct['p95']:>8.0f} {pct['p99']:>8.0f}")
    base, with_shadow = result["arms"]["no shadow"], result["arms"]["shadow"]
    result["p99_ratio"] = round(with_shadow["p99"] / base["p99"], 3)
    result["p50_ratio"] = round(with_shadow["p50"] / base["p50"], 3)
    offered = counts.get("offered", 0)
    print(f"p99 with/without shadow: {result['p99_ratio']:.2f}× · p50 {result['p50_ratio']:.2f}× · shadow scored "
          f"{counts.get('scored', 0)} of {offered} offered, dropped {counts.get('dropped_queue_full', 0)} (queue "
          f"full) + {counts.get('dropped_stale', 0)} (stale)")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
