"""The feedback loop on real SQLite files: the store's guarantees, the click model against a known truth,
and the gold-set export read back with rankwise's own gold-set reader."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rankwise.evaluation.goldset import GoldSet
from rankwise.feedback import (
    ClickModel,
    ClickModelError,
    FeedbackConflict,
    FeedbackEvent,
    FeedbackExportError,
    FeedbackSignal,
    FeedbackStoreError,
    LoggedRequest,
    LoggedResult,
    ShadowRecord,
    SQLiteFeedbackStore,
    export_goldset,
    feedback_query_id,
    since_timestamp,
)

OLD = "2020-01-01T00:00:00.000+00:00"


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert text and "\n" not in text, text
    return text


def served(request_id: str, docs: list[str], *, query: str | None = "reset mfa", time: str | None = None,
           endpoint: str = "/v1/search", experiment: str | None = None, user_id: str | None = None,
           model: str | None = "v3 (production)") -> LoggedRequest:
    """A logged answer listing ``docs`` at ranks 1..n with descending scores 0.9, 0.8, ..."""
    results = tuple(LoggedResult(doc, rank, round(1.0 - rank / 10, 2)) for rank, doc in enumerate(docs, 1))
    extra = {"time": time} if time is not None else {}
    return LoggedRequest(request_id, endpoint, results, model=model, query=query,
                         query_sha256=None if query else "ab12", experiment=experiment, user_id=user_id,
                         **extra)


def event(event_id: str, req: LoggedRequest, doc: str, signal: FeedbackSignal = "click", *,
          value: float | None = None, user_id: str | None = None, time: str | None = None) -> FeedbackEvent:
    result = req.result_for(doc_id=doc)
    assert result is not None
    extra = {"time": time} if time is not None else {}
    return FeedbackEvent(event_id, req.request_id, signal, doc, result.rank, value=value, user_id=user_id,
                         **extra)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """Each contract test runs on both stores: a SQLite file and the shared PostgreSQL store."""
    if request.param == "sqlite":
        with SQLiteFeedbackStore(tmp_path / "feedback.db") as opened:
            yield opened
        return
    from rankwise.feedback.store_postgres import PostgresFeedbackStore
    from rankwise.postgres import PostgresStore

    with PostgresFeedbackStore(PostgresStore(request.getfixturevalue("postgres").database("feedback"))) as opened:
        yield opened


# ------------------------------------------------------------------------------------------ the store
def test_logged_request_is_found_at_once_and_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "feedback.db"
    req = served("r1", ["a", "b"], experiment="exp1", user_id="u1")
    hashed = replace(served("r2", ["c"], query=None), arm="B", latency_ms=12.5, degraded=True,
                     results=(LoggedResult("c", 1, None, "B"),))
    with SQLiteFeedbackStore(path) as store:
        store.log_request(req)
        store.log_request(hashed)
        assert store.get_request("r1") == req  # from memory, whether or not the writer has committed it
        assert store.get_request("missing") is None
    with SQLiteFeedbackStore(path, recent=1) as store:
        assert store.get_request("r1") == req  # from the database
        assert store.get_request("r2") == hashed
        assert [r.request_id for r in store.requests()] == ["r1", "r2"]
    row = sqlite3.connect(path).execute("SELECT query, query_sha256 FROM requests "
                                        "WHERE request_id = 'r2'").fetchone()
    assert row == (None, "ab12")  # the text column stays NULL unless the text was logged


def test_the_memory_of_recent_requests_is_bounded_and_backed_by_the_database(tmp_path: Path) -> None:
    with SQLiteFeedbackStore(tmp_path / "f.db", recent=2) as store:
        logged = [served(f"r{i}", ["a"]) for i in range(5)]
        for req in logged:
            store.log_request(req)
        store.flush()
        assert len(store._recent) == 2
        assert [store.get_request(f"r{i}") for i in range(5)] == logged


def test_events_are_idempotent_on_event_id_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    req = served("r1", ["a", "b"])
    click = event("e1", req, "b", user_id="u1")
    with SQLiteFeedbackStore(path) as store:
        store.log_request(req)
        assert store.add_event(click) == "stored"
        retry = replace(click, time="2030-01-01T00:00:00.000+00:00")  # received again, later
        assert store.add_event(retry) == "duplicate"
        with pytest.raises(FeedbackConflict) as err:
            store.add_event(replace(click, doc_id="a", rank=1))
        assert "e1" in one_line(err) and "new event_id" in str(err.value)
        assert store.add_event(event("e2", req, "a", "thumbs_down", user_id="u2")) == "stored"
    with SQLiteFeedbackStore(path) as store:
        assert store.add_event(click) == "duplicate"
        assert [e.event_id for e in store.events()] == ["e1", "e2"]
        assert store.events()[0] == click
        assert [e.event_id for e in store.events(request_ids=["r1", "other"])] == ["e1", "e2"]
        assert store.events(request_ids=["other"]) == []


def test_requests_are_filtered_by_time_window_and_experiment(store: SQLiteFeedbackStore) -> None:
    store.log_request(served("old", ["a"], time=OLD, experiment="exp1"))
    store.log_request(served("new-1", ["a"], experiment="exp1"))
    store.log_request(served("new-2", ["a"], experiment="exp2"))
    assert [r.request_id for r in store.requests(since="7d")] == ["new-1", "new-2"]
    assert [r.request_id for r in store.requests(until="2021-01-01")] == ["old"]
    assert [r.request_id for r in store.requests(experiment="exp1")] == ["old", "new-1"]
    with pytest.raises(FeedbackStoreError) as err:
        store.requests(since="last tuesday")
    assert "30m, 2h, 7d" in one_line(err)


def test_large_logs_are_read_in_pages_and_chunks(store: SQLiteFeedbackStore) -> None:
    same_time = "2025-05-01T00:00:00.000+00:00"  # ties are ordered by request id, across page boundaries too
    ids = [f"r{i:04d}" for i in range(2345)]
    for request_id in reversed(ids):
        store.log_request(served(request_id, ["a"], time=same_time))
    assert [r.request_id for r in store.requests()] == ids
    for request_id in ("r2000", "r0001", "r1000"):
        store.add_event(event(f"e-{request_id}", served(request_id, ["a"]), "a"))
    assert [e.request_id for e in store.events(request_ids=ids)] == ["r2000", "r0001", "r1000"]


def test_shadow_records_round_trip(store: SQLiteFeedbackStore) -> None:
    record = ShadowRecord("r1", "v3", "v4", 0.4, 0.8, (("b", 2, 1), ("a", 1, 2)), (("b", 3.5), ("a", -1.25)),
                          shadow_ms=4.5)
    store.record_shadow(record)
    store.record_shadow(replace(record, request_id="r0", time=OLD, kendall_tau=None))
    assert store.shadow_records() == [record, replace(record, request_id="r0", time=OLD, kendall_tau=None)]
    assert store.shadow_records(since="1d") == [record]


def test_rows_cannot_be_updated_or_deleted_outside_the_purge(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    with SQLiteFeedbackStore(path) as store:
        req = served("r1", ["a"], time=OLD)
        store.log_request(req)
        store.record_shadow(ShadowRecord("r1", "v3", "v4", None, 1.0, (), (), time=OLD))
        store.add_event(event("e1", req, "a", time=OLD))
        store.flush()
    conn = sqlite3.connect(path, isolation_level=None)
    for sql in ("UPDATE requests SET endpoint = 'x'", "UPDATE events SET doc_id = 'x'",
                "UPDATE shadow SET time = ''",
                "DELETE FROM requests", "DELETE FROM events", "DELETE FROM shadow"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only|retention purge"):
            conn.execute(sql)
    conn.close()
    with SQLiteFeedbackStore(path) as store:
        assert store.purge("1d") == 3


def test_purge_deletes_old_rows_with_their_feedback_and_keeps_new_ones(store: SQLiteFeedbackStore) -> None:
    old, new = served("old", ["a", "b"], time=OLD), served("new", ["a", "b"])
    store.log_request(old)
    store.log_request(new)
    store.add_event(event("late", old, "a"))  # recent feedback on an old request goes with the request
    store.add_event(replace(event("orphan", new, "a"), request_id="gone", time=OLD))
    store.add_event(event("keep", new, "b"))
    store.record_shadow(ShadowRecord("old", "v3", "v4", 1.0, 1.0, (), ()))
    store.record_shadow(ShadowRecord("new", "v3", "v4", 1.0, 1.0, (), ()))
    assert store.purge("30d") == 4
    assert store.get_request("old") is None  # forgotten in memory too
    assert [r.request_id for r in store.requests()] == ["new"]
    assert [e.event_id for e in store.events()] == ["keep"]
    assert [s.request_id for s in store.shadow_records()] == ["new"]
    assert store.purge("30d") == 0


def test_a_process_that_dies_mid_write_loses_no_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    script = f"""
import os
from rankwise.feedback import FeedbackEvent, LoggedRequest, LoggedResult, SQLiteFeedbackStore
store = SQLiteFeedbackStore({str(path)!r})
for i in range(5):
    store.add_event(FeedbackEvent(f"e{{i}}", "r0", "click", "a", 1))
