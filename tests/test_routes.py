"""The route table decides, for every endpoint, what the server does around it: checked on the real app."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import KB_TEXTS, QUERY
from rankwise.index import Index
from rankwise.serving.routes import API_PATHS, ROUTES


def test_every_api_route_is_audited_guarded_and_documented(tiny_cross_encoder: Path, kb_index: Index,
                                                           tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from rankwise.rerank.loading import LoadOptions
    from rankwise.serving.app import create_app
    from rankwise.serving.audit import read_audit
    from rankwise.serving.config import Limits, ServeConfig
    from rankwise.serving.state import load_state

    audit = tmp_path / "audit.sqlite"
    config = ServeConfig(index=kb_index.path, reranker=str(tiny_cross_encoder), load=LoadOptions(backend="torch"),
                         audit=audit, limits=Limits(max_body_bytes=4096))
    with TestClient(create_app(load_state(config))) as client:
        bodies = {"/v1/rerank": {"query": QUERY, "documents": KB_TEXTS[:3]},
                  "/v2/rerank": {"query": QUERY, "documents": KB_TEXTS[:3], "model": str(tiny_cross_encoder)},
                  "/v1/search": {"query": QUERY, "k": 2},
                  "/v1/feedback": {"request_id": "r", "doc_id": "d", "signal": "click", "event_id": "e"}}
        assert set(bodies) == API_PATHS
        statuses = {path: client.post(path, json=body).status_code for path, body in bodies.items()}
        assert statuses == {"/v1/rerank": 200, "/v2/rerank": 200, "/v1/search": 200, "/v1/feedback": 404}
        # the guard's body limit applies to every API route, and is audited like any answer
        too_large = {path: client.post(path, content=b"x" * 5000, headers={"content-type": "application/json"})
                     for path in API_PATHS}
        assert {p: r.status_code for p, r in too_large.items()} == dict.fromkeys(API_PATHS, 413)
        assert client.get("/healthz").status_code == 200
        documented = client.get("/openapi.json").json()["paths"]
    assert set(documented) == {route.path for route in ROUTES}
    for route in ROUTES:
        assert set(documented[route.path]) == {route.method.lower()}
        assert {str(c) for c in route.errors} <= set(documented[route.path][route.method.lower()]["responses"])
    deadline = time.monotonic() + 10
    while True:  # the audit writer is a background thread
        rows = read_audit(audit, limit=100)
        if len(rows) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by_endpoint: dict[str, list[int]] = {}
    for row in rows:
        by_endpoint.setdefault(row["endpoint"], []).append(row["status"])
    assert {path: sorted(codes) for path, codes in by_endpoint.items()} == {
        "/v1/rerank": [200, 413], "/v2/rerank": [200, 413], "/v1/search": [200, 413], "/v1/feedback": [404, 413]}


def test_a_route_without_a_table_entry_stops_the_server(tiny_cross_encoder: Path) -> None:
    from rankwise.rerank.loading import LoadOptions
    from rankwise.serving import app as app_module
    from rankwise.serving.config import ServeConfig
    from rankwise.serving.state import load_state

    state = load_state(ServeConfig(reranker=str(tiny_cross_encoder), load=LoadOptions(backend="torch")))
    try:
        with pytest.raises(RuntimeError, match="route table and handlers disagree"):
            app_module._register(app_module.FastAPI(), state, {})
    finally:
        state.close()


def test_a_lone_surrogate_anywhere_in_a_body_is_a_422_naming_the_field(tiny_cross_encoder: Path,
                                                                       kb_index: Index) -> None:
    from fastapi.testclient import TestClient

    from rankwise.rerank.loading import LoadOptions
    from rankwise.serving.app import create_app
    from rankwise.serving.config import ServeConfig
    from rankwise.serving.state import load_state

    config = ServeConfig(index=kb_index.path, reranker=str(tiny_cross_encoder), load=LoadOptions(backend="torch"))
    cases = [("/v1/rerank", '{"query": "q", "documents": ["a"], "model": "\\ud800"}', "model"),
             ("/v2/rerank", '{"query": "q", "documents": ["a"], "model": "\\ud800"}', "model"),
             ("/v1/rerank", '{"query": "q", "documents": ["a", {"text": "\\udfff"}]}', "documents.1.text"),
             ("/v1/search", '{"query": "q", "filters": {"category": "\\ud800"}}', "filters.category"),
             ("/v1/search", '{"query": "q", "filters": {"category": ["ok", "\\ud800"]}}', "filters.category.1"),
             ("/v1/feedback", '{"request_id": "r", "doc_id": "\\ud800", "signal": "click", "event_id": "e"}',
              "doc_id")]
    with TestClient(create_app(load_state(config)), raise_server_exceptions=False) as client:
        for path, body, field in cases:
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, (path, response.text)
            assert f"{field}: not valid Unicode text" in response.json()["message"], response.text


def test_the_servers_own_damaged_data_is_a_503_that_names_no_path_and_shows_in_readyz(
        kb_documents, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from rankwise.options import PipelineSettings
    from rankwise.serving.app import create_app
    from rankwise.serving.config import ServeConfig
    from rankwise.serving.state import load_state

    index = Index.build(kb_documents, tmp_path / "index")
    config = ServeConfig(index=index.path, pipeline=PipelineSettings(first_stage="bm25"))
    with TestClient(create_app(load_state(config))) as client:
        assert client.post("/v1/search", json={"query": QUERY, "k": 3}).status_code == 200
        docstore = index.path / "docstore.sqlite"
        intact = docstore.read_bytes()
        docstore.write_bytes(b"\x00" * len(intact))  # damaged under the running server
        response = client.post("/v1/search", json={"query": "rotate postgres credentials", "k": 3})
        assert response.status_code == 503, response.text
        assert str(tmp_path) not in response.text and "request id" in response.json()["message"]
        assert "the index is damaged or missing" in response.json()["message"], response.text
        assert response.headers["retry-after"] == "5"
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text  # a load balancer stops sending it traffic
        assert str(tmp_path) not in ready.json()["reason"]
        problems = ready.json()["problems"]
        assert any(str(index.path) in detail for detail in problems.values()), problems  # the operator's view
        docstore.write_bytes(intact)  # repaired: ready again, the problem gone
        assert client.get("/readyz").status_code == 200 and not client.get("/readyz").json().get("problems"), client.get("/readyz").text
