"""Inference backends: their names, the per-CPU default, and the :class:`Runner` contract every one meets.

Both encoders (the cross-encoder and the bi-encoder) tokenize and batch with the same code and differ only
in the forward call, which is a :class:`Runner`: eager PyTorch, an ONNX Runtime session or an OpenVINO
compiled model (:mod:`rankwise.inference.onnx`, :mod:`rankwise.inference.openvino`).

Why ``auto`` picks per CPU: the fastest backend depends on the instruction set, not only on the model.
OpenVINO's static int8 kernels need AVX-512 VNNI (or AVX-VNNI/AMX) to be fast; on an AVX2-only CPU ONNX
Runtime's dynamic int8 is clearly faster than OpenVINO int8 (``benchmarks/README.md`` has both machine
kinds). ``auto`` takes the fastest backend whose quality was measured equal to fp32 on SciFact: for the
cross-encoder both int8 backends; for embeddings OpenVINO's static int8 but not ONNX Runtime's dynamic
int8, which lowers hybrid retrieval significantly, so AVX2-only CPUs embed a corpus and its queries with
the fused fp32 ONNX graph (a bi-encoder that reranks a few candidates keeps int8). The choice and its
reason are recorded in every answer's provenance.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol, get_args, runtime_checkable

import numpy as np

from rankwise.errors import QueryError
from rankwise.options import choose

Backend = Literal["torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8"]
#: what a user may ask for: a concrete backend, or ``auto`` (the per-CPU default, :func:`resolve_backend`)
BackendChoice = Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
BACKEND_CHOICES: tuple[BackendChoice, ...] = get_args(BackendChoice)
#: what the bi-encoder accepts (its torch path is sentence-transformers' own ``encode``; no bf16 variant)
EMBEDDER_BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
Task = Literal["cross-encoder", "embedder"]
CpuKind = Literal["avx512-vnni", "avx2", "other"]
CPU_KINDS: tuple[CpuKind, ...] = get_args(CpuKind)
#: environment variable that makes rankwise treat this CPU as a lesser kind (``make test-avx2``)
CPU_KIND_ENV = "RANKWISE_CPU_KIND"
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
#: flags hidden when the CPU is treated as ``avx2`` (then also ``avx2`` itself for ``other``)
_ABOVE_AVX2 = ("avx512", "avx_vnni", "amx_", "avx10")

log = logging.getLogger(__name__)

#: ``mapper(forward, batches)`` yields ``forward(batch)`` for each batch in order, possibly several at once
Mapper = Callable[[Callable[[list[int]], np.ndarray], Sequence[list[int]]], Iterable[np.ndarray]]


@runtime_checkable
class Runner(Protocol):
    """One model's forward pass over padded batches (:func:`~rankwise.inference.batching.pad_batch` dicts).

    ``width_multiple``: batch widths are padded up to a multiple of it (some kernels run aligned widths
    faster). ``map``: a :data:`Mapper` that runs several batches at once (a multi-stream model), or
    ``None`` for one batch at a time. Declared, so callers never probe for them.
    """

    width_multiple: int
    map: Mapper | None

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's first output for one batch, one row per input row."""
        ...


class FunctionRunner:
    """A :class:`Runner` around a plain forward function (eager PyTorch): no alignment, one batch at a time."""

    width_multiple = 1
    map: Mapper | None = None

    def __init__(self, forward: Callable[[Mapping[str, np.ndarray]], np.ndarray]) -> None:
        self._forward = forward

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self._forward(feeds)


def check_backend(backend: str, allowed: tuple[Backend, ...] = BACKENDS) -> Backend:
    """``backend`` if it is one of ``allowed``, else a one-line :class:`~rankwise.errors.QueryError`."""
    return choose(backend, allowed, "inference backend")  # type: ignore[return-value]