for i in range(3000):
    store.log_request(LoggedRequest(f"r{{i:04d}}", "/v1/search", (LoggedResult("a", 1, 0.5),), query="q"))
os._exit(1)  # no close, no flush: the writer thread is cut off wherever it is
"""
    subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    with SQLiteFeedbackStore(path) as store:
        assert [e.event_id for e in store.events()] == [f"e{i}" for i in range(5)]  # each was committed
        logged = [r.request_id for r in store.requests()]
        assert logged == [f"r{i:04d}" for i in range(len(logged))]  # whole batches, in order, none torn
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_files_that_are_not_feedback_databases_are_refused_in_one_line(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(FeedbackStoreError) as err:
        SQLiteFeedbackStore(text)
    assert str(text) in one_line(err) and "not a rankwise feedback database" in str(err.value)
    assert text.read_text().startswith("these are my notes")

    other = tmp_path / "audit.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE requests (request_id TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(FeedbackStoreError) as err:
        SQLiteFeedbackStore(other)
    assert "not a rankwise feedback database" in one_line(err)

    with pytest.raises(FeedbackStoreError) as err:
        SQLiteFeedbackStore(tmp_path)  # a directory
    assert "writable" in one_line(err)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FeedbackStoreError) as err:
        SQLiteFeedbackStore(blocker / "feedback.db")  # its parent cannot be created
    assert "writable directory" in one_line(err)


def test_a_locked_database_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "feedback.db"
    SQLiteFeedbackStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with SQLiteFeedbackStore(path, timeout=0.05) as store:
            with pytest.raises(FeedbackStoreError) as err:
                store.add_event(FeedbackEvent("e1", "r1", "click", "a", 1))
            assert "locked by another process" in one_line(err) and str(path) in str(err.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = SQLiteFeedbackStore(tmp_path / "f.db")
    store.close()
    store.close()
    with pytest.raises(FeedbackStoreError) as err:
        store.log_request(served("r1", ["a"]))
    assert "closed" in one_line(err)


def test_since_timestamp_reads_durations_and_iso_times() -> None:
    from datetime import UTC, datetime

    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    assert since_timestamp("30m", now) == "2025-03-10T11:30:00.000+00:00"
    assert since_timestamp("2h", now) == "2025-03-10T10:00:00.000+00:00"
    assert since_timestamp("7d", now) == "2025-03-03T12:00:00.000+00:00"
    assert since_timestamp("2025-01-31T12:00") == "2025-01-31T12:00:00.000+00:00"
    assert since_timestamp("2025-01-31T14:00+02:00") == "2025-01-31T12:00:00.000+00:00"
    with pytest.raises(FeedbackStoreError):
        since_timestamp("yesterday")


# ------------------------------------------------------------------------------------------ the click model
#: per query, the served order and each document's true P(click | examined) — the user model of the script —
#: with the label that probability deserves (≥ 0.5 → 2, ≥ 0.25 → 1, else 0). Every first document is an
#: attractive irrelevant one, and each query's best document sits at rank 4 or 5.
SCRIPT = {
    "reset mfa": [("mfa-old", 0.21, 0), ("mfa-faq", 0.375, 1), ("mfa-ticket", 0.05, 0), ("mfa-blog", 0.0, 0),
                  ("mfa-employee", 0.90, 2)],
    "refund annual plan": [("refund-monthly", 0.15, 0), ("refund-faq", 0.05, 0), ("billing-contact", 0.0, 0),
                           ("refund-annual", 0.40, 1), ("refund-terms", 0.05, 0)],
    "vpn setup": [("vpn-legacy", 0.20, 0), ("vpn-windows", 0.70, 2), ("vpn-mac", 0.375, 1),
                  ("vpn-linux", 0.05, 0), ("vpn-android", 0.80, 2)],
}
BEST_LOW = {"reset mfa": "mfa-employee", "refund annual plan": "refund-annual", "vpn setup": "vpn-android"}


def simulate_users(impressions: int, seed: int) -> tuple[list[LoggedRequest], list[FeedbackEvent]]:
    """Position-based users: rank r is examined with probability 1/r, then clicked with the doc's truth."""
    rng = random.Random(seed)
    requests, events = [], []
    for query, docs in SCRIPT.items():
        for i in range(impressions):
            req = served(f"{query}-{i}", [doc for doc, _, _ in docs], query=query)
            requests.append(req)
            for rank, (doc, relevance, _) in enumerate(docs, 1):
                if rng.random() < relevance / rank:
                    events.append(event(f"{req.request_id}-{doc}", req, doc))
    return requests, events


