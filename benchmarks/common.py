"""Helpers shared by the benchmark scripts: CPU description, GEMM ceilings, SciFact inputs, FLOPs, JSON output.

Benchmarks compare variants *within one run* (interleaved, same inputs), because absolute times on a
shared 2-core VM move by 2× between runs and machines; the GEMM ceilings measured here put the model's
achieved FLOP/s in the context of what this CPU did in the same minutes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: the BEIR copy beside the repo (../shared); overridable with --data
DEFAULT_SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"
#: indexes and training runs too big for the repo: ``$RANKWISE_BENCH_CACHE`` (default /work/cache)
BENCH_CACHE = Path(os.environ.get("RANKWISE_BENCH_CACHE", "/work/cache"))
PREBUILT_SCIFACT_INDEX = BENCH_CACHE / "scifact"
#: where benchmarks/train_beir.py leaves the SciFact reranker it trains
TRAINED_SCIFACT_RERANKER = BENCH_CACHE / "runs" / "scifact-reranker" / "final"
INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                     "amx_int8", "amx_bf16")


def setup_environment() -> None:
    """Offline and quiet: the benchmarks never touch the network and print only their own lines.

    Tokenizer parallelism stays at the library default (on) for every variant alike, as a user gets it.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cpu_description() -> dict[str, Any]:
    """CPU model, core count and the SIMD flags that decide which kernels ONNX Runtime and torch can use."""
    from rankwise.inference.backends import cpu_flags, cpu_kind, default_threads, resolve_backend

    model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                     model)
    except (OSError, subprocess.SubprocessError):
        pass
    flags = cpu_flags()
    return {"model": model, "cores": default_threads(), "kind": cpu_kind(flags),
            "auto_backend": str(resolve_backend("auto")), "flags": {f: f in flags for f in INTERESTING_FLAGS},
            "python": sys.version.split()[0], "load_average_at_start": list(os.getloadavg())}


def print_cpu(cpu: dict[str, Any]) -> None:
    present = [f for f, on in cpu["flags"].items() if on]
    absent = [f for f, on in cpu["flags"].items() if not on]
    print(f"CPU: {cpu['model']} · {cpu['kind']} · {cpu['cores']} cores · auto backend {cpu['auto_backend']} · "
          f"flags: {' '.join(present)}"
          + (f" · missing: {' '.join(absent)}" if absent else ""))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in cpu['load_average_at_start'])} "
          "(a shared machine: compare variants within this run, not across runs)")


def start_run(threads: int | None) -> tuple[int, dict[str, Any]]:
    """Fix the torch thread count (default: all cores), print the CPU and return ``(threads, cpu)``."""
    import torch

    from rankwise.inference.backends import default_threads

    threads = threads or default_threads()
    torch.set_num_threads(threads)
    cpu = cpu_description()
    print_cpu(cpu)
    return threads, cpu


def best_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Best of ``repeats`` timings after one warm-up: a ceiling estimate, robust to background load."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def gemm_ceilings(threads: int, m: int, k: int, n: int) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) this CPU reaches on an ``m×k @ k×n`` GEMM, measured now with ``threads``.

    fp32 through torch (oneDNN/MKL) and through ONNX Runtime's MLAS ``MatMul``; int8 through ORT's
    ``MatMulInteger`` (u8 activations × s8 weights, the kernel dynamic quantisation runs on; VNNI where
    present). The shape should be the model's own (tokens × hidden → intermediate).
    """
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    flops = 2.0 * m * k * n
    a32, b32 = torch.randn(m, k), torch.randn(k, n)
    results = {"shape": f"{m}x{k}@{k}x{n}", "torch_fp32_gflops": flops / best_seconds(lambda: a32 @ b32) / 1e9}

    def ort_session(dtype_a: int, dtype_b: int, op: str, b: np.ndarray) -> ort.InferenceSession:
        inputs = [helper.make_tensor_value_info("a", dtype_a, [m, k])]
        out_type = TensorProto.INT32 if op == "MatMulInteger" else TensorProto.FLOAT
        node = helper.make_node(op, ["a", "b"], ["c"])
        graph = helper.make_graph([node], "gemm", inputs, [helper.make_tensor_value_info("c", out_type, [m, n])],
                                  initializer=[numpy_helper.from_array(b, "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    fp32 = ort_session(TensorProto.FLOAT, TensorProto.FLOAT, "MatMul", rng.standard_normal((k, n), dtype=np.float32))
    a_fp32 = rng.standard_normal((m, k), dtype=np.float32)
    results["ort_fp32_gflops"] = flops / best_seconds(lambda: fp32.run(None, {"a": a_fp32})) / 1e9
    int8 = ort_session(TensorProto.UINT8, TensorProto.INT8, "MatMulInteger",
                       rng.integers(-127, 128, (k, n), dtype=np.int8))
    a_u8 = rng.integers(0, 256, (m, k), dtype=np.uint8)
    results["ort_int8_gops"] = flops / best_seconds(lambda: int8.run(None, {"a": a_u8})) / 1e9
    return results


def encoder_flops(config: Any, lengths: Sequence[int]) -> float:
    """Multiply-adds ×2 of a BERT-style encoder over sequences of the given (unpadded) lengths.

    Per layer and sequence of ``s`` tokens: Q, K, V, O projections ``8·s·h²``, feed-forward ``4·s·h·i``,
    attention scores and weighted sum ``4·s²·h``. Embedding lookups, layer norms, softmax and the
    classifier head are left out (well under 1% here), so this is the *useful* work, not padded work.
    """
    h, i, layers = int(config.hidden_size), int(config.intermediate_size), int(config.num_hidden_layers)
    s = np.asarray(lengths, dtype=np.float64)
    return float(layers * (8 * s * h * h + 4 * s * h * i + 4 * s * s * h).sum())


def scifact_dir(path: str | None) -> Path:
    directory = Path(path) if path else DEFAULT_SCIFACT
    if not (directory / "corpus.jsonl").is_file():
        sys.exit(f"error: no SciFact corpus at '{directory}'; pass --data DIR (a BEIR scifact directory)")
    return directory


def bm25_index(data: Path, index: str | None) -> Any:
    """The index to take BM25 candidates from: --index, the shared prebuilt one, or a BM25-only one built once."""
    from platformdirs import user_cache_dir

    from rankwise import Index

    if index:
        return Index(index)
    if (PREBUILT_SCIFACT_INDEX / "manifest.json").is_file():
        return Index(PREBUILT_SCIFACT_INDEX)
    own = Path(user_cache_dir("rankwise")) / "benchmarks" / "scifact-bm25"
    if (own / "manifest.json").is_file():
        return Index(own)
    print(f"building a BM25-only SciFact index in {own} (one-off, ~1 minute)")
    return Index.build(data, own, embedding_model=None)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``benchmarks/results/<name>``, or to ``name`` itself when it is a path with a folder.

    Prints where it went; a file outside the repository is shown by its absolute path (never an error
    after a long run).
    """
    given = Path(name)
    path = given if given.is_absolute() or given.parent != Path(".") else RESULTS / given
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n")
    shown = path.resolve()
    print(f"wrote {shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown}")
    return path
