"""What an interleaving experiment costs a search: p50/p99 of ``/v1/search`` with and without one.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/experiment_latency.py [--requests 60] [--model small|minilm]
        [--traffic 0.2] [--baseline-src OTHER/src]

Four servers on the bundled sample KB, side by side: production alone, a second model alone (the slower
arm's own cost), production interleaved with that model (``mode = "interleave"``, every request in the
experiment), and the same experiment enrolling only ``--traffic`` of the requests (``traffic = 0.2``). One client sends the same fresh queries to each in turn (round-robin, so drifting load hits
all alike); every query is new to every server, so no score is cached. With ``--baseline-src`` a fourth
server runs the interleaving experiment on another checkout's code (e.g. before the arms ran concurrently).
The target: interleaved p50 within 1.2× of the slower arm served alone.

Writes ``benchmarks/results/experiment_latency.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import REPO, cpu_description, print_cpu, setup_environment, write_json
from serve_load import minilm_model, small_model

from rankwise.pipeline import latency_percentiles
from rankwise.serving.readiness import ServeProcess

setup_environment()
KB = REPO / "src" / "rankwise" / "data" / "sample_kb"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=60, help="searches per server")
    parser.add_argument("--model", choices=["small", "minilm"], default="small")
    parser.add_argument("--traffic", type=float, default=0.2, help="share of requests the partial experiment enrols")
    parser.add_argument("--baseline-src", type=Path, default=None)
    args = parser.parse_args()
    cpu = cpu_description()
    print_cpu(cpu)

    from rankwise.index import Index
    from rankwise.registry import ModelCard, Registry

    work = Path(tempfile.mkdtemp(prefix="rankwise-experiment-latency-"))
    index = Index.build(KB, work / "index")
    build = small_model if args.model == "small" else minilm_model
    registry = Registry(work / "registry")
    for seed in (0, 1):  # two different models of the same shape: production and candidate
        import torch

        torch.manual_seed(seed)
        registry.register(build(work / f"model-{seed}"), ModelCard(name=f"seed {seed}"))
    registry.promote("v1", forced=True)
    experiment = work / "experiment.toml"
    experiment.write_text('name = "latency"\nmode = "interleave"\nunit = "request"\n'
                          '[[arms]]\nname = "production"\nreranker = "v1"\n'
                          '[[arms]]\nname = "candidate"\nreranker = "v2"\n')
    partial = work / "partial.toml"
    partial.write_text(experiment.read_text().replace('unit = "request"\n', f'unit = "request"\ntraffic = {args.traffic}\n'))
    common = ["--index", str(index.path), "--registry", str(registry.root), "--backend", "auto", "--audit", "none",
              "--feedback-db", "none", "--timeout-ms", "60000", "--cache-size", "0"]
    setups: dict[str, tuple[list[str], Path | None]] = {
        "production alone": (["--reranker", "v1"], None),
        "candidate alone": (["--reranker", "v2"], None),
        "interleaved": (["--reranker", "v1", "--experiment", str(experiment)], None),
        f"interleaved on {args.traffic:.0%} of requests": (["--reranker", "v1", "--experiment", str(partial)], None),
    }
    if args.baseline_src is not None:
        setups["interleaved (baseline code)"] = (["--reranker", "v1", "--experiment", str(experiment)],
                                                 args.baseline_src)
    servers: dict[str, ServeProcess] = {}
    try:
        for name, (extra, src) in setups.items():
            env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
            server = ServeProcess([*common, *extra], work / f"{name.replace(' ', '-')}.log", timeout_s=600, env=env)
            if server.problem:
                raise SystemExit(f"error: {name}: {server.problem}; see {server.log}")
            servers[name] = server
        timings: dict[str, list[float]] = {name: [] for name in servers}
        words = ["reset", "mfa", "refund", "annual", "plan", "vpn", "rotate", "credentials", "contractor", "invoice"]
        with httpx.Client(timeout=120) as client:
            for i in range(args.requests + 5):
                query = f"{words[i % 10]} {words[(i * 3 + 1) % 10]} {words[(i * 7 + 2) % 10]} #{i}"
                for name, server in servers.items():
                    started = time.perf_counter()
                    answer = client.post(f"{server.url}/v1/search", json={"query": query, "k": 10})
                    elapsed = (time.perf_counter() - started) * 1000
                    if answer.status_code != 200:
                        raise SystemExit(f"error: {name} answered {answer.status_code}: {answer.text[:300]}")
                    if i >= 5:  # the first requests warm each server's lazy paths
                        timings[name].append(elapsed)
    finally:
        for server in servers.values():
            server.stop()
    rows: dict[str, Any] = {}
    for name, values in timings.items():
        p = latency_percentiles(values)
        rows[name] = {"p50_ms": round(p["p50"], 1), "p99_ms": round(p["p99"], 1), "requests": len(values)}
    slower = max(rows["production alone"]["p50_ms"], rows["candidate alone"]["p50_ms"])
    for name, row in rows.items():
        row["p50_vs_slower_arm"] = round(row["p50_ms"] / slower, 2)
        print(f"{name:28} p50 {row['p50_ms']:8.1f} ms  p99 {row['p99_ms']:8.1f} ms  "
              f"p50 = {row['p50_vs_slower_arm']:.2f}× the slower arm alone")
    write_json("experiment_latency.json", {
        "what": f"/v1/search on the sample KB, k 10, one client, {args.requests} fresh queries per server, "
                f"score cache off, model {args.model}, backend auto; partial experiment traffic {args.traffic}",
        "cpu": cpu, "baseline_src": str(args.baseline_src) if args.baseline_src else None, "servers": rows})


if __name__ == "__main__":
    os.chdir(REPO)
    main()
