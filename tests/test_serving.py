"""The reranking service, tested as users meet it: a real ``python -m rankwise serve`` process on 127.0.0.1.

Covers the Cohere-compatible ``/v1/rerank`` (scores equal unbatched ``Reranker.score``), ``/v1/search``
(same objects as ``search --json``), micro-batching under concurrent clients, the score cache (memory and
a real ``redis-server``; a model change never serves stale scores), latency budgets (degraded answers),
API keys, roles and rate limits, size limits and validation messages, the audit log via ``rankwise
audit``, and a bounded schemathesis run against ``/openapi.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import KB, KB_TEXTS, assert_same_ranking, build_tiny_cross_encoder
from rankwise.index import Index
from rankwise.pipeline import Pipeline
from rankwise.rerank.cross_encoder import CrossEncoderReranker
from rankwise.serving.auth import KeyStore
from rankwise.serving.readiness import ServeProcess, free_port

START_TIMEOUT_S = 180
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _build_model(path: Path, seed: int) -> Path:
    """A tiny cross-encoder whose scores are spread out (x100 classifier), so orderings are unambiguous."""
    import torch
    from transformers import BertForSequenceClassification

    build_tiny_cross_encoder(path, seed=seed)
    model = BertForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.classifier.weight.mul_(100.0)
    model.save_pretrained(path)
    return path


class Server(ServeProcess):
    """``python -m rankwise serve`` in a subprocess, waited for until ``/readyz`` says ready."""

    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(args, log, timeout_s=START_TIMEOUT_S, env=ENV)
        if self.problem:
            pytest.fail(f"{self.problem}:\n{log.read_text()[-3000:]}")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def _rankwise(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, env=ENV,
                          timeout=600, check=False)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    return _build_model(root / "a", seed=0), _build_model(root / "b", seed=1)


@pytest.fixture(scope="module")
def reference(models: tuple[Path, Path]) -> CrossEncoderReranker:
    """The unbatched reranker the server's answers must equal (same path, same settings)."""
    return CrossEncoderReranker(models[0], backend="torch")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("serve-keys") / "keys.json"
    result = _rankwise("keys", "add", "--keys", str(path), "--role", "admin", "--name", "tests", "--rate", "1000",
                       "--burst", "1000")
    assert result.returncode == 0, result.stderr
    admin = result.stdout.strip()
    assert admin.startswith("rk_") and "shown only now" in result.stderr and admin not in path.read_text()
    store = KeyStore(path)
    tokens: dict[str, Any] = {"file": path, "admin": admin}
    for name, roles, rate, burst in (("search", ["search"], 1000.0, 1000), ("rerank", ["rerank"], 1000.0, 1000),
                                     ("limited", ["rerank"], 0.2, 2), ("audited", ["rerank"], 1000.0, 1000)):
        key, token = store.add(roles, name=name, rate_per_s=rate, burst=burst)
        tokens[name], tokens[f"{name}_id"] = token, key.id
    return tokens


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-audit") / "audit.sqlite"


@pytest.fixture(scope="module")
def server(kb_index: Index, models: tuple[Path, Path], keys: dict[str, Any], audit_db: Path) -> Iterator[Server]:
    srv = Server(["--index", str(kb_index.path), "--reranker", str(models[0]), "--backend", "torch",
                  "--keys", str(keys["file"]),
                  "--audit", str(audit_db), "--open-metrics", "--served-model-name", "rerank-english-v3.0",
                  "--batch-wait-ms", "50", "--max-documents", "400",
                  "--max-document-chars", "5000", "--max-body-bytes", "300000"], audit_db.with_name("server.log"))
    yield srv
    srv.stop()


@pytest.fixture
def admin(server: Server, keys: dict[str, Any]) -> Iterator[httpx.Client]:
    with server.client(keys["admin"]) as client:
        yield client


