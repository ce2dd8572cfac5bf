"""OpenVINO backends: bf16/fp32 equivalence with torch, static int8 fidelity and batch invariance, the IR cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from conftest import (
    KB_TEXTS,
    QUERY,
    TEXTS,
    assert_same_ranking,
    build_tiny_cross_encoder,
    corrupt_middle,
    top_k,
)
from rankwise.errors import ModelError
from rankwise.inference.backends import default_threads
from rankwise.inference.openvino import OpenVinoRunner
from rankwise.rerank import CrossEncoderReranker

pytestmark = pytest.mark.openvino


def _irs(model_dir: Path) -> list[Path]:
    return sorted((model_dir / ".rankwise" / "onnx").glob("*/cross-encoder/openvino-int8-*/model.xml"))


def test_openvino_scores_match_torch(spread_cross_encoder: Path) -> None:
    texts = KB_TEXTS + TEXTS
    fp32 = CrossEncoderReranker(spread_cross_encoder, max_length=48, backend="torch").score(QUERY, texts)
    reranker = CrossEncoderReranker(spread_cross_encoder, backend="openvino", max_length=48)
    scores = reranker.score(QUERY, texts)
    assert reranker.name.endswith("[openvino]") and scores.truncated == fp32.truncated > 0
    assert scores.stats["windows"] == fp32.stats["windows"]
    # OpenVINO runs bf16 on CPUs with native bf16 (8 mantissa bits), fp32 elsewhere
    assert_same_ranking(fp32.raw, scores.raw, atol=0.15, min_spearman=0.97)
    # two or more cores: two streams, batches in flight together; one stream gives the same scores
    assert (reranker.mapper is not None) == (default_threads() >= 2)
    one = CrossEncoderReranker(spread_cross_encoder, backend="openvino", max_length=48, threads=1)
    assert one.mapper is None
    assert_same_ranking(scores.raw, one.score(QUERY, texts).raw, atol=0.15, min_spearman=0.97)
    # batches are padded to aligned widths; the extra positions are masked, so unaligned scores agree
    assert reranker._run.width_multiple > 1
    reranker._run.width_multiple = 1
    assert_same_ranking(scores.raw, reranker.score(QUERY, texts).raw, atol=0.15, min_spearman=0.97)


def test_openvino_int8_ranks_like_fp32_and_ignores_batching(minilm_cross_encoder: Path) -> None:
    fp32 = CrossEncoderReranker(minilm_cross_encoder, backend="onnx", max_length=128).score(QUERY, KB_TEXTS).raw
    int8 = CrossEncoderReranker(minilm_cross_encoder, backend="openvino-int8", max_length=128)
    scores = int8.score(QUERY, KB_TEXTS).raw
    assert spearmanr(fp32, scores).statistic > 0.9
    assert np.argmax(fp32) in top_k(scores, 5) and len(top_k(fp32, 10) & top_k(scores, 10)) >= 7
    assert not np.allclose(fp32, scores, atol=1e-6)  # it really is the quantised graph
    # static quantisation: activation scales are fixed at calibration, so batching barely moves scores
    small = CrossEncoderReranker(minilm_cross_encoder, backend="openvino-int8", max_length=128, batch_tokens=300)
    perm = np.random.default_rng(0).permutation(len(KB_TEXTS))
    regrouped = small.score(QUERY, [KB_TEXTS[i] for i in perm])
    assert regrouped.stats["batches"] > 3
    assert spearmanr(regrouped.raw, scores[perm]).statistic > 0.98
    assert len(_irs(minilm_cross_encoder)) == 1, "the second load reuses the cached IR"


def test_int8_ir_is_cached_per_weights_and_rebuilt_when_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = build_tiny_cross_encoder(tmp_path / "m", seed=3)
    reference = CrossEncoderReranker(path, backend="openvino-int8").score(QUERY, TEXTS).raw
    (ir,) = _irs(path)
    sidecar = json.loads(ir.parent.with_suffix(".json").read_text())
    assert set(sidecar["versions"]) == {"openvino", "nncf"}  # the tools that built it, for debugging shifts
    corrupt_middle(ir.with_suffix(".bin"))
    with caplog.at_level(logging.WARNING, logger="rankwise.inference.artifacts"):
        again = CrossEncoderReranker(path, backend="openvino-int8").score(QUERY, TEXTS).raw
    assert "does not match its sha256" in caplog.text
    np.testing.assert_allclose(again, reference, atol=1e-6)
    # another max_length calibrates on other windows: its own IR, and switching back reuses the first
    CrossEncoderReranker(path, backend="openvino-int8", max_length=64)
    assert len(_irs(path)) == 2
    built = {p: p.stat().st_mtime_ns for p in _irs(path)}
    np.testing.assert_allclose(CrossEncoderReranker(path, backend="openvino-int8").score(QUERY, TEXTS).raw,
                               reference, atol=1e-6)
    assert {p: p.stat().st_mtime_ns for p in _irs(path)} == built
    build_tiny_cross_encoder(path, seed=4)  # same directory, new weights: a new IR, never the old one
    CrossEncoderReranker(path, backend="openvino-int8").score(QUERY, TEXTS)
    assert len(_irs(path)) == 3


def test_missing_or_corrupt_openvino_file_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        OpenVinoRunner(tmp_path / "missing.xml")
    garbage = tmp_path / "model.xml"
    garbage.write_text("<net>not an IR")
    with pytest.raises(ModelError, match="OpenVINO cannot load"):
        OpenVinoRunner(garbage)
