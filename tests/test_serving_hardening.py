"""Hostile and unlucky conditions against a real server process: oversize chunked bodies without a key,
overload, a hung Redis, a broken keys file, tampering with the audit log, and what anonymous callers see.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import ENV, Server, _build_model, _rankwise, redis_url  # noqa: F401 - redis_url is a fixture

from conftest import KB, eventually
from rankwise.serving.audit import verify_chain
from rankwise.serving.auth import KeyStore

TEXTS = [d.text for d in KB]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_model(tmp_path_factory.mktemp("hardening-model") / "m", seed=3)


@pytest.fixture(scope="module")
def guarded(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with keys, an audit log and a 64 kB body limit."""
    root = tmp_path_factory.mktemp("hardening")
    keys = root / "keys.json"
    store = KeyStore(keys)
    _, admin = store.add(["admin"], name="admin", rate_per_s=1000, burst=1000)
    rerank_key, rerank = store.add(["rerank"], name="app", rate_per_s=1000, burst=1000)
    audit = root / "audit.sqlite"
    srv = Server(["--reranker", str(model), "--backend", "torch", "--keys", str(keys), "--audit", str(audit),
                  "--max-body-bytes", "65536"], root / "server.log")
    yield {"server": srv, "admin": admin, "rerank": rerank, "rerank_id": rerank_key.id, "audit": audit,
           "keys": keys}
    srv.stop()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _chunked_post(port: int, token: str | None, chunks: int, chunk_bytes: int = 1 << 20) -> tuple[int, float]:
    """POST a chunked body of ``chunks`` MiB by hand (no Content-Length); (status, seconds to the answer)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = ["POST /v1/rerank HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
                "Transfer-Encoding: chunked"] + ([f"Authorization: Bearer {token}"] if token else [])
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        chunk = f"{chunk_bytes:x}\r\n".encode() + b" " * chunk_bytes + b"\r\n"
        sock.settimeout(0.05)
        answer = b""
        for _ in range(chunks):
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed: stop sending
                break
            try:
                answer += sock.recv(65536)
            except TimeoutError:
                continue
            if answer:
                break
        sock.settimeout(30)
        while b"\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, time.perf_counter() - started


def test_chunked_oversize_bodies_never_grow_the_server(guarded: dict[str, Any]) -> None:
    srv = guarded["server"]
    before = _rss_kb(srv.proc.pid)
    with ThreadPoolExecutor(4) as pool:  # four at once, 64 MiB each, no key: refused before any body is read
        results = list(pool.map(lambda _: _chunked_post(srv.port, None, 64), range(4)))
    assert all(status == 401 for status, _ in results), results
    # with a valid key the body is read only up to the limit, then refused (and the key is in the audit row)
    status, _ = _chunked_post(srv.port, guarded["rerank"], 64)
    assert status == 413
    grown_mb = (_rss_kb(srv.proc.pid) - before) / 1024
    assert grown_mb < 50, f"the server grew by {grown_mb:.0f} MB while refusing oversize bodies"
    def rows() -> list[tuple[int, str | None]]:  # the audit writer thread commits asynchronously
        return sqlite3.connect(guarded["audit"]).execute(
            "SELECT status, key_id FROM requests WHERE status IN (401, 413)").fetchall()

    eventually(lambda: (413, guarded["rerank_id"]) in rows() and rows().count((401, None)) >= 4,
               what="the audit rows of the refused requests")


def test_anonymous_callers_see_no_model_details(guarded: dict[str, Any]) -> None:
    srv = guarded["server"]
    anonymous = httpx.get(f"{srv.url}/readyz").json()
    assert anonymous["ready"] is True and anonymous["reranker"] is None and anonymous["reranker_sha256"] is None
    admin = httpx.get(f"{srv.url}/readyz", headers={"Authorization": f"Bearer {guarded['admin']}"}).json()
    assert admin["reranker_sha256"] and admin["reranker"]
    assert httpx.get(f"{srv.url}/metrics").status_code == 401
    assert httpx.get(f"{srv.url}/metrics", headers={"Authorization": f"Bearer {guarded['rerank']}"}).status_code == 401
    metrics = httpx.get(f"{srv.url}/metrics", headers={"Authorization": f"Bearer {guarded['admin']}"})
    assert metrics.status_code == 200 and "rankwise_requests_total" in metrics.text
    docs = httpx.get(f"{srv.url}/docs")
    assert docs.status_code == 200 and "cdn.jsdelivr" not in docs.text and "unpkg" not in docs.text
    assets = [part.split('"')[0] for part in docs.text.split('src="')[1:]]
    assert assets and all(httpx.get(f"{srv.url}{a}").status_code == 200 for a in assets if a.startswith("/"))


def test_client_text_is_capped_and_queries_are_keyed_in_the_audit_log(guarded: dict[str, Any]) -> None:
    srv = guarded["server"]
    huge_model = "m" * 30_000
    with srv.client(guarded["rerank"]) as client:
        response = client.post("/v1/rerank", json={"query": "reset MFA", "documents": TEXTS, "model": huge_model})
        assert response.status_code == 404 and len(response.json()["message"]) < 400
        answered = client.post("/v1/rerank", json={"query": "ok", "documents": TEXTS})
        assert answered.status_code == 200
    conn = sqlite3.connect(guarded["audit"])
    eventually(lambda: conn.execute("SELECT 1 FROM requests WHERE request_id = ?",
                                    (answered.json()["request_id"],)).fetchone() is not None, what="the audit row")
    longest = conn.execute("SELECT max(length(error)) FROM requests").fetchone()[0]
    assert longest <= 600
    import hashlib

    digests = {row[0] for row in conn.execute("SELECT query_sha256 FROM requests WHERE query_sha256 IS NOT NULL")}
    assert digests and hashlib.sha256(b"ok").hexdigest() not in digests  # keyed: not guessable by plain sha256
    assert (guarded["audit"].with_name("audit.sqlite.key").stat().st_mode & 0o777) == 0o600


def test_audit_chain_detects_edited_and_deleted_rows(guarded: dict[str, Any], tmp_path: Path) -> None:
    with guarded["server"].client(guarded["rerank"]) as client:
        for i in range(3):
            last = client.post("/v1/rerank", json={"query": f"chain {i}", "documents": TEXTS[:2]})
            assert last.status_code == 200
    written = sqlite3.connect(guarded["audit"])
    eventually(lambda: written.execute("SELECT 1 FROM requests WHERE request_id = ?",
                                       (last.json()["request_id"],)).fetchone() is not None, what="the audit row")
    written.close()
    copy = tmp_path / "audit.sqlite"
    source = sqlite3.connect(guarded["audit"])
    source.execute("PRAGMA wal_checkpoint(FULL)")
    source.backup(dest := sqlite3.connect(copy))
    dest.close()
    ok = _rankwise("audit", "verify", "--audit", str(copy))
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    # an attacker with file access drops the append-only triggers and rewrites history
    edited = tmp_path / "edited.sqlite"
    edited.write_bytes(copy.read_bytes())
    conn = sqlite3.connect(edited)
    conn.executescript("DROP TRIGGER requests_no_update; DROP TRIGGER requests_no_delete;")
    seq = conn.execute("SELECT seq FROM requests ORDER BY seq LIMIT 1 OFFSET 1").fetchone()[0]
    conn.execute("UPDATE requests SET status = 200, error = NULL WHERE seq = ?", (seq,))
    conn.commit()
    report = verify_chain(edited)
    assert not report.ok and report.broken_at == seq and "edited" in report.reason
    bad = _rankwise("audit", "verify", "--audit", str(edited))
    assert bad.returncode == 1 and "tampered" in bad.stderr and "Traceback" not in bad.stderr
    conn.execute("DELETE FROM requests WHERE seq = ?", (seq,))
    conn.commit()
    assert "deleted or inserted" in verify_chain(edited).reason


def test_broken_keys_file_is_a_503_without_paths(model: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    _, token = KeyStore(keys).add(["rerank"], name="app")
    srv = Server(["--reranker", str(model), "--backend", "torch", "--keys", str(keys), "--audit", "none"],
                 tmp_path / "server.log")
    try:
        keys.write_text("{not json")
        response = httpx.post(f"{srv.url}/v1/rerank", json={"query": "q", "documents": ["a"]},
                              headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 503 and str(tmp_path) not in response.text
    finally:
        srv.stop()


def test_overload_is_shed_with_503_and_retry_after(model: Path, tmp_path: Path) -> None:
    srv = Server(["--reranker", str(model), "--backend", "torch", "--audit", "none", "--max-in-flight", "2",
                  "--no-batching"], tmp_path / "server.log")
    documents = [f"{t} (overload {i})" for i in range(40) for t in TEXTS]
    barrier = threading.Barrier(12)

    def call(i: int) -> httpx.Response:
        with httpx.Client(base_url=srv.url, timeout=120) as client:
            barrier.wait()
            return client.post("/v1/rerank", json={"query": f"overload {i}", "documents": documents})

    try:
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(call, range(12)))
        shed = [r for r in responses if r.status_code == 503]
        assert shed and all(r.headers["retry-after"] == "1" for r in shed)
        assert {r.status_code for r in responses} <= {200, 503} and any(r.status_code == 200 for r in responses)
        metrics = httpx.get(f"{srv.url}/metrics").text
        assert 'rankwise_rejected_total{reason="overloaded"}' in metrics
    finally:
        srv.stop()


def test_a_hung_redis_opens_the_breaker_instead_of_dragging_requests(redis_url: str, model: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    import redis

    srv = Server(["--reranker", str(model), "--backend", "torch", "--audit", "none", "--cache", redis_url],
                 tmp_path / "server.log")
    pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])
    try:
        os.kill(pid, signal.SIGSTOP)  # Redis hangs: connections open, nothing answers
        latencies = []
        with srv.client() as client:
            for i in range(12):
                t0 = time.perf_counter()
                response = client.post("/v1/rerank", json={"query": f"hung {i}", "documents": TEXTS})
                latencies.append(time.perf_counter() - t0)
                assert response.status_code == 200
        # the first calls wait for the short timeout; once the breaker is open requests skip Redis entirely
        assert max(latencies[4:]) < 0.5, latencies
    finally:
        os.kill(pid, signal.SIGCONT)
        srv.stop()