def test_ips_labels_recover_the_truth_that_raw_ctr_gets_wrong() -> None:
    requests, events = simulate_users(2000, seed=0)
    pairs = {(p.query, p.doc_id): p for p in ClickModel().label_pairs(requests, events)}
    assert set(pairs) == {(query, doc) for query, docs in SCRIPT.items() for doc, _, _ in docs}
    for query, docs in SCRIPT.items():
        top, best = pairs[(query, docs[0][0])], pairs[(query, BEST_LOW[query])]
        assert top.clicks > best.clicks, query  # raw CTR prefers the irrelevant first result ...
        assert best.label is not None and best.label >= 1 and top.label == 0, query  # ... IPS labels do not
        for doc, _, label in docs:
            assert (pairs[(query, doc)].label, pairs[(query, doc)].source) == (label, "clicks"), (query, doc)


def test_a_click_label_needs_enough_impressions_and_a_zero_needs_enough_examinations() -> None:
    docs = [f"d{rank}" for rank in range(1, 11)]
    twice = [served(f"r{i}", docs) for i in range(2)]
    clicks = [event(f"e{i}", req, "d1") for i, req in enumerate(twice)]
    assert ClickModel().label_pairs(twice, clicks) == []  # 2 < 3 impressions: no label, not even for d1

    thrice = [*twice, served("r2", docs)]
    (d1,) = ClickModel().label_pairs(thrice, clicks)  # d2 was examined 1.5 times in expectation: no 0 yet
    assert (d1.doc_id, d1.label, d1.describe()) == ("d1", 2, "2 clicks / 3 impressions, ips-ctr 0.67")
    six = [*thrice, *(served(f"r{i}", docs) for i in range(3, 6))]
    labels = {p.doc_id: p.label for p in ClickModel().label_pairs(six, clicks)}
    assert labels == {"d1": 1, "d2": 0}  # d3 was examined twice: still too little for a 0
    lenient = ClickModel(min_impressions=2, min_examinations=0.0)
    assert {p.doc_id for p in lenient.label_pairs(twice, clicks)} == set(docs)


