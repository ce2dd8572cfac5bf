from __future__ import annotations

import random

import pytest

from rankwise.rerank.batching import padding_ratio, token_budget_batches
from rankwise.retrieval import convex_combination, reciprocal_rank_fusion


def test_rrf_matches_the_formula() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "d"]], k=60)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61)
    assert fused["d"] == pytest.approx(1 / 62)
    assert max(fused, key=fused.get) == "b"


def test_convex_combination_normalises_each_run() -> None:
    fused = convex_combination([{"a": 10.0, "b": 5.0, "c": 0.0}, {"a": 0.1, "d": 0.9}], [0.5, 0.5])
    assert fused == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.0, "d": 0.5})
    with pytest.raises(ValueError):
        convex_combination([{"a": 1.0}], [0.7])


def test_token_budget_batches_cover_every_item_once_within_budget() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(500)]
    batches = token_budget_batches(lengths, max_tokens=2048, max_rows=64)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        assert len(b) <= 64
        assert len(b) * max(lengths[i] for i in b) <= 2048
        assert padding_ratio(lengths, [b]) <= 0.1 + 1e-9
    naive = [list(range(i, min(i + 8, 500))) for i in range(0, 500, 8)]
    assert padding_ratio(lengths, batches) < padding_ratio(lengths, naive) / 3


def test_padding_cap_splits_mixed_lengths_that_fit_one_budget() -> None:
    lengths = [256] * 4 + [60] * 4
    assert token_budget_batches(lengths, max_tokens=100_000, max_padding=0.5) == [list(range(8))]
    capped = token_budget_batches(lengths, max_tokens=100_000, max_padding=0.1)
    assert capped == [list(range(4)), list(range(4, 8))] and padding_ratio(lengths, capped) == 0.0
    with pytest.raises(ValueError):
        token_budget_batches(lengths, max_tokens=100, max_padding=1.0)


def test_an_item_longer_than_the_budget_gets_its_own_batch() -> None:
    assert token_budget_batches([10, 5000, 10], max_tokens=100) == [[1], [0, 2]]
