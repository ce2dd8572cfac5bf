"""One entry point from a model directory and a backend to a :class:`~rankwise.inference.backends.Runner`.

Both encoders call :func:`exported_runner`, so the cross-encoder and the bi-encoder get the same cache,
errors and backends; each encoder brings only what differs: how its module is traced (``export``) and what
static int8 calibrates on (``calibration``).
"""

from __future__ import annotations

from pathlib import Path

from rankwise.inference.backends import Backend, Runner, Task
from rankwise.inference.onnx import Exporter, OnnxRunner, onnx_model
from rankwise.inference.openvino import Calibration, OpenVinoRunner, openvino_int8_model


def exported_runner(model_dir: Path, task: Task, backend: Backend, export: Exporter, calibration: Calibration,
                    *, threads: int | None = None) -> Runner:
    """The runner for a non-torch ``backend`` of ``model_dir``: ONNX Runtime or OpenVINO, exported/quantised once.

    One place for the cross-encoder and the bi-encoder, so both get the same cache, errors and backends;
    ``calibration`` is only called for ``openvino-int8`` (and only builds an IR when none is cached).
    """
    file = onnx_model(model_dir, task, backend, export)
    if backend == "openvino":
        return OpenVinoRunner(file, threads=threads)
    if backend == "openvino-int8":
        return OpenVinoRunner(openvino_int8_model(model_dir, task, file, calibration), threads=threads)
    return OnnxRunner(file, threads=threads)
