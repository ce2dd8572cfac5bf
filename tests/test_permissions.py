"""Document permissions: a document's ``groups`` metadata is its access list, and a caller's groups decide
what it can find — in the library, the CLI and a real server — with the groups each request had in the audit.

The rule under test: a document a caller may not see never appears, never takes a candidate slot (it is
excluded inside the first stage, before anything is ranked or reranked) and is never described in a
warning; public documents are seen by everyone; a key cannot search as groups it does not have.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import KB
from rankwise.index import Index
from rankwise.pipeline import Pipeline
from rankwise.serving.audit import AuditRecord, SQLiteAuditLog, chain_hash, read_audit, verify_chain
from rankwise.serving.auth import KeyStore
from rankwise.serving.readiness import ServeProcess
from rankwise.types import Document

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

#: who may read what: finance documents, security runbooks (a string, a list), one nobody restricted may
#: read, one with an explicit null, and the rest public
ACCESS: dict[str, Any] = {"churn-q4": ["finance"], "refund-annual": ["finance", "support"], "pg-rotate": "security",
                          "redis-rotate": ["security"], "churn-theory": [], "mfa-employee": None}
SECRET = {"churn-q4", "refund-annual", "pg-rotate", "redis-rotate", "churn-theory"}
PUBLIC = {d.id for d in KB} - SECRET


def _visible(groups: set[str]) -> set[str]:
    named = {doc for doc, acl in ACCESS.items() if acl and set([acl] if isinstance(acl, str) else acl) & groups}
    return PUBLIC | named


def _with_access(doc: Document) -> Document:
    if doc.id not in ACCESS:
        return doc
    return Document(doc.id, doc.text, doc.title, {**doc.metadata, "groups": ACCESS[doc.id]})


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    return Index.build([_with_access(d) for d in KB], tmp_path_factory.mktemp("acl") / "index")


QUERIES = ("rotate production postgres credentials", "customer churn analysis", "refund policy annual plan",
           "reset MFA", "redis ACL sentinel")


@pytest.mark.parametrize("groups", [set(), {"finance"}, {"security"}, {"support", "finance"}, {"unknown"}],
                         ids=lambda g: ",".join(sorted(g)) or "public")
@pytest.mark.parametrize("first_stage", ["bm25", "dense", "hybrid"])
def test_a_caller_finds_public_documents_and_its_groups_and_nothing_else(
        index: Index, groups: set[str], first_stage: str) -> None:
    pipeline = Pipeline(index, first_stage=first_stage)
    found: set[str] = set()
    for query in QUERIES:
        response = pipeline.search(query, k=10, groups=groups)
        ids = [r.doc_id for r in response.results]
        assert set(ids) <= _visible(groups), (query, ids)
        assert [r.rank for r in response.results] == list(range(1, len(ids) + 1))
        assert all(r.first_stage.rank <= len(_visible(groups)) for r in response.results)  # no hidden ones ahead
        found |= set(ids)
        if first_stage == "dense":  # dense returns every allowed document: the candidates are exactly those
            assert response.provenance.num_candidates == len(_visible(groups))
    assert found == _visible(groups) if first_stage == "dense" else found <= _visible(groups)


def test_without_groups_everything_is_searched_and_filters_combine_with_groups(index: Index) -> None:
    pipeline = Pipeline(index, first_stage="dense")
    assert {r.doc_id for r in pipeline.search("credentials", k=10).results} == {d.id for d in KB}
    security = pipeline.search("credentials", k=10, filters={"category": "runbook"}, groups={"security"})
    assert {r.doc_id for r in security.results} == {"pg-rotate", "redis-rotate"}
    hidden = pipeline.search("credentials", k=10, filters={"category": "runbook"}, groups={"finance"})
    assert hidden.results == []
    assert hidden.warnings == ["no document visible to finance matches these filters"]  # no values quoted
    research = pipeline.search("churn", k=10, filters={"category": "research"}, groups={"finance"})
    assert research.results == [] and "research" not in " ".join(research.warnings)


def test_the_cli_searches_as_the_groups_given(index: Index) -> None:
    def ids(*groups: str) -> set[str]:
        args = [a for g in groups for a in ("--group", g)]
        result = subprocess.run([sys.executable, "-m", "rankwise", "search", "rotate credentials", "-i", str(index.path),
                                 "--first-stage", "dense", "--k", "10", "--json", *args],
                                capture_output=True, text=True, env=ENV, timeout=300, check=False)
        assert result.returncode == 0, result.stderr
        return {r["doc_id"] for r in json.loads(result.stdout)["results"]}

    assert ids("security") == _visible({"security"}) and ids() == {d.id for d in KB}


def test_a_labelling_sheet_for_a_group_holds_only_what_its_annotators_may_read(index: Index) -> None:
    from rankwise.evaluation.labeling import build_sheet

    rows = build_sheet(Pipeline(index, first_stage="dense"), dict(enumerate(QUERIES)), k=10, groups={"finance"})
    assert {r.document_id for r in rows} == _visible({"finance"})


def test_an_evaluation_as_a_group_searches_as_it_and_leaves_out_what_it_may_not_see(
        index: Index, tmp_path: Path) -> None:
    """A team measures the search it gets: hidden documents neither appear in its rankings nor count as
    misses, and the report says how many judgements were left out and which groups it ran as."""
    gold = [{"query_id": "q1", "query": "rotate production postgres credentials", "document_id": "pg-rotate", "label": 2},
            {"query_id": "q1", "query": "rotate production postgres credentials", "document_id": "redis-rotate",
             "label": 1},
            {"query_id": "q2", "query": "customer churn analysis", "document_id": "churn-q4", "label": 2}]
    gold_path = tmp_path / "gold.jsonl"
    gold_path.write_text("".join(json.dumps(g) + "\n" for g in gold))

    def evaluate(*groups: str) -> tuple[dict[str, Any], str]:
        out = tmp_path / ("-".join(groups) or "all")
        args = [a for g in groups for a in ("--group", g)]
        result = subprocess.run([sys.executable, "-m", "rankwise", "eval", "-i", str(index.path), "--goldset",
                                 str(gold_path), "--first-stage", "bm25,dense", "--baseline", "bm25", "--json",
                                 str(out / "report.json"), "--run-dir", str(out), *args],
                                capture_output=True, text=True, env=ENV, timeout=300, check=False)
        assert result.returncode == 0, result.stderr + result.stdout
        report = json.loads((out / "report.json").read_text())
        report["found"] = {line.split()[2] for system in report["systems"]
                           for line in (out / f"{system}.run").read_text().splitlines()}
        return report, result.stdout + result.stderr

    everyone, _ = evaluate()
    security, printed = evaluate("security")
    assert everyone["dataset"]["counts"]["evaluated_queries"] == 2 and everyone["config"]["groups"] is None
    # churn-q4 is finance's: its query has nothing security may find, so it is not evaluated for security
    assert security["dataset"]["counts"]["evaluated_queries"] == 1 and security["config"]["groups"] == ["security"]
    assert security["dataset"]["counts"]["hidden_judgements"] == 1 and "hidden from groups security" in printed
    assert security["found"] == _visible({"security"})  # every document it may see, and nothing else
    assert everyone["found"] == {d.id for d in KB}


def test_a_feedback_export_for_a_group_keeps_only_what_it_may_read(index: Index, tmp_path: Path) -> None:
    """Thumbs on a finance document and a public one: the export for support holds the public one only,
    and says how many judgements it left out; without --index the groups cannot be applied."""
    from rankwise.feedback.events import FeedbackEvent, LoggedRequest, LoggedResult
    from rankwise.feedback.store import SQLiteFeedbackStore

    db = tmp_path / "feedback.sqlite"
    with SQLiteFeedbackStore(db) as store:
        store.log_request(LoggedRequest("r1", "/v1/search", (LoggedResult("churn-q4", 1, 0.9),
                                                             LoggedResult("mfa-employee", 2, 0.8)),
                                        query="customer churn"))
        store.add_event(FeedbackEvent("e1", "r1", "thumbs_up", "churn-q4", 1))
        store.add_event(FeedbackEvent("e2", "r1", "thumbs_down", "mfa-employee", 2))
        store.flush()

    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rankwise", "feedback", "export", "--feedback-db", str(db),
                               "--out", str(tmp_path / "gold.jsonl"), *args], capture_output=True, text=True,
                              env=ENV, timeout=300, check=False)

    support = export("--group", "support", "-i", str(index.path))
    assert support.returncode == 0, support.stderr
    gold = [json.loads(line) for line in (tmp_path / "gold.jsonl").read_text().splitlines()]
    assert [g["document_id"] for g in gold] == ["mfa-employee"]
    assert "1 labelled pairs were left out" in support.stdout
    finance = export("--group", "finance", "-i", str(index.path))
    assert finance.returncode == 0 and "left out" not in finance.stdout
    no_index = export("--group", "support")
    assert no_index.returncode != 0 and "--group needs --index" in no_index.stderr and "Traceback" not in no_index.stderr


# ---------------------------------------------------------------------------------------------- the server
class _Server(ServeProcess):
    def __init__(self, args: list[str], log: Path, audit: Path) -> None:
        super().__init__([*args, "--audit", str(audit)], log, timeout_s=180, env=ENV)
        self.audit = audit
        if self.problem:
            pytest.fail(f"{self.problem}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("acl-keys") / "keys.json"
    store = KeyStore(path)
    tokens: dict[str, Any] = {"file": path}
    for name, roles, groups in (("admin", ["admin"], None), ("finance", ["search"], ["finance"]),
                                ("gateway", ["search"], ["finance", "security"]), ("public", ["search"], [])):
        key, tokens[name] = store.add(roles, name=name, groups=groups)
        tokens[f"{name}_id"] = key.id
    return tokens


@pytest.fixture(scope="module")
def server(index: Index, keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Server]:
    root = tmp_path_factory.mktemp("acl-server")
    srv = _Server(["--index", str(index.path), "--first-stage", "dense", "--keys", str(keys["file"]),
                   "--feedback-db", "none"], root / "server.log", root / "audit.sqlite")
    yield srv
    srv.stop()


def _search(server: _Server, token: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/search", json={"query": "rotate credentials churn refund", "k": 10, **body},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_a_key_searches_as_its_groups_and_a_gateway_narrows_to_its_users(server: _Server, keys: dict[str, Any]) -> None:
    def ids(response: httpx.Response) -> set[str]:
        assert response.status_code == 200, response.text
        return {r["doc_id"] for r in response.json()["results"]}

    assert ids(_search(server, keys["admin"])) == {d.id for d in KB}
    assert ids(_search(server, keys["finance"])) == _visible({"finance"})
    assert ids(_search(server, keys["public"])) == PUBLIC
    assert ids(_search(server, keys["gateway"])) == _visible({"finance", "security"})
    assert ids(_search(server, keys["gateway"], groups=["security"])) == _visible({"security"})
    assert ids(_search(server, keys["admin"], groups=[])) == PUBLIC

    refused = _search(server, keys["finance"], groups=["security"])
    assert refused.status_code == 403 and "may not search as group(s) security" in refused.json()["message"]
    assert _search(server, keys["finance"], groups=[" "]).status_code == 422

    log = server.audit

    def audited() -> list[dict[str, Any]]:
        return read_audit(log, limit=100)

    deadline = time.monotonic() + 10
    while len(audited()) < 8 and time.monotonic() < deadline:  # written by the server's own thread
        time.sleep(0.05)
    rows = {(r["key_id"], json.dumps(r["groups"])): r for r in audited()}
    assert (keys["finance_id"], '["finance"]') in rows and (keys["admin_id"], "null") in rows
    assert (keys["gateway_id"], '["security"]') in rows and (keys["admin_id"], "[]") in rows
    assert rows[(keys["finance_id"], '["finance"]')]["status"] in (200, 403)
    assert verify_chain(log).ok
    listed = subprocess.run([sys.executable, "-m", "rankwise", "keys", "list", "--keys", str(keys["file"])],
                            capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert "groups finance,security" in " ".join(listed.stdout.split())


def test_an_audit_log_from_before_groups_is_upgraded_and_its_chain_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    log = SQLiteAuditLog(path)
    try:
        log.record(AuditRecord("before", "/v1/search", 200, 1.0))
        log.flush()
    finally:
        log.close()
    with sqlite3.connect(path) as conn:  # make it the previous schema: no groups column, version 1
        conn.execute("ALTER TABLE requests DROP COLUMN groups")
        conn.execute("PRAGMA user_version = 1")
    assert verify_chain(path).ok and read_audit(path)[0]["groups"] is None  # read-only: not upgraded
    log = SQLiteAuditLog(path)
    try:
        log.record(AuditRecord("after", "/v1/search", 200, 1.0, groups=["finance"]))
        log.flush()
    finally:
        log.close()
    assert [(r["request_id"], r["groups"]) for r in read_audit(path)] == [("after", ["finance"]), ("before", None)]
    assert verify_chain(path).ok
    with sqlite3.connect(path) as conn:  # the groups a request had are covered by its hash
        conn.execute("DROP TRIGGER requests_no_update")
        conn.execute("UPDATE requests SET groups = '[\"security\"]' WHERE request_id = 'after'")
    report = verify_chain(path)
    assert not report.ok and "edited" in report.reason
    assert chain_hash("0", ("x",)) != chain_hash("0", ("x", None))  # a later column set to null is not "unset"
