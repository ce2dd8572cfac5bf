"""Serving components in-process: shared-batch scoring, the batcher, cache keys, keys, rate limits, audit,
and the route handlers and after-answer step called without a server.

The HTTP behaviour is tested against a real server process in ``test_serving.py``; these tests pin the
pieces it is built from, with real models and real files.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import KB, assert_same_ranking
from rankwise.errors import QueryError
from rankwise.rerank.base import scoring_key
from rankwise.rerank.cross_encoder import CrossEncoderReranker
from rankwise.rerank.loading import LoadOptions
from rankwise.serving.audit import AuditError, AuditRecord, SQLiteAuditLog, parse_since, read_audit
from rankwise.serving.auth import KeyFileError, KeyStore, RateLimiter
from rankwise.serving.batcher import MicroBatcher
from rankwise.serving.cache import MemoryScoreCache, score_keys
from rankwise.serving.config import (
    BatchingSettings,
    CacheSettings,
    LoopSettings,
    RateLimit,
    ServeConfig,
    ServeConfigError,
)
from rankwise.serving.metrics import ServingMetrics
from rankwise.serving.scoring import PairBatchScorer, RequestScorer, scorer_for

LONG = " ".join(d.text for d in KB)  # ~100 tokens: several windows at max_length 48


def _requests() -> list[tuple[str, list[str]]]:
    texts = [d.text for d in KB]
    return [("reset MFA for contractors", texts), ("rotate credentials", [LONG, texts[4], LONG + " tail"]),
            ("churn", texts[6:] + [""])]


@pytest.mark.parametrize("long_documents", ["maxp", "firstp", "mean"])
def test_shared_round_equals_unbatched_score(spread_cross_encoder: Path, long_documents: str) -> None:
    reranker = CrossEncoderReranker(spread_cross_encoder, max_length=48, long_documents=long_documents, backend="torch")  # type: ignore[arg-type]
    scorer = PairBatchScorer(reranker)
    requests = _requests()
    results = scorer.score_round([scorer.encode(q, t) for q, t in requests])
    assert len(results) == len(requests)
    for (query, texts), got in zip(requests, results, strict=True):
        want = reranker.score(query, texts)
        if len(texts) >= 8:  # enough texts for the ranking checks (see assert_same_ranking)
            assert_same_ranking(want.raw, got.scores.raw, atol=1e-4, min_spearman=0.9999, min_top_overlap=5)
        np.testing.assert_allclose(got.scores.raw, want.raw, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.scores.calibrated, want.calibrated, rtol=0, atol=1e-4)
        assert got.scores.truncated == want.truncated
        assert len(got.split) == len(texts) and sum(got.split) == want.truncated
    assert results[1].split == [True, False, True]  # the long passages, whatever the aggregation


def test_onnx_backend_shares_rounds_and_gets_its_own_cache_keys(tiny_cross_encoder: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="onnx")
    scorer = PairBatchScorer(onnx)
    requests = _requests()
    for (query, texts), got in zip(requests, scorer.score_round([scorer.encode(q, t) for q, t in requests]),
                                   strict=True):
        np.testing.assert_allclose(got.scores.raw, onnx.score(query, texts).raw, rtol=0, atol=1e-6)
    torch_twin = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch")
    assert onnx.weights_sha256 == torch_twin.weights_sha256  # same weights file ...
    assert scoring_key(onnx) != scoring_key(torch_twin)  # ... but never each other's cached scores


def test_max_tokens_per_doc_cuts_documents(tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch")
    scorer = PairBatchScorer(reranker)
    cut = reranker._cut(LONG, 10)
    assert LONG.startswith(cut) and len(reranker.tokenizer(cut, add_special_tokens=False)["input_ids"]) == 10
    encoded = scorer.encode("q", [LONG], max_tokens_per_doc=10)
    assert encoded.pairs is not None and encoded.pairs.split == [False] and len(encoded.pairs.windows) == 1
    np.testing.assert_allclose(scorer.score_round([encoded])[0].scores.raw, reranker.score("q", [cut]).raw, atol=1e-6)


class ScoreOnlyReranker:
    """A user's reranker that implements only the :class:`~rankwise.rerank.Reranker` protocol (no windows)."""

    def __init__(self, inner: CrossEncoderReranker) -> None:
        self.name, self.weights_sha256, self._inner = "score-only", inner.weights_sha256, inner

    def score(self, query: str, texts: list[str]):
        return self._inner.score(query, texts)


