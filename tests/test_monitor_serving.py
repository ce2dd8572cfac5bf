"""Drift monitoring in a running server: every search logs its label-free signals, ``monitor drift`` saves
a reference window from the query log, and a server started with that reference exports drift gauges that
stay quiet for traffic like the reference and fire when the traffic changes domain."""

from __future__ import annotations

import json
from pathlib import Path

from test_drift import biomedical_claims, in_domain_queries
from test_serving import Server, _rankwise

from rankwise.index import Index


def _search_all(server: Server, queries: list[str]) -> None:
    with server.client() as client:
        for query in queries:
            assert client.post("/v1/search", json={"query": query, "k": 5, "first_stage": "bm25"}).status_code == 200


def _alarm(server: Server, signal: str) -> float:
    return server.metrics()[("rankwise_drift_alarm", (("signal", signal),))]


def test_drift_gauges_stay_quiet_for_familiar_traffic_and_fire_for_a_new_domain(kb_index: Index,
                                                                                tmp_path: Path) -> None:
    db, reference = tmp_path / "feedback.sqlite", tmp_path / "reference.json"
    common = ["--index", str(kb_index.path), "--first-stage", "bm25", "--feedback-db", str(db), "--audit", "none",
              "--open-metrics"]
    familiar = in_domain_queries(240, seed=3)
    srv = Server(common, tmp_path / "serve-1.log")
    try:
        _search_all(srv, familiar[:120])
    finally:
        srv.stop()
    saved = _rankwise("monitor", "drift", "--feedback-db", str(db), "--since", "1h", "--save-reference", str(reference))
    assert saved.returncode == 0, saved.stderr
    assert json.loads(reference.read_text())["requests"] == 120

    srv = Server([*common, "--drift-reference", str(reference), "--drift-window", "60"], tmp_path / "serve-2.log")
    try:
        assert _alarm(srv, "oov_rate") == -1  # no traffic yet: "not enough data", never a reassuring 0
        _search_all(srv, familiar[120:180])
        assert _alarm(srv, "oov_rate") == 0 and _alarm(srv, "query_words") == 0
        _search_all(srv, biomedical_claims(60, seed=5))
        assert _alarm(srv, "oov_rate") == 1 and _alarm(srv, "query_words") == 1
        assert srv.metrics()[("rankwise_drift_psi", (("signal", "oov_rate"),))] >= 0.2
    finally:
        srv.stop()
    # the same comparison offline, over the query log: the hour's 240 searches, a quarter of them out of domain
    report = _rankwise("monitor", "drift", "--feedback-db", str(db), "--since", "1h", "--reference", str(reference),
                       "--json")
    assert report.returncode == 1, report.stderr
    assert json.loads(report.stdout)["signals"]["oov_rate"]["status"] == "drift"
    assert "DRIFT" in report.stderr


def test_drift_command_refuses_an_ambiguous_reference(tmp_path: Path) -> None:
    db = tmp_path / "missing.sqlite"
    result = _rankwise("monitor", "drift", "--feedback-db", str(db))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no feedback store" in result.stderr



def test_scheduled_evaluation_records_checks_and_exports_its_alarm_state(kb_index: Index, tmp_path: Path) -> None:
    from rankwise.evaluation.goldset import GoldSet, Judgement
    from rankwise.monitoring.history import SQLiteMonitorHistory
    from rankwise.options import PipelineSettings
    from rankwise.rerank.loading import LoadOptions
    from rankwise.serving.config import MonitorSettings
    from rankwise.serving.metrics import ServingMetrics
    from rankwise.serving.watch import ScheduledMonitor

    judged = {"reset MFA for contractors": "mfa-contractor", "refund an annual plan": "refund-annual",
              "rotate the Postgres password": "pg-rotate", "churn in Q4": "churn-q4"}
    gold = tmp_path / "gold.jsonl"
    GoldSet([Judgement(f"q{i}", text, doc, 1) for i, (text, doc) in enumerate(judged.items())]).save(gold)
    history = tmp_path / "monitor.sqlite"
    settings = MonitorSettings(every_s=3600, goldset=gold, history=history)
    metrics = ServingMetrics()
    monitor = ScheduledMonitor(settings, kb_index, metrics, reranker=None, load=LoadOptions(),
                               pipeline=PipelineSettings(first_stage="bm25", retrieve_k=100, rerank_k=100))
    assert "rankwise_monitor_alarm -1.0" in metrics.render().decode()  # nothing measured yet, not "ok"
    monitor.run_once()
    monitor.run_once()
    with SQLiteMonitorHistory(history) as store:
        records = store.records("serve")
    assert len(records) == 2 and records[0].metrics == records[1].metrics
    text = metrics.render().decode()
    assert 'rankwise_monitor_runs_total{outcome="inconclusive"} 2.0' in text  # 4 queries: too few to alarm
    assert f'rankwise_monitor_metric{{metric="nDCG@5"}} {records[1].metrics["nDCG@5"]}' in text


def test_scheduled_evaluation_settings_are_checked_at_start(kb_index: Index, tmp_path: Path) -> None:
    result = _rankwise("serve", "--index", str(kb_index.path), "--monitor-every", "24h", "--audit", "none",
                       "--feedback-db", "none")
    assert result.returncode == 2 and "--monitor-goldset" in result.stderr and result.stderr.count("\n") == 1
