"""OpenVINO backend for both encoders: the plain ONNX export, run (and statically quantised) by OpenVINO.

Why a second runtime: on CPUs with AVX-512 VNNI (and BF16) OpenVINO's oneDNN kernels run the same MiniLM
cross-encoder much faster than ONNX Runtime, because static int8 fixes activation scales once instead of
measuring them per batch (``benchmarks/README.md`` has the numbers for both CPU kinds). Backends:

* ``openvino``: the plain fp32 graph at OpenVINO's default inference precision — bfloat16 on CPUs with
  native bf16 (scores within ~1e-2 of fp32, rankings nearly identical), fp32 elsewhere;
* ``openvino-int8``: post-training static int8 quantisation with NNCF (SmoothQuant + fast bias
  correction, the recipe NNCF documents for transformers). Static quantisation needs activation ranges,
  so it calibrates on (query, passage) windows the caller supplies — :class:`CrossEncoderReranker`
  passes the model's own calibration queries (written by ``rankwise train``) or the bundled knowledge
  base's, tokenized exactly like real requests (:mod:`rankwise.inference.calibration`). OpenVINO's
  data-free alternative (int8 weights with dynamic activation quantisation) measured no faster than
  bf16 here, and ONNX-format static quantisation ran slower than quantising OpenVINO's own graph.

The quantised model is cached as an OpenVINO IR directory beside the ONNX exports, under the same
verified-sidecar scheme (:func:`rankwise.inference.artifacts.cached_artifact`), keyed by the model's
weights, the recipe and the calibration data's digest (one IR per calibration set).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rankwise.errors import ModelError
from rankwise.inference.artifacts import cached_artifact
from rankwise.inference.backends import Mapper, Task, default_threads, detected_cpu_flags

log = logging.getLogger(__name__)

OPENVINO_RECIPE_VERSION = 1
IR_NAME = "openvino-int8"
#: ``calibration() -> (feeds, source)``: padded batches (``pad_batch`` dicts) of representative windows and
#: where they came from (see :mod:`rankwise.inference.calibration`)
Calibration = Callable[[], tuple[Sequence[Mapping[str, np.ndarray]], str]]


def calibration_digest(feeds: Sequence[Mapping[str, np.ndarray]]) -> str:
    """Digest of calibration batches: a different calibration set must produce a different cached model."""
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(feed[name]).tobytes())
    return digest.hexdigest()[:16]


def openvino_int8_model(model_dir: Path, task: Task, plain_onnx: Path, calibration: Calibration) -> Path:
    """Path of the verified, cached int8 OpenVINO IR (``model.xml``) for ``model_dir``, quantising if needed."""
    # the digest of the actual windows is the cache key, so they are built even when the IR is cached
    # (~0.07 s): safer than a hand-listed key that would miss a tokenizer, length or window-rule change
    feeds, source = calibration()
    if not feeds:
        raise ModelError("openvino-int8 needs calibration batches; none were given")
    digest = calibration_digest(feeds)
    wanted = {"version": OPENVINO_RECIPE_VERSION, "task": task, "source": "plain ONNX export",
              "quantizer": "nncf.quantize(model_type=TRANSFORMER)", "calibration": digest,
              "calibration_source": source, "calibration_batches": len(feeds)}

    def build(work: Path) -> None:
        import nncf
        import openvino as ov

        model = ov.Core().read_model(str(plain_onnx))
        log.warning("quantising %s to OpenVINO int8 (one-off; %d calibration batches)", plain_onnx.parent, len(feeds))
        # NNCF draws progress bars on stdout, which belongs to the caller (e.g. `rankwise search --json`):
        # they go to stderr when rankwise logs at INFO (--verbose), nowhere otherwise
        verbose = log.isEnabledFor(logging.INFO)
        with contextlib.redirect_stdout(sys.stderr if verbose else io.StringIO()):
            quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(feeds))
        work.mkdir()
        ov.save_model(quantized, str(work / "model.xml"))

    # one IR per calibration set: the windows depend on max_length and the long-document rule, so a
    # service alternating those settings would otherwise requantise (~20 s) on every switch
    return cached_artifact(model_dir, task, f"{IR_NAME}-{digest}", wanted, build, tools=("openvino", "nncf")) / "model.xml"


def onednn_cap_blocks_openvino() -> str | None:
    """Why OpenVINO cannot compile models in this process, or None.

    OpenVINO's CPU plugin reads ``ONEDNN_MAX_CPU_ISA`` into its bundled oneDNN but picks its own kernels
    from the real CPU: capped below AVX-512 on an AVX-512 CPU, it finds no implementation for Softmax and
    compiles nothing. That is the AVX2 emulation of ``make test-avx2``; a real AVX2 CPU runs OpenVINO.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if not cap or cap.startswith(("AVX512", "AVX10", "AMX", "ALL", "DEFAULT")):
        return None
    if not any(flag.startswith("avx512") for flag in detected_cpu_flags()):
        return None
    return (f"OpenVINO compiles no model with ONEDNN_MAX_CPU_ISA={cap} on an AVX-512 CPU; unset it, or use "
            "an ONNX backend (what auto picks on AVX2-only CPUs)")


