"""The shadow, experiment and canary reports as an operator reads them: from a real feedback store, through
the CLI in an 80-column terminal (nothing cut), naming the models they compare and how much of the traffic
each comparison covers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rankwise.experiments import load_experiment
from rankwise.experiments.report import canary_report, experiment_report, shadow_report
from rankwise.feedback.events import FeedbackEvent, LoggedRequest, LoggedResult, ShadowRecord
from rankwise.feedback.store import SQLiteFeedbackStore

PRODUCTION, CANDIDATE = "v12 (production-eu-west-long-alias)", "v13 (candidate-eu-west-long-alias)"


def _rankwise(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def _request(request_id: str, *, arm: str | None = None, experiment: str | None = None, model: str = PRODUCTION,
             other_model: str | None = None, teams: tuple[str, ...] = (), degraded: bool = False) -> LoggedRequest:
    results = tuple(LoggedResult(f"d{rank}", rank, 1.0 - rank / 10, teams[rank - 1] if teams else None)
                    for rank in range(1, 5))
    return LoggedRequest(request_id, "/v1/search", results, model=model, experiment=experiment, arm=arm,
                         other_model=other_model, latency_ms=40.0 + len(request_id), degraded=degraded)


def _click(request: LoggedRequest, rank: int) -> FeedbackEvent:
    return FeedbackEvent(f"click-{request.request_id}", request.request_id, "click", f"d{rank}", rank)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteFeedbackStore:
    opened = SQLiteFeedbackStore(tmp_path / "feedback.sqlite")
    yield opened
    opened.close()


def test_the_shadow_report_says_how_much_traffic_it_covers_and_why_the_rest_is_missing(
        store: SQLiteFeedbackStore) -> None:
    requests = [_request(f"r{n:02d}") for n in range(20)]
    for request in requests:
        store.log_request(request)
    offered = [r for n, r in enumerate(requests) if n % 2 == 0 or n == 19]  # sampled: 9 were never offered
    # 11 offered: 3 scored, 5 + 2 dropped, 1 failed; recorded as a server does, drops at once and the first
    # requests' scores last (the shadow scores while later requests are being dropped)
    outcomes = ["scored"] * 3 + ["dropped_queue_full"] * 5 + ["dropped_stale"] * 2 + ["failed"]
    for n in [*range(3, 11), 0, 1, 2]:
        request, outcome = offered[n], outcomes[n]
        scored = outcome == "scored"
        store.record_shadow(ShadowRecord(
            request.request_id, PRODUCTION, CANDIDATE, kendall_tau=0.5 if scored else None,
            top5_overlap=0.8 if scored else 0.0, largest_moves=(("d1", 1, 3),) if scored else (),
            shadow_ranking=(("d2", 0.9), ("d1", 0.5)) if scored else (), shadow_ms=30.0, outcome=outcome))
    store.flush()
    (summary,) = shadow_report(store)
    assert (summary.production_model, summary.shadow_model) == (PRODUCTION, CANDIDATE)
    assert (summary.requests, summary.offered, summary.eligible) == (3, 11, 20)
    assert summary.unscored == {"dropped_queue_full": 5, "dropped_stale": 2, "failed": 1}
    assert summary.coverage == pytest.approx(0.15)
    assert summary.top5_overlap is not None and summary.top5_overlap.value == pytest.approx(0.8)

    shown = _rankwise("shadow", "report", "--feedback-db", str(store.path))
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    assert f"shadow {CANDIDATE} vs production {PRODUCTION}" in text
    assert ("covers 15% of production's traffic: 3 scored of 20 answered requests; 11 offered, 5 dropped (queue "
            "full), 2 dropped (stale), 1 failed") in text
    assert "could not keep up" in shown.stderr
    assert "…" not in shown.stdout  # nothing cut: prose wraps in the terminal, tables fold their cells
    data = json.loads(_rankwise("shadow", "report", "--feedback-db", str(store.path), "--json").stdout)
    assert data[0]["coverage"] == pytest.approx(0.15) and data[0]["unscored"]["failed"] == 1


def test_an_interleaving_report_has_a_row_per_arm_naming_its_model_and_crediting_its_own_documents(
        store: SQLiteFeedbackStore, tmp_path: Path) -> None:
    experiment = tmp_path / "il.toml"
    experiment.write_text('name = "il"\nmode = "interleave"\n[[arms]]\nname = "production"\nreranker = "v12"\n'
                          '[[arms]]\nname = "candidate"\nreranker = "v13"\n')
    teams = ("candidate", "production", "candidate", "production")
    for n in range(6):
        request = _request(f"i{n}", arm="interleaved", experiment="il", other_model=CANDIDATE, teams=teams)
        store.log_request(request)
        store.add_event(_click(request, 1))  # rank 1 is the candidate's document every time
    store.log_request(_request("i-late", arm="interleaved", experiment="il", other_model=CANDIDATE, teams=teams,
                               degraded=True))
    store.flush()
    report = experiment_report(store, load_experiment(experiment))
    production, candidate = report.arms
    assert (production.arm, production.models, production.clicked_at_k) == ("production", (PRODUCTION,), 0)
    assert (candidate.arm, candidate.models, candidate.clicked_at_k) == ("candidate", (CANDIDATE,), 6)
    assert production.requests == candidate.requests == 6 and production.degraded == 1
    assert report.interleaving is not None and (report.interleaving.wins_a, report.interleaving.wins_b) == (0, 6)

    shown = _rankwise("experiment", "report", "--experiment", str(experiment), "--feedback-db", str(store.path))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "…" not in shown.stdout
    text = " ".join(shown.stdout.split())
    assert f"production: {PRODUCTION} (1 degraded answers left out)" in text and f"candidate: {CANDIDATE}" in text
    assert "wins production 0 · candidate 6 · ties 0" in text
    header = next(line for line in lines if "requests" in line and "CTR@5" in line)  # one line, nothing wrapped
    assert len(header) <= 80 and all(w in header.split() for w in ("arm", "requests", "abandoned")), shown.stdout


def test_a_canary_report_compares_the_canary_with_production_like_an_ab_test(store: SQLiteFeedbackStore) -> None:
    for n in range(5):  # before the canary started: not its control
        store.log_request(replace(_request(f"b{n}", model="v11 (production)"), time="2026-01-01T00:00:00.000+00:00"))
    for n in range(30):
        canary = n % 3 == 0
        request = _request(f"c{n:02d}", arm="canary" if canary else None, model=CANDIDATE if canary else PRODUCTION)
        store.log_request(request)
        if canary:
            store.add_event(_click(request, 1))
    store.log_request(_request("in-experiment", arm="a", experiment="other"))  # not canary traffic
    store.flush()
    report = canary_report(store)
    production, canary = report.arms
    assert (production.arm, production.models, production.requests) == ("production", (PRODUCTION,), 20)
    assert (canary.arm, canary.models, canary.requests, canary.ctr_at_k) == ("canary", (CANDIDATE,), 10, 1.0)
    assert production.share == pytest.approx(2 / 3)
    assert report.comparisons[0].recommendation.decision == "inconclusive"  # 10 requests < 100 per arm
    shown = _rankwise("canary", "report", "--feedback-db", str(store.path))
    assert shown.returncode == 0, shown.stderr
    assert "canary vs production: CTR@5 100.0% vs 0.0%" in " ".join(shown.stdout.split())
    assert "…" not in shown.stdout


def test_a_canary_report_without_canary_traffic_is_one_line(store: SQLiteFeedbackStore) -> None:
    store.log_request(_request("only-production"))
    store.flush()
    shown = _rankwise("canary", "report", "--feedback-db", str(store.path))
    assert shown.returncode != 0 and shown.stderr.count("\n") == 1 and "--canary 10%" in shown.stderr
