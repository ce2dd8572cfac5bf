"""Scheduled evaluation with drift alarms: real SQLite histories, the KB index, and ``rankwise monitor`` run
as cron runs it (exit 0 ok or inconclusive, 1 alarm, 2 a one-line error)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import KB
from rankwise.evaluation import GoldSet, Judgement, PreparedGoldSet
from rankwise.index import Index
from rankwise.monitoring import (
    AlarmRule,
    CheckResult,
    MonitorError,
    MonitorRecord,
    SQLiteMonitorHistory,
    monitor_run,
    to_html,
)
from rankwise.monitoring.check import check
from rankwise.monitoring.histories import open_history
from rankwise.monitoring.history import new_record_id
from rankwise.monitoring.run import resolve_reranker
from rankwise.monitoring.slices import read_query_tags
from rankwise.options import PipelineSettings
from rankwise.postgres import PostgresStore, connect
from rankwise.rerank.loading import LoadOptions

#: three queries per KB document (each judged relevant to it alone), with gold-set tags
QUERIES: dict[str, tuple[str, str, list[str]]] = {
    "q01": ("annual plan refund", "refund-annual", ["billing"]),
    "q02": ("refund pro rata within 30 days of renewal", "refund-annual", ["billing"]),
    "q03": ("can the billing team refund an annual plan", "refund-annual", ["billing", "long"]),
    "q04": ("monthly plans refunded", "refund-monthly", ["billing"]),
    "q05": ("cancel before the next billing date to stop charges", "refund-monthly", ["billing", "long"]),
    "q06": ("refund policy monthly", "refund-monthly", ["billing"]),
    "q07": ("contractors reset multi-factor authentication", "mfa-contractor", ["security"]),
    "q08": ("sponsor and IT desk", "mfa-contractor", ["security"]),
    "q09": ("reset MFA for contractors", "mfa-contractor", ["security"]),
    "q10": ("employees reset MFA", "mfa-employee", ["security"]),
    "q11": ("self-service portal video check", "mfa-employee", ["security"]),
    "q12": ("reset MFA for employees themselves", "mfa-employee", ["security"]),
    "q13": ("rotate production postgres credentials", "pg-rotate", ["ops"]),
    "q14": ("vault write and restart the api pods", "pg-rotate", ["ops"]),
    "q15": ("postgres credentials", "pg-rotate", ["ops"]),
    "q16": ("rotate redis credentials", "redis-rotate", ["ops"]),
    "q17": ("ACL file and sentinel reload", "redis-rotate", ["ops"]),
    "q18": ("redis ACL", "redis-rotate", ["ops"]),
    "q19": ("customer churn in Q4", "churn-q4", ["analytics"]),
    "q20": ("price changes in the SMB segment", "churn-q4", ["analytics"]),
    "q21": ("churn analysis Q4", "churn-q4", ["analytics"]),
    "q22": ("research on churn patterns", "churn-theory", ["analytics"]),
    "q23": ("survival analysis and hazard functions", "churn-theory", ["analytics"]),
    "q24": ("theoretical churn models", "churn-theory", ["analytics"]),
}
#: a third of the relevant documents (8 → 5): the degraded index loses 9 of the 24 queries' answers
REMOVED = {"refund-annual", "pg-rotate", "churn-q4"}
RANKWISE = [sys.executable, "-m", "rankwise", "monitor"]


def goldset(queries: dict[str, tuple[str, str, list[str]]] = QUERIES) -> GoldSet:
    return GoldSet([Judgement(qid, text, doc, 1) for qid, (text, doc, _) in queries.items()], name="kb-gold")


def prepared(index: Index, gold: GoldSet) -> PreparedGoldSet:
    return gold.prepare(known_documents=set(index.passage_doc_ids))


def record(index: Index, gold: GoldSet | None = None, **options) -> MonitorRecord:
    options.setdefault("settings", PipelineSettings(first_stage="bm25"))
    return monitor_run(index, prepared(index, gold or goldset()), **options)


def check_pair(path: Path, reference: MonitorRecord, latest: MonitorRecord, **options) -> CheckResult:
    """Check a new history holding the two runs (``latest`` recorded last)."""
    with SQLiteMonitorHistory(path) as history:
        history.append(reference)
        history.append(latest)
        return check(history, **options)


def monitor(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*RANKWISE, *args], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


@pytest.fixture(scope="module")
def gold_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gold set as JSONL, with each query's ``tags`` on its record."""
    path = tmp_path_factory.mktemp("gold") / "gold.jsonl"
    records = [{"query_id": qid, "query": text, "document_id": doc, "label": 1, "tags": tags}
               for qid, (text, doc, tags) in QUERIES.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def degraded_index(tmp_path_factory: pytest.TempPathFactory) -> Index:
    return Index.build([d for d in KB if d.id not in REMOVED], tmp_path_factory.mktemp("degraded") / "index")


@pytest.fixture(scope="module")
def runs(kb_index: Index, degraded_index: Index) -> tuple[MonitorRecord, MonitorRecord, MonitorRecord]:
    """Two runs of the same setup, then one on the degraded index."""
    return record(kb_index), record(kb_index), record(degraded_index)


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory, runs) -> tuple[Path, Path]:
    """``same.sqlite``: the two identical runs; ``degraded.sqlite``: those and the degraded run."""
    directory = tmp_path_factory.mktemp("histories")
    for file, records in (("same.sqlite", runs[:2]), ("degraded.sqlite", runs)):
        with SQLiteMonitorHistory(directory / file) as history:
            for r in records:
                history.append(r)
    return directory / "same.sqlite", directory / "degraded.sqlite"