def test_a_reranker_with_only_score_is_served_one_request_at_a_time(tiny_cross_encoder: Path) -> None:
    inner = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch")
    assert isinstance(scorer_for(inner), PairBatchScorer)
    scorer = scorer_for(ScoreOnlyReranker(inner))
    assert isinstance(scorer, RequestScorer)
    requests = _requests()
    results = scorer.score_round([scorer.encode(q, t) for q, t in requests])
    for (query, texts), got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got.scores.raw, inner.score(query, texts).raw)
    with pytest.raises(QueryError, match="max_tokens_per_doc is not supported"):
        scorer.encode("q", ["text"], max_tokens_per_doc=10)


def test_batcher_shares_rounds_and_isolates_bad_requests(tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch")
    metrics = ServingMetrics()
    batcher = MicroBatcher(PairBatchScorer(reranker), BatchingSettings(max_wait_ms=200), metrics)
    batcher.start()
    try:
        requests = _requests()
        futures = [batcher.submit(q, t) for q, t in requests]
        too_long = batcher.submit("word " * 200, ["x"])  # query longer than half of max_length: refused alone
        for (query, texts), future in zip(requests, futures, strict=True):
            np.testing.assert_allclose(future.result(30).scores.raw, reranker.score(query, texts).raw, atol=1e-6)
        with pytest.raises(QueryError, match="shorten the query"):
            too_long.result(30)
    finally:
        batcher.close()
    rounds = metrics.registry.get_sample_value("rankwise_batch_requests_count")
    assert rounds == 1  # all four arrived within the wait: one round (the bad one never reached it)
    assert metrics.registry.get_sample_value("rankwise_batch_requests_sum") == 3


def test_work_past_its_deadline_is_dropped_queued_or_between_forward_passes(tiny_cross_encoder: Path) -> None:
    from rankwise.serving.batcher import Expired

    reranker = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch", batch_tokens=256)
    metrics = ServingMetrics()
    batcher = MicroBatcher(PairBatchScorer(reranker), BatchingSettings(max_wait_ms=0), metrics)
    slow = reranker.forward_windows

    def forward_slowly(ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
        time.sleep(0.05)  # a forward pass of a big model on a busy CPU
        return slow(ids, types)

    reranker.forward_windows = forward_slowly  # type: ignore[method-assign]
    batcher.start()
    try:
        huge = [LONG] * 60  # ~180 windows: ~12 batches of 256 tokens, ~0.6 s of forward passes
        started = time.perf_counter()
        expiring = batcher.submit("q", huge, deadline=started + 0.15)
        behind = batcher.submit("q", [KB[0].text], deadline=started + 30)  # queued behind it
        with pytest.raises(Expired, match="scoring"):
            expiring.result(30)
        assert behind.result(30).scores.raw.shape == (1,)
        assert time.perf_counter() - started < 0.5  # the rest of the huge request's passes were skipped
        past = batcher.submit("q", huge, deadline=time.perf_counter() - 1)
        with pytest.raises(Expired, match="queued"):
            past.result(30)
    finally:
        batcher.close()
    assert metrics.registry.get_sample_value("rankwise_expired_total", {"stage": "scoring"}) == 1
    assert metrics.registry.get_sample_value("rankwise_expired_total", {"stage": "queued"}) == 1


def test_a_request_past_the_token_budget_is_refused_before_any_forward_pass(tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch")
    metrics = ServingMetrics()
    batcher = MicroBatcher(PairBatchScorer(reranker), BatchingSettings(max_wait_ms=0), metrics,
                           max_request_tokens=1000)
    batcher.start()
    try:
        with pytest.raises(QueryError, match="at most 1000 per request"):
            batcher.submit("q", [LONG] * 20).result(30)
        assert batcher.submit("q", [LONG]).result(30).scores.raw.shape == (1,)
    finally:
        batcher.close()
    assert metrics.registry.get_sample_value("rankwise_forward_passes_total") == 1


@pytest.mark.parametrize("long_documents", ["maxp", "firstp"])
def test_encoding_in_slices_stops_at_the_token_budget_and_otherwise_changes_nothing(
        tiny_cross_encoder: Path, monkeypatch: pytest.MonkeyPatch, long_documents: str) -> None:
    from rankwise.rerank import cross_encoder
    from rankwise.rerank.base import TokenBudgetExceeded

    reranker = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch", long_documents=long_documents)
    texts = [LONG[: 100 + 37 * i] for i in range(40)] + ["short"]
    whole = reranker.encode_pairs("reset mfa", texts)
    monkeypatch.setattr(cross_encoder, "ENCODE_CHARS", 1_000)  # about 40 slices
    sliced = reranker.encode_pairs("reset mfa", texts)
    assert (sliced.windows, sliced.token_types, sliced.owners, sliced.split) == (
        whole.windows, whole.token_types, whole.owners, whole.split)
    assert any(whole.split) and len(whole.windows) > len(texts) * (long_documents == "maxp")
    budget = whole.tokens // 4
    with pytest.raises(TokenBudgetExceeded) as over:
        reranker.encode_pairs("reset mfa", texts, max_tokens=budget)
    assert budget < over.value.tokens < whole.tokens / 2  # stopped a slice past the budget, not at the end


def test_batching_off_scores_one_request_per_round(tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(tiny_cross_encoder, max_length=48, backend="torch")
    metrics = ServingMetrics()
    batcher = MicroBatcher(PairBatchScorer(reranker), BatchingSettings(enabled=False, max_wait_ms=200), metrics)
    batcher.start()
    try:
        for future in [batcher.submit(q, t) for q, t in _requests()]:
            future.result(30)
    finally:
        batcher.close()
    assert metrics.registry.get_sample_value("rankwise_batch_requests_count") == 3
    assert metrics.registry.get_sample_value("rankwise_batch_requests_sum") == 3


def test_cache_key_covers_model_settings_and_text(tiny_cross_encoder: Path, tmp_path: Path) -> None:
    from conftest import build_tiny_cross_encoder

    a = CrossEncoderReranker(tiny_cross_encoder, max_length=64, backend="torch")
    same = CrossEncoderReranker(tiny_cross_encoder, max_length=64, name="alias", backend="torch")
    shorter = CrossEncoderReranker(tiny_cross_encoder, max_length=32, backend="torch")
    other = CrossEncoderReranker(build_tiny_cross_encoder(tmp_path / "other", seed=3), max_length=64, backend="torch")
    fp = scoring_key(a)
    assert scoring_key(same) == fp  # a display name does not change scores
    assert len({fp, scoring_key(shorter), scoring_key(other)}) == 3
    k1, k2 = score_keys(fp, "q", ["t1", "t2"])
    assert k1 != k2 and score_keys(fp, "q", ["t1"]) == [k1]
    assert score_keys(fp, "q2", ["t1"]) != [k1]
    assert score_keys(fp, "q", ["t1"], max_tokens_per_doc=10) != [k1]
    assert score_keys(scoring_key(other), "q", ["t1"]) != [k1]


def test_memory_cache_is_a_bounded_lru() -> None:
    cache = MemoryScoreCache(2)

    async def run() -> list[object]:
        await cache.set_many({"a": (1.0, 0.7, False), "b": (2.0, 0.8, True)})
        await cache.get_many(["a"])  # a is now the most recent
        await cache.set_many({"c": (3.0, 0.9, False)})
        return await cache.get_many(["a", "b", "c"])

    assert asyncio.run(run()) == [(1.0, 0.7, False), None, (3.0, 0.9, False)]
    disabled = MemoryScoreCache(0)
    asyncio.run(disabled.set_many({"a": (1.0, 0.7, False)}))
    assert asyncio.run(disabled.get_many(["a"])) == [None]


def test_keystore_stores_only_hashes_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = KeyStore(path)
    key, token = store.add(["rerank"], name="ci", rate_per_s=2.0, burst=3)
    assert token.startswith(f"rk_{key.id}_")
    secret = token.split("_", 2)[2]
    assert secret not in path.read_text() and key.sha256 in path.read_text()
    server_view = KeyStore(path)
    assert server_view.authenticate(token) == key
    assert server_view.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert server_view.authenticate("Bearer nonsense") is None
    assert key.allows("rerank") and not key.allows("search")
    store.revoke(key.id)
    assert server_view.authenticate(token) is None  # noticed without restarting (file mtime changed)
    with pytest.raises(KeyFileError, match="--role"):
        store.add(["superuser"])
    path.write_text("{not json")
    with pytest.raises(KeyFileError, match="malformed"):
        KeyStore(path).check()


def test_rate_limiter_is_a_token_bucket() -> None:
    limiter = RateLimiter(RateLimit(per_second=20.0, burst=2))
    assert limiter.acquire("k") == 0 and limiter.acquire("k") == 0
    wait = limiter.acquire("k")
    assert 0 < wait <= 0.05
    assert limiter.acquire("other") == 0  # buckets are per key
    time.sleep(wait + 0.01)
    assert limiter.acquire("k") == 0


def test_audit_log_is_append_only_and_queryable(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = SQLiteAuditLog(path)
    log.record(AuditRecord("r1", "/v1/rerank", 200, 12.5, key_id="k1", results=[{"index": 2, "score": 0.9}]))
    log.record(AuditRecord("r2", "/v1/search", 401, 0.3, error="invalid or revoked API key"))
    log.close()
    rows = read_audit(path)
    assert [r["request_id"] for r in rows] == ["r2", "r1"]
    assert rows[1]["results"] == [{"index": 2, "score": 0.9}] and rows[1]["key_id"] == "k1"
    assert [r["request_id"] for r in read_audit(path, key_id="k1")] == ["r1"]
    assert read_audit(path, since="2999-01-01") == []
    conn = sqlite3.connect(path)
    for statement in ("UPDATE requests SET status = 200", "DELETE FROM requests"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    conn.close()
    assert len(read_audit(path)) == 2
    with pytest.raises(AuditError, match="--audit"):
        read_audit(tmp_path / "missing.sqlite")


def test_parse_since() -> None:
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == "2025-01-31T10:00:00.000+00:00"
    assert parse_since("2025-01-30T08:00", now) == "2025-01-30T08:00:00.000+00:00"
    with pytest.raises(AuditError, match="30m"):
        parse_since("yesterday", now)


def test_config_refuses_unsafe_or_empty_servers(tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match="without authentication"):
        ServeConfig(reranker="x", host="0.0.0.0")
    ServeConfig(reranker="x", host="0.0.0.0", keys=tmp_path / "keys.json")
    with pytest.raises(ServeConfigError, match="nothing to serve"):
        ServeConfig()
    with pytest.raises(ServeConfigError, match="redis://"):
        ServeConfig(reranker="x", cache=CacheSettings(url="memcached://x"))


def test_audit_writer_does_not_block_callers(tmp_path: Path) -> None:
    log = SQLiteAuditLog(tmp_path / "audit.sqlite")
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda i=i: log.record(AuditRecord(f"r{i}", "/v1/rerank", 200, 1.0)))
               for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - started < 1.0
    log.close()
    assert len(read_audit(tmp_path / "audit.sqlite", limit=1000)) == 50


def _request(headers: dict[str, str] | None = None, **state: object):
    """A request as the envelope middleware leaves it, for calling a handler without a server."""
    from starlette.requests import Request

    raw = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw, "state": dict(state)})


def test_health_readiness_and_metrics_handlers_answer_without_a_server(tiny_cross_encoder: Path,
                                                                        tmp_path: Path) -> None:
    from rankwise.serving import handlers
    from rankwise.serving.errors import ApiError
    from rankwise.serving.state import load_state

    keys = KeyStore(tmp_path / "keys.json")
    admin, searcher = keys.add(["admin"])[1], keys.add(["search"])[1]
    state = load_state(ServeConfig(reranker=str(tiny_cross_encoder), load=LoadOptions(backend="torch"),
                                   keys=tmp_path / "keys.json"))

    def ready(token: str) -> tuple[int, dict]:
        response = asyncio.run(handlers.readyz(state, _request({"Authorization": f"Bearer {token}"})))
        return response.status_code, json.loads(response.body)

    try:
        assert asyncio.run(handlers.healthz(state)).status == "ok"
        status, body = ready(admin)  # no lifespan ran, so nothing warmed the model
        assert (status, body["ready"], body["reason"]) == (503, False, "warming up")
        assert body["models"] == {"production": str(tiny_cross_encoder)} and body["reranker_sha256"]
        state.ready = True
        state.data_problems["ModelError"] = "the model stopped scoring"
        status, body = ready(admin)
        assert (status, body["ready"], body["problems"]) == (200, True, {"ModelError": "the model stopped scoring"})
        status, body = ready(searcher)  # readiness for every caller, the model details for admin keys only
        assert status == 200 and body["reranker"] is body["models"] is body["problems"] is None
        scraped = asyncio.run(handlers.metrics(state, _request({"Authorization": f"Bearer {admin}"})))
        assert b"rankwise_ready" in scraped.body
        with pytest.raises(ApiError) as refused:
            asyncio.run(handlers.metrics(state, _request({"Authorization": f"Bearer {searcher}"})))
        assert refused.value.status == 401
    finally:
        state.close()


def test_interleaving_is_seeded_by_the_request_and_credits_each_id_to_its_arm() -> None:
    from rankwise.serving.handlers import interleave

    a, b, arms = ["d1", "d2", "d3", "d4"], ["d4", "d3", "d2", "d1"], ("old", "new")
    ids, teams = interleave(a, b, arms, 3, "request-1")
    assert (ids, teams) == interleave(a, b, arms, 3, "request-1")  # a replayed request shows the same list
    assert len(ids) == len(set(ids)) == len(teams) == 3 and set(teams) <= set(arms)
    assert ids[0] == ("d1" if teams[0] == "old" else "d4")  # each arm's first pick is its own best
    assert ids[1] == ("d4" if teams[0] == "old" else "d1")
    assert len({tuple(interleave(a, b, arms, 3, f"request-{n}")[1]) for n in range(20)}) > 1


def test_after_answer_records_metrics_audit_fields_and_the_query_log(tiny_cross_encoder: Path,
                                                                       tmp_path: Path) -> None:
    from rankwise.feedback.events import LoggedResult
    from rankwise.serving.answer import Answered, after_answer
    from rankwise.serving.models import Route
    from rankwise.serving.state import load_state

    state = load_state(ServeConfig(reranker=str(tiny_cross_encoder), load=LoadOptions(backend="torch"),
                                   loop=LoopSettings(feedback=tmp_path / "feedback.sqlite")))
    try:
        assert state.router is not None and state.feedback is not None
        model = state.router.production
        request = _request(request_id="r1", started=time.perf_counter(), key_id=None, user_id=None, audit={})
        logged = [LoggedResult("2", 1, None, None), LoggedResult("0", 2, None, None)]
        after_answer(state, request, Answered(
            endpoint="rerank", query="reset MFA", query_sha256="d" * 64, route=Route(model), model=model,
            degraded=True,
            timings={"total": 4.0}, cache_hits=0, cost={"pairs": 0, "tokens": 0, "cpu_ms": 1.5},
            audited=[{"index": 2, "score": None}, {"index": 0, "score": None}], logged=logged))
        sample = state.metrics.registry.get_sample_value
        assert sample("rankwise_served_total", {"model": model.key, "arm": "-"}) == 1
        assert sample("rankwise_request_cpu_seconds_count", {"endpoint": "rerank", "model": model.key}) == 1
        assert sample("rankwise_degraded_total", {"endpoint": "rerank"}) == 1
        assert request.state.audit == {"degraded": True, "cache_hits": 0,
                                       "results": [{"index": 2, "score": None}, {"index": 0, "score": None}]}
        entry = state.feedback.get_request("r1")  # feedback on the answer can be checked at once
        assert entry is not None and (entry.endpoint, entry.model, entry.degraded) == ("/v1/rerank", model.name, True)
        assert list(entry.results) == logged
        assert entry.query_sha256 == "d" * 64  # the digest the audit row got, not computed again
    finally:
        state.close()
