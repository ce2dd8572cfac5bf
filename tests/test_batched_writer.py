"""The one background writer behind the query log, shadow records and the audit log."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from rankwise.batched_writer import BatchedWriter, WriterTimeout
from rankwise.serving.audit import AuditRecord, SQLiteAuditLog, read_audit


def test_flush_returns_once_everything_queued_before_it_is_written() -> None:
    written: list[int] = []
    gate = threading.Event()

    def write(batch: Sequence[int]) -> None:
        gate.wait(5)
        written.extend(batch)

    writer = BatchedWriter(write, name="test-writer")
    for i in range(100):
        writer.put(i)
    with pytest.raises(WriterTimeout):
        writer.flush(timeout=0.2)  # the disk (the gate) is stalled
    gate.set()
    writer.flush()
    assert written == list(range(100))
    assert writer.close()


def test_a_failing_batch_does_not_stop_the_writer_and_close_commits_what_is_queued() -> None:
    written: list[str] = []

    def write(batch: Sequence[str]) -> None:
        if "bad" in batch:
            raise OSError("disk full")
        written.extend(batch)

    writer = BatchedWriter(write, name="test-writer")
    writer.put("bad")
    writer.flush()
    writer.put("later")
    writer.put("last")
    assert writer.close() and written == ["later", "last"]
    assert writer.close()  # idempotent


def test_the_audit_log_can_be_read_after_a_flush_without_closing(tmp_path: Path) -> None:
    log = SQLiteAuditLog(tmp_path / "audit.sqlite")
    try:
        for i in range(20):
            log.record(AuditRecord(f"r{i}", "/v1/search", 200, 1.0))
        log.flush()
        assert len(read_audit(tmp_path / "audit.sqlite", limit=100)) == 20
    finally:
        log.close()


def test_the_audit_log_is_a_marked_database_that_adopts_older_logs_and_refuses_other_files(tmp_path: Path) -> None:
    import sqlite3

    from rankwise.feedback import SQLiteFeedbackStore
    from rankwise.serving.audit import AUDIT_APPLICATION_ID, AuditError, verify_chain

    feedback = tmp_path / "feedback.sqlite"
    SQLiteFeedbackStore(feedback).close()
    with pytest.raises(AuditError, match="not a rankwise audit database; choose another --audit path"):
        SQLiteAuditLog(feedback)  # both have a `requests` table: only the mark tells them apart

    old = tmp_path / "old-audit.sqlite"  # what a log written before the mark and the hash chain looked like
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL UNIQUE, "
                     "time TEXT NOT NULL, key_id TEXT, endpoint TEXT NOT NULL, status INTEGER NOT NULL, reranker TEXT, "
                     "reranker_sha256 TEXT, index_fingerprint TEXT, query_sha256 TEXT, degraded INTEGER NOT NULL, "
                     "cache_hits INTEGER, latency_ms REAL NOT NULL, results TEXT NOT NULL, error TEXT)")
        conn.execute("INSERT INTO requests (request_id, time, endpoint, status, degraded, latency_ms, results) "
                     "VALUES ('old', '2025-01-01T00:00:00+00:00', '/v1/search', 200, 0, 3.0, '[]')")
    before = old.stat().st_mtime_ns
    assert [row["request_id"] for row in read_audit(old)] == ["old"]  # readable as it is, and left as it is
    assert old.stat().st_mtime_ns == before
    log = SQLiteAuditLog(old)
    try:
        log.record(AuditRecord("new", "/v1/search", 200, 1.0))
        log.flush()
    finally:
        log.close()
    assert [row["request_id"] for row in read_audit(old)] == ["new", "old"]
    with sqlite3.connect(old) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == AUDIT_APPLICATION_ID
    report = verify_chain(old)
    assert report.ok and report.unchained == 1 and report.rows == 1
