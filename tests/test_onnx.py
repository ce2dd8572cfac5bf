"""ONNX Runtime backends: equivalence with torch, int8 fidelity, batching invariance, the export cache."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import (
    KB,
    KB_TEXTS,
    QUERY,
    TEXTS,
    assert_same_ranking,
    build_tiny_cross_encoder,
    corrupt_middle,
    openvino_capped,
    top_k,
)
from rankwise.errors import ModelError, QueryError
from rankwise.inference.onnx import OnnxRunner
from rankwise.models import bundled_minilm_dir
from rankwise.rerank import CrossEncoderReranker


def _exports(model_dir: Path) -> list[Path]:
    return sorted((model_dir / ".rankwise" / "onnx").glob("*/cross-encoder/model-opt.onnx"))


@pytest.mark.parametrize("long_documents", ["maxp", "firstp", "mean", "topk-mean"])
def test_onnx_fp32_scores_match_torch(spread_cross_encoder: Path, long_documents: str) -> None:
    kwargs = {"max_length": 48, "long_documents": long_documents}
    texts = KB_TEXTS + TEXTS
    torch_scores = CrossEncoderReranker(spread_cross_encoder, **kwargs, backend="torch").score(QUERY, texts)  # type: ignore[arg-type]
    onnx = CrossEncoderReranker(spread_cross_encoder, backend="onnx", **kwargs)  # type: ignore[arg-type]
    onnx_scores = onnx.score(QUERY, texts)
    assert_same_ranking(torch_scores.raw, onnx_scores.raw, atol=1e-3, min_spearman=0.999, min_top_overlap=5)
    np.testing.assert_allclose(onnx_scores.calibrated, torch_scores.calibrated, atol=1e-4)
    assert onnx_scores.truncated == torch_scores.truncated > 0  # long texts were split, and counted
    assert onnx_scores.stats["windows"] == torch_scores.stats["windows"]
    assert onnx.backend == "onnx" and onnx.name.endswith("[onnx]")


def test_torch_bf16_backend_ranks_like_fp32(spread_cross_encoder: Path) -> None:
    fp32 = CrossEncoderReranker(spread_cross_encoder, max_length=48, backend="torch").score(QUERY, KB_TEXTS)
    bf16 = CrossEncoderReranker(spread_cross_encoder, backend="torch-bf16", max_length=48)
    scores = bf16.score(QUERY, KB_TEXTS)
    assert bf16.name.endswith("[torch-bf16]") and scores.truncated == fp32.truncated
    # bfloat16 keeps 8 mantissa bits: logits move by a few 1e-2, the order of clearly different scores does not
    assert_same_ranking(fp32.raw, scores.raw, atol=0.15, min_spearman=0.97)
    assert not np.array_equal(scores.raw, fp32.raw), "bf16 autocast must actually be applied"


def test_two_logit_models_export_and_calibrate_like_torch(tmp_path: Path) -> None:
    path = build_tiny_cross_encoder(tmp_path / "m2", num_labels=2, seed=5)
    reference = CrossEncoderReranker(path, backend="torch").score(QUERY, TEXTS).raw
    np.testing.assert_allclose(CrossEncoderReranker(path, backend="onnx").score(QUERY, TEXTS).raw, reference,
                               rtol=1e-4, atol=1e-6)


def test_onnx_scores_do_not_depend_on_batch_budget_or_order(tiny_cross_encoder: Path) -> None:
    texts = [f"document {i} " + "word " * (i * 7 % 60) for i in range(40)]
    big = CrossEncoderReranker(tiny_cross_encoder, backend="onnx", batch_tokens=100_000).score(QUERY, texts).raw
    small = CrossEncoderReranker(tiny_cross_encoder, backend="onnx", batch_tokens=200)
    result = small.score(QUERY, texts)
    assert result.stats["batches"] > 5
    np.testing.assert_allclose(result.raw, big, rtol=1e-4, atol=1e-6)
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(small.score(QUERY, [texts[i] for i in perm]).raw, big[perm], rtol=1e-4, atol=1e-6)


def test_int8_ranking_agrees_with_fp32_whatever_the_batching(minilm_cross_encoder: Path) -> None:
    fp32 = CrossEncoderReranker(minilm_cross_encoder, backend="onnx", max_length=128).score(QUERY, KB_TEXTS).raw
    int8 = CrossEncoderReranker(minilm_cross_encoder, backend="onnx-int8", max_length=128).score(QUERY, KB_TEXTS).raw
    assert spearmanr(fp32, int8).statistic > 0.9
    # an untrained head spreads logits over ~0.03, so int8 noise may swap neighbours: check the top, not #1
    assert np.argmax(fp32) in top_k(int8, 5) and len(top_k(fp32, 10) & top_k(int8, 10)) >= 7
    assert not np.allclose(fp32, int8, atol=1e-7)  # it really is a different (quantised) graph
    # activations are quantised per batch, so int8 scores move slightly with the batching — but not the ranking
    small = CrossEncoderReranker(minilm_cross_encoder, backend="onnx-int8", max_length=128, batch_tokens=300)
    perm = np.random.default_rng(0).permutation(len(KB_TEXTS))
    regrouped = small.score(QUERY, [KB_TEXTS[i] for i in perm]).raw
    assert spearmanr(regrouped, int8[perm]).statistic > 0.9 and spearmanr(regrouped, fp32[perm]).statistic > 0.9


def test_changed_weights_are_re_exported_never_reused(tmp_path: Path) -> None:
    path = build_tiny_cross_encoder(tmp_path / "m", seed=1)
    before = CrossEncoderReranker(path, backend="onnx").score(QUERY, TEXTS).raw
    assert len(_exports(path)) == 1
    build_tiny_cross_encoder(path, seed=2)  # same directory, new weights
    after = CrossEncoderReranker(path, backend="onnx").score(QUERY, TEXTS).raw
    assert len(_exports(path)) == 2
    np.testing.assert_allclose(after, CrossEncoderReranker(path, backend="torch").score(QUERY, TEXTS).raw, rtol=1e-4, atol=1e-6)
    assert not np.allclose(after, before, rtol=0, atol=1e-9)


def test_corrupt_cached_export_is_detected_and_re_exported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = build_tiny_cross_encoder(tmp_path / "m", seed=3)
    reference = CrossEncoderReranker(path, backend="onnx").score(QUERY, TEXTS).raw
    (file,) = _exports(path)
    corrupt_middle(file)
    with caplog.at_level(logging.WARNING, logger="rankwise.inference.artifacts"):
        again = CrossEncoderReranker(path, backend="onnx").score(QUERY, TEXTS).raw
    assert "does not match its sha256" in caplog.text
    np.testing.assert_allclose(again, reference, atol=1e-7)
    meta = json.loads(file.with_suffix(".json").read_text())
    assert meta["bytes"] == file.stat().st_size


def test_missing_or_corrupt_onnx_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        OnnxRunner(tmp_path / "missing.onnx")
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a protobuf" * 100)
    with pytest.raises(ModelError, match="cannot be loaded"):
        OnnxRunner(garbage)
    with pytest.raises(QueryError, match="unknown inference backend"):
        CrossEncoderReranker(tmp_path, backend="tensorrt")  # type: ignore[arg-type]
    from rankwise.index.dense import Embedder

    with pytest.raises(QueryError, match="unknown inference backend 'torch-bf16'"):
        Embedder("minilm", backend="torch-bf16")  # type: ignore[arg-type]


def test_unwritable_model_dir_falls_back_to_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_tiny_cross_encoder(tmp_path / "m", seed=4)
    (path / ".rankwise").write_text("a file where the cache directory would go")  # mkdir fails, as on a RO mount
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    scores = CrossEncoderReranker(path, backend="onnx").score(QUERY, TEXTS).raw
    assert list((tmp_path / "user-cache" / "rankwise" / "onnx").glob("*/cross-encoder/model-opt.onnx"))
    np.testing.assert_allclose(scores, CrossEncoderReranker(path, backend="torch").score(QUERY, TEXTS).raw, rtol=1e-4, atol=1e-6)



def test_a_model_inside_an_installed_package_is_exported_to_the_user_cache(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An installation is not the user's to write into (and may be read-only): exports never land there."""
    path = build_tiny_cross_encoder(tmp_path / "lib" / "site-packages" / "some_model", seed=4)
    monkeypatch.setenv("RANKWISE_CACHE_DIR", str(tmp_path / "mine"))
    scores = CrossEncoderReranker(path, backend="onnx").score(QUERY, TEXTS).raw
    assert not (path / ".rankwise").exists()
    assert list((tmp_path / "mine" / "onnx").glob("*/cross-encoder/model-opt.onnx"))
    np.testing.assert_allclose(scores, CrossEncoderReranker(path, backend="torch").score(QUERY, TEXTS).raw, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def minilm_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled MiniLM linked into a temp dir, so the test's exports do not land in site-packages."""
    directory = tmp_path_factory.mktemp("minilm")
    source = bundled_minilm_dir()
    for file in source.rglob("*"):
        if file.is_file() and ".rankwise" not in file.parts:
            (directory / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(file, directory / file.relative_to(source))
    return directory


def test_onnx_and_openvino_embeddings_match_sentence_transformers(minilm_copy: Path) -> None:
    from rankwise.index.dense import Embedder

    sentences = ["A man is eating food.", "  Reset MFA for contractors  ", "Rotate the Postgres credentials " * 60,
                 "Zürich café", "x"]
    reference = Embedder(str(minilm_copy), backend="torch").encode(sentences)
    # bf16 OpenVINO keeps ~3 significant digits; static int8 is calibrated on bundled texts, not these
    cases = [("onnx", 0.9999, 0.9999), ("onnx-int8", 0.98, 0.99), ("openvino", 0.999, 0.999),
             ("openvino-int8", 0.97, 0.985)]
    for backend, worst, mean in cases[:2] if openvino_capped() else cases:
        embedder = Embedder(str(minilm_copy), backend=backend, batch_tokens=300)  # type: ignore[arg-type]
        vectors = embedder.encode(sentences)
        assert vectors.shape == reference.shape and embedder.info.backend == backend
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        cosine = (vectors * reference).sum(axis=1)
        assert cosine.min() > worst and cosine.mean() > mean, cosine


def test_cli_index_and_search_with_onnx_backends(tmp_path: Path, tiny_cross_encoder: Path, minilm_copy: Path) -> None:
    corpus = tmp_path / "kb.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) for d in KB))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rankwise", *args], check=False, capture_output=True, text=True,
                              env=env, timeout=600)

    built = run("index", str(corpus), "--index", str(tmp_path / "idx"), "--embedding-model", str(minilm_copy),
                "--embedding-backend", "onnx-int8")
    assert built.returncode == 0, built.stderr
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["embedding"]["backend"] == "onnx-int8"
    common = ["search", "rotate the postgres password", "--index", str(tmp_path / "idx"), "--first-stage", "bm25",
              "--reranker", str(tiny_cross_encoder), "--json"]
    result = run(*common, "--backend", "onnx-int8")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["provenance"]["reranker"].endswith("[onnx-int8]")
    bad = run(*common, "--backend", "tpu")
    assert bad.returncode == 2 and "unknown inference backend 'tpu'" in bad.stderr and "Traceback" not in bad.stderr
