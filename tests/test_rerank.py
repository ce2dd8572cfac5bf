from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import KB_TEXTS, assert_same_ranking, build_tiny_cross_encoder
from rankwise.errors import ModelError
from rankwise.rerank import CrossEncoderReranker, Reranker, WindowedReranker

QUERY = "how do contractors reset MFA"
TEXTS = ["Contractors reset multi-factor authentication through their sponsor.", "Monthly plans are not refunded.",
         "Rotate Redis credentials by updating the ACL file and reloading the sentinel; " * 3, "short"]


def test_scores_match_sentence_transformers_predict(spread_cross_encoder: Path) -> None:
    from sentence_transformers import CrossEncoder

    ours = CrossEncoderReranker(spread_cross_encoder, max_length=128, backend="torch")
    assert isinstance(ours, Reranker) and isinstance(ours, WindowedReranker) and len(ours.weights_sha256) == 64
    texts = KB_TEXTS + TEXTS
    scores = ours.score(QUERY, texts)
    reference = CrossEncoder(str(spread_cross_encoder), max_length=128).predict(
        [(QUERY, t) for t in texts], activation_fn=__import__("torch").nn.Identity())
    assert_same_ranking(reference[:-1], scores.raw[:-1], atol=1e-4, min_spearman=0.9999, min_top_overlap=5)
    np.testing.assert_allclose(scores.calibrated, 1 / (1 + np.exp(-reference)), atol=1e-5)
    assert ((scores.calibrated > 0) & (scores.calibrated < 1)).all()


def test_scores_do_not_depend_on_batch_budget_or_order(tiny_cross_encoder: Path) -> None:
    texts = [f"document {i} " + "word " * (i * 7 % 60) for i in range(40)]
    big = CrossEncoderReranker(tiny_cross_encoder, batch_tokens=100_000, backend="torch").score(QUERY, texts).raw
    small = CrossEncoderReranker(tiny_cross_encoder, batch_tokens=200, backend="torch")
    result = small.score(QUERY, texts)
    assert result.stats["batches"] > 5
    np.testing.assert_allclose(result.raw, big, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_allclose(small.score(QUERY, [texts[i] for i in perm]).raw, big[perm], atol=1e-5)


def test_long_passages_are_split_and_aggregated_not_silently_truncated(tiny_cross_encoder: Path) -> None:
    long_text = " ".join(f"token{i}" for i in range(400))
    maxp = CrossEncoderReranker(tiny_cross_encoder, max_length=64, long_documents="maxp", backend="torch")
    first = CrossEncoderReranker(tiny_cross_encoder, max_length=64, long_documents="firstp", backend="torch")
    mean = CrossEncoderReranker(tiny_cross_encoder, max_length=64, long_documents="mean", backend="torch")
    r_max, r_first, r_mean = (m.score(QUERY, [long_text, "short"]) for m in (maxp, first, mean))
    assert r_max.truncated == r_first.truncated == 1
    assert r_max.stats["windows"] > 5 and r_first.stats["windows"] == 2
    assert r_max.raw[0] >= r_mean.raw[0] and r_max.raw[0] >= r_first.raw[0]
    assert r_max.raw[1] == pytest.approx(r_first.raw[1], abs=1e-5)


def test_two_logit_models_are_calibrated_by_positive_class(tmp_path: Path) -> None:
    path = build_tiny_cross_encoder(tmp_path / "m", num_labels=2)
    scores = CrossEncoderReranker(path, backend="torch").score(QUERY, TEXTS)
    np.testing.assert_allclose(scores.calibrated, 1 / (1 + np.exp(-scores.raw)), atol=1e-6)


def test_unknown_or_broken_models_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        CrossEncoderReranker("some-org/not-downloaded", backend="torch")
    with pytest.raises(ModelError, match="does not exist"):
        CrossEncoderReranker("./no/such/dir", backend="torch")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError):
        CrossEncoderReranker(tmp_path, backend="torch")


def test_default_window_is_the_length_the_model_was_trained_with(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = build_tiny_cross_encoder(tmp_path / "m", seed=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.model_max_length = 40  # what CrossEncoder(max_length=40).save_pretrained writes
    tokenizer.save_pretrained(path)
    reranker = CrossEncoderReranker(path, backend="torch")
    assert reranker.max_length == 40
    assert reranker.score("refund policy", ["word " * 100]).truncated == 1, "longer passages become windows"
    assert CrossEncoderReranker(path, max_length=64, backend="torch").max_length == 64, "an explicit length still wins"
