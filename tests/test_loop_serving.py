"""The production loop against real server processes: the query log and ``/v1/feedback``, shadow scoring,
A/B and interleaving experiments, canaries, and promotion or rollback followed without a restart.

Two tiny cross-encoders with well-separated scores (seeds 0 and 1) are registered as ``v1`` (production)
and ``v2`` (candidate), so every answer can be checked against the exact scores of the version it names.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serving import Server, _build_model, _rankwise

from conftest import KB, eventually
from rankwise.feedback.store import SQLiteFeedbackStore
from rankwise.index import Index
from rankwise.registry import Registry
from rankwise.rerank.cross_encoder import CrossEncoderReranker
from rankwise.serving.auth import KeyStore

QUERY = "how do contractors reset MFA"
TEXTS = [f"{d.title}\n{d.text}" for d in KB][:12]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loop-models")
    registry = Registry(root / "registry")
    registry.register(_build_model(root / "a", seed=0), {"note": "production"})
    registry.promote("v1", forced=True)
    registry.register(_build_model(root / "b", seed=1), {"note": "candidate"})
    return registry.root


@pytest.fixture(scope="module")
def references(registry: Path) -> dict[str, list[float]]:
    """Each version's exact raw scores for QUERY × TEXTS."""
    reg = Registry(registry)
    return {v: [float(x) for x in CrossEncoderReranker(reg.get(v).path, backend="torch").score(QUERY, TEXTS).raw]
            for v in ("v1", "v2")}


def _version(body: dict[str, Any]) -> str:
    return body["meta"]["model"].split()[0]


def _rerank(client: httpx.Client, user: str | None = None, **extra: Any) -> httpx.Response:
    """QUERY × TEXTS with raw scores, as ``user`` (experiments and canaries stick to the X-Rankwise-User)."""
    headers = {"X-Rankwise-User": user} if user is not None else None
    return client.post("/v1/rerank", headers=headers,
                       json={"query": QUERY, "documents": TEXTS, "raw_scores": True, **extra})


def _assert_from(body: dict[str, Any], references: dict[str, list[float]]) -> str:
    """The answer's scores are exactly those of the version it names (never a mix of two)."""
    version = _version(body)
    for r in body["results"]:
        assert r["raw_score"] == pytest.approx(references[version][r["index"]], abs=1e-4), (version, r)
    return version