def test_explicit_thumbs_override_clicks_by_majority_of_each_users_latest_vote() -> None:
    requests = [served(f"r{i}", ["a", "b", "c"], user_id=f"u{i}") for i in range(4)]
    events = [event(f"click-{i}", req, "a") for i, req in enumerate(requests)]  # a: clicked by everyone
    events += [event("down-1", requests[0], "a", "thumbs_down", user_id="u0"),
               event("down-2", requests[1], "a", "thumbs_down")]  # the request's user (u1) votes
    events += [event("up-then-down", requests[2], "b", "thumbs_up", user_id="u2", time="2025-01-01T00:00"),
               event("changed-mind", requests[3], "b", "thumbs_down", user_id="u2", time="2025-01-02T00:00"),
               event("up-u3", requests[3], "b", "thumbs_up", user_id="u3")]  # u2's latest is down: 1 : 1
    events += [event("one-vote", requests[0], "c", "thumbs_up", user_id="u9")]
    pairs = {p.doc_id: p for p in ClickModel(min_impressions=10).label_pairs(requests, events)}
    assert (pairs["a"].label, pairs["a"].source, pairs["a"].thumbs_down) == (0, "explicit", 2)
    assert "b" not in pairs  # the tied vote falls back to clicks, and 4 impressions are too few for them
    assert (pairs["c"].label, pairs["c"].source) == (2, "explicit")  # one vote suffices
    assert pairs["c"].describe().endswith("1 thumbs up, 0 down")


