"""Batch work on a real local Ray cluster (``--ray local``): embedding an index, evaluating, monitoring.

The rules under test: the results equal the local path's — the same vectors up to float rounding (and the
same fingerprint), the same rankings — and a worker killed mid-batch is replaced and its batch run again without
leaving a row missing or written twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rankwise.index import Index
from rankwise.index.dense import Embedder

pytest.importorskip("ray")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
SAMPLE_KB = Path(__file__).resolve().parents[1] / "src" / "rankwise" / "data" / "sample_kb"


def _rankwise(*args: str, crash_at: str | None = None, once: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(ENV)
    if crash_at is not None and once is not None:
        env.update(RANKWISE_CRASH_AT=crash_at, RANKWISE_CRASH_ONCE=str(once))
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


@pytest.fixture(scope="module")
def local_index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    return Index.build(SAMPLE_KB / "corpus.jsonl", tmp_path_factory.mktemp("local") / "index",
                       embedder=Embedder(backend="onnx"))


def test_an_index_embedded_on_ray_equals_the_local_build_even_when_a_worker_dies(
        local_index: Index, tmp_path: Path) -> None:
    once = tmp_path / "crashed"
    result = _rankwise("index", str(SAMPLE_KB / "corpus.jsonl"), "--index", str(tmp_path / "ray"), "--ray", "local",
                       "--workers", "2", "--embedding-backend", "onnx", crash_at="ray:embedding", once=once)
    assert result.returncode == 0, result.stderr[-3000:]
    assert once.exists(), "no worker was killed: the retry was not exercised"
    built = Index(tmp_path / "ray")
    assert built.fingerprint == local_index.fingerprint
    np.testing.assert_allclose(built.vectors.vectors, local_index.vectors.vectors, atol=1e-5)  # float rounding at most
    assert "logging_progress" not in result.stderr  # rankwise's own progress, not Ray Data's log lines


def test_an_evaluation_on_ray_ranks_exactly_as_the_local_one_even_when_a_worker_dies(
        local_index: Index, tmp_path: Path, tiny_cross_encoder: Path) -> None:
    common = ["eval", "--dataset", str(SAMPLE_KB), "--index", str(local_index.path), "--reranker",
              str(tiny_cross_encoder), "--backend", "torch", "--first-stage", "bm25,hybrid", "--baseline", "bm25",
              "--limit-queries", "20", "--rerank-k", "20"]
    here = _rankwise(*common, "--run-dir", str(tmp_path / "here"), "--json", str(tmp_path / "here.json"))
    assert here.returncode == 0, here.stderr[-3000:]
    once = tmp_path / "crashed"
    there = _rankwise(*common, "--run-dir", str(tmp_path / "ray"), "--json", str(tmp_path / "ray.json"),
                      "--ray", "local", "--workers", "2", crash_at="ray:search", once=once)
    assert there.returncode == 0, there.stderr[-3000:]
    assert once.exists(), "no worker was killed: the retry was not exercised"
    runs = sorted(p.name for p in (tmp_path / "here").iterdir())
    assert runs == sorted(p.name for p in (tmp_path / "ray").iterdir()) and len(runs) >= 4
    for name in runs:
        assert (tmp_path / "here" / name).read_text() == (tmp_path / "ray" / name).read_text(), name
    a, b = json.loads((tmp_path / "here.json").read_text()), json.loads((tmp_path / "ray.json").read_text())
    assert a["per_query"] == b["per_query"] and a["scores"] == b["scores"]


def test_a_bad_ray_address_is_one_line(local_index: Index) -> None:
    result = _rankwise("eval", "--dataset", str(SAMPLE_KB), "--index", str(local_index.path), "--ray", "somewhere")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--ray takes local, auto or ray://HOST:PORT" in " ".join(result.stderr.split())
