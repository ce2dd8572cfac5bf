"""The reranker contract, checked for every shipped reranker kind on every backend it serves from.

What a user is promised: a score computed in Python (``Reranker.score``) is the score ``/v1/rerank``
answers — ``raw_score`` and the calibrated ``relevance_score`` — whether the server computed it now or
answered from its score cache, in the same order (raw descending, ties by input position). The app is the
real FastAPI application with its real state (model router, micro-batcher, memory cache), run in-process
by Starlette's test client so that eight kind × backend pairs fit in the suite's time.

Every kind is checked on a model whose scores spread far beyond the tolerance (a comparison of near-
constant scores would prove nothing), and its calibration is its own: the bi-encoder's ``(1 + cos) / 2``
must survive the cache as well as the cross-encoder's sigmoid.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import KB_TEXTS, QUERY, openvino_capped
from rankwise.index import Index
from rankwise.models import bundled_minilm_dir, weights_sha256
from rankwise.rerank.base import rank_order, scoring_key
from rankwise.rerank.declaration import Declaration, ResidualBase, write_declaration, write_reranker_kind
from rankwise.rerank.loading import LoadOptions, load_reranker

KINDS_AND_BACKENDS = [
    ("cross-encoder", "torch"), ("cross-encoder", "onnx-int8"), ("cross-encoder", "openvino-int8"),
    ("bi-encoder", "torch"), ("bi-encoder", "onnx-int8"),
    ("residual", "torch"), ("residual", "onnx-int8"),
]


@pytest.fixture(scope="module")
def kind_models(spread_cross_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One model directory per kind, each declaring its kind as ``rankwise train`` does."""
    root = tmp_path_factory.mktemp("contract")
    bi = Path(shutil.copytree(bundled_minilm_dir(), root / "bi"))
    write_reranker_kind(bi, "bi-encoder")
    residual = Path(shutil.copytree(spread_cross_encoder, root / "residual"))
    # a weight large enough that the cosine moves the order as much as the correction does
    write_declaration(residual, Declaration("cross-encoder", ResidualBase(
        "minilm", weights_sha256(bundled_minilm_dir()), weight=8.0, center=0.2)))
    return {"cross-encoder": spread_cross_encoder, "bi-encoder": bi, "residual": residual}


@pytest.mark.parametrize(("kind", "backend"), KINDS_AND_BACKENDS)
def test_the_library_and_the_server_give_the_same_scores_cold_and_cached(kind: str, backend: str,
                                                                         kind_models: dict[str, Path],
                                                                         kb_index: Index) -> None:
    if backend.startswith("openvino") and openvino_capped():
        pytest.skip(openvino_capped() or "")
    from fastapi.testclient import TestClient

    from rankwise.serving.app import create_app
    from rankwise.serving.config import ServeConfig
    from rankwise.serving.state import load_state

    model = str(kind_models[kind])
    options = LoadOptions(backend=backend)  # type: ignore[arg-type]
    library = load_reranker(model, options)
    assert library is not None
    want = library.score(QUERY, KB_TEXTS)
    assert float(np.std(want.raw)) > 0.05, "scores must spread far beyond the tolerance for the check to mean anything"
    if kind == "bi-encoder":  # the calibration that used to be lost on the way through the cache
        np.testing.assert_allclose(want.calibrated, (1 + want.raw) / 2, rtol=0, atol=1e-7)
    config = ServeConfig(index=kb_index.path, reranker=model, load=options)
    with TestClient(create_app(load_state(config))) as client:
        answers = {}
        for attempt in ("cold", "cached"):
            response = client.post("/v1/rerank", json={"query": QUERY, "documents": KB_TEXTS, "raw_scores": True})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["meta"]["cache_hits"] == (0 if attempt == "cold" else len(KB_TEXTS))
            answers[attempt] = body["results"]
            raw = np.array([r["raw_score"] for r in sorted(body["results"], key=lambda r: r["index"])])
            calibrated = np.array([r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])])
            print(f"{kind:13} {backend:13} {attempt:6} max |library − HTTP|: raw "
                  f"{np.max(np.abs(raw - want.raw)):.2e}, calibrated {np.max(np.abs(calibrated - want.calibrated)):.2e}")
            np.testing.assert_allclose(raw, want.raw, rtol=0, atol=1e-5, err_msg=f"{kind} {backend} {attempt}")
            np.testing.assert_allclose(calibrated, want.calibrated, rtol=0, atol=1e-6,
                                       err_msg=f"{kind} {backend} {attempt}")
            assert [r["index"] for r in body["results"]] == rank_order(raw)
        assert answers["cached"] == answers["cold"]  # the cache answers exactly what was computed


def test_the_scoring_key_covers_what_changes_scores_and_nothing_else(kind_models: dict[str, Path]) -> None:
    from rankwise.rerank.bi_encoder import BiEncoderReranker
    from rankwise.rerank.residual import ResidualReranker

    bi = kind_models["bi-encoder"]
    torch_bi = BiEncoderReranker(bi, backend="torch")
    assert scoring_key(BiEncoderReranker(bi, backend="torch", cache_size=10, name="alias")) == scoring_key(torch_bi)
    assert scoring_key(BiEncoderReranker(bi, backend="onnx-int8")) != scoring_key(torch_bi)
    assert scoring_key(BiEncoderReranker(bi, backend="torch", max_length=64)) != scoring_key(torch_bi)
    residual = ResidualReranker(kind_models["residual"], backend="torch")
    cross = load_reranker(str(kind_models["cross-encoder"]), LoadOptions(backend="torch"))
    assert scoring_key(residual) != scoring_key(cross)
    assert residual.scoring_key()["base"]["weight"] == 8.0


def test_one_ordering_rule_raw_descending_then_input_position() -> None:
    assert rank_order([0.5, 2.0, 0.5, -1.0, 2.0]) == [1, 4, 0, 2, 3]
    assert rank_order(np.array([], dtype=np.float32)) == []
