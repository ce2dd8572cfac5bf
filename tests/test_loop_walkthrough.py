"""docs/production-loop.md, step by step, on the bundled knowledge base with a scripted user.

The user model: for each training query the user examines rank r with probability 1/r (position bias) and
clicks a document the knowledge base's labels call relevant with probability 0.9 (and gives a thumbs-up to
the highly relevant ones half the time), an irrelevant one with probability 0.05. From that traffic:
feedback → export (labels must agree with the hidden relevance labels) → train → the promotion gate →
shadow → interleaving → promote (followed live) → rollback. The reranker is a tiny model trained for a few
steps, so the gate's verdict is not the point here; that every step works on the previous step's output is.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import httpx
import pytest
from test_serving import Server, _build_model, _rankwise

from rankwise.corpus import SAMPLE_KB
from rankwise.registry import Registry

SESSIONS = 6  # per training query


def _qrels(split: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in (SAMPLE_KB / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        qid, doc, grade = line.split("\t")
        out.setdefault(qid, {})[doc] = int(grade)
    return out


def _queries() -> dict[str, str]:
    return {r["_id"]: r["text"] for r in map(json.loads, (SAMPLE_KB / "queries.jsonl").read_text().splitlines())}


def _simulate(client: httpx.Client, queries: list[tuple[str, str]], qrels: dict[str, dict[str, int]],
              rng: random.Random) -> dict[str, int]:
    """Search as scripted users and send their feedback; counts of what was sent."""
    sent = {"requests": 0, "events": 0}
    for n, (qid, text) in enumerate(queries):
        body = client.post("/v1/search", json={"query": text, "k": 10, "user_id": f"user-{n % 7}"}).json()
        sent["requests"] += 1
        for result in body["results"]:
            grade = qrels[qid].get(result["doc_id"], 0)
            if rng.random() >= 1.0 / result["rank"]:
                continue  # never looked at
            signal = None
            if grade >= 1 and rng.random() < 0.9:
                signal = "thumbs_up" if grade >= 2 and rng.random() < 0.5 else "click"
            elif grade == 0 and rng.random() < 0.05:
                signal = "click"
            if signal:
                response = client.post("/v1/feedback", json={"request_id": body["request_id"], "signal": signal,
                                                             "event_id": f"{body['request_id']}-{result['rank']}",
                                                             "rank": result["rank"]})
                assert response.status_code == 201, response.text
                sent["events"] += 1
    return sent


@pytest.mark.slow
def test_the_production_loop_end_to_end(tmp_path: Path) -> None:
    rng = random.Random(7)
    queries, train_qrels = _queries(), _qrels("train")
    traffic = [(qid, queries[qid]) for qid in sorted(train_qrels)] * SESSIONS
    rng.shuffle(traffic)
    index, registry, db = tmp_path / "kb-index", tmp_path / "registry", tmp_path / "feedback.sqlite"
    built = _rankwise("index", str(SAMPLE_KB), "--index", str(index))
    assert built.returncode == 0, built.stderr
    reg = Registry(registry)
    base = _build_model(tmp_path / "base", seed=3)
    reg.register(base, {"note": "production before the loop"})
    reg.promote("v1", forced=True)
    serve = ["--index", str(index), "--reranker", "production", "--registry", str(registry), "--backend", "torch",
             "--feedback-db", str(db), "--audit", "none", "--follow-interval", "0.3s",
             "--rerank-k", "10"]  # the stand-in production model only reorders the first stage's top 10

    # 1-2: serve with a query log; scripted users search and react
    srv = Server([*serve, "--log-queries", "text", "--retention", "30d"], tmp_path / "serve-1.log")
    try:
        with srv.client() as client:
            sent = _simulate(client, traffic, train_qrels, rng)
    finally:
        srv.stop()
    assert sent["events"] > 50

    # 3: export: the click-derived labels must agree with the hidden relevance labels
    gold, misranked = tmp_path / "feedback-gold.jsonl", tmp_path / "misranked.jsonl"
    exported = _rankwise("feedback", "export", "--feedback-db", str(db), "--since", "30d", "--out", str(gold),
                         "--misranked", str(misranked))
    assert exported.returncode == 0, exported.stderr
    by_text = {text: qid for qid, text in queries.items()}
    labels = [json.loads(line) for line in gold.read_text().splitlines()]
    positives = [r for r in labels if r["label"] >= 1]
    agree = sum(train_qrels[by_text[r["query"]]].get(r["document_id"], 0) >= 1 for r in positives)
    assert len(positives) >= 30 and agree / len(positives) >= 0.85, (agree, len(positives))
    assert misranked.is_file()

    # 4: train on the exported gold set (registered as candidate), then the offline gate decides
    trained = _rankwise("train", "--index", str(index), "--goldset", str(gold), "--base-model", str(base),
                        "--architecture", "cross-encoder", "--no-residual", "--max-steps", "6", "--batch-size", "8", "--eval-steps", "3", "--max-length", "128",
                        "--registry", str(registry), "--output", str(tmp_path / "run"))
    assert trained.returncode == 0, trained.stderr
    assert reg.aliases()["candidate"] == "v2"
    gate = _rankwise("models", "promote", "candidate", "--index", str(index), "--dataset", str(SAMPLE_KB),
                     "--split", "test", "--backend", "torch", "--registry", str(registry))
    assert gate.returncode in (0, 1), gate.stderr  # promoted, or refused with the reason
    if gate.returncode == 0:  # keep the story going from "candidate not yet in production"
        reg.rollback()
    assert reg.aliases()["production"] == "v1"

    # 5-6: the candidate in shadow and in an interleaving experiment on the same server
    experiment = tmp_path / "experiment.toml"
    experiment.write_text('name = "feedback-v2"\nmode = "interleave"\nunit = "user"\n'
                          '[[arms]]\nname = "production"\nreranker = "production"\n'
                          '[[arms]]\nname = "candidate"\nreranker = "candidate"\n')
    srv = Server([*serve, "--shadow", "candidate", "--experiment", str(experiment), "--open-metrics"],
                 tmp_path / "serve-2.log")
    try:
        with srv.client() as client:
            _simulate(client, traffic[:60], train_qrels, rng)
            deadline = time.monotonic() + 60
            while srv.metrics().get(("rankwise_shadow_total", (("outcome", "scored"),)), 0) < 10:
                assert time.monotonic() < deadline, "the shadow scored nothing"
                time.sleep(0.5)
            report = _rankwise("experiment", "report", "--experiment", str(experiment), "--feedback-db", str(db),
                               "--json")
            assert report.returncode == 0, report.stderr
            verdict = json.loads(report.stdout)
            assert verdict["interleaving"]["wins_a"] + verdict["interleaving"]["wins_b"] > 0
            assert verdict["recommendation"]["decision"] in ("switch", "keep", "inconclusive")
            shadow = _rankwise("shadow", "report", "--feedback-db", str(db))
            assert shadow.returncode == 0 and "recommendation" in shadow.stdout, shadow.stderr

            # 7: promote and roll back while the server runs: it follows the alias without a restart
            def swaps() -> float:
                return srv.metrics().get(("rankwise_model_swaps_total", (("outcome", "swapped"),
                                                                          ("role", "arm:production"))), 0.0)

            def wait_for_swaps(count: int) -> None:
                deadline = time.monotonic() + 60
                while swaps() < count:
                    assert time.monotonic() < deadline, "the server did not follow the registry"
                    time.sleep(0.3)

            promoted = _rankwise("models", "promote", "candidate", "--force", "--registry", str(registry))
            assert promoted.returncode == 0, promoted.stderr
            wait_for_swaps(1)
            assert client.get("/readyz").json()["models"]["arm:production"].startswith("v2")
            rolled = _rankwise("models", "rollback", "--registry", str(registry))
            assert rolled.returncode == 0, rolled.stderr
            wait_for_swaps(2)
            assert client.get("/readyz").json()["models"]["arm:production"].startswith("v1")
            body = client.post("/v1/search", json={"query": "reset MFA", "user_id": "ops"}).json()
            assert body["experiment"]["arm"] == "interleaved" and set(body["experiment"]["teams"]) <= {
                "production", "candidate"}
            timings = body["timings_ms"]  # both arms retrieve alike: one first stage, shared
            assert timings["first_stage"] == timings["candidate_first_stage"], timings
    finally:
        srv.stop()