def _assert_matches_reference(body: dict[str, Any], reference: CrossEncoderReranker, query: str,
                              texts: list[str]) -> None:
    want = reference.score(query, texts)
    order = sorted(range(len(texts)), key=lambda i: -float(want.raw[i]))
    assert [r["index"] for r in body["results"]] == order[: len(body["results"])]
    for r in body["results"]:
        assert r["raw_score"] == pytest.approx(float(want.raw[r["index"]]), abs=1e-5)
        assert r["relevance_score"] == pytest.approx(float(want.calibrated[r["index"]]), abs=1e-6)


def _rerank_all_at_once(server: Server, jobs: list[tuple[str, list[str]]], token: str | None = None
                        ) -> list[dict[str, Any]]:
    """Send every (query, texts) job to /v1/rerank at the same instant (a barrier), raw scores included."""
    barrier = threading.Barrier(len(jobs))

    def call(job: tuple[str, list[str]]) -> dict[str, Any]:
        with server.client(token) as client:
            barrier.wait()
            response = client.post("/v1/rerank", json={"query": job[0], "documents": job[1], "raw_scores": True})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(call, jobs))


# ---------------------------------------------------------------------------------------------- rerank
def test_rerank_is_cohere_shaped_and_equals_unbatched_scores(admin: httpx.Client,
                                                               reference: CrossEncoderReranker) -> None:
    texts = [d.text for d in KB]
    documents: list[Any] = [t if i % 2 else {"text": t, "id": f"d{i}"} for i, t in enumerate(texts)]
    response = admin.post("/v1/rerank", json={"model": str(reference.path), "query": "how do contractors reset MFA?",
                                              "documents": documents, "top_n": 3, "return_documents": True,
                                              "raw_scores": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == response.headers["x-request-id"]
    assert len(body["results"]) == 3
    _assert_matches_reference(body, reference, "how do contractors reset MFA?", texts)
    assert all(r["document"]["text"] == texts[r["index"]] for r in body["results"])
    meta = body["meta"]
    assert meta["model"] == str(reference.path) and meta["model_sha256"] == reference.weights_sha256
    assert meta["degraded"] is False and meta["api_version"] == {"version": "1"}
    assert {"cache", "queue", "inference", "total"} <= set(meta["timings_ms"])
    plain = admin.post("/v1/rerank", json={"query": "refunds", "documents": texts[:2]}).json()["results"][0]
    assert set(plain) == {"index", "relevance_score"}  # Cohere's shape unless extras are asked for


def test_v2_rerank_requires_a_served_model_name_and_answers_like_v1(admin: httpx.Client) -> None:
    payload = {"query": "reset MFA for contractors", "documents": [d.text for d in KB], "top_n": 3}
    v1 = admin.post("/v1/rerank", json=payload).json()
    assert v1["meta"]["api_version"]["version"] == "1"
    missing = admin.post("/v2/rerank", json=payload)
    assert missing.status_code == 422 and "model" in missing.json()["message"]
    unknown = admin.post("/v2/rerank", json={**payload, "model": "rerank-v3.5"})
    assert unknown.status_code == 404 and "rerank-english-v3.0" in unknown.json()["message"]
    assert "--accept-any-model-name" in unknown.json()["message"]
    v2 = admin.post("/v2/rerank", json={**payload, "model": "rerank-english-v3.0"}).json()
    assert v2["meta"]["api_version"]["version"] == "2"
    assert [(r["index"], r["relevance_score"]) for r in v2["results"]] == \
        [(r["index"], r["relevance_score"]) for r in v1["results"]]


def test_concurrent_clients_share_forward_passes(server: Server, keys: dict[str, Any],
                                                 reference: CrossEncoderReranker) -> None:
    clients = 8
    before = server.metrics()
    jobs = [(f"question {i}: {KB[i % len(KB)].title}?",
             [f"{d.text} (variant {i})" for d in KB[: 3 + i % 5]]) for i in range(clients)]
    bodies = _rerank_all_at_once(server, jobs, keys["rerank"])
    for (query, texts), body in zip(jobs, bodies, strict=True):
        assert body["meta"]["cache_hits"] == 0
        _assert_matches_reference(body, reference, query, texts)
    after = server.metrics()
    rounds = after[("rankwise_batch_requests_count", ())] - before[("rankwise_batch_requests_count", ())]
    single = (after[("rankwise_batch_requests_bucket", (("le", "1.0"),))]
              - before[("rankwise_batch_requests_bucket", (("le", "1.0"),))])
    assert rounds < clients and rounds - single >= 1, "no round scored more than one request"
    assert ("rankwise_queue_depth", ()) in after


@pytest.mark.openvino
def test_openvino_int8_server_shares_forward_passes_and_matches_its_own_scores(spread_cross_encoder: Path,
                                                                              tmp_path: Path) -> None:
    """The fastest CPU backend behind the micro-batcher: rounds pool requests, scores equal ``score``'s."""
    srv = Server(["--reranker", str(spread_cross_encoder), "--backend", "openvino-int8", "--audit", "none",
                  "--batch-wait-ms", "100"], tmp_path / "openvino.log")
    try:
        clients = 6
        jobs = [(f"question {i}: {KB[i % len(KB)].title}?", KB_TEXTS[i: i + 16]) for i in range(clients)]
        bodies = _rerank_all_at_once(srv, jobs)
        metrics = srv.metrics()
    finally:
        srv.stop()
    reference = CrossEncoderReranker(spread_cross_encoder, backend="openvino-int8")
    for (query, texts), body in zip(jobs, bodies, strict=True):
        got = np.zeros(len(texts), dtype=np.float32)
        for r in body["results"]:
            got[r["index"]] = r["raw_score"]
        # static int8: activation scales are fixed, so another batch composition moves scores only slightly
        assert_same_ranking(reference.score(query, texts).raw, got, atol=0.15, min_spearman=0.98)
    info = {k: v for (name, labels), _ in metrics.items() if name == "rankwise_model_info" for k, v in labels}
    assert info["reranker_backend"] == "openvino-int8 (requested)"
    rounds = metrics[("rankwise_batch_requests_count", ())]
    assert rounds < clients, "no round scored more than one request"


def test_score_cache_hits_repeat_requests(admin: httpx.Client, server: Server) -> None:
    payload = {"query": "rotate database credentials", "documents": [f"{d.text} (cache)" for d in KB],
               "raw_scores": True}
    first, second = (admin.post("/v1/rerank", json=payload).json() for _ in range(2))
    assert first["meta"]["cache_hits"] == 0 and second["meta"]["cache_hits"] == len(KB)
    assert second["results"] == first["results"]  # identical, not merely close
    assert "inference" not in second["meta"]["timings_ms"]
    assert server.metrics()[("rankwise_cache_hit_ratio", ())] > 0


def test_budget_exhausted_returns_input_order_marked_degraded(admin: httpx.Client, server: Server) -> None:
    before = server.metrics().get(("rankwise_degraded_total", (("endpoint", "rerank"),)), 0.0)
    documents = [f"passage {i} about multi-factor authentication resets and refunds" for i in range(300)]
    response = admin.post("/v1/rerank", json={"query": "reset mfa", "documents": documents, "timeout_ms": 1,
                                              "top_n": 5})
    assert response.status_code == 200 and response.headers["x-rankwise-degraded"] == "true"
    body = response.json()
    assert body["meta"]["degraded"] is True and body["meta"]["warnings"]
    assert [r["index"] for r in body["results"]] == [0, 1, 2, 3, 4]
    assert all(r["relevance_score"] is None for r in body["results"])
    after = server.metrics()[("rankwise_degraded_total", (("endpoint", "rerank"),))]
    assert after == before + 1


# ---------------------------------------------------------------------------------------------- search
def test_search_returns_the_cli_json_objects(admin: httpx.Client, kb_index: Index,
                                             reference: CrossEncoderReranker) -> None:
    response = admin.post("/v1/search", json={"query": "how do contractors reset MFA?", "k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    want = Pipeline(kb_index, reference).search("how do contractors reset MFA?", k=4).to_dict()
    assert body["degraded"] is False and body["id"] == response.headers["x-request-id"]
    assert body["provenance"] == want["provenance"]
    assert [r["doc_id"] for r in body["results"]] == [r["doc_id"] for r in want["results"]]
    for got, exp in zip(body["results"], want["results"], strict=True):
        assert got["first_stage"] == exp["first_stage"] and got["rank_change"] == exp["rank_change"]
        assert got["reranker"]["score"] == pytest.approx(exp["reranker"]["score"], abs=1e-6)
        assert {k: v for k, v in got.items() if k not in ("score", "reranker")} == \
            {k: v for k, v in exp.items() if k not in ("score", "reranker")}
    filtered = admin.post("/v1/search", json={"query": "reset", "filters": {"category": "security"}}).json()
    assert {r["metadata"]["category"] for r in filtered["results"]} == {"security"}
    assert filtered["warnings"] == []
    wrong_case = admin.post("/v1/search", json={"query": "reset", "filters": {"category": "Security"}}).json()
    assert wrong_case["results"] == [] and wrong_case["warnings"][0].startswith(
        'no document has category = "Security" (values are matched exactly; category has "billing"')


def test_search_rerank_fusion_per_request(admin: httpx.Client, kb_index: Index,
                                          reference: CrossEncoderReranker) -> None:
    # a query no other test sends: cached scores for theirs would let the 1 ms budget test finish in time
    query = "refund for a plan"
    body = admin.post("/v1/search", json={"query": query, "k": 6, "rerank_fusion": "rrf"}).json()
    want = Pipeline(kb_index, reference, rerank_fusion="rrf").search(query, k=6).to_dict()
    assert body["provenance"]["rerank_fusion"] == "rrf"
    assert [r["doc_id"] for r in body["results"]] == [r["doc_id"] for r in want["results"]]
    bad = admin.post("/v1/search", json={"query": query, "rerank_fusion": "linear"})
    assert bad.status_code == 422 and "rerank_fusion" in bad.text


def test_search_budget_exhausted_keeps_first_stage_order(admin: httpx.Client, server: Server) -> None:
    response = admin.post("/v1/search", json={"query": "rotate credentials", "k": 5, "timeout_ms": 1})
    assert response.status_code == 200 and response.headers["x-rankwise-degraded"] == "true"
    body = response.json()
    assert body["degraded"] is True and body["warnings"]
    assert [r["first_stage"]["rank"] for r in body["results"]] == list(range(1, len(body["results"]) + 1))
    assert all(r["reranker"] is None for r in body["results"])
    assert server.metrics()[("rankwise_degraded_total", (("endpoint", "search"),))] >= 1


# ---------------------------------------------------------------------------------------------- security
def test_api_keys_and_roles(server: Server, keys: dict[str, Any]) -> None:
    rerank = {"query": "q", "documents": ["a", "b"]}
    search = {"query": "refund"}
    with server.client() as anonymous:
        response = anonymous.post("/v1/rerank", json=rerank)
        assert response.status_code == 401 and "Authorization: Bearer" in response.json()["message"]
        assert response.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").status_code == 200  # probes and metrics stay open
    with server.client("rk_000000000000_" + "x" * 43) as forged:
        assert forged.post("/v1/rerank", json=rerank).status_code == 401
    with server.client(keys["search"]) as client:
        assert client.post("/v1/search", json=search).status_code == 200
        forbidden = client.post("/v1/rerank", json=rerank)
        assert forbidden.status_code == 403 and "needs 'rerank'" in forbidden.json()["message"]
    with server.client(keys["rerank"]) as client:
        assert client.post("/v1/rerank", json=rerank).status_code == 200
        assert client.post("/v1/search", json=search).status_code == 403
    with server.client(keys["admin"]) as client:
        assert client.post("/v1/rerank", json=rerank).status_code == 200
        assert client.post("/v1/search", json=search).status_code == 200


def test_rate_limit_per_key(server: Server, keys: dict[str, Any]) -> None:
    payload = {"query": "q", "documents": ["a"]}
    with server.client(keys["limited"]) as client:
        codes = [client.post("/v1/rerank", json=payload) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert int(codes[2].headers["retry-after"]) >= 1 and "rate limit" in codes[2].json()["message"]
    with server.client(keys["rerank"]) as other:  # other keys are unaffected
        assert other.post("/v1/rerank", json=payload).status_code == 200


@pytest.mark.parametrize(("path", "payload", "status", "message"), [
    ("/v1/rerank", {"documents": ["a"]}, 422, "query: Field required"),
    ("/v1/rerank", {"query": "q", "documents": ["a", 2]}, 422, "documents.1.string: Input should be a valid string"),
    ("/v1/rerank", {"query": "q", "documents": [{"id": 1}]}, 422, "documents.0.object.text: Field required"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_k": 3}, 422, "top_k: Extra inputs are not permitted"),
    ("/v1/rerank", {"query": "q", "documents": []}, 422, "documents: List should have at least 1 item"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n: Input should be greater than"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "raw_scores": 1}, 422, "raw_scores: Input should be a valid boolean"),
    ("/v1/rerank", {"query": " \t ", "documents": ["a"]}, 422, "query: must contain a non-whitespace character"),
    ("/v1/rerank", {"query": "word " * 300, "documents": ["a"]}, 422, "shorten the query"),
    ("/v1/rerank", {"query": "q", "documents": ["a"] * 401}, 422, "documents: List should have at most 400 items"),
    ("/v1/rerank", {"query": "q", "documents": ["a", "x" * 5001]}, 422,
     "documents.1.string: String should have at most 5000 characters"),
    ("/v1/rerank", {"query": "q" * 2001, "documents": ["a"]}, 422, "query: String should have at most 2000 characters"),
    ("/v1/rerank", {"query": "q", "documents": ["y" * 4000] * 80}, 413, "the request body is"),
    ("/v1/rerank", {"query": "q", "documents": ["a"], "model": "rerank-multilingual-v3.0"}, 404, "is not served here"),
    ("/v1/search", {"query": "q", "first_stage": "sparse"}, 422, "first_stage: Input should be 'bm25', 'dense' or"),
    ("/v1/search", {"query": "q", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/v1/search", {"query": "q", "filters": {"": "x"}}, 422, "filters..[key]: metadata filter keys use letters"),
    ("/v1/search", {"query": "q", "filters": {"category": [True]}}, 422, "Input should be a valid number"),
    ("/v1/search", {"query": "q", "filters": {"team": "x"}}, 422, "unknown metadata filter key(s) team"),
])
def test_bad_input_is_refused_with_a_clear_message(admin: httpx.Client, path: str, payload: dict[str, Any],
                                                   status: int, message: str) -> None:
    response = admin.post(path, json=payload)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]


def test_malformed_json_is_a_422(admin: httpx.Client) -> None:
    response = admin.post("/v1/rerank", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["message"].startswith("invalid request")


# ---------------------------------------------------------------------------------------------- audit
def test_audit_rows_are_written_and_queryable(server: Server, keys: dict[str, Any], audit_db: Path,
                                              reference: CrossEncoderReranker) -> None:
    with server.client(keys["audited"]) as client:
        ok = client.post("/v1/rerank", json={"query": "refund", "documents": ["annual refund", "mfa"]})
        denied = client.post("/v1/search", json={"query": "refund"})
    assert ok.status_code == 200 and denied.status_code == 403
    rows: list[dict[str, Any]] = []
    for _ in range(50):  # rows are written by a background thread
        result = _rankwise("audit", "--audit", str(audit_db), "--key", keys["audited_id"], "--since", "1h", "--json")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        if len(rows) >= 2:
            break
        time.sleep(0.1)
    by_id = {r["request_id"]: r for r in rows}
    row = by_id[ok.headers["x-request-id"]]
    assert row["status"] == 200 and row["endpoint"] == "/v1/rerank" and row["key_id"] == keys["audited_id"]
    assert row["reranker_sha256"] == reference.weights_sha256 and row["latency_ms"] > 0
    assert row["results"] == [{"index": r["index"], "score": r["relevance_score"]} for r in ok.json()["results"]]
    assert "refund" not in json.dumps(row)  # the query is stored as a hash only
    refused = by_id[denied.headers["x-request-id"]]
    assert refused["status"] == 403 and "needs 'search'" in refused["error"]
    one = json.loads(_rankwise("audit", "--audit", str(audit_db), "--limit", "1", "--json").stdout)
    assert len(one) == 1
    table = _rankwise("audit", "--audit", str(audit_db), "--key", keys["audited_id"])
    assert table.returncode == 0 and "rerank" in table.stdout


# ---------------------------------------------------------------------------------------------- docs, fuzzing
def test_openapi_and_docs(server: Server, kb_index: Index) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/v1/search", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    search = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    filters = spec["components"]["schemas"][search.rsplit("/", 1)[1]]["properties"]["filters"]
    known = sorted(kb_index.docstore.metadata_keys)
    assert known and filters["propertyNames"] == {"enum": known}  # the keys this index can filter on
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_schemathesis_bounded_run(server: Server, keys: dict[str, Any], tmp_path: Path) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (dev dependency)")
    config = tmp_path / "schemathesis.toml"  # a body over --max-body-bytes is refused (413) before parsing
    # schema-valid but semantically refused: a filter key no document has, a query too long for the model
    config.write_text('[checks.negative_data_rejection]\n'
                      'expected-statuses = ["400", "401", "403", "404", "413", "422", "429", "503"]\n'
                      '[checks.positive_data_acceptance]\n'
                      'expected-statuses = ["200", "401", "403", "404", "422", "429", "503"]\n')
    result = subprocess.run(
        [cli, "--config-file", str(config), "run", f"{server.url}/openapi.json", "--header", f"Authorization: Bearer {keys['admin']}",
         "--max-examples", "10", "--seed", "7", "--workers", "1", "--generation-database", "none",
         "--phases", "examples,coverage,fuzzing", "--request-timeout", "30", "--report-dir", str(tmp_path),
         "--no-color"],
        capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


# ---------------------------------------------------------------------------------------------- redis
@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    import redis

    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


def test_redis_cache_survives_restarts_and_never_serves_another_models_scores(
        redis_url: str, models: tuple[Path, Path], tmp_path: Path) -> None:
    import redis

    store = redis.Redis.from_url(redis_url)
    texts = [d.text for d in KB]
    payload = {"query": "rotate redis credentials", "documents": texts, "raw_scores": True}
    common = ["--cache", redis_url, "--audit", "none", "--backend", "torch"]

    a = Server(["--reranker", str(models[0]), *common], tmp_path / "a.log")
    try:
        with a.client() as client:
            assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})  # no --keys
            first, second = (client.post("/v1/rerank", json=payload).json() for _ in range(2))
    finally:
        a.stop()
    assert first["meta"]["cache_hits"] == 0 and second["meta"]["cache_hits"] == len(texts)
    assert store.dbsize() == len(texts)

    b = Server(["--reranker", str(models[1]), *common], tmp_path / "b.log")
    try:
        with b.client() as client:
            answer = client.post("/v1/rerank", json=payload).json()
            assert answer["meta"]["cache_hits"] == 0  # new weights → new keys, never model A's scores
            _assert_matches_reference(answer, CrossEncoderReranker(models[1], backend="torch"), payload["query"], texts)
            assert answer["results"] != first["results"]
            assert store.dbsize() == 2 * len(texts)
            again = client.post("/v1/rerank", json=payload).json()
            assert again["meta"]["cache_hits"] == len(texts) and again["results"] == answer["results"]
            store.shutdown(nosave=True)  # Redis goes away mid-service: answers keep coming, uncached
            degraded_cache = client.post("/v1/rerank", json=payload)
            assert degraded_cache.status_code == 200
            assert degraded_cache.json()["meta"]["cache_hits"] == 0
            assert b.metrics()[("rankwise_cache_errors_total", ())] >= 1
    finally:
        b.stop()


def test_unreachable_redis_is_one_error_line(models: tuple[Path, Path]) -> None:
    result = _rankwise("serve", "--reranker", str(models[0]), "--cache", f"redis://127.0.0.1:{free_port()}/0",
                       "--audit", "none", "--port", str(free_port()))
    assert result.returncode == 2 and result.stderr.startswith("error: cannot reach Redis")
    assert "Traceback" not in result.stderr