# ---------------------------------------------------------------------------------------------- runs
def test_a_run_records_the_serving_configuration_and_slices(kb_index: Index, gold_file: Path) -> None:
    tags = read_query_tags(gold_file)
    r = record(kb_index, slice_by=["category"], tags=tags)
    assert r.num_queries == 24 and r.first_stage == "bm25" and r.reranker is None and r.backend == "none"
    assert r.index_fingerprint == kb_index.fingerprint and r.num_documents == 8
    assert set(r.metrics) == {"nDCG@5", "nDCG@10", "R@20", "RR@10"} and r.metrics["R@20"] == 1.0
    assert r.query_texts["q08"] == "sponsor and IT desk" and len(r.per_query["nDCG@5"]) == 24
    assert len(r.goldset_fingerprint) == 64 and r.latency["p50"] <= r.latency["p95"] <= r.latency["p99"]
    assert r.cost["pairs_scored"] == 0 and r.cost["cpu_ms_per_query"] > 0 and r.cost["wall_seconds"] > 0
    # length buckets add up to the queries; categories come from the relevant documents' metadata
    assert sum(v["n"] for v in r.slices["length"].values()) == 24 and "4-7 words" in r.slices["length"]
    assert {k: v["n"] for k, v in r.slices["category"].items()} == {
        "billing": 6, "finance": 3, "research": 3, "runbook": 6, "security": 6}
    assert r.slices["tag"]["long"]["n"] == 2 and sorted(r.slice_members["tag"]["long"]) == ["q03", "q05"]
    assert r.slices["category"]["billing"]["nDCG@5"] == pytest.approx(
        sum(r.per_query["nDCG@5"][q] for q in r.slice_members["category"]["billing"]) / 6)
    with pytest.raises(MonitorError, match=r"--slice-by team: .*known keys: category"):
        record(kb_index, slice_by=["team"])