def default_threads() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity, unlike ``os.cpu_count``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@lru_cache(maxsize=1)
def detected_cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags() -> frozenset[str]:
    """The CPU flags rankwise decides by: the detected ones, less those ``RANKWISE_CPU_KIND`` hides.

    ``RANKWISE_CPU_KIND=avx2`` on an AVX-512 VNNI machine makes every per-CPU choice (``auto``'s backend,
    the int8 recipe, bf16 autocast) the one an AVX2-only machine makes, so its defaults run in tests there
    (``make test-avx2`` also caps torch, oneDNN and MKL). A CPU can be treated as a lesser kind only.
    """
    flags = detected_cpu_flags()
    wanted = os.environ.get(CPU_KIND_ENV, "").strip()
    if not wanted:
        return flags
    kind = choose(wanted, CPU_KINDS, CPU_KIND_ENV)
    if CPU_KINDS.index(kind) < CPU_KINDS.index(_kind_of(flags)):
        raise QueryError(f"{CPU_KIND_ENV}={kind}, but this CPU is {_kind_of(flags)}: a CPU can only be treated "
                         "as a lesser kind")
    hidden = {"avx512-vnni": (), "avx2": _ABOVE_AVX2, "other": (*_ABOVE_AVX2, "avx2")}[kind]
    return frozenset(f for f in flags if not f.startswith(hidden))


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether int8 dot products run on VNNI: without it ORT's u8×s8 kernels can saturate (see the recipe)."""
    return bool((cpu_flags() if flags is None else flags) & _VNNI_FLAGS)


def cpu_kind(flags: frozenset[str] | None = None) -> CpuKind:
    """The CPU class that decides the fastest backend: VNNI int8 dot products, AVX2 only, or neither."""
    return _kind_of(cpu_flags() if flags is None else flags)


def _kind_of(flags: frozenset[str]) -> CpuKind:
    if has_vnni(flags):
        return "avx512-vnni"
    return "avx2" if "avx2" in flags else "other"


@dataclass(frozen=True, slots=True)
class BackendDecision:
    """The backend an encoder runs on and why (``requested``, or the per-CPU rule ``auto`` applied)."""

    backend: Backend
    reason: str

    def __str__(self) -> str:
        return f"{self.backend} ({self.reason})"


def _available(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def resolve_backend(requested: str, task: Task = "cross-encoder", *, device: str = "cpu",
                    flags: frozenset[str] | None = None, reranking: bool = False) -> BackendDecision:
    """The concrete backend for ``requested`` on ``device`` (``auto`` → per CPU, see the module docstring).

    The exported backends run on the CPU only: ``auto`` on another device is torch, and asking for an
    exported one there is a one-line error. A runtime that is not installed falls back to the next choice
    with a one-line warning, never silently.
    """
    allowed = BACKENDS if task == "cross-encoder" else EMBEDDER_BACKENDS
    if requested == "auto" and device != "cpu":
        return BackendDecision("torch", f"auto: only torch runs on device {device}")
    if requested != "auto":
        backend = check_backend(requested, allowed)
        if not backend.startswith("torch") and device != "cpu":
            raise QueryError(f"the {backend} backend runs on the CPU; use backend='torch' for device '{device}'")
        return BackendDecision(backend, "requested")
    kind = cpu_kind(flags)
    preferred: list[tuple[Backend, tuple[str, ...]]] = [("onnx-int8", ("onnxruntime",))]
    if task == "embedder" and not reranking:
        # ONNX Runtime's dynamic int8 embeddings cost SciFact hybrid nDCG@10 0.013 (p = 0.002): ranking a
        # whole corpus by cosine turns small vector errors into reordered near-ties. The fused fp32 graph
        # gives torch's vectors exactly, faster. An embedder that reranks (a tuned bi-encoder over 20
        # candidates) keeps int8, measured as good in make demo (benchmarks/README.md)
        preferred = [("onnx", ("onnxruntime",))]
    if kind == "avx512-vnni":
        preferred.insert(0, ("openvino-int8", ("openvino", "nncf")))
    for backend, modules in preferred:
        if _available(*modules):
            return BackendDecision(backend, f"auto: fastest of equal quality measured on {kind} CPUs")
        log.warning("backend %s is unavailable (%s not installed); trying the next one", backend, ", ".join(modules))
    return BackendDecision("torch", f"auto: no int8 runtime installed on this {kind} CPU")