def test_dwell_and_copy_count_as_clicks_short_dwell_and_custom_do_not() -> None:
    requests = [served(f"r{i}", ["a", "b", "c", "d"]) for i in range(4)]
    events = [event(f"dwell-{i}", req, "a", "dwell", value=45.0) for i, req in enumerate(requests)]
    events += [event(f"copy-{i}", req, "b", "copy") for i, req in enumerate(requests)]
    events += [event(f"short-{i}", req, "c", "dwell", value=3.0) for i, req in enumerate(requests)]
    events += [event(f"custom-{i}", req, "d", "custom", value=5.0) for i, req in enumerate(requests)]
    events += [event("twice", requests[0], "a")]  # a second click on one impression counts once
    pairs = {p.doc_id: p for p in ClickModel(min_examinations=1.0).label_pairs(requests, events)}
    assert {doc: (p.clicks, p.label) for doc, p in pairs.items()} == {"a": (4, 2), "b": (4, 2), "c": (0, 0),
                                                                       "d": (0, 0)}
    assert ClickModel(dwell_seconds=60, min_clicks=1).label_pairs(requests, events)[0].clicks == 1


def test_click_model_settings_are_checked() -> None:
    with pytest.raises(ClickModelError) as err:
        ClickModel(relevant_ctr=0.6, highly_relevant_ctr=0.5)
    assert "highly_relevant_ctr" in one_line(err)
    with pytest.raises(ClickModelError):
        ClickModel(eta=-1.0)
    assert ClickModel(eta=2.0).propensity(2) == 0.25
    assert ClickModel().propensity(50) == 0.1  # floored


# ------------------------------------------------------------------------------------------ the export
def test_a_hashed_query_log_cannot_become_a_gold_set(store: SQLiteFeedbackStore, tmp_path: Path) -> None:
    with pytest.raises(FeedbackExportError) as err:
        export_goldset(store, since=None, out=tmp_path / "gold.jsonl")
    assert "no /v1/search requests" in one_line(err)
    for i in range(3):
        store.log_request(served(f"r{i}", ["a"], query=None))
    with pytest.raises(FeedbackExportError) as err:
        export_goldset(store, since="30d", out=tmp_path / "gold.jsonl")
    assert "--log-queries text" in one_line(err) and "3 logged search requests" in str(err.value)
    assert not (tmp_path / "gold.jsonl").exists()


