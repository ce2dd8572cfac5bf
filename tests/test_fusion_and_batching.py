from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rankwise.inference.batching import (
    CONCURRENT_BATCH_TOKENS,
    pad_batch,
    padding_ratio,
    run_batched,
    token_budget_batches,
)
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


def test_concurrent_batches_are_smaller_run_on_workers_and_return_in_input_order() -> None:
    rng = random.Random(7)
    rows = [[rng.randrange(1000)] * rng.randint(230, 256) for _ in range(100)]  # like 256-token windows
    seen: set[str] = set()

    def forward(batch: list[int]) -> np.ndarray:
        seen.add(threading.current_thread().name)
        return np.array([[float(rows[i][0]), float(len(rows[i]))] for i in batch])

    serial, serial_batches = run_batched(rows, forward, 16384)
    with ThreadPoolExecutor(2, thread_name_prefix="worker") as pool:
        concurrent, batches = run_batched(rows, forward, 16384, mapper=pool.map)
    np.testing.assert_array_equal(concurrent, serial)
    np.testing.assert_array_equal(serial[:, 1], [len(r) for r in rows])  # input order, not length order
    assert len(batches) > len(serial_batches)
    assert all(len(b) * max(len(rows[i]) for i in b) <= CONCURRENT_BATCH_TOKENS for b in batches)
    assert any(name.startswith("worker") for name in seen)


def test_pad_batch_rounds_the_width_up_to_a_multiple_but_never_past_the_position_limit() -> None:
    rows, types = [[5, 6, 7], [8] * 18], [[0, 0, 1], [0] * 18]
    plain = pad_batch(rows, types, pad_id=0)
    assert plain["input_ids"].shape == (2, 18)
    aligned = pad_batch(rows, types, pad_id=0, multiple=16, max_width=512)
    assert {a.shape for a in aligned.values()} == {(2, 32)}
    assert aligned["attention_mask"].sum(axis=1).tolist() == [3, 18]  # the extra positions are masked
    np.testing.assert_array_equal(aligned["token_type_ids"][0, :3], [0, 0, 1])
    assert pad_batch(rows, types, pad_id=0, multiple=16, max_width=20)["input_ids"].shape == (2, 20)
    assert pad_batch([[1] * 30], None, pad_id=0, multiple=16, max_width=20)["input_ids"].shape == (1, 30)


def test_auto_backend_is_chosen_per_cpu_kind_and_explicit_choices_win() -> None:
    from rankwise.errors import QueryError
    from rankwise.inference.backends import cpu_kind, resolve_backend

    vnni = frozenset({"avx2", "avx512f", "avx512_vnni"})
    avx2 = frozenset({"avx2", "fma"})
    assert cpu_kind(vnni) == "avx512-vnni" and cpu_kind(avx2) == "avx2" and cpu_kind(frozenset()) == "other"
    on_vnni, on_avx2 = resolve_backend("auto", flags=vnni), resolve_backend("auto", flags=avx2)
    assert on_vnni.backend == "openvino-int8" and "avx512-vnni" in on_vnni.reason
    assert on_avx2.backend == "onnx-int8" and "avx2" in on_avx2.reason  # OpenVINO int8 is slow without VNNI
    assert str(resolve_backend("torch", flags=vnni)) == "torch (requested)"
    # int8 embeddings from ONNX Runtime cost hybrid quality: AVX2-only CPUs embed with exact fp32 ONNX
    assert resolve_backend("auto", "embedder", flags=avx2).backend == "onnx"
    assert resolve_backend("auto", "embedder", flags=vnni).backend == "openvino-int8"
    assert resolve_backend("auto", "embedder", flags=avx2, reranking=True).backend == "onnx-int8"
    with pytest.raises(QueryError, match="unknown inference backend 'torch-bf16'; choose torch, onnx"):
        resolve_backend("torch-bf16", "embedder")
    with pytest.raises(QueryError, match="unknown inference backend 'gpu'"):
        resolve_backend("gpu")


def test_the_cpu_can_be_treated_as_a_lesser_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """RANKWISE_CPU_KIND=avx2 makes every per-CPU choice an AVX2-only machine's, so tests run its defaults."""
    from rankwise.errors import QueryError
    from rankwise.inference import backends
    from rankwise.inference.onnx import recipe

    monkeypatch.setattr(backends, "detected_cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_vnni",
                                                                            "avx512_bf16"}))
    monkeypatch.delenv("RANKWISE_CPU_KIND", raising=False)  # make test-avx2 sets it
    assert backends.cpu_kind() == "avx512-vnni" and backends.resolve_backend("auto").backend == "openvino-int8"
    assert recipe("cross-encoder", "int8")["quantization"]["reduce_range"] is False
    monkeypatch.setenv("RANKWISE_CPU_KIND", "avx2")
    assert backends.cpu_kind() == "avx2" and not backends.has_vnni()
    assert backends.resolve_backend("auto").backend == "onnx-int8"
    assert recipe("cross-encoder", "int8")["quantization"]["reduce_range"] is True  # 7-bit weights without VNNI
    assert "avx512_bf16" not in backends.cpu_flags()  # no bf16 autocast in training either
    monkeypatch.setenv("RANKWISE_CPU_KIND", "other")
    assert backends.cpu_kind() == "other"
    monkeypatch.setenv("RANKWISE_CPU_KIND", "avx3")
    with pytest.raises(QueryError, match="unknown RANKWISE_CPU_KIND 'avx3'"):
        backends.cpu_kind()
    monkeypatch.setattr(backends, "detected_cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setenv("RANKWISE_CPU_KIND", "avx512-vnni")
    with pytest.raises(QueryError, match="only be treated as a lesser kind"):
        backends.cpu_kind()