class OpenVinoRunner:
    """An OpenVINO CPU model, a :class:`~rankwise.inference.backends.Runner`; thread-safe (one infer request per thread).

    With two or more threads it compiles two streams (one thread each) and sets ``map``, which runs two
    batches at once: faster per query than two threads sharing each batch, because each stream skips the
    per-op thread synchronisation and one batch's memory-bound ops overlap the other's matrix products.
    ``streams=1`` restores one batch at a time (``map`` is then None).
    """

    #: batch widths are padded up to a multiple of this (:func:`~rankwise.inference.batching.pad_batch`): the
    #: int8 attention kernels run slightly narrower unaligned batches (255 or 223 wide) *slower* in absolute
    #: terms than the next aligned width; masked positions leave every row's output unchanged
    width_multiple = 16

    def __init__(self, file: Path, *, threads: int | None = None, streams: int | None = None) -> None:
        import openvino as ov

        if not file.is_file():
            raise ModelError(f"OpenVINO model '{file}' does not exist")
        if blocked := onednn_cap_blocks_openvino():
            raise ModelError(blocked)
        threads = threads or default_threads()
        streams = max(1, min(streams or 2, threads))
        core = ov.Core()
        try:
            model = core.read_model(str(file))
            self.compiled = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams,
                "PERFORMANCE_HINT": "LATENCY" if streams == 1 else "THROUGHPUT"})
        except Exception as err:  # OpenVINO raises RuntimeError with a multi-line trace for a bad file
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"OpenVINO cannot load '{file}' ({reason}); delete it — rankwise re-creates "
                             "cached models on the next load") from err
        self.file = file
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self.precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.streams = int(self.compiled.get_property("NUM_STREAMS"))
        self._local = threading.local()
        # OpenVINO's bindings set up their numpy bridge on first use, under a once-flag and the GIL; two
        # stream threads making that first use together were seen to deadlock (each holding one of the two
        # locks), so it is made here, on the loading thread, before any stream can run
        ov.Tensor(np.zeros(1, dtype=np.float32))
        #: ``map(forward, batches)`` on one worker per stream, or None (one batch at a time) — see run_batched
        self.map: Mapper | None = ThreadPoolExecutor(self.streams, thread_name_prefix="rankwise-openvino").map \
            if self.streams > 1 else None

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        # share_inputs: OpenVINO reads the arrays in place instead of copying them into its own tensors from
        # Python; that copy (tensor.data[:] = ...) was seen to deadlock with two streams under CPU contention
        result = request.infer({n: np.ascontiguousarray(feeds[n]) for n in self.input_names}, share_inputs=True)
        return np.array(result[0], dtype=np.float32)  # a copy: the request reuses its output buffer
