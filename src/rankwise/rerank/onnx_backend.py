"""ONNX Runtime backend: export a Hugging Face model once, fuse and quantise it, cache it, run it.

Why: on a CPU the cross-encoder is nearly all of search latency, and eager PyTorch leaves a lot on the
table. ONNX Runtime with its transformer graph fusions (one ``Attention`` op per layer, skip-layer-norm,
bias-GELU) and dynamic int8 quantisation (VNNI dot-product kernels where the CPU has them) runs the same
model several times faster. Backends:

* ``torch``: the Hugging Face model in eager PyTorch (reference);
* ``torch-bf16`` (cross-encoder only): the same under bfloat16 autocast — fast where the CPU has native
  bf16 (AVX512-BF16/AMX), scores within ~1e-2 of fp32;
* ``onnx``: fp32 ONNX, fused by ``onnxruntime.transformers.optimizer`` — same scores as torch (~1e-6);
* ``onnx-int8``: the fused graph with int8 weights (per output channel) and dynamically quantised
  activations — not bit-identical, so check its ranking fidelity for your model (``benchmarks/``).

Exported files are cached at ``<model_dir>/.rankwise/onnx/<key>/<task>/model-{opt,int8}.onnx``, each with
a JSON sidecar holding the source key, the export recipe and the file's sha256. ``key`` digests the
model's weight files *and* its JSON configs (a pooling mode or classifier setting is baked into the
graph), so a changed model is re-exported, never silently reused. When the model directory cannot be
written (site-packages, a read-only mount) the cache lives in the user cache dir (platformdirs).

A cached file that fails verification (size or sha256 differs from its sidecar: a torn write, a bad disk,
a hand edit) is never used. It is re-exported with a logged warning rather than raised as an error: the
file is derived data that rankwise owns, and deriving it again is always correct. A file ONNX Runtime
cannot load (:class:`OnnxRunner`) raises :class:`~rankwise.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rankwise.errors import ModelError, QueryError
from rankwise.models import weights_sha256

Backend = Literal["torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8"]
#: what the cross-encoder accepts; ``torch-bf16`` is eager PyTorch under bfloat16 autocast, ``openvino*``
#: run the plain ONNX export on OpenVINO (see :mod:`rankwise.rerank.openvino_backend`)
BACKENDS: tuple[str, ...] = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8")
#: what the bi-encoder accepts (its torch path is sentence-transformers' own ``encode``)
EMBEDDER_BACKENDS: tuple[str, ...] = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
Task = Literal["cross-encoder", "embedder"]
#: Bump when the export recipe changes in a way the sidecar's recipe dict would not show.
RECIPE_VERSION = 1
OPSET = 17
MODEL_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})

log = logging.getLogger(__name__)

#: ``export(dest)`` writes a plain (unfused, fp32) ONNX graph of the model to ``dest``.
Exporter = Callable[[Path], None]
#: ``runner(feeds) -> first output`` with feeds from :func:`~rankwise.rerank.batching.pad_batch`: what every
#: backend (torch, ONNX Runtime, OpenVINO) looks like to the encoders
Runner = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def check_backend(backend: str, allowed: tuple[str, ...] = BACKENDS) -> Backend:
    if backend not in allowed:
        raise QueryError(f"unknown inference backend '{backend}'; choose {', '.join(allowed)}")
    return backend  # type: ignore[return-value]


def default_threads() -> int:
    """CPU cores this process may run on (respects taskset/cgroup affinity, unlike ``os.cpu_count``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    """Whether int8 dot products run on VNNI: without it ORT's u8×s8 kernels can saturate (see recipe)."""
    return bool(cpu_flags() & _VNNI_FLAGS)


Product = Literal["plain", "fp32", "int8"]
#: cached file per product: the plain export (OpenVINO's input), ORT-fused fp32, and its dynamic int8 version
PRODUCT_FILES: dict[str, str] = {"plain": "model.onnx", "fp32": "model-opt.onnx", "int8": "model-int8.onnx"}


def recipe(task: Task, precision: Product) -> dict[str, Any]:
    """Everything that shapes an exported file apart from the model; a sidecar with another recipe is stale.

    int8: weights per output channel (a per-tensor scale lets the widest channel crush the others: on
    MiniLM it cut the mean cosine to fp32 embeddings from 0.994 to 0.945), activations quantised per batch
    at run time; only the projections and feed-forward layers (``MatMul``, ``Attention``) are quantised,
    the embedding tables stay fp32 (quantising them costs accuracy on short texts and saves no time).
    ``reduce_range`` (7-bit weights) is ORT's documented fix for u8×s8 saturation on CPUs without VNNI;
    with VNNI it would only cost precision.
    """
    plain: dict[str, Any] = {"version": RECIPE_VERSION, "task": task, "opset": OPSET,
                             "exporter": "torch.onnx.export(dynamo=False)"}
    if precision == "plain":
        return plain
    base = plain | {"optimizer": "bert"}
    if precision == "fp32":
        return base
    return base | {"quantization": {"weight_type": "QInt8", "per_channel": True, "reduce_range": not has_vnni(),
                                     "op_types": ["MatMul", "Attention"]}}


def source_key(model_dir: Path) -> str:
    """Digest of a model's weights and JSON configs: what an exported graph depends on."""
    digest = hashlib.sha256(weights_sha256(model_dir).encode())
    for file in sorted(p for p in model_dir.rglob("*.json") if ".rankwise" not in p.relative_to(model_dir).parts):
        digest.update(str(file.relative_to(model_dir)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def onnx_model(model_dir: Path, task: Task, backend: Backend, export: Exporter) -> Path:
    """Path of the verified, cached ONNX file for ``backend``, exporting if needed.

    ``onnx`` gets the ORT-fused fp32 graph, ``onnx-int8`` its dynamic int8 version, and the OpenVINO
    backends the plain export (the fused graph holds ``com.microsoft`` ops only ONNX Runtime runs).
    """
    product: Product = {"onnx": "fp32", "onnx-int8": "int8"}.get(backend, "plain")  # type: ignore[assignment]
    name = PRODUCT_FILES[product]

    def build(work: Path) -> None:
        if product == "int8":
            _quantize(onnx_model(model_dir, task, "onnx", export), work, recipe(task, "int8")["quantization"])
        elif product == "fp32":
            _optimize(model_dir, onnx_model(model_dir, task, "openvino", export), work)
        else:
            log.warning("exporting %s to ONNX (one-off; cached next to the model)", model_dir)
            try:
                export(work)
            except Exception as err:  # tracing fails in many deep ways; the user needs one line and a way out
                raise ModelError(f"cannot export '{model_dir}' to ONNX ({type(err).__name__}: {err}); "
                                 "use --backend torch for this model") from err

    return cached_artifact(model_dir, task, name, recipe(task, product), build)


def cached_artifact(model_dir: Path, task: Task, name: str, wanted: dict[str, Any],
                    build: Callable[[Path], None], tools: Sequence[str] = ("onnxruntime", "onnx")) -> Path:
    """The verified cached artifact ``name`` (a file, or a directory of files) for this model and recipe.

    ``build(work)`` creates it at ``work`` when no verified copy exists; it is then moved into place and
    its sidecar (the commit marker) written, so a crash mid-export never leaves a half file in use. The
    sidecar records the versions of ``tools`` (the packages that built it), for whoever debugs a score shift.
    """
    key = source_key(model_dir)
    for root in _cache_roots(model_dir):
        path = root / key[:16] / task / name
        if _verified(path, key, wanted):
            return path
    target = _writable_dir(model_dir, key, task)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=target) as tmp:
        work = Path(tmp) / name
        build(work)
        return _publish(work, target / name, key, wanted, tools)


def _cache_roots(model_dir: Path) -> list[Path]:
    from platformdirs import user_cache_dir

    return [model_dir / ".rankwise" / "onnx", Path(user_cache_dir("rankwise")) / "onnx"]


def _writable_dir(model_dir: Path, key: str, task: Task) -> Path:
    """First cache root we can create files in: next to the model, else the user cache dir."""
    for root in _cache_roots(model_dir):
        directory = root / key[:16] / task
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory):
                return directory
        except OSError:
            continue
    raise ModelError(f"cannot write an ONNX export next to '{model_dir}' or in the user cache dir; "
                     "make one of them writable or use --backend torch")


def _sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in name order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _verified(file: Path, key: str, wanted: dict[str, Any]) -> bool:
    """True only if ``file`` and its sidecar exist, match this model and recipe, and the bytes check out."""
    sidecar = file.with_suffix(".json")
    if not sidecar.is_file():
        return False  # never exported here, or an export died before its commit marker (the sidecar)
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("ONNX cache sidecar %s is unreadable; re-exporting", sidecar)
        return False
    if meta.get("source_key") != key or meta.get("recipe") != wanted:
        return False  # another model version or recipe: stale, not corrupt
    if not file.exists() or _size(file) != meta.get("bytes") or _sha256_path(file) != meta.get("sha256"):
        log.warning("cached model %s is missing or does not match its sha256; re-exporting", file)
        return False
    return True


def _publish(work: Path, dest: Path, key: str, wanted: dict[str, Any], tools: Sequence[str]) -> Path:
    """Move a finished file into place, then write its sidecar (the commit marker), both atomically."""
    meta = {"source_key": key, "recipe": wanted, "sha256": _sha256_path(work), "bytes": _size(work),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": {tool: importlib.metadata.version(tool) for tool in tools}}
    if dest.is_dir():  # a stale directory artifact (another recipe): os.replace cannot overwrite it
        shutil.rmtree(dest)
    os.replace(work, dest)
    tmp = dest.with_suffix(f".json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, dest.with_suffix(".json"))
    return dest


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's tracer warnings and the quantiser's root-logger advice during a one-off export."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _optimize(model_dir: Path, raw: Path, dest: Path) -> None:
    """Apply ORT's BERT fusions (pure graph rewrites, opt_level 0: the result stays portable across CPUs)."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        heads, hidden = int(config.num_attention_heads), int(config.hidden_size)
    except Exception:  # noqa: BLE001 - unknown config layout: let the optimizer detect the shapes
        heads, hidden = 0, 0
    with _quiet():
        optimized = optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    fused = optimized.get_fused_operator_statistics()
    if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
        log.warning("ONNX Runtime found no attention blocks to fuse in %s; the graph runs unfused (slower)", model_dir)
    optimized.save_model_to_file(str(dest))


def _quantize(source: Path, dest: Path, settings: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        # DefaultTensorType: the fused com.microsoft ops defeat ONNX shape inference; their outputs are fp32.
        quantize_dynamic(source, dest, weight_type=QuantType[settings["weight_type"]],
                         per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                         op_types_to_quantize=settings["op_types"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_module(forward: Callable[[dict[str, Any]], Any], module: Any, input_names: list[str], output_name: str,
                  dest: Path) -> None:
    """Trace ``forward(features) -> tensor`` of a torch ``module`` to ONNX with dynamic batch and sequence axes.

    The TorchScript exporter (``dynamo=False``) is used because it needs nothing beyond torch and its
    graphs are the ones ORT's BERT fusions recognise; the model must be loaded with eager attention.
    """
    import torch

    class Positional(torch.nn.Module):  # the exporter traces positional inputs; HF/ST modules want names
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return forward(dict(zip(input_names, tensors, strict=True)))

    dummy = tuple(torch.ones((2, 16), dtype=torch.long) if n != "token_type_ids" else torch.zeros((2, 16), dtype=torch.long)
                  for n in input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names} | {output_name: {0: "batch"}}
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(Positional().eval(), dummy, str(dest), input_names=input_names, output_names=[output_name],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def model_inputs(tokenizer: Any) -> list[str]:
    """The subset of :data:`MODEL_INPUTS` the tokenizer produces (RoBERTa-style models have no token types)."""
    names = set(getattr(tokenizer, "model_input_names", MODEL_INPUTS))
    return [n for n in MODEL_INPUTS if n in names]


class OnnxRunner:
    """One ONNX Runtime CPU session: ``runner(feeds) -> first output``. Thread-safe (ORT sessions are)."""

    def __init__(self, file: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not file.is_file():
            raise ModelError(f"ONNX model '{file}' does not exist; check the path, or load the Hugging Face "
                             "model directory so rankwise exports it")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises several types for a bad file; one line for all of them
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelError(f"ONNX model '{file}' cannot be loaded ({reason}); delete it — rankwise re-exports "
                             "cached models on the next load") from err
        self.file = file
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session.run([self.output_name], {n: feeds[n] for n in self.input_names})[0]
