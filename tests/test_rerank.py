from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import build_tiny_cross_encoder
from rankwise.errors import ModelError
from rankwise.rerank import CrossEncoderReranker, Reranker

QUERY = "how do contractors reset MFA"
TEXTS = ["Contractors reset multi-factor authentication through their sponsor.", "Monthly plans are not refunded.",
         "Rotate Redis credentials by updating the ACL file and reloading the sentinel; " * 3, "short"]


def test_scores_match_sentence_transformers_predict(tiny_cross_encoder: Path) -> None:
    from sentence_transformers import CrossEncoder

    ours = CrossEncoderReranker(tiny_cross_encoder, max_length=128)
    assert isinstance(ours, Reranker) and len(ours.weights_sha256) == 64
    scores = ours.score(QUERY, TEXTS)
    reference = CrossEncoder(str(tiny_cross_encoder), max_length=128).predict(
        [(QUERY, t) for t in TEXTS], activation_fn=__import__("torch").nn.Identity())
    np.testing.assert_allclose(scores.raw, reference, atol=1e-5)
    np.testing.assert_allclose(scores.calibrated, 1 / (1 + np.exp(-reference)), atol=1e-5)
    assert ((scores.calibrated > 0) & (scores.calibrated < 1)).all()


def test_scores_do_not_depend_on_batch_budget_or_order(tiny_cross_encoder: Path) -> None:
    texts = [f"document {i} " + "word " * (i * 7 % 60) for i in range(40)]
    big = CrossEncoderReranker(tiny_cross_encoder, batch_tokens=100_000).score(QUERY, texts).raw
    small = CrossEncoderReranker(tiny_cross_encoder, batch_tokens=200)
    result = small.score(QUERY, texts)
    assert result.stats["batches"] > 5
    np.testing.assert_allclose(result.raw, big, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(small.score(QUERY, [texts[i] for i in perm]).raw, big[perm], atol=1e-5)


def test_long_passages_are_split_and_aggregated_not_silently_truncated(tiny_cross_encoder: Path) -> None:
    long_text = " ".join(f"token{i}" for i in range(400))
    maxp = CrossEncoderReranker(tiny_cross_encoder, max_length=64, long_documents="maxp")
    first = CrossEncoderReranker(tiny_cross_encoder, max_length=64, long_documents="firstp")
    mean = CrossEncoderReranker(tiny_cross_encoder, max_length=64, long_documents="mean")
    r_max, r_first, r_mean = (m.score(QUERY, [long_text, "short"]) for m in (maxp, first, mean))
    assert r_max.truncated == r_first.truncated == 1
    assert r_max.stats["windows"] > 5 and r_first.stats["windows"] == 2
    assert r_max.raw[0] >= r_mean.raw[0] and r_max.raw[0] >= r_first.raw[0]
    assert r_max.raw[1] == pytest.approx(r_first.raw[1], abs=1e-5)


def test_two_logit_models_are_calibrated_by_positive_class(tmp_path: Path) -> None:
    path = build_tiny_cross_encoder(tmp_path / "m", num_labels=2)
    scores = CrossEncoderReranker(path).score(QUERY, TEXTS)
    np.testing.assert_allclose(scores.calibrated, 1 / (1 + np.exp(-scores.raw)), atol=1e-6)


def test_unknown_or_broken_models_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        CrossEncoderReranker("some-org/not-downloaded")
    with pytest.raises(ModelError, match="does not exist"):
        CrossEncoderReranker("./no/such/dir")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError):
        CrossEncoderReranker(tmp_path)


def test_default_window_is_the_length_the_model_was_trained_with(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = build_tiny_cross_encoder(tmp_path / "m", seed=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.model_max_length = 40  # what CrossEncoder(max_length=40).save_pretrained writes
    tokenizer.save_pretrained(path)
    reranker = CrossEncoderReranker(path)
    assert reranker.max_length == 40
    assert reranker.score("refund policy", ["word " * 100]).truncated == 1, "longer passages become windows"
    assert CrossEncoderReranker(path, max_length=64).max_length == 64, "an explicit length still wins"