def test_export_writes_a_gold_set_rankwise_loads_and_a_misranked_report(store: SQLiteFeedbackStore,
                                                                       tmp_path: Path) -> None:
    served_list = ["mfa-old", "mfa-contractor", "mfa-faq", "mfa-blog", "mfa-employee"]
    spellings = ["reset MFA", "Reset  mfa", "reset mfa"]
    mfa = [served(f"mfa-{i}", served_list, query=spellings[i % 3]) for i in range(6)]
    refund = [served(f"refund-{i}", ["refund-monthly", "refund-annual"], query="refund annual plan")
              for i in range(2)]
    for req in [*mfa, *refund, served("hashed", ["x"], query=None),
                served("rerank", ["0", "1"], endpoint="/v1/rerank")]:
        store.log_request(req)
    for i in range(3):
        store.add_event(event(f"click-{i}", mfa[i], "mfa-employee"))  # chosen at rank 5, 3 of 6 times
    store.add_event(event("up", mfa[4], "mfa-faq", "thumbs_up", user_id="u1"))
    store.add_event(event("refund-up", refund[0], "refund-annual", "thumbs_up", user_id="u2"))
    store.add_event(event("refund-down", refund[1], "refund-monthly", "thumbs_down", user_id="u2"))
    store.add_event(replace(event("stray", mfa[5], "mfa-old"), doc_id="not-served"))  # ignored

    out, report = tmp_path / "out" / "gold.jsonl", tmp_path / "out" / "misranked.jsonl"
    summary = export_goldset(store, since="1d", out=out, misranked_out=report)

    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    mfa_id = feedback_query_id("reset mfa")
    assert mfa_id == feedback_query_id("RESET  MFA") and mfa_id.startswith("fb-") and len(mfa_id) == 15
    assert [(r["query_id"], r["document_id"], r["label"], r["annotator"]) for r in records] == [
        (mfa_id, "mfa-old", 0, "feedback:clicks"),  # examined 6 times, never clicked
        (mfa_id, "mfa-contractor", 0, "feedback:clicks"),  # examined 3 times
        (mfa_id, "mfa-faq", 2, "feedback:explicit"),  # mfa-blog (1.5 examinations) has no label
        (mfa_id, "mfa-employee", 2, "feedback:clicks"),
        (feedback_query_id("refund annual plan"), "refund-monthly", 0, "feedback:explicit"),
        (feedback_query_id("refund annual plan"), "refund-annual", 2, "feedback:explicit"),
    ]
    assert {r["query"] for r in records if r["query_id"] == mfa_id} == {"reset MFA"}  # most frequent spelling
    assert records[3]["notes"] == "3 clicks / 6 impressions, ips-ctr 1.00"

    gold = GoldSet.load(out)
    prepared = gold.prepare()
    assert prepared.counts["evaluated_queries"] == 2 and prepared.warnings == []
    assert prepared.qrels[mfa_id] == {"mfa-old": 0, "mfa-contractor": 0, "mfa-faq": 2, "mfa-employee": 2}

    assert (summary.requests, summary.requests_without_text, summary.requests_other_endpoints) == (10, 1, 1)
    assert (summary.queries, summary.judgements, dict(summary.by_label)) == (2, 6, {0: 3, 2: 3})
    assert dict(summary.by_source) == {"clicks": 3, "explicit": 3} and summary.unlabelled_pairs == 1
    lines = summary.lines()
    assert lines[0] == f"wrote 6 judgements for 2 queries to {out}"
    assert all("\n" not in line for line in lines)

    misranked = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    assert [m.to_dict() for m in summary.misranked] == misranked
    pairs = {(m["preferred"]["document_id"], m["placed_above"]["document_id"]): m for m in misranked}
    assert set(pairs) == {("mfa-employee", "mfa-old"), ("mfa-employee", "mfa-contractor"),
                          ("mfa-faq", "mfa-old"), ("mfa-faq", "mfa-contractor"),
                          ("refund-annual", "refund-monthly")}
    worst = pairs[("mfa-employee", "mfa-old")]
    assert worst["preferred"] == {"document_id": "mfa-employee", "label": 2, "rank": 5, "score": 0.5}
    assert worst["placed_above"] == {"document_id": "mfa-old", "label": 0, "rank": 1, "score": 0.9}
    assert (worst["query"], worst["requests"], worst["model"]) == ("reset MFA", 6, "v3 (production)")
    assert misranked[0]["requests"] == 6 and misranked[-1]["requests"] == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["gold.jsonl", "misranked.jsonl"]  # no temp files

    top = export_goldset(store, since="1d", out=out, misranked_out=report, misranked_limit=2)
    assert top.misranked == summary.misranked[:2] and top.misranked_total == 5  # the most frequent, all counted
    assert top.lines()[-1] == f"5 misranked pairs (the 2 most frequent written to {report})"


def test_export_without_enough_feedback_says_so(store: SQLiteFeedbackStore, tmp_path: Path) -> None:
    store.log_request(served("r1", ["a", "b"]))
    with pytest.raises(FeedbackExportError) as err:
        export_goldset(store, since=None, out=tmp_path / "gold.jsonl")
    assert "3 impressions" in one_line(err) and "2 (query, document) pairs" in str(err.value)