def test_a_registry_alias_is_recorded_as_its_version_and_weights(kb_index: Index, tmp_path: Path,
                                                                  tiny_cross_encoder: Path) -> None:
    from rankwise.registry import Registry

    registry = Registry(tmp_path / "registry")
    registry.register(tiny_cross_encoder, {"base_model": "tiny"})
    registry.promote("v1", forced=True)
    resolved = resolve_reranker("production", LoadOptions(backend="torch", registry=registry.root))
    assert resolved is not None and resolved.version == "v1"
    few = goldset({q: QUERIES[q] for q in ("q01", "q07", "q13", "q16", "q19", "q22")})
    plain = record(kb_index, few)
    r = record(kb_index, few, reranker=resolved, settings=PipelineSettings(first_stage="bm25", rerank_k=5))
    assert (r.reranker, r.reranker_version, r.backend) == ("production", "v1", "torch")
    assert r.reranker_sha256 == registry.get("v1").weights_sha256 and r.system == "bm25+v1"
    assert 6 <= r.cost["pairs_scored"] <= 5 * 6  # BM25's candidates, at most rerank_k per query
    causes = check_pair(tmp_path / "h.sqlite", plain, r).likely_causes
    assert causes == ("reranker added (v1)", "rerank_k changed (100 → 5)",
                      "reranker backend changed (none → torch)")


# ---------------------------------------------------------------------------------------------- checks
def test_the_rule_needs_a_large_and_significant_drop_on_enough_queries() -> None:
    rule = AlarmRule(max_drop=0.10, alpha=0.05, min_queries=10)
    qids = [f"q{i}" for i in range(40)]
    before = dict.fromkeys(qids, 1.0)
    collapsed = {q: 0.0 if i < 8 else 1.0 for i, q in enumerate(qids)}  # −20%, 8 of 40 queries
    verdict = rule.judge(before, collapsed)
    assert verdict.status == "alarm" and verdict.relative_change == pytest.approx(-0.2)
    assert verdict.p_value is not None and verdict.p_value < 0.05
    assert AlarmRule(max_drop=0.25).judge(before, collapsed).status == "ok"  # significant, but allowed
    slight = {q: 0.98 for q in qids}  # −2% on every query: as significant as it gets, and not worth a page
    small = rule.judge(before, slight)
    assert small.status == "ok" and small.p_value is not None and small.p_value < 0.001
    few = {q: before[q] for q in qids[:6]}
    assert rule.judge(few, {q: 0.0 for q in few}).status == "inconclusive"
    for bad in ({"max_drop": 1.5}, {"alpha": 0.0}, {"min_queries": 1}):
        with pytest.raises(MonitorError):
            AlarmRule(**bad)


def test_a_slice_alarm_pages_even_when_the_average_holds(runs, tmp_path: Path) -> None:
    """8 of 12 'big' queries collapse while 8 of the other 12 improve: overall not significant, in the slice
    it is."""
    qids = sorted(runs[0].query_texts)
    big, rest = qids[:12], qids[12:]
    members = {"tag": {"big": big, "rest": rest}}
    before = {**dict.fromkeys(big, 1.0), **dict.fromkeys(rest, 0.5)}
    after = {**{q: 0.0 if i < 8 else 1.0 for i, q in enumerate(big)},
             **{q: 1.0 if i < 8 else 0.5 for i, q in enumerate(rest)}}
    reference, latest = (replace(runs[0], id=new_record_id(), per_query={"nDCG@5": values},
                                 slice_members=members) for values in (before, after))
    result = check_pair(tmp_path / "h.sqlite", reference, latest)
    assert result.verdict is not None and result.verdict.status == "ok" and result.status == "alarm"
    (alarm,) = result.slice_alarms
    assert (alarm.slice, alarm.value, alarm.verdict.n) == ("tag", "big", 12)
    assert alarm.verdict.p_value == pytest.approx(2 * 2 / 2 ** 8)  # exact test, Holm over the 2 slices
    assert "; slice tag=big −66.7% (p=0.016 Holm, 12 queries)" in result.summary()


