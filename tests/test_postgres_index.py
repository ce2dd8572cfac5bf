"""An index in PostgreSQL with pgvector (``--index postgresql://...#NAME``), against a real server.

The rules under test: built from the same corpus, it answers exactly like the embedded index when its
vectors are searched exactly, and HNSW finds at least 99% of the exact top 10; filters and permissions
hold in SQL, with row-level security as a second line that a plain role cannot get around; updates,
deletions and rollbacks give the same versions as in a directory and keep no more than two; the CLI and
a running server take the URL wherever they take a directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import KB, Postgres
from rankwise.errors import IndexNotFoundError, QueryError
from rankwise.index import Index, build_index, open_index, rollback_index, update_index
from rankwise.index.dense import Embedder
from rankwise.index.index import reusable_vectors
from rankwise.index.postgres_index import PostgresIndex
from rankwise.pipeline import Pipeline
from rankwise.serving.readiness import ServeProcess
from rankwise.types import Document

pytest.importorskip("pgvector")

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
SAMPLE_KB = Path(__file__).resolve().parents[1] / "src" / "rankwise" / "data" / "sample_kb"
ADDED = Document("sso-okta", "Single sign-on goes through Okta; new apps are added by the identity team.",
                 "Single sign-on with Okta", {"category": "security"})


def _rankwise(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, env=ENV,
                          timeout=300, check=False)


def _ids(index: Index, query: str, method: str = "hybrid", **kwargs: object) -> list[str]:
    return [r.doc_id for r in Pipeline(index, first_stage=method).search(query, k=10, **kwargs).results]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sample_kb(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> tuple[Index, str]:
    """The bundled sample KB as a directory and in PostgreSQL, with the same vectors (embedded once)."""
    embedder = Embedder()
    local = Index.build(SAMPLE_KB / "corpus.jsonl", tmp_path_factory.mktemp("sample") / "index", embedder=embedder)
    url = postgres.database("sample") + "#sample"
    build_index(SAMPLE_KB / "corpus.jsonl", url, embedder=embedder, reuse=reusable_vectors(local, embedder)).close()
    return local, url


def test_exact_search_answers_like_the_embedded_index_and_hnsw_finds_the_exact_top_10(
        sample_kb: tuple[Index, str]) -> None:
    local, url = sample_kb
    exact, hnsw = open_index(url, exact=True), open_index(url)
    assert exact.fingerprint == local.fingerprint == hnsw.fingerprint
    queries = [json.loads(line)["text"] for line in (SAMPLE_KB / "queries.jsonl").read_text().splitlines()]
    found = wanted = 0
    for query in queries:
        for method in ("bm25", "dense", "hybrid"):
            assert _ids(exact, query, method) == _ids(local, query, method), (query, method)
        vector = local.embedder.encode([query])[0]
        rows, scores = local.vectors.search(vector, 10)
        pg_rows, pg_scores = exact.vectors.search(vector, 10)
        assert pg_rows.tolist() == rows.tolist()
        np.testing.assert_allclose(pg_scores, scores, atol=1e-5)
        hnsw_rows, _ = hnsw.vectors.search(vector, 10)
        found, wanted = found + len(set(hnsw_rows.tolist()) & set(rows.tolist())), wanted + len(rows)
    assert found / wanted >= 0.99, f"HNSW recall@10 {found / wanted:.3f} of exact"
    assert len(queries) >= 50


def test_metadata_filters_are_sql_and_an_unknown_value_is_explained(sample_kb: tuple[Index, str]) -> None:
    local, url = sample_kb
    pg = open_index(url)
    assert pg.docstore.metadata_keys == local.docstore.metadata_keys
    team = next(iter(local.docstore.metadata([local.passage_doc_ids[0]]).values()))["team"]
    for filters in ({"team": team}, {"team": [team, "nobody"]}):
        assert pg.docstore.rows_matching(filters).tolist() == local.docstore.rows_matching(filters).tolist()
        assert _ids(pg, "how do I rotate credentials", filters=filters) == \
            _ids(local, "how do I rotate credentials", filters=filters)
    assert pg.docstore.why_nothing_matches({"team": "Nobody"}) == local.docstore.why_nothing_matches({"team": "Nobody"})


ACCESS = {"churn-q4": ["finance"], "pg-rotate": "security", "churn-theory": []}


def _as(url: str, role: str) -> str:
    """``url`` (the test server's, as its superuser) for ``role``."""
    return url.replace("postgres:@", f"{role}@", 1).replace("//postgres@", f"//{role}@", 1)


def _role(conn: object, role: str) -> None:
    conn.execute(f"DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def restricted(postgres: Postgres, kb_index: Index) -> str:
    """The KB with access lists, built and read by a plain role (row-level security holds for it; a superuser
    would skip it), in a database where a superuser made the vector extension."""
    import psycopg

    docs = [Document(d.id, d.text, d.title, {**d.metadata, "groups": ACCESS[d.id]}) if d.id in ACCESS else d for d in KB]
    url = postgres.database("acl")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        _role(conn, "builder")
        conn.execute("GRANT CREATE ON SCHEMA public TO builder")
    location = _as(url, "builder") + "#kb"
    build_index(docs, location, embedder=kb_index.embedder).close()
    return location


def test_a_caller_finds_only_what_its_groups_may_read_and_row_level_security_backs_it(
        restricted: str, postgres: Postgres) -> None:
    index = open_index(restricted)
    assert "churn-q4" in _ids(index, "customer churn in Q4")
    for groups, hidden in (({"security"}, {"churn-q4", "churn-theory"}), ({"finance"}, {"pg-rotate", "churn-theory"})):
        for query in ("customer churn in Q4", "rotate production postgres credentials"):
            assert not set(_ids(index, query, groups=groups)) & hidden
    secret = index.passage_doc_ids.index("churn-q4")
    with pytest.raises(QueryError, match="not visible"):  # the second line: text leaves only under the groups
        index.docstore.passages([secret], frozenset({"security"}))

    # another plain role reading the tables directly sees public rows unless it names groups
    import psycopg

    builder = restricted.split("#")[0]
    with psycopg.connect(builder, autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0] is False
    superuser = builder.replace("builder@", "postgres:@", 1)
    with psycopg.connect(superuser, autocommit=True) as admin:
        _role(admin, "reader")
        admin.execute("GRANT pg_read_all_data TO reader")
    with psycopg.connect(_as(superuser, "reader"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "reader"
        table = f"rankwise_index_{index.version}_documents"  # type: ignore[attr-defined]

        def visible(setting: str | None) -> set[str]:
            with conn.transaction():
                if setting is not None:
                    conn.execute("SELECT set_config('rankwise.groups', %s, true)", (setting,))
                return {d for (d,) in conn.execute(f"SELECT doc_id FROM {table}")}

        everyone = {d.id for d in KB}
        assert visible(None) == everyone - set(ACCESS)
        assert visible('["finance"]') == everyone - {"pg-rotate", "churn-theory"}
        assert visible("*") == everyone


def test_updates_deletions_and_rollback_give_the_versions_a_directory_would_and_keep_two(
        postgres: Postgres, kb_index: Index, tmp_path: Path) -> None:
    url = postgres.database("live") + "#kb"
    first = build_index(KB, url, embedder=kb_index.embedder)
    assert first.fingerprint == kb_index.fingerprint
    updated, summary = update_index(url, [ADDED], delete=["churn-theory"])
    assert (summary.added, summary.deleted) == (1, 1)
    fresh = Index.build([d for d in KB if d.id != "churn-theory"] + [ADDED], tmp_path / "fresh",
                        embedder=kb_index.embedder)
    assert updated.fingerprint == fresh.fingerprint
    assert updated.manifest.stats["embedded"] == 1  # only the added document's passage; the rest reused
    assert _ids(updated, "single sign-on with okta")[0] == "sso-okta"
    assert update_index(url, [ADDED])[1].changes_anything is False
    third, _ = update_index(url, delete=["churn-q4"])
    back = rollback_index(url)
    assert back.fingerprint == updated.fingerprint and "churn-q4" in _ids(back, "customer churn in Q4")
    assert rollback_index(url).fingerprint == third.fingerprint  # a second rollback rolls forward
    import psycopg

    with psycopg.connect(url.split("#")[0], autocommit=True) as conn:
        def kept() -> tuple[int, int]:
            (versions, retired), = conn.execute("SELECT count(*), count(retired_at) FROM rankwise_index_versions")
            return versions, retired

        assert kept() == (3, 1)  # current, previous, and the one retired minutes ago (a slow server may read it)
        conn.execute("UPDATE rankwise_index_versions SET retired_at = now() - interval '11 minutes' "
                     "WHERE retired_at IS NOT NULL")
        update_index(url, [ADDED], delete=["refund-annual"])
        assert kept() == (3, 1)  # the long-retired one dropped, the newly retired one kept
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'rankwise_index_%_passages'").fetchone()
    assert tables[0] == 3


def test_a_missing_or_misnamed_postgres_index_is_one_line(postgres: Postgres) -> None:
    url = postgres.database("empty")
    with pytest.raises(IndexNotFoundError, match="no index 'kb'"):
        PostgresIndex(url + "#kb")
    result = _rankwise("search", "refunds", "--index", url)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "postgresql://user@host/database#NAME" in " ".join(result.stderr.split())


class _Server(ServeProcess):
    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(args, log, timeout_s=180, env=ENV)
        if self.problem:
            pytest.fail(f"{self.problem}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def served(postgres: Postgres, kb_index: Index, tmp_path: Path) -> Iterator[tuple[_Server, str]]:
    url = postgres.database("served") + "#kb"
    corpus = tmp_path / "kb.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata}) + "\n"
                              for d in KB))
    build = _rankwise("index", str(corpus), "--index", url)
    assert build.returncode == 0, build.stderr
    assert "indexed" in build.stdout
    srv = _Server(["--index", url, "--follow-interval", "0.2s", "--audit", "none", "--feedback-db", "none"],
                  tmp_path / "server.log")
    yield srv, url
    srv.stop()


def test_the_cli_and_a_running_server_take_the_url_and_follow_updates_under_load(
        served: tuple[_Server, str]) -> None:
    server, url = served

    def top(query: str) -> list[str]:
        body = httpx.post(f"{server.url}/v1/search", json={"query": query, "k": 3}, timeout=60).json()
        return [r["doc_id"] for r in body["results"]]

    def wait_for(fingerprint: str) -> None:
        deadline = time.monotonic() + 60
        while httpx.get(f"{server.url}/readyz", timeout=10).json()["index_fingerprint"] != fingerprint:
            assert time.monotonic() < deadline, "the server never served the update"
            time.sleep(0.1)

    cli = json.loads(_rankwise("search", "customer churn in Q4", "--index", url, "--json").stdout)
    assert [r["doc_id"] for r in cli["results"]][:3] == top("customer churn in Q4")
    assert "sso-okta" not in top("single sign-on with okta")

    answers: list[tuple[int, str | None, list[str]]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                reply = client.post("/v1/search", json={"query": "customer churn in Q4", "k": 10})
                body = reply.json() if reply.status_code == 200 else {}
                answers.append((reply.status_code, body.get("provenance", {}).get("index_fingerprint"),
                                [r["doc_id"] for r in body.get("results", [])]))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        added = update_index(url, [ADDED])[0].fingerprint
        wait_for(added)
        assert top("single sign-on with okta")[0] == "sso-okta"
        deleted = update_index(url, delete=["churn-q4"])[0].fingerprint
        wait_for(deleted)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert answers and all(status == 200 for status, _, _ in answers)
    after = [ids for _, fingerprint, ids in answers if fingerprint == deleted]
    assert after and not any("churn-q4" in ids for ids in after)  # never returned once the deletion is served
    assert any("churn-q4" in ids for _, fingerprint, ids in answers if fingerprint == added)