def test_a_store_written_by_an_older_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with SQLiteFeedbackStore(path) as store:
        store.log_request(LoggedRequest("r1", "/v1/search", (LoggedResult("d1", 1, 0.9),), query="reset mfa"))
        store.flush()
    with sqlite3.connect(path) as db:  # what schema 1 looked like: no signals column
        db.execute("ALTER TABLE requests DROP COLUMN signals")
        db.execute("DROP TABLE policy")  # nor the retention policy (schema 3)
        db.execute("ALTER TABLE requests DROP COLUMN other_model")  # nor schema 4's columns
        db.execute("ALTER TABLE shadow DROP COLUMN outcome")
        db.execute("PRAGMA user_version = 1")
    with SQLiteFeedbackStore(path) as store:
        kept = store.get_request("r1")
        assert kept is not None and kept.query == "reset mfa" and kept.signals == {}
        store.log_request(LoggedRequest("r2", "/v1/search", (), signals={"query_words": 2.0}))
        store.flush()
    with SQLiteFeedbackStore(path) as store:
        assert store.get_request("r2").signals == {"query_words": 2.0}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 4


def test_export_applies_the_retention_a_stopped_server_did_not_and_purge_says_what_it_removed(tmp_path: Path) -> None:
    import sys

    db = tmp_path / "feedback.db"
    with SQLiteFeedbackStore(db) as opened:
        old, new = served("old", ["a", "b"], query="old query", time=OLD), served("new", ["a", "b"], query="new query")
        for req in (old, new):
            opened.log_request(req)
        opened.flush()
        opened.add_event(event("old-up", old, "a", "thumbs_up", user_id="u1"))
        opened.add_event(event("new-up", new, "a", "thumbs_up", user_id="u1"))

    def rankwise(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rankwise", *args], capture_output=True, text=True, timeout=120,
                              check=False)

    refused = rankwise("feedback", "purge", "--feedback-db", str(db))
    assert refused.returncode != 0 and "give --retention" in refused.stderr and "Traceback" not in refused.stderr
    with SQLiteFeedbackStore(db) as opened:
        opened.set_retention(30 * 86400)  # what `serve --retention 30d` records
    out = tmp_path / "gold.jsonl"
    exported = rankwise("feedback", "export", "--feedback-db", str(db), "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "(recorded by the server): removed 2 " in exported.stderr  # the old request and its event
    assert [json.loads(line)["query"] for line in out.read_text().splitlines()] == ["new query"]
    again = rankwise("feedback", "purge", "--feedback-db", str(db), "--retention", "30d")
    assert again.returncode == 0 and "removed 0 " in again.stderr


def test_callers_queued_behind_a_locked_database_share_one_timeout(tmp_path: Path) -> None:
    import threading
    import time

    db = tmp_path / "feedback.db"
    with SQLiteFeedbackStore(db, timeout=0.5) as store:
        req = served("r1", ["a", "b"])
        store.log_request(req)
        store.flush()
        holder = sqlite3.connect(db, timeout=1, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the file
        waited: list[float] = []

        def post(i: int) -> None:
            started = time.monotonic()
            with pytest.raises(FeedbackStoreError):
                store.add_event(event(f"e{i}", req, "a"))
            waited.append(time.monotonic() - started)

        try:
            threads = [threading.Thread(target=post, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert len(waited) == 4 and max(waited) < 1.0, waited  # each within its own budget, not 4 × 0.5 s
        assert store.add_event(event("after", req, "a")) == "stored"  # the file is free again


def test_the_query_log_writer_waits_out_a_short_lock_instead_of_losing_rows(tmp_path: Path) -> None:
    import threading

    db = tmp_path / "feedback.db"
    lost: list[int] = []
    with SQLiteFeedbackStore(db, timeout=0.3, on_lost=lost.append) as store:
        store.log_request(served("first", ["a"]))
        store.flush()
        holder = sqlite3.connect(db, timeout=1, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")  # longer than one busy timeout, shorter than the writer's patience
        release = threading.Timer(0.5, lambda: (holder.execute("ROLLBACK"), holder.close()))
        release.start()
        store.log_request(served("during-the-lock", ["a"]))
        store.flush()
        release.join()
        assert store.get_request("during-the-lock") is not None and lost == []
    with SQLiteFeedbackStore(db) as reopened:
        assert sorted(req.request_id for req in reopened.requests()) == ["during-the-lock", "first"]