@pytest.fixture(scope="module")
def loop_server(kb_index: Index, registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("loop-server")
    srv = Server(["--index", str(kb_index.path), "--reranker", "production", "--registry", str(registry),
                  "--backend", "torch", "--feedback-db", str(tmp / "feedback.sqlite"), "--log-queries", "text",
                  "--audit", str(tmp / "audit.sqlite"), "--shadow", "v2", "--open-metrics"], tmp / "server.log")
    yield srv
    srv.stop()


# ---------------------------------------------------------------------------------------------- feedback
def test_feedback_round_trip_is_validated_idempotent_and_exported(loop_server: Server, tmp_path: Path) -> None:
    feedback_db = str(next(loop_server.log.parent.glob("feedback.sqlite")))
    with loop_server.client() as client:
        answer = client.post("/v1/search", json={"query": QUERY, "k": 5, "user_id": "alice"}).json()
        request_id = answer["request_id"]
        assert request_id == answer["id"]
        second = answer["results"][1]["doc_id"]
        event = {"request_id": request_id, "event_id": "e1", "signal": "thumbs_up", "doc_id": second}
        first = client.post("/v1/feedback", json=event)
        assert first.status_code == 201, first.text
        assert first.json() == {"status": "stored", "event_id": "e1", "request_id": request_id, "doc_id": second,
                                "rank": 2}
        again = client.post("/v1/feedback", json=event)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        by_rank = client.post("/v1/feedback", json={"request_id": request_id, "event_id": "e2", "signal": "click",
                                                    "rank": 1})
        assert by_rank.status_code == 201 and by_rank.json()["doc_id"] == answer["results"][0]["doc_id"]
        cases = [
            ({**event, "doc_id": answer["results"][0]["doc_id"]}, 409, "e1"),
            ({**event, "event_id": "e3", "request_id": "f" * 32}, 404, "no answered request"),
            ({**event, "event_id": "e4", "doc_id": "not-returned"}, 422, "was not among the 5 results"),
            ({**event, "event_id": "e5", "doc_id": None, "rank": 99}, 422, "rank 99 was not among"),
            ({"request_id": request_id, "event_id": "e6", "signal": "click"}, 422, "doc_id or its rank"),
            ({**event, "event_id": "e7", "signal": "like"}, 422, "signal"),
            ({**event, "event_id": "e8", "surprise": 1}, 422, "surprise"),
        ]
        for body, status, words in cases:
            response = client.post("/v1/feedback", json=body)
            assert response.status_code == status, (body, response.text)
            assert words in response.json()["message"]
    metrics = loop_server.metrics()
    assert metrics[("rankwise_feedback_total", (("outcome", "stored"), ("signal", "thumbs_up")))] == 1
    assert metrics[("rankwise_feedback_total", (("outcome", "duplicate"), ("signal", "thumbs_up")))] == 1
    out = tmp_path / "gold.jsonl"
    result = _rankwise("feedback", "export", "--feedback-db", feedback_db, "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["query"], r["document_id"], r["label"]) for r in records if r["label"] > 0} >= {(QUERY, second, 2)}
    with sqlite3.connect(feedback_db) as db:  # the query log kept the text because of --log-queries text
        assert db.execute("SELECT COUNT(*) FROM requests WHERE query = ?", (QUERY,)).fetchone()[0] >= 1


def test_shadow_scores_requests_off_the_critical_path(loop_server: Server, references: dict[str, list[float]]) -> None:
    with loop_server.client() as client:
        for n in range(2):  # a new query scores every pair; the same request again is all cache hits
            fresh = client.post("/v1/rerank", json={"query": "who signs off contractor MFA resets",
                                                    "documents": TEXTS}).json()["meta"]["cost"]
            assert (fresh["pairs"], fresh["tokens"] > 0, fresh["cpu_ms"] > 0) == ((len(TEXTS), True, True) if n == 0
                                                                                  else (0, False, False))
        for _ in range(6):
            response = _rerank(client)
            assert response.status_code == 200
            assert _assert_from(response.json(), references) == "v1"  # production answers, never the shadow
        ready = client.get("/readyz").json()
    assert ready["models"]["shadow"].startswith("v2") and not ready.get("problems")
    assert loop_server.metrics()[("rankwise_pairs_scored_total", (("model", "v1"),))] >= len(TEXTS)
    deadline = time.monotonic() + 60
    while loop_server.metrics().get(("rankwise_shadow_total", (("outcome", "scored"),)), 0) < 6:
        assert time.monotonic() < deadline, "the shadow never scored the offered requests"
        time.sleep(0.5)
    feedback_db = str(next(loop_server.log.parent.glob("feedback.sqlite")))
    report = _rankwise("shadow", "report", "--feedback-db", feedback_db, "--json")
    assert report.returncode == 0, report.stderr
    summary = next(s for s in json.loads(report.stdout) if s["shadow_model"].startswith("v2"))
    assert summary["requests"] >= 6 and -1.0 <= summary["kendall_tau"]["value"] <= 1.0
    # the two seeds rank the texts differently, so agreement is measured, not trivially perfect
    assert summary["kendall_tau"]["value"] < 0.999


def test_without_a_reranker_a_shadow_is_compared_with_the_first_stage(kb_index: Index, registry: Path,
                                                                      tmp_path: Path) -> None:
    """The first model's situation: nothing promoted yet, the candidate measured against what is served."""
    db = tmp_path / "f.sqlite"
    srv = Server(["--index", str(kb_index.path), "--registry", str(registry), "--backend", "torch", "--shadow", "v2",
                  "--feedback-db", str(db), "--audit", "none", "--open-metrics"], tmp_path / "server.log")
    try:
        with srv.client() as client:
            for n in range(6):
                body = client.post("/v1/search", json={"query": f"{QUERY} {n}", "k": 5}).json()
                assert body["provenance"]["reranker"] == "none"
            eventually(lambda: srv.metrics().get(("rankwise_shadow_total", (("outcome", "scored"),)), 0) >= 6,
                       what="the shadow scored every search", timeout=60)
    finally:
        srv.stop()
    report = _rankwise("shadow", "report", "--feedback-db", str(db), "--json")
    assert report.returncode == 0, report.stderr
    (summary,) = json.loads(report.stdout)
    assert (summary["production_model"], summary["shadow_model"]) == ("first stage", "v2")
    assert summary["requests"] == 6 and summary["coverage"] == 1.0


def test_a_shadow_that_fails_to_load_leaves_production_serving(registry: Path, tmp_path: Path,
                                                               references: dict[str, list[float]]) -> None:
    broken = tmp_path / "broken-model"  # it exists, so the server starts; it cannot load, so it is left out
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    srv = Server(["--reranker", "v1", "--registry", str(registry), "--backend", "torch", "--shadow", str(broken),
                  "--feedback-db", str(tmp_path / "f.sqlite"), "--audit", "none", "--open-metrics"],
                 tmp_path / "server.log")
    try:
        with srv.client() as client:
            assert _assert_from(_rerank(client).json(), references) == "v1"
            ready = client.get("/readyz").json()
        assert ready["ready"] and "failed to load" in ready["problems"]["shadow"]
        assert srv.metrics()[("rankwise_shadow_total", (("outcome", "load_failed"),))] == 1
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------- experiments
def test_ab_assignment_is_sticky_per_user_and_reported(registry: Path, tmp_path: Path,
                                                       references: dict[str, list[float]]) -> None:
    experiment = tmp_path / "ab.toml"
    experiment.write_text('name = "v2-vs-v1"\nmode = "ab"\nunit = "user"\n'
                          '[[arms]]\nname = "control"\nreranker = "v1"\nshare = 0.5\n'
                          '[[arms]]\nname = "treatment"\nreranker = "v2"\nshare = 0.5\n')
    db = tmp_path / "f.sqlite"
    srv = Server(["--reranker", "v1", "--registry", str(registry), "--backend", "torch", "--experiment",
                  str(experiment), "--feedback-db", str(db), "--audit", "none"], tmp_path / "server.log")
    try:
        arms: dict[str, set[str]] = {}
        with srv.client() as client:
            for user in range(16):
                for _ in range(2):
                    body = _rerank(client, f"user-{user}", top_n=3).json()
                    version = _assert_from(body, references)
                    arm = body["meta"]["experiment"]["arm"]
                    assert (arm, version) in {("control", "v1"), ("treatment", "v2")}
                    arms.setdefault(f"user-{user}", set()).add(arm)
                    if arm == "treatment":  # users like the treatment's first result
                        client.post("/v1/feedback", json={"request_id": body["request_id"], "event_id":
                                                          body["request_id"], "signal": "click", "rank": 1})
        assert all(len(a) == 1 for a in arms.values()), "a user saw two arms"
        assert Counter(next(iter(a)) for a in arms.values()).keys() == {"control", "treatment"}
    finally:
        srv.stop()
    report = _rankwise("experiment", "report", "--experiment", str(experiment), "--feedback-db", str(db), "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    ctr = {arm["arm"]: arm["ctr_at_k"] for arm in data["arms"]}
    assert ctr["control"] == 0.0 and ctr["treatment"] == 1.0
    assert data["comparisons"][0]["recommendation"]["decision"] == "inconclusive"  # 32 requests < 100 per arm


def test_interleaving_credits_clicks_to_the_arm_that_contributed(registry: Path, tmp_path: Path,
                                                                references: dict[str, list[float]]) -> None:
    experiment = tmp_path / "interleave.json"
    experiment.write_text(json.dumps({"name": "il", "mode": "interleave", "unit": "request", "arms": [
        {"name": "old", "reranker": "v1"}, {"name": "new", "reranker": "v2"}]}))
    db = tmp_path / "f.sqlite"
    srv = Server(["--reranker", "v1", "--registry", str(registry), "--backend", "torch", "--experiment",
                  str(experiment), "--feedback-db", str(db), "--audit", "none"], tmp_path / "server.log")
    best = {v: sorted(range(len(TEXTS)), key=lambda i: -references[v][i]) for v in ("v1", "v2")}
    try:
        with srv.client() as client:
            for n in range(40):
                body = client.post("/v1/rerank", json={"query": QUERY, "documents": TEXTS, "top_n": 6}).json()
                teams = body["meta"]["experiment"]["teams"]
                shown = [r["index"] for r in body["results"]]
                assert len(teams) == 6 == len(set(shown))
                # team draft: the first pick of each team is that arm's own best document
                assert shown[0] in (best["v1"][0], best["v2"][0])
                assert set(teams) <= {"old", "new"}
                for rank, team in enumerate(teams, start=1):
                    if team == "new":  # simulated users only click what the new model contributed
                        client.post("/v1/feedback", json={"request_id": body["request_id"],
                                                          "event_id": f"{n}-{rank}", "signal": "click", "rank": rank})
    finally:
        srv.stop()
    report = _rankwise("experiment", "report", "--experiment", str(experiment), "--feedback-db", str(db), "--json")
    assert report.returncode == 0, report.stderr
    test = json.loads(report.stdout)["interleaving"]
    assert (test["wins_a"], test["wins_b"], test["ties"]) == (0, 40, 0)
    assert json.loads(report.stdout)["recommendation"]["decision"] == "switch"


def test_an_interleaving_experiment_on_a_share_of_traffic_leaves_the_rest_to_production(
        registry: Path, tmp_path: Path, references: dict[str, list[float]]) -> None:
    experiment = tmp_path / "part.toml"
    experiment.write_text('name = "part"\nmode = "interleave"\ntraffic = 0.5\n'
                          '[[arms]]\nname = "old"\nreranker = "v1"\n[[arms]]\nname = "new"\nreranker = "v2"\n')
    srv = Server(["--reranker", "v1", "--registry", str(registry), "--backend", "torch", "--experiment",
                  str(experiment), "--feedback-db", "none", "--audit", "none"], tmp_path / "server.log")
    seen: dict[str, set[bool]] = {}
    try:
        with srv.client() as client:
            for user in range(20):
                for _ in range(2):
                    body = _rerank(client, f"u{user}").json()
                    interleaved = body["meta"]["experiment"] is not None
                    if not interleaved:  # outside the experiment: production's own ranking and name
                        assert _assert_from(body, references) == "v1"
                    seen.setdefault(f"u{user}", set()).add(interleaved)
    finally:
        srv.stop()
    assert all(len(kinds) == 1 for kinds in seen.values()), "enrolment is sticky per user"
    assert 3 <= sum(True in kinds for kinds in seen.values()) <= 17  # about half of 20 users


def test_a_canary_share_is_sticky_per_user(registry: Path, tmp_path: Path, references: dict[str, list[float]]) -> None:
    srv = Server(["--reranker", "production", "--registry", str(registry), "--backend", "torch", "--canary", "50%",
                  "--audit", "none", "--feedback-db", "none"], tmp_path / "server.log")
    seen: dict[str, set[str]] = {}
    try:
        with srv.client() as client:
            for user in range(12):
                for _ in range(2):
                    body = _rerank(client, f"u{user}").json()
                    version = _assert_from(body, references)
                    arm = (body["meta"]["experiment"] or {}).get("arm")
                    assert (version, arm) in {("v1", None), ("v2", "canary")}  # candidate v2 serves the canary
                    seen.setdefault(f"u{user}", set()).add(version)
    finally:
        srv.stop()
    assert all(len(v) == 1 for v in seen.values()), "a user moved between production and the canary"
    assert {next(iter(v)) for v in seen.values()} == {"v1", "v2"}


# ---------------------------------------------------------------------------------------------- promotion
def test_promotion_and_rollback_are_followed_under_load_without_failed_requests(
        registry: Path, tmp_path: Path, references: dict[str, list[float]]) -> None:
    srv = Server(["--reranker", "production", "--registry", str(registry), "--backend", "torch",
                  "--follow-interval", "0.2s", "--audit", "none", "--feedback-db", "none", "--open-metrics"],
                 tmp_path / "server.log")
    seen: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client_loop() -> None:
        with srv.client() as client:
            while not stop.is_set():
                response = _rerank(client)
                seen.append((time.monotonic(), response.status_code,
                             _assert_from(response.json(), references) if response.status_code == 200 else "-"))

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    try:
        for t in threads:
            t.start()

        def wait_for(version: str) -> None:
            deadline = time.monotonic() + 90
            while not any(v == version and at > mark for at, _, v in list(seen)):
                assert time.monotonic() < deadline, f"the server never switched to {version}"
                time.sleep(0.2)

        time.sleep(1.0)
        mark = time.monotonic()
        Registry(registry).promote("v2", forced=True)
        wait_for("v2")
        mark = time.monotonic()
        Registry(registry).rollback()
        wait_for("v1")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        metrics = srv.metrics()
        srv.stop()
    assert len(seen) > 20 and {status for _, status, _ in seen} == {200}
    assert metrics[("rankwise_model_swaps_total", (("outcome", "swapped"), ("role", "production")))] == 2


def test_names_follow_promotions_per_request_and_an_arm_serving_productions_version_is_flagged(
        registry: Path, tmp_path: Path, references: dict[str, list[float]]) -> None:
    root = tmp_path / "registry"
    shutil.copytree(registry, root)  # promoted here without moving the module's registry
    srv = Server(["--reranker", "production", "--registry", str(root), "--backend", "torch", "--canary", "50%",
                  "--follow-interval", "0.2s", "--audit", "none", "--feedback-db", "none", "--open-metrics"],
                 tmp_path / "server.log")

    def served() -> tuple[set[str], dict[str, str], float]:
        with srv.client() as client:
            names = set()
            for n in range(24):  # sticky per user: 24 users reach both the canary and production
                body = _rerank(client, f"user-{n}").json()
                _assert_from(body, references)
                names.add(body["meta"]["model"])
            models = client.get("/readyz").json()["models"]
        same = srv.metrics()[("rankwise_same_version", (("role", "canary"),))]
        return names, models, same

    try:
        assert served() == ({"v1 (production)", "v2 (candidate)"},
                            {"production": "v1 (production)", "canary": "v2 (candidate)"}, 0)
        Registry(root).promote("v2", forced=True)  # production and candidate now name the same version
        promoted = ({"v2 (production)", "v2 (candidate)"}, {"production": "v2 (production)", "canary": "v2 (candidate)"},
                    1)
        eventually(lambda: served() == promoted, what="answers named after the promotion", timeout=60)
        Registry(root).rollback()
        eventually(lambda: served()[0] == {"v1 (production)", "v2 (candidate)"}, what="names after the rollback",
                   timeout=60)
        assert served()[2] == 0
    finally:
        srv.stop()
    assert "canary serves v2, the version production also serves" in srv.log.read_text()


# ---------------------------------------------------------------------------------------------- failures
def test_an_unavailable_feedback_store_rejects_feedback_with_503_and_keeps_serving(
        loop_server: Server, references: dict[str, list[float]]) -> None:
    feedback_db = next(loop_server.log.parent.glob("feedback.sqlite"))
    with loop_server.client() as client:
        answer = client.post("/v1/search", json={"query": QUERY, "k": 3}).json()
        holder = sqlite3.connect(feedback_db, timeout=1, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the database past the store's timeout
        try:
            started = time.monotonic()
            served = _rerank(client)
            assert served.status_code == 200 and time.monotonic() - started < 5  # the query log never blocks
            refused = client.post("/v1/feedback", json={"request_id": answer["request_id"], "event_id": "locked",
                                                        "signal": "click", "rank": 1})
            assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
            assert "not stored" in refused.json()["message"] and str(feedback_db) not in refused.text
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        retried = client.post("/v1/feedback", json={"request_id": answer["request_id"], "event_id": "locked",
                                                    "signal": "click", "rank": 1})
        assert retried.status_code == 201, retried.text
    assert loop_server.metrics()[("rankwise_feedback_total", (("outcome", "unavailable"), ("signal", "click")))] == 1


@pytest.mark.parametrize(("setup", "words"), [
    ({"experiment": 'name = "x"\nmode = "ab"\n[[arms]]\nname = "a"\nreranker = "v1"\nshare = 0.6\n'
                    '[[arms]]\nname = "b"\nreranker = "v2"\nshare = 0.6\n'}, "sum"),
    ({"experiment": 'name = "x"\n[[arms]]\nname = "a"\nreranker = "v1"\nshare = 0.5\n'
                    '[[arms]]\nname = "b"\nreranker = "v9"\nshare = 0.5\n'}, "v9"),
    ({"experiment": "name = \n"}, "experiment.toml"),
    ({"experiment": 'name = "x"\n[[arms]]\nname = "a"\nreranker = "v1"\nshare = 0.5\n'
                    '[[arms]]\nname = "b"\nreranker = "./no-such-model"\nshare = 0.5\n'}, "no-such-model"),
    # an unknown model stops the server whatever role it was named for
    ({"args": ["--shadow", "v9"]}, "v9"),
    ({"args": ["--shadow", "./no-such-model"]}, "no-such-model"),
    ({"args": ["--canary", "10%", "--canary-model", "v9"]}, "v9"),
    ({"args": ["--canary", "150%"]}, "--canary"),
    ({"args": ["--retention", "forever"]}, "--retention"),
    ({"args": ["--log-queries", "all"]}, "query logging"),
    ({"args": ["--shadow-share", "0"]}, "--shadow-share"),
])
def test_bad_loop_settings_stop_the_server_with_one_line(registry: Path, tmp_path: Path, setup: dict[str, Any],
                                                         words: str) -> None:
    args = ["serve", "--reranker", "v1", "--registry", str(registry), "--audit", "none", "--feedback-db", "none",
            "--backend", "torch", "--port", "1", *setup.get("args", [])]
    if "experiment" in setup:
        (tmp_path / "experiment.toml").write_text(setup["experiment"])
        args += ["--experiment", str(tmp_path / "experiment.toml")]
    result = _rankwise(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr


def test_feedback_keys_and_retention(kb_index: Index, tmp_path: Path) -> None:
    """A front end's key may report feedback on its backend's requests (one tenant) but not query; feedback on
    a request past --retention is a 404."""
    keys = tmp_path / "keys.json"
    store = KeyStore(keys)
    _, searcher = store.add(["search"], name="app", tenant="shop")
    _, reporter = store.add(["feedback"], name="front end", tenant="shop")
    srv = Server(["--index", str(kb_index.path), "--keys", str(keys), "--feedback-db", str(tmp_path / "f.sqlite"),
                  "--audit", "none", "--retention", "3s"], tmp_path / "server.log")
    try:
        with srv.client(searcher) as app, srv.client(reporter) as front_end:
            answer = app.post("/v1/search", json={"query": QUERY, "k": 3}).json()
            event = {"request_id": answer["request_id"], "event_id": "k1", "signal": "click", "rank": 1}
            assert app.post("/v1/feedback", json=event).status_code == 403  # a search key cannot report
            assert front_end.post("/v1/search", json={"query": QUERY}).status_code == 403  # nor query
            assert front_end.post("/v1/feedback", json=event).status_code == 201
            time.sleep(3.5)
            late = front_end.post("/v1/feedback", json={**event, "event_id": "k2"})
            assert late.status_code == 404 and "--retention" in late.json()["message"]
    finally:
        srv.stop()
    with SQLiteFeedbackStore(tmp_path / "f.sqlite") as stopped:
        assert stopped.retention() == 3.0  # `feedback export` after the stop applies it without the flag


def _unscorable_model(path: Path) -> Path:
    """Loads, but cannot score: a 100-token vocabulary behind the full tokenizer (ids run past the embeddings)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rankwise.models import bundled_minilm_dir

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(str(bundled_minilm_dir())).save_pretrained(path)
    return path


def test_a_model_that_cannot_score_is_refused_and_a_failing_canary_falls_back_to_production(
        tmp_path: Path, references: dict[str, list[float]], registry: Path) -> None:
    broken = _unscorable_model(tmp_path / "broken")
    added = _rankwise("models", "add", str(broken), "--registry", str(tmp_path / "other-registry"))
    assert added.returncode != 0 and "cannot score a probe batch" in added.stderr
    assert "Traceback" not in added.stderr and len(added.stderr.strip().splitlines()) == 1
    reg = Registry(tmp_path / "registry")
    reg.register(Registry(registry).get("v1").path, {"note": "production"})
    reg.promote("v1", forced=True)
    reg.register(broken, {"note": "registered around the check"})  # v2, the candidate
    forced = _rankwise("models", "promote", "v2", "--force", "--registry", str(reg.root), "--backend", "torch")
    assert forced.returncode != 0 and "cannot score a probe batch" in forced.stderr
    assert reg.aliases()["production"] == "v1"
    srv = Server(["--reranker", "production", "--registry", str(reg.root), "--backend", "torch", "--canary", "50%",
                  "--audit", "none", "--feedback-db", "none", "--open-metrics", "--follow-interval", "0.5s"],
                 tmp_path / "server.log")
    try:
        with srv.client() as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert "cannot serve" in ready.json()["problems"]["canary"]
            for user in range(12):
                response = _rerank(client, f"u{user}")
                assert response.status_code == 200, response.text
                assert _assert_from(response.json(), references) == "v1"

            def problems() -> dict[str, str]:
                return client.get("/readyz").json().get("problems") or {}

            reg.promote("v2", forced=True)  # around the CLI's check: production now names what cannot score
            eventually(lambda: "production" in problems(), what="the failed promotion shown")
            reg.rollback()  # back to v1, which never stopped serving: nothing is wrong any more
            eventually(lambda: "production" not in problems(), what="the problem cleared after the rollback")
        metrics = srv.metrics()
        assert metrics[("rankwise_model_swaps_total", (("outcome", "fallback"), ("role", "canary")))] == 1
    finally:
        srv.stop()
    assert (tmp_path / "server.log").read_text().count("cannot serve") == 2  # one line each, not one per poll


def test_feedback_blocked_on_a_locked_store_never_takes_the_slots_of_search(kb_index: Index, registry: Path,
                                                                            tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    db = tmp_path / "feedback.sqlite"
    srv = Server(["--index", str(kb_index.path), "--reranker", "production", "--registry", str(registry),
                  "--backend", "torch", "--feedback-db", str(db), "--audit", "none", "--max-in-flight", "4",
                  "--max-feedback-in-flight", "2"], tmp_path / "server.log")
    try:
        with srv.client() as client:
            answer = client.post("/v1/search", json={"query": QUERY, "k": 3}).json()
            doc = answer["results"][0]["doc_id"]
            _committed(db, answer["request_id"])
            lock = sqlite3.connect(db, timeout=5)
            lock.execute("BEGIN EXCLUSIVE")  # another process holds the store for 4 s

            def feedback(i: int) -> int:
                with srv.client() as own:
                    return own.post("/v1/feedback", json={"request_id": answer["request_id"], "event_id": f"e{i}",
                                                          "signal": "click", "doc_id": doc}).status_code

            def search(_: int) -> int:
                with srv.client() as own:
                    return own.post("/v1/search", json={"query": QUERY, "k": 3}).status_code

            with ThreadPoolExecutor(16) as pool:
                pending = [pool.submit(feedback, i) for i in range(8)]
                time.sleep(0.5)  # the feedback requests are in, two of them waiting on the lock
                searches = [search(i) for i in range(6)]  # one at a time: never more than the slots
                time.sleep(max(0.0, 4.0 - 1.0))
                lock.rollback()
                statuses = Counter(f.result() for f in pending)
    finally:
        srv.stop()
    assert searches == [200] * 6  # before separate pools, feedback held every slot and search got 503
    assert statuses[503] >= 5 and set(statuses) <= {201, 200, 503}, statuses


def test_feedback_belongs_to_the_key_and_user_that_asked_and_errors_reveal_nothing(
        kb_index: Index, registry: Path, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.json")
    tokens = {name: keys.add(["search", "feedback"], name=name, rate_per_s=1000.0, burst=1000, tenant=tenant)[1]
              for name, tenant in (("alice-app", "shop"), ("mallory", "other"))}
    srv = Server(["--index", str(kb_index.path), "--reranker", "production", "--registry", str(registry),
                  "--backend", "torch", "--feedback-db", str(tmp_path / "f.sqlite"), "--audit", "none",
                  "--log-queries", "text", "--keys", str(keys.path)], tmp_path / "server.log")
    try:
        with srv.client(tokens["alice-app"]) as alice, srv.client(tokens["mallory"]) as mallory:
            answer = alice.post("/v1/search", json={"query": QUERY, "k": 3, "user_id": "alice"}).json()
            doc = answer["results"][0]["doc_id"]
            event = {"request_id": answer["request_id"], "event_id": "alice-1", "signal": "thumbs_up",
                     "doc_id": doc, "user_id": "alice"}
            assert alice.post("/v1/feedback", json=event).status_code == 201
            for attempt in ({**event, "event_id": "m-1", "signal": "thumbs_down", "user_id": None},
                            {**event, "event_id": "m-2", "signal": "thumbs_down", "user_id": "alice"}):
                refused = mallory.post("/v1/feedback", json=attempt)
                assert refused.status_code == 404 and doc not in refused.text, refused.text
            as_other_user = alice.post("/v1/feedback", json={**event, "event_id": "a-2", "user_id": "bob"})
            assert as_other_user.status_code == 404
            reused = mallory.post("/v1/search", json={"query": "refund", "k": 1}).json()
            own = mallory.post("/v1/feedback", json={"request_id": reused["request_id"], "event_id": "alice-1",
                                                     "signal": "click", "rank": 1})
            # event ids are per tenant: another application's id neither collides nor tells it was used
            assert own.status_code == 201 and own.json()["event_id"] == "alice-1", own.text
            conflict = alice.post("/v1/feedback", json={**event, "signal": "click"})  # alice-1, another event
            assert conflict.status_code == 409
            assert doc not in conflict.text, conflict.text
            for n in range(3):  # repeated anonymous thumbs on one answer count as one voter
                anonymous = alice.post("/v1/feedback", json={**event, "event_id": f"a-anon-{n}", "user_id": None,
                                                             "signal": "thumbs_down"})
                assert anonymous.status_code == 201
    finally:
        srv.stop()
    out = tmp_path / "gold.jsonl"
    exported = _rankwise("feedback", "export", "--feedback-db", str(tmp_path / "f.sqlite"), "--out", str(out))
    # alice's own thumbs-up is not overruled by the anonymous thumbs-down (credited to her, it was her latest
    # vote and the export labelled the document 0; counted once per event, three outvoted her): one vote
    # each is a tie, and a tie without clicks is no label
    assert exported.returncode != 0 and "none of the" in exported.stderr, exported.stderr
    assert not out.exists()


def test_a_damaged_feedback_database_is_refused_at_start_and_a_deleted_one_is_reported(
        kb_index: Index, tmp_path: Path) -> None:
    from rankwise.feedback.events import LoggedRequest, LoggedResult
    from rankwise.feedback.store import SQLiteFeedbackStore

    damaged = tmp_path / "damaged.sqlite"
    with SQLiteFeedbackStore(damaged) as store:
        for i in range(300):
            store.log_request(LoggedRequest(f"r{i}", "/v1/search", (LoggedResult("d", 1, 0.5),), query="q" * 200))
    data = bytearray(damaged.read_bytes())
    data[4096:12288] = b"\xff" * 8192  # the pages after the header: table and index b-trees
    damaged.write_bytes(bytes(data))
    refused = _rankwise("serve", "--index", str(kb_index.path), "--feedback-db", str(damaged), "--audit", "none",
                        "--port", "1")
    assert refused.returncode == 2 and "is damaged" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    db = tmp_path / "feedback.sqlite"
    srv = Server(["--index", str(kb_index.path), "--feedback-db", str(db), "--audit", "none", "--open-metrics"],
                 tmp_path / "server.log")
    try:
        with srv.client() as client:
            assert client.post("/v1/search", json={"query": QUERY, "k": 2}).status_code == 200
            assert not (client.get("/readyz").json().get("problems") or {})
            db.unlink()
            answer = client.post("/v1/search", json={"query": QUERY, "k": 2})
            assert answer.status_code == 200  # search goes on
            problems = client.get("/readyz").json()["problems"]
            assert "was deleted while open" in problems["feedback_store"]
            event = {"request_id": answer.json()["request_id"], "event_id": "after-delete", "signal": "click",
                     "rank": 1}
            refused = client.post("/v1/feedback", json=event)  # never acknowledged only to be lost
            assert refused.status_code == 503 and refused.headers["retry-after"], refused.text

            def lost() -> float:
                text = client.get("/metrics").text
                return sum(float(line.split()[-1]) for line in text.splitlines()
                           if line.startswith("rankwise_query_log_errors_total"))

            eventually(lambda: lost() >= 1, what="the lost query-log rows counted")
    finally:
        srv.stop()
    log = (tmp_path / "server.log").read_text()
    assert log.count("was deleted while open; restart to create a new one; logged requests are being lost") == 1


def _committed(db: Path, request_id: str) -> None:
    """Wait until the server's query-log writer has committed ``request_id`` (another process: no flush)."""
    def stored() -> bool:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
            return conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() is not None

    eventually(stored, what=f"request {request_id} in the query log")
