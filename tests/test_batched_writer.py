"""The one background writer behind the query log, shadow records and the audit log."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from rankwise.batched_writer import BatchedWriter, WriterTimeout
from rankwise.serving.audit import AuditLog, AuditRecord, read_audit


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
    log = AuditLog(tmp_path / "audit.sqlite")
    try:
        for i in range(20):
            log.record(AuditRecord(f"r{i}", "/v1/search", 200, 1.0))
        log.flush()
        assert len(read_audit(tmp_path / "audit.sqlite", limit=100)) == 20
    finally:
        log.close()
