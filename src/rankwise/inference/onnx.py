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

Exported files live in the verified cache of :mod:`rankwise.inference.artifacts`
(``model.onnx``, ``model-opt.onnx``, ``model-int8.onnx``). A file ONNX Runtime cannot load
(:class:`OnnxRunner`) raises :class:`~rankwise.errors.ModelError`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rankwise.errors import ModelError
from rankwise.inference.artifacts import cached_artifact
from rankwise.inference.backends import Backend, Mapper, Task, default_threads, has_vnni

#: Bump when the export recipe changes in a way the sidecar's recipe dict would not show.
RECIPE_VERSION = 1
OPSET = 17
MODEL_INPUTS: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")

log = logging.getLogger(__name__)

#: ``export(dest)`` writes a plain (unfused, fp32) ONNX graph of the model to ``dest``.
Exporter = Callable[[Path], None]


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
            log.warning("exporting %s to ONNX (one-off; cached in %s)", model_dir, work.parent.parent)
            try:
                export(work)
            except Exception as err:  # tracing fails in many deep ways; the user needs one line and a way out
                raise ModelError(f"cannot export '{model_dir}' to ONNX ({type(err).__name__}: {err}); "
                                 "use --backend torch for this model") from err

    return cached_artifact(model_dir, task, name, recipe(task, product), build)


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
    """One ONNX Runtime CPU session, a :class:`~rankwise.inference.backends.Runner`. Thread-safe (ORT sessions are)."""

    width_multiple = 1
    map: Mapper | None = None

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