def test_the_same_setup_twice_is_ok(histories: tuple[Path, Path]) -> None:
    result = monitor("check", "--history", str(histories[0]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK nDCG@5 ") and len(result.stdout.strip().splitlines()) == 1
    assert "(+0.0%, p=1.000, 24 queries) vs previous run" in result.stdout


def test_a_degraded_index_alarms_and_names_the_index_change(histories: tuple[Path, Path], runs,
                                                            tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    result = monitor("check", "--history", str(histories[1]), "--json", "--html", str(report))
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "alarm" and data["summary"].startswith("ALARM nDCG@5 ")
    assert data["summary"] in result.stderr.replace("\n", "")
    cause = data["likely_causes"][0]
    assert cause.startswith("index changed (") and "8→5 documents" in cause
    verdict = data["verdict"]
    assert verdict["n"] == 24 and verdict["relative_change"] < -0.10 and verdict["p_value"] < 0.05
    # the worst queries are the ones whose only relevant document is gone, now scoring 0
    worst = {q["query_id"] for q in data["worst"]}
    lost = {qid for qid, (_, doc, _) in QUERIES.items() if doc in REMOVED}
    assert {q["query_id"] for q in data["worst"] if q["latest_value"] == 0} == lost and worst >= lost
    page = report.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert page.count("data:image/svg+xml;base64,") == 2  # history plot and per-query scatter
    assert "vault write and restart the api pods" in page and "index changed" in page and "ALARM" in page
    # the library gives the same verdict, and slices carry their own
    with SQLiteMonitorHistory(histories[1], create=False) as history:
        result_lib = check(history)
    assert result_lib.status == "alarm" and result_lib.exit_code == 1
    tested = {(s.slice, s.value) for s in result_lib.slices}
    assert tested == {("length", "1-3 words"), ("length", "4-7 words"), ("length", "8-15 words")}
    assert "gold set" not in " ".join(result_lib.likely_causes)


def test_too_few_queries_are_inconclusive_never_an_alarm(kb_index: Index, degraded_index: Index,
                                                         tmp_path: Path) -> None:
    small = goldset({q: QUERIES[q] for q in ("q01", "q02", "q03", "q04", "q07", "q19")})
    result = check_pair(tmp_path / "h.sqlite", record(kb_index, small), record(degraded_index, small))
    assert result.status == "inconclusive" and result.exit_code == 0 and result.verdict is not None
    assert result.verdict.relative_change is not None and result.verdict.relative_change < -0.3
    assert "only 6 paired queries, 10 needed" in result.summary() and "index changed" in result.summary()
    assert all(s.verdict.status == "inconclusive" for s in result.slices)


def test_a_changed_goldset_is_announced_and_only_common_queries_compared(kb_index: Index,
                                                                         tmp_path: Path) -> None:
    changed = {q: v for q, v in QUERIES.items() if q not in ("q01", "q02")}
    changed["q03"] = ("can the billing team refund a monthly plan", "refund-monthly", [])  # relabelled
    changed["q99"] = ("redis sentinel", "redis-rotate", [])  # added
    result = check_pair(tmp_path / "h.sqlite", record(kb_index), record(kb_index, goldset(changed)))
    assert result.status == "ok" and result.verdict is not None and result.verdict.n == 21
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("the gold set changed between the runs")
    assert "comparing only the 21 queries judged identically in both (2 dropped, 1 added, 1 with changed" \
        in result.warnings[0]
    assert any(c.startswith("gold set changed") for c in result.likely_causes)
    assert "gold set changed" in result.summary()


@pytest.fixture(params=["sqlite", "postgresql"])
def history_at(request: pytest.FixtureRequest, tmp_path: Path) -> Path | PostgresStore:
    """Where a new history goes: a SQLite file, or the shared PostgreSQL store (same SQL, same checks)."""
    if request.param == "sqlite":
        return tmp_path / "h.sqlite"
    return PostgresStore(request.getfixturevalue("postgres").database("monitor"))


def test_the_30_day_reference_is_the_run_closest_to_a_month_earlier(runs, history_at: Path | PostgresStore) -> None:
    same = runs[0]
    dated = [replace(same, id=new_record_id(), time=t) for t in (
        "2026-08-01T03:00:00+00:00", "2026-09-02T03:00:00+00:00", "2026-09-25T03:00:00+00:00",
        "2026-10-02T03:00:00+00:00")]
    with open_history(history_at) as history:
        for r in reversed(dated):  # stored out of order: records come back by time
            history.append(r)
        assert [r.id for r in history.records()] == [r.id for r in dated]
        result = check(history, reference="30d")
    assert result.reference_id == dated[1].id and "vs 30-day run 2026-09-02" in result.summary()


def test_a_pinned_baseline_is_the_reference_and_the_latest_pin_wins(runs, history_at: Path | PostgresStore) -> None:
    first, second, degraded = runs
    with open_history(history_at) as history:
        for r in runs:
            history.append(r)
        with pytest.raises(MonitorError, match="no baseline pinned for 'default'"):
            check(history, reference="baseline")
        history.pin_baseline(first.id[:8])  # a unique prefix is enough
        history.pin_baseline(second.id)
        assert history.baseline("default") == second
        result = check(history, reference="baseline")
        assert result.reference_id == second.id and result.status == "alarm"
        history.pin_baseline(degraded.id)
        assert check(history, reference="baseline").status == "inconclusive"  # the latest run is the baseline
        with pytest.raises(MonitorError, match="no run 'abcdef'"):
            history.pin_baseline("abcdef")
    # append-only, enforced by the database itself
    if isinstance(history_at, PostgresStore):
        pg = connect(history_at.url)
        for sql in ("UPDATE monitor_runs SET name = 'x'", "DELETE FROM monitor_runs", "DELETE FROM monitor_pins",
                    "TRUNCATE monitor_runs CASCADE"):
            with pytest.raises(Exception, match="append-only"):
                pg.execute(sql)
        pg.close()
        return
    conn = sqlite3.connect(history_at)
    for sql in ("UPDATE runs SET name = 'x'", "DELETE FROM runs", "DELETE FROM pins"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


def test_an_interrupted_run_appends_nothing(kb_index: Index, runs, tmp_path: Path) -> None:
    def interrupt(system: str, done: int, total: int) -> None:
        if done == 3:
            raise KeyboardInterrupt

    with SQLiteMonitorHistory(tmp_path / "h.sqlite") as history:
        history.append(runs[0])
        with pytest.raises(KeyboardInterrupt):
            history.append(record(kb_index, progress=interrupt))
        with pytest.raises(MonitorError, match="failed while recording a run"):  # the same id twice
            history.append(replace(runs[1], id=runs[0].id))
        assert [r.id for r in history.records()] == [runs[0].id]


# ---------------------------------------------------------------------------------------------- bad files
def test_a_missing_or_corrupt_history_is_one_error_line(tmp_path: Path) -> None:
    missing = monitor("check", "--history", str(tmp_path / "nope.sqlite"))
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database at all, just bytes " * 200)
    damaged = monitor("check", "--history", str(corrupt))
    for result, text in ((missing, "no monitoring history at"),
                         (damaged, "is not a rankwise monitoring")):
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
        assert text in result.stderr and "Traceback" not in result.stderr


def test_foreign_or_locked_files_are_refused_with_one_line(runs, tmp_path: Path) -> None:
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(MonitorError, match="not a rankwise monitoring history"):
        SQLiteMonitorHistory(foreign)
    path = tmp_path / "h.sqlite"
    path.touch()
    with pytest.raises(MonitorError, match="empty"):
        SQLiteMonitorHistory(path, create=False)
    SQLiteMonitorHistory(path).close()
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        history = SQLiteMonitorHistory(path, timeout=0.1)
        with pytest.raises(MonitorError, match="stayed locked"):
            history.append(runs[0])
        history.close()
    finally:
        blocker.rollback()
        blocker.close()


def test_the_run_command_records_one_line(kb_index: Index, gold_file: Path, tmp_path: Path) -> None:
    history = tmp_path / "h.sqlite"
    result = monitor("run", "--index", str(kb_index.path), "--goldset", str(gold_file), "--first-stage",
                     "bm25", "--history", str(history), "--name", "kb-bm25", "--slice-by", "category")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("recorded run ") and len(result.stdout.strip().splitlines()) == 1
    with SQLiteMonitorHistory(history, create=False) as store:
        (r,) = store.records("kb-bm25")
        assert store.records("default") == [] and set(r.slices) == {"length", "category", "tag"}
        html = to_html(check(store, name="kb-bm25"), store.records("kb-bm25"))
    assert r.id in result.stdout and "no earlier run" in html
